// The lockout across replicas (relay/limits-gossip.ts over relay/peers.ts): three real
// relay processes on loopback, each told the others' peer ports (peers.addresses), the
// same certificate and peer token; the third runs two workers (its primary gossips).
// Failed logins spread over the three lock after maxFailures in total; one sibling
// killed puts the others on the fallback threshold; back, it learns the lockouts.

import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createPki, type CertFiles, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, delay, freePort, restartRelay, startRelay, tempDir, type RelayProcess } from './harness.js';

const MAX = 5;
const user = (name: string) => ({ name, password: `${name}-password-0123456789`, allowedSenders: [`${name}@example.com`] });
const VICTIM = user('victim');
const APP = user('app');
const BURST = user('burst');
const FALLBACK = user('fallback');
const LATER = user('later');

let pki: Pki;
let sink: Sink;
let dir: string;
let cert: CertFiles;
const relays: RelayProcess[] = [];
const peerPorts: number[] = [];

/** Until `pred` holds (bounded: `tries` tries, 100 ms apart). */
async function until(what: string, pred: () => boolean | Promise<boolean>, tries = 200): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await pred()) return;
    await delay(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A STARTTLS session from `from` up to AUTH: the AUTH reply. */
async function attempt(relay: RelayProcess, from: string, name: string, password: string): Promise<{ code: number; text: string }> {
  const c = await RawSmtp.connect(relay.ports.submission, { localAddress: from });
  try {
    await c.cmd('EHLO client.example');
    await c.starttls();
    await c.cmd('EHLO client.example');
    const r = await c.login(name, password);
    return { code: r?.code ?? 0, text: r?.text ?? '' };
  } finally {
    c.close();
  }
}

const received = (r: RelayProcess) => r.metric('smtp_relay_lockout_gossip_events_total', { direction: 'received', kind: 'failure' });
const failures = async () => (await Promise.all(relays.map((r) => r.metric('smtp_relay_auth_attempts_total', { result: 'failure' })))).reduce((a, b) => a + b, 0);

/** One wrong login on `relays[i]`, then until both siblings applied its two failure events (username and address). */
async function failAndSpread(i: number, from: string, name: string, password = 'wrong-password'): Promise<number> {
  const others = relays.filter((r, j) => j !== i && r.child.exitCode === null && r.child.signalCode === null);
  const before = await Promise.all(others.map(received));
  const { code } = await attempt(relays[i]!, from, name, password);
  await until(`relay ${i}'s failure to reach its siblings`, async () => (await Promise.all(others.map(received))).every((n, j) => n >= before[j]! + 2));
  return code;
}

async function settled(r: RelayProcess, threshold: number): Promise<boolean> {
  return (await r.metric('smtp_relay_peers')) === 2 && (await r.metric('smtp_relay_lockout_threshold')) === threshold && (await r.metric('smtp_relay_lockout_fallback')) === (threshold === MAX ? 0 : 1);
}

before(async () => {
  dir = await tempDir('relay-replicas-');
  pki = await createPki();
  sink = await startSink({ pki });
  cert = await pki.issue({ name: 'relay' });
  const tokenFile = path.join(dir, 'peer-token');
  await fs.writeFile(tokenFile, 'replica-peer-token-0123456789abcdef\n', { mode: 0o600 });
  const ports = [await freePort(), await freePort(), await freePort()];
  peerPorts.push(...ports);
  const addresses = JSON.stringify(ports.map((p) => `127.0.0.1:${p}`));
  for (let i = 0; i < 3; i++) {
    relays.push(
      await startRelay({
        dir,
        cert,
        users: [VICTIM, APP, BURST, FALLBACK, LATER],
        upstream: { host: sink.host, port: sink.port, caFile: sink.caFile },
        lockout: `{maxFailures: ${MAX}, window: 10m, duration: 15m}`,
        peers: `{address: 127.0.0.1, port: ${ports[i]}, tokenFile: ${tokenFile}, addresses: ${addresses}}`,
        // one of the three is a primary with two workers
        workers: i === 2 ? 2 : 1,
      }),
    );
  }
  for (const r of relays) await r.waitForLog((l) => l.event === 'peers_listening', 20_000);
  // the first ones started before their siblings listened: until every one answers
  for (const r of relays) await until('every relay to know two reachable siblings', () => settled(r, MAX));
});

after(async () => {
  const codes = await Promise.all(relays.map((r) => r.stop()));
  await sink?.stop();
  await pki?.cleanup();
  assert.deepEqual(codes, [0, 0, 0], relays.map((r) => r.stderr).join('\n'));
});

describe('lockout across three replicas', () => {
  test('a username: five wrong passwords round-robin over the three, from five addresses, lock it on all three', async () => {
    const f0 = await failures();
    const codes: number[] = [];
    for (let i = 0; i < MAX; i++) codes.push(await failAndSpread(i % 3, `127.0.5.${i + 1}`, VICTIM.name));
    assert.deepEqual(codes, [535, 535, 535, 535, 421], 'the 5th failure in total starts the lockout, on the replica that saw it');
    assert.equal((await failures()) - f0, MAX, 'exactly maxFailures password checks failed across the three');
    for (const [i, r] of relays.entries()) {
      const { code, text } = await attempt(r, `127.0.5.${20 + i}`, VICTIM.name, VICTIM.password);
      assert.equal(code, 421, `relay ${i}: the right password is refused during the lockout`);
      assert.match(text, /Too many failed logins/);
    }
  });

  test('a client address: five unknown usernames round-robin from one address lock the address on all three', async () => {
    const f0 = await failures();
    const codes: number[] = [];
    for (let i = 0; i < MAX; i++) codes.push(await failAndSpread(i % 3, '127.0.6.1', `nobody${i}`, 'guess'));
    assert.deepEqual(codes, [535, 535, 535, 535, 421]);
    assert.equal((await failures()) - f0, MAX);
    for (const [i, r] of relays.entries()) {
      const { code, text } = await attempt(r, '127.0.6.1', APP.name, APP.password);
      assert.equal(code, 421, `relay ${i}: the address is locked, even with a valid account`);
      assert.match(text, /Too many failed logins/);
    }
    assert.equal((await attempt(relays[0]!, '127.0.6.2', APP.name, APP.password)).code, 235, 'another address is not locked');
  });

  test('a burst at the same moment on all three: failures stay within maxFailures plus the in-flight slack, and the user ends locked everywhere', async () => {
    const f0 = await failures();
    const replies = await Promise.all(Array.from({ length: 30 }, (_, i) => attempt(relays[i % 3]!, `127.0.7.${i + 1}`, BURST.name, 'wrong-password')));
    const failed = (await failures()) - f0;
    const codes = replies.map((r) => r.code);
    // slack: each replica lets in checks while what it knows stays under maxFailures, so at most 3 x 5
    assert.ok(failed >= MAX && failed <= 3 * MAX, `failed checks ${failed} (replies ${codes.join(',')})`);
    process.stderr.write(`# burst of 30 wrong passwords over 3 replicas: ${failed} checks failed (maxFailures ${MAX})\n`);
    await until('the lockout to reach every replica', async () => {
      for (const [i, r] of relays.entries()) if ((await attempt(r, `127.0.7.${100 + i}`, BURST.name, BURST.password)).code !== 421) return false;
      return true;
    }, 30);
  });

  test('one replica killed: the other two lock at ceil(5/3) = 2; back, it gets the running lockouts and the gossip resumes', async () => {
    const [a, b, c] = relays as [RelayProcess, RelayProcess, RelayProcess];
    // log lines from now on (the first relays also logged a fallback at start, before their siblings listened)
    const mark = new Map([a, c].map((r) => [r, r.logs.length]));
    const since = (r: RelayProcess, event: string) => r.logs.slice(mark.get(r)).find((l) => l.event === event);
    b.child.kill('SIGKILL');
    await b.exited;
    for (const r of [a, c]) {
      await until('the fallback threshold', () => settled(r, 2));
      await until('the fallback logged', () => since(r, 'lockout_fallback') !== undefined);
      assert.equal(since(r, 'lockout_fallback')!.threshold, 2);
      assert.deepEqual(since(r, 'lockout_fallback')!.unreachable, [`127.0.0.1:${peerPorts[1]}`]);
    }
    const codes = [await failAndSpread(0, '127.0.8.1', FALLBACK.name), await failAndSpread(2, '127.0.8.2', FALLBACK.name)];
    assert.deepEqual(codes, [535, 421], 'two failures in total lock while a sibling is out of reach');
    for (const r of [a, c]) assert.equal((await attempt(r, '127.0.8.3', FALLBACK.name, FALLBACK.password)).code, 421);

    const back = await restartRelay(b);
    relays[1] = back;
    await back.waitForLog((l) => l.event === 'peers_listening', 20_000);
    for (const r of [a, c, back]) await until('every sibling to answer again', () => settled(r, MAX));
    for (const r of [a, c]) await until('the end of the fallback logged', () => since(r, 'lockout_fallback_ended') !== undefined);
    await until('the running lockouts to reach the replica that was away', async () => (await back.metric('smtp_relay_lockout_gossip_events_total', { direction: 'received', kind: 'lockout' })) > 0);
    const { code, text } = await attempt(back, '127.0.8.4', FALLBACK.name, FALLBACK.password);
    assert.equal(code, 421, 'the lockout started while it was away holds on the returning replica');
    assert.match(text, /Too many failed logins/);

    // the gossip resumes both ways: five failures over the three lock LATER at 5 again
    const later: number[] = [];
    for (let i = 0; i < MAX; i++) later.push(await failAndSpread((i + 1) % 3, `127.0.9.${i + 1}`, LATER.name));
    assert.deepEqual(later, [535, 535, 535, 535, 421]);
  });
});
