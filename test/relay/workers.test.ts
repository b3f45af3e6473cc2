// A relay of several worker processes (config `workers: 2`, relay/workers.ts): the real
// relay process, real clients on loopback. What the relay promises for the whole relay
// must hold across workers, whichever worker a connection lands on: the lockout after
// exactly maxFailures, the per-IP and global connection limits (with shedding of an
// unauthenticated connection held by the other worker), the per-user rate limit, hot
// reload reaching every worker, one /metrics summing every worker, the drain on SIGTERM,
// and in queue mode each message delivered once. Every test checks from the logs (each
// worker's lines carry its `worker` id) that both workers took part.

import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, delay, message, sendPooled, startRelay, tempDir, usersYaml, type LogLine, type RelayProcess } from './harness.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const VICTIM = { name: 'victim', password: 'victim-password-0123456789', allowedSenders: ['victim@example.com'] };
const SPRAYED = { name: 'sprayed', password: 'sprayed-password-0123456789', allowedSenders: ['sprayed@example.com'] };
const LIMITED = { name: 'limited', password: 'limited-password-0123456789', allowedSenders: ['limited@example.com'], rateLimit: { messages: 3, per: '1h' } };

let pki: Pki;
let sink: Sink;
let dir: string;

before(async () => {
  dir = await tempDir('relay-workers-');
  pki = await createPki();
  sink = await startSink({ pki });
});

after(async () => {
  await sink?.stop();
  await pki?.cleanup();
});

/** The worker ids of the log lines matching `pred`. */
function workersOf(relay: RelayProcess, pred: (l: LogLine) => boolean): Set<unknown> {
  return new Set(relay.logs.filter(pred).map((l) => l.worker));
}

/** Until log lines matching `pred` come from two workers (they reach the test a little after the replies). */
async function bothWorkers(relay: RelayProcess, pred: (l: LogLine) => boolean, what = 'log lines from both workers'): Promise<void> {
  await until(what, () => workersOf(relay, pred).size === 2);
}

/** Until `pred` holds (bounded: 50 tries, 100 ms apart). */
async function until(what: string, pred: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 50; i++) {
    if (await pred()) return;
    await delay(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A STARTTLS session from `from` up to AUTH; the AUTH reply code (0 when the connection closed first). */
async function attempt(port: number, from: string, user: string, password: string): Promise<{ code: number; c: RawSmtp }> {
  const c = await RawSmtp.connect(port, { localAddress: from });
  await c.cmd('EHLO client.example');
  await c.starttls();
  await c.cmd('EHLO client.example');
  const r = await c.login(user, password);
  return { code: r?.code ?? 0, c };
}

let certs = 0;

async function startTwoWorkers(extra: Partial<Parameters<typeof startRelay>[0]> = {}): Promise<RelayProcess> {
  return startRelay({
    dir,
    cert: await pki.issue({ name: `relay${certs++}` }),
    users: [APP, VICTIM, LIMITED, SPRAYED],
    upstream: { host: sink.host, port: sink.port, caFile: sink.caFile },
    workers: 2,
    ...extra,
  });
}

describe('two workers: shared limits', () => {
  let relay: RelayProcess;
  before(async () => {
    relay = await startTwoWorkers({
      lockout: '{maxFailures: 4, window: 10m, duration: 15m}',
      limits: '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 6, maxConnectionsPerIp: 3, idleTimeout: 30s, maxUnauthenticated: 6}',
    });
  });
  after(async () => {
    assert.equal(await relay?.stop(), 0, relay?.stderr);
  });

  test('the primary forks two workers, each serves, and the primary announces ready once', async () => {
    assert.equal(relay.logs.filter((l) => l.event === 'ready').length, 1);
    assert.equal(relay.logs.find((l) => l.event === 'ready')!.workers, 2);
    await until('both workers to log', () => workersOf(relay, (l) => l.event === 'worker_ready').size === 2);
  });

  test('lockout per user: wrong passwords from four addresses over connections on both workers lock the user after exactly maxFailures (4)', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) {
      const { code, c } = await attempt(relay.ports.submission, `127.0.1.${i + 1}`, VICTIM.name, 'wrong-password');
      codes.push(code);
      c.close();
    }
    assert.deepEqual(codes, [535, 535, 535, 421], 'the 4th failure starts the lockout, whichever worker saw the first three');
    await until('the failures logged by both workers', () => workersOf(relay, (l) => l.event === 'auth_failure' && l.user === VICTIM.name).size === 2);
    // the right password, from a fresh address, on each worker: refused during the lockout
    for (let i = 0; i < 2; i++) {
      const { code, c } = await attempt(relay.ports.submission, `127.0.1.${10 + i}`, VICTIM.name, VICTIM.password);
      assert.equal(code, 421, 'locked out on every worker');
      c.close();
    }
    await until('both workers to log the refusal', () => workersOf(relay, (l) => l.event === 'auth_locked' && l.user === VICTIM.name).size === 2);
    assert.equal(await relay.metric('smtp_relay_lockouts_total', { scope: 'user' }), 1, 'one lockout, counted once in the summed /metrics');
  });

  test('lockout per client address: four unknown usernames from one address over both workers, then the address is locked', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) {
      const { code, c } = await attempt(relay.ports.submission, '127.0.2.1', `nobody${i}`, 'guess');
      codes.push(code);
      c.close();
    }
    assert.deepEqual(codes, [535, 535, 535, 421]);
    const { code, c } = await attempt(relay.ports.submission, '127.0.2.1', APP.name, APP.password);
    c.close();
    assert.equal(code, 421, 'the address stays locked, even with a valid account');
    await bothWorkers(relay, (l) => l.event === 'auth_failure' && l.clientIp === '127.0.2.1');
  });

  test('six wrong passwords sent at the same moment over both workers: exactly maxFailures (4) are checked and fail, the other two wait and are refused as locked', async () => {
    const fail0 = await relay.metric('smtp_relay_auth_attempts_total', { result: 'failure' });
    const locked0 = await relay.metric('smtp_relay_auth_attempts_total', { result: 'locked' });
    const conns: RawSmtp[] = [];
    for (let i = 0; i < 6; i++) {
      const c = await RawSmtp.connect(relay.ports.submission, { localAddress: `127.0.8.${i + 1}` });
      await c.cmd('EHLO client.example');
      await c.starttls();
      await c.cmd('EHLO client.example');
      conns.push(c);
    }
    const codes = await Promise.all(conns.map((c) => c.login(SPRAYED.name, 'a-guess').then((r) => r?.code ?? 0)));
    for (const c of conns) c.close();
    assert.deepEqual(
      [...codes].sort(),
      [421, 421, 421, 535, 535, 535],
      `replies ${codes}: three plain failures, the fourth starts the lockout, two refused as locked`,
    );
    assert.equal((await relay.metric('smtp_relay_auth_attempts_total', { result: 'failure' })) - fail0, 4, 'exactly maxFailures password checks failed');
    assert.equal((await relay.metric('smtp_relay_auth_attempts_total', { result: 'locked' })) - locked0, 2);
    await bothWorkers(relay, (l) => l.event === 'auth_failure' && l.user === SPRAYED.name);
  });

  test('per-IP limit (3): three sessions from one address on both workers, the fourth refused, on either listener', async () => {
    const held: RawSmtp[] = [];
    for (let i = 0; i < 3; i++) held.push(await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.3.1' }));
    assert.deepEqual(
      held.map((c) => c.greeting?.code),
      [220, 220, 220],
    );
    const fourth = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.3.1' });
    assert.equal(fourth.greeting?.code, 421);
    assert.match(fourth.greeting!.text, /from your address/);
    fourth.close();
    // implicit TLS: refused at accept, before the handshake (the connection is dropped)
    await assert.rejects(RawSmtp.connect(relay.ports.submissions, { localAddress: '127.0.3.1', implicitTls: true }));
    await until('both refusals logged', () => relay.logs.filter((l) => l.event === 'connection_refused' && l.clientIp === '127.0.3.1').length >= 2);
    for (const c of held) c.close();
    // released on close, in the primary: the address may connect again
    await until('the per-IP count to be released', async () => {
      const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.3.1' });
      c.close();
      return c.greeting?.code === 220;
    });
  });

  test('global limit (6): six authenticated sessions over both workers, a seventh refused; with an unauthenticated one held, it is shed for the newcomer', async () => {
    const held: RawSmtp[] = [];
    for (let i = 0; i < 6; i++) {
      const { code, c } = await attempt(relay.ports.submission, `127.0.4.${i + 1}`, APP.name, APP.password);
      assert.equal(code, 235);
      held.push(c);
    }
    await bothWorkers(relay, (l) => l.event === 'auth_success' && String(l.clientIp).startsWith('127.0.4.'));
    const seventh = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.4.100' });
    assert.equal(seventh.greeting?.code, 421);
    assert.match(seventh.greeting!.text, /Too many connections/);
    seventh.close();
    // one authenticated session goes, an unauthenticated one takes its place...
    held.pop()!.close();
    let unauth: RawSmtp | undefined;
    await until('a free slot', async () => {
      const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.4.101' });
      if (c.greeting?.code === 220) unauth = c;
      else c.close();
      return unauth !== undefined;
    });
    // ...and the next newcomers shed it (whichever worker holds it) instead of being refused
    const newcomers: RawSmtp[] = [];
    for (let i = 0; i < 2; i++) newcomers.push(await RawSmtp.connect(relay.ports.submission, { localAddress: `127.0.4.${110 + i}` }));
    const codes = newcomers.map((c) => c.greeting?.code);
    assert.ok(codes.includes(220), `a newcomer admitted by shedding: ${codes}`);
    const shedReply = await unauth!.read();
    assert.equal(shedReply?.code, 421, 'the unauthenticated session was shed');
    await until('the shed counted in /metrics', async () => (await relay.metric('smtp_relay_connections_shed_total', { reason: 'relay_full' })) >= 1);
    for (const c of [...held, ...newcomers, unauth!]) c.close();
  });
});

describe('two workers: implicit TLS and PROXY protocol', () => {
  let relay: RelayProcess;
  before(async () => {
    relay = await startTwoWorkers({
      access: '  allowedCidrs: ["127.0.0.0/8", "::1/128", "10.9.0.0/16"]\n  proxyProtocol: {trustedCidrs: ["127.0.0.6/32"]}',
      limits: '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 50, maxConnectionsPerIp: 2, idleTimeout: 30s}',
    });
  });
  after(async () => {
    assert.equal(await relay?.stop(), 0, relay?.stderr);
  });

  test('implicit TLS: sessions admitted by the primary before the handshake are served on both workers, and log in', async () => {
    for (let i = 0; i < 4; i++) {
      const c = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true, localAddress: `127.0.6.${i + 1}` });
      assert.equal(c.greeting?.code, 220);
      await c.cmd('EHLO client.example');
      assert.equal((await c.login(APP.name, APP.password))?.code, 235);
      c.close();
    }
    await bothWorkers(relay, (l) => l.event === 'auth_success' && String(l.clientIp).startsWith('127.0.6.'));
  });

  test('TLS sessions resume on either worker: the workers share their session-ticket keys', async () => {
    const connect = (session?: Buffer) =>
      new Promise<{ reused: boolean; ticket: Buffer }>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port: relay.ports.submissions, rejectUnauthorized: false, servername: 'localhost', ...(session ? { session } : {}) });
        let ticket: Buffer | undefined;
        s.once('session', (t: Buffer) => (ticket = t));
        s.once('error', reject);
        s.once('data', () => {
          // the greeting: the TLS 1.3 ticket came before it
          const reused = s.isSessionReused();
          s.end('QUIT\r\n');
          s.destroy();
          resolve({ reused, ticket: ticket ?? session! });
        });
      });
    const first = await connect();
    const reused: boolean[] = [];
    for (let i = 0; i < 4; i++) reused.push((await connect(first.ticket)).reused);
    assert.deepEqual(reused, [true, true, true, true], 'four connections, both workers, each resumed with the first ticket');
  });

  test('PROXY v1 from a trusted peer: the per-IP limit (2) holds for the client address in the header, across workers', async () => {
    const viaProxy = async (client: string) => {
      const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.6', greeting: false });
      c.write(`PROXY TCP4 ${client} 127.0.0.1 40000 587\r\n`);
      c.greeting = (await c.read()) ?? undefined;
      return c;
    };
    const held = [await viaProxy('10.9.0.1'), await viaProxy('10.9.0.1')];
    assert.deepEqual(
      held.map((c) => c.greeting?.code),
      [220, 220],
    );
    const third = await viaProxy('10.9.0.1');
    assert.equal(third.greeting?.code, 421, 'the third from the same client address, whichever worker');
    const other = await viaProxy('10.9.0.2');
    assert.equal(other.greeting?.code, 220, 'another client behind the same balancer is not counted with it');
    await until('the refusal logged with the client address', () => relay.logs.some((l) => l.event === 'connection_refused' && l.clientIp === '10.9.0.1'));
    for (const c of [...held, third, other]) c.close();
  });
});

describe('two workers: rate limit, metrics, reload', () => {
  let relay: RelayProcess;
  before(async () => {
    relay = await startTwoWorkers();
  });
  after(async () => {
    assert.equal(await relay?.stop(), 0, relay?.stderr);
  });

  test('a rate limit of 3 per hour: 3 of 8 messages over 4 connections (both workers) are accepted', async () => {
    const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: LIMITED, from: 'limited@example.com', n: 8, tag: 'rate', maxConnections: 4 });
    const accepted = replies.filter((r) => r.startsWith('250'));
    assert.equal(accepted.length, 3, replies.join('\n'));
    await bothWorkers(relay, (l) => l.event === 'auth_success' && l.user === LIMITED.name);
  });

  test('/metrics sums every worker: 12 messages over both workers count 12, and each series appears once', async () => {
    const before = await relay.metric('smtp_relay_messages_total', { result: 'accepted' });
    const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 12, tag: 'metrics', maxConnections: 4 });
    assert.ok(replies.every((r) => r.startsWith('250')), replies.join('\n'));
    await bothWorkers(relay, (l) => l.event === 'message' && l.user === APP.name);
    assert.equal((await relay.metric('smtp_relay_messages_total', { result: 'accepted' })) - before, 12);
    const text = await relay.metricsText();
    const samples = text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.slice(0, l.lastIndexOf(' ')));
    assert.equal(new Set(samples).size, samples.length, 'no series twice');
    assert.equal(text.split('\n').filter((l) => l.startsWith('# TYPE smtp_relay_messages_total ')).length, 1);
    const res = await fetch(`http://127.0.0.1:${relay.ports.metrics}/readyz`);
    assert.equal(res.status, 200);
  });

  test('a users file change reaches every worker: the new user logs in on both', async () => {
    const NEW = { name: 'newcomer', password: 'newcomer-password-0123456789', allowedSenders: ['new@example.com'] };
    await relay.usersDir.update({ 'users.yaml': await usersYaml([APP, VICTIM, LIMITED, SPRAYED, NEW]) });
    await until('both workers to reload the users', () => workersOf(relay, (l) => l.event === 'reload' && l.kind === 'users').size === 2);
    const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: NEW, from: 'new@example.com', n: 6, tag: 'reload', maxConnections: 4 });
    assert.ok(replies.every((r) => r.startsWith('250')), replies.join('\n'));
    await bothWorkers(relay, (l) => l.event === 'auth_success' && l.user === NEW.name);
    assert.equal(await relay.metric('smtp_relay_config_reloads_total', { kind: 'users', result: 'success' }), 1, 'one reload, counted once');
  });
});

describe('two workers: log lines', () => {
  test('400 messages over 16 connections: every line on the shared stdout is whole JSON, and every message has its line once the relay stopped', async () => {
    // The workers share one stdout and buffer their lines (relay/main.ts LOG_DESTINATION):
    // a write of more than 4 KiB could interleave with the other worker's, and lines still
    // buffered at exit would be lost.
    const relay = await startTwoWorkers();
    let stopped = false;
    try {
      const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 400, tag: 'lines', maxConnections: 16 });
      assert.ok(replies.every((r) => r.startsWith('250')), replies.find((r) => !r.startsWith('250')));
      assert.equal(await relay.stop(), 0, relay.stderr);
      stopped = true;
      assert.doesNotMatch(relay.stderr, /\[stdout\]/, 'a line on stdout that is not whole JSON');
      const lines = relay.logs.filter((l) => l.event === 'message' && l.result === 'accepted' && l.user === APP.name);
      assert.equal(lines.length, 400, 'one message line per accepted message');
      assert.equal(workersOf(relay, (l) => l.event === 'message' && l.user === APP.name).size, 2, 'from both workers');
      assert.ok(relay.logs.some((l) => l.event === 'stopped' && l.worker === undefined), 'the primary\'s last line too');
    } finally {
      if (!stopped) await relay.stop();
    }
  });
});

describe('two workers: a worker that dies', () => {
  test('its connections are released in the primary, a new worker takes its place, and the relay serves on', async () => {
    const relay = await startTwoWorkers({ limits: '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 50, maxConnectionsPerIp: 2, idleTimeout: 30s}' });
    try {
      await until('both workers to log', () => workersOf(relay, (l) => l.event === 'worker_ready').size === 2);
      const held = [await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.7.1' }), await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.7.1' })];
      assert.deepEqual(
        held.map((c) => c.greeting?.code),
        [220, 220],
      );
      const full = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.7.1' });
      assert.equal(full.greeting?.code, 421, 'at the per-IP limit');
      full.close();
      const pid = relay.child.pid!;
      const workerPids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
      assert.equal(workerPids.length, 2);
      process.kill(workerPids[0]!, 'SIGKILL');
      const exited = await relay.waitForLog((l) => l.event === 'worker_exited');
      assert.equal(exited.connectionsReleased, 1, 'the dead worker held one of the two');
      await until('a third worker to start', () => relay.logs.filter((l) => l.event === 'worker_ready').length === 3);
      // one connection is left (on the surviving worker): a second one from the address fits again
      await until('the address to be admitted again', async () => {
        const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.7.1' });
        c.close();
        return c.greeting?.code === 220;
      });
      const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 4, tag: 'after-crash', maxConnections: 2 });
      assert.ok(replies.every((r) => r.startsWith('250')), replies.join('\n'));
      for (const c of held) c.close();
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
    }
  });
});

describe('two workers: drain on SIGTERM', () => {
  test('every worker says 421 to idle sessions, lets a message in flight finish, and the relay exits 0', async () => {
    const relay = await startTwoWorkers({ grace: '10s' });
    const idle: RawSmtp[] = [];
    for (let i = 0; i < 4; i++) {
      const { code, c } = await attempt(relay.ports.submission, `127.0.5.${i + 1}`, APP.name, APP.password);
      assert.equal(code, 235);
      idle.push(c);
    }
    await bothWorkers(relay, (l) => l.event === 'auth_success' && String(l.clientIp).startsWith('127.0.5.'));
    sink.behaviour.delayDataMs = 1500;
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: relay.ports.submission, requireTLS: true, auth: { user: APP.name, pass: APP.password }, tls: { ca: pki.ca.certPem, servername: 'localhost' } });
    try {
      const inFlight = t.sendMail({ envelope: { from: 'app@example.com', to: ['drain@example.net'] }, raw: message('app@example.com', 'drain@example.net', 'drain') });
      await relay.waitForLog(() => sink.messages.length >= 0 && relay.logs.some((l) => l.event === 'auth_success' && l.clientIp === '127.0.0.1'));
      await delay(300); // DATA is at the sink now (it waits 1.5 s before its answer)
      relay.child.kill('SIGTERM');
      const info = await inFlight;
      assert.match(info.response, /^250/, 'the message in flight finished');
      for (const c of idle) assert.equal((await c.read())?.code, 421, 'idle sessions told 421');
      assert.equal(await relay.exited, 0, relay.stderr);
      await bothWorkers(relay, (l) => l.event === 'stopped' && l.worker !== undefined, 'both workers drained and stopped');
      assert.ok(relay.logs.some((l) => l.event === 'stopped' && l.worker === undefined), 'then the primary');
    } finally {
      sink.behaviour.delayDataMs = 0;
      t.close();
      for (const c of idle) c.close();
    }
  });
});

describe('two workers: queue mode', () => {
  test('30 messages over both workers are stored and delivered once each', async () => {
    const qdir = path.join(dir, 'spool-workers');
    const relay = await startTwoWorkers({ queue: `{directory: ${qdir}, retry: {initialDelay: 1s, maxDelay: 2s}}` });
    try {
      const start = sink.messages.length;
      const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 30, tag: 'queued', maxConnections: 4 });
      assert.ok(replies.every((r) => /^250 .*queued as/.test(r)), replies.join('\n'));
      await bothWorkers(relay, (l) => l.event === 'message' && l.result === 'accepted' && l.queued !== undefined, 'both workers stored');
      await sink.waitForMessages(start + 30, 20_000);
      await delay(1500); // a second delivery, if any, would arrive now
      const subjects = sink.messages.slice(start).map((m) => /^Subject: (.*)$/m.exec(m.raw.toString('latin1'))?.[1]);
      assert.equal(subjects.length, 30);
      assert.equal(new Set(subjects).size, 30, 'each message once');
      await until('the spool to be empty', async () => (await relay.metric('smtp_relay_queue_messages')) === 0);
      const files = await fs.readdir(qdir);
      assert.ok(files.length > 0);
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
    }
  });
});
