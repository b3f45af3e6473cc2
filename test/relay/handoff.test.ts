// Hand-off of a draining relay's queue to its siblings (relay/handoff.ts over the peer
// channel relay/peers.ts), with real relay processes on loopback: three relays in queue
// mode share a certificate and a peer token; the upstream is down. The drained relay
// (2 workers: its primary owns the spool and the peer channel) hands every queued
// message to the two others; once the upstream is back each message arrives exactly
// once. A sibling that refuses (it is draining itself) is skipped for the other. An empty
// hand-off list hands nothing over; no list hands to the peer channel's siblings.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createPki, type Pki } from '../harness/support/pki.js';
import { waitFor } from '../harness/support/poll.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { SecretDir, freePort, sendPooled, startRelay, tempDir, type RelayProcess } from './harness.js';
import { control, greetingCode, readyz } from './control-client.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const TOKEN = 'ctl-token-77c1d2e3f4a5b6c7d8e9';
const PEER_TOKEN = 'peer-token-0a1b2c3d4e5f60718293a4b5';
/** Bounded: a few hundred messages, as the brief says. */
const N = 300;

let pki: Pki;
let upstreamPort: number;
let sink: Sink | undefined;
const relays: Record<'a' | 'b' | 'c', RelayProcess> = {} as never;
const peerPorts: Record<'a' | 'b' | 'c', number> = {} as never;

const target = (name: 'a' | 'b' | 'c') => `127.0.0.1:${peerPorts[name]}`;
const queued = async (r: RelayProcess) => (await control(r, 'GET', '/queue', TOKEN)).json;

before(async () => {
  pki = await createPki();
  const dir = await tempDir('relay-handoff-');
  const cert = await pki.issue({ name: 'relay' });
  upstreamPort = await closedPort();
  for (const n of ['a', 'b', 'c'] as const) peerPorts[n] = await freePort();
  const secrets = await SecretDir.create(dir, 'secrets', { control: TOKEN, peer: PEER_TOKEN });
  for (const n of ['a', 'b', 'c'] as const) {
    const others = (['a', 'b', 'c'] as const).filter((o) => o !== n).map(target);
    relays[n] = await startRelay({
      dir,
      cert,
      users: [APP],
      upstream: { host: '127.0.0.1', port: upstreamPort, caFile: pki.ca.certFile },
      queue: `{directory: ${dir}/spool-${n}, retry: {initialDelay: 2s, maxDelay: 4s}}`,
      metricsExtra: `controlTokenFile: ${secrets.file('control')}`,
      peers: `{address: 127.0.0.1, port: ${peerPorts[n]}, tokenFile: ${secrets.file('peer')}, addresses: ${JSON.stringify(others)}}`,
      workers: n === 'a' ? 2 : 1,
    });
  }
});

after(async () => {
  for (const r of Object.values(relays)) assert.equal(await r?.stop(), 0, r?.stderr);
  await sink?.stop();
  await pki?.cleanup();
});

const subjectsOf = (tag: string) => (sink?.messages ?? []).map((m) => new RegExp(`Subject: (${tag} \\d+)`).exec(m.raw.toString('latin1'))?.[1]).filter((s): s is string => !!s);

describe('hand-off on drain', () => {
  test(`upstream down: every one of ${N} queued messages goes to the siblings, the drained spool empties, and each arrives exactly once when the upstream returns`, async () => {
    const replies = await sendPooled(relays.a, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: N, tag: 'handoff', maxConnections: 8 });
    assert.equal(replies.filter((x) => x.startsWith('250 ')).length, N, replies.filter((x) => !x.startsWith('250 ')).slice(0, 5).join(' | '));
    assert.equal((await queued(relays.a)).messages, N);
    const before = { b: (await queued(relays.b)).messages as number, c: (await queued(relays.c)).messages as number };
    const t0 = Date.now();
    const d = await control(relays.a, 'POST', '/drain', TOKEN, { handoff: [target('b'), target('c')] });
    assert.equal(d.status, 200, JSON.stringify(d.json));
    assert.equal(await readyz(relays.a), 503);
    assert.equal(await greetingCode(relays.a), 421);
    await waitFor('the drained relay empty', async () => {
      const q = await queued(relays.a);
      return q.messages === 0 && q.bytes === 0 && q;
    }, 180_000, 500);
    const seconds = (Date.now() - t0) / 1000;
    const after = { b: (await queued(relays.b)).messages as number, c: (await queued(relays.c)).messages as number };
    assert.equal(after.b - before.b + after.c - before.c, N, `the siblings hold them all (${JSON.stringify(after)})`);
    assert.ok(after.b - before.b > N / 4 && after.c - before.c > N / 4, `round robin over both: ${JSON.stringify(after)}`);
    assert.equal((await queued(relays.a)).handedOff, N);
    assert.equal(await relays.a.metric('smtp_relay_queue_handoff_total', { direction: 'sent', result: 'ok' }), N);
    assert.equal((await relays.b.metric('smtp_relay_queue_handoff_total', { direction: 'received', result: 'ok' })) + (await relays.c.metric('smtp_relay_queue_handoff_total', { direction: 'received', result: 'ok' })), N);
    process.stdout.write(`# hand-off of ${N} messages (drained relay: 2 workers): ${seconds.toFixed(1)} s\n`);
    // the upstream returns: the siblings deliver on their own retry schedule
    sink = await startSink({ pki, port: upstreamPort });
    await waitFor(`${N} messages at the upstream`, () => subjectsOf('handoff').length >= N, 120_000, 500);
    await new Promise((r) => setTimeout(r, 2000));
    const subjects = subjectsOf('handoff');
    assert.equal(subjects.length, N, 'no duplicates');
    assert.equal(new Set(subjects).size, N, 'every message');
    for (const r of [relays.b, relays.c]) await waitFor('the sibling empty', async () => (await queued(r)).messages === 0, 30_000);
  });

  test('a sibling that is draining itself refuses; the message goes to the other', async () => {
    await sink!.stop();
    sink = undefined;
    assert.equal((await control(relays.a, 'DELETE', '/drain', TOKEN)).status, 200);
    await waitFor('a ready', async () => (await readyz(relays.a)) === 200, 10_000);
    const replies = await sendPooled(relays.a, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 30, tag: 'refuse' });
    assert.equal(replies.filter((x) => x.startsWith('250 ')).length, 30);
    assert.equal((await control(relays.b, 'POST', '/drain', TOKEN, { handoff: [target('c')] })).status, 200);
    const cBefore = (await queued(relays.c)).messages as number;
    const refusedBefore = await relays.b.metric('smtp_relay_queue_handoff_total', { direction: 'received', result: 'refused' });
    assert.equal((await control(relays.a, 'POST', '/drain', TOKEN, { handoff: [target('b'), target('c')] })).status, 200);
    await waitFor('the drained relay empty', async () => (await queued(relays.a)).messages === 0, 60_000, 500);
    assert.equal(((await queued(relays.c)).messages as number) - cBefore, 30, 'all at c');
    assert.equal((await queued(relays.b)).messages, 0, 'none at the draining b');
    assert.ok((await relays.b.metric('smtp_relay_queue_handoff_total', { direction: 'received', result: 'refused' })) > refusedBefore, 'b said no');
    assert.ok((await relays.a.metric('smtp_relay_queue_handoff_total', { direction: 'sent', result: 'refused' })) > 0);
    sink = await startSink({ pki, port: upstreamPort });
    await waitFor('30 messages at the upstream', () => subjectsOf('refuse').length >= 30, 60_000, 500);
    assert.equal(new Set(subjectsOf('refuse')).size, 30);
  });

  test('an empty hand-off list means none (every replica goes, as on the SmtpRelay\'s deletion): the queue stays put and no sibling is offered anything; no list at all means the current siblings', async () => {
    await sink!.stop();
    sink = undefined;
    for (const r of [relays.a, relays.b]) assert.equal((await control(r, 'DELETE', '/drain', TOKEN)).status, 200);
    await waitFor('a ready', async () => (await readyz(relays.a)) === 200, 10_000);
    const replies = await sendPooled(relays.a, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 10, tag: 'stay' });
    assert.equal(replies.filter((x) => x.startsWith('250 ')).length, 10);
    const sent = async () => {
      let n = 0;
      for (const result of ['ok', 'refused', 'full', 'invalid', 'error']) n += await relays.a.metric('smtp_relay_queue_handoff_total', { direction: 'sent', result });
      return n;
    };
    const sentBefore = await sent();
    const handedBefore = (await queued(relays.a)).handedOff as number;
    const d = await control(relays.a, 'POST', '/drain', TOKEN, { handoff: [] });
    assert.equal(d.status, 200, JSON.stringify(d.json));
    assert.equal(await readyz(relays.a), 503, 'draining');
    // Longer than a retry (2 s) plus the 3 s before a deferred message is offered again.
    await new Promise((r) => setTimeout(r, 7000));
    const q = await queued(relays.a);
    assert.equal(q.messages, 10, 'the queue stays on the drained relay');
    assert.equal(q.handedOff, handedBefore);
    assert.equal(await sent(), sentBefore, 'no sibling was offered a message');
    // No list at all: the peer channel's siblings (b and c, neither draining now).
    assert.equal((await control(relays.a, 'POST', '/drain', TOKEN)).status, 200);
    await waitFor('the drained relay empty (handed to its siblings)', async () => (await queued(relays.a)).messages === 0, 60_000, 500);
    assert.equal(((await queued(relays.a)).handedOff as number) - handedBefore, 10);
    sink = await startSink({ pki, port: upstreamPort });
    await waitFor('10 messages at the upstream', () => subjectsOf('stay').length >= 10, 60_000, 500);
    assert.equal(new Set(subjectsOf('stay')).size, 10);
  });
});
