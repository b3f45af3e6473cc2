// Abuse against the real relay process: allow-list, PROXY protocol trust, brute
// force lockout, 1,000 held connections from one IP, clients dropping during the
// TLS handshake, idle timeout. Loopback only (127.0.0.0/8 source addresses).

import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, delay, startRelay, tempDir, type RelayProcess, stopAll } from './harness.js';

let pki: Pki;
let sink: Sink;
let relay: RelayProcess;

const CAROL = { name: 'carol', password: 'carol-password-123', allowedSenders: ['carol@example.com'] };
const VICTIM = { name: 'victim', password: 'victim-password-123', allowedSenders: ['victim@example.com'] };

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki });
  relay = await startRelay({
    dir: await tempDir('relay-abuse-'),
    cert: await pki.issue({ name: 'relay' }),
    users: [CAROL, VICTIM],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    // 127.0.0.0-3 allowed; 127.0.0.6 is a trusted PROXY peer but not itself allowed
    access: '  allowedCidrs: ["127.0.0.0/30", "::1/128"]\n  proxyProtocol: {trustedCidrs: ["127.0.0.6/32"]}',
    limits: '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 200, maxConnectionsPerIp: 20, idleTimeout: 3s}',
    lockout: '{maxFailures: 3, window: 10m, duration: 15m}',
  });
});

after(() => stopAll(relay, sink, pki));

async function ehloTls(c: RawSmtp) {
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  await c.starttls();
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
}

describe('access control', () => {
  test('a client outside the allow-list gets 554 and is closed', async () => {
    const before = await relay.metric('smtp_relay_connections_total', { result: 'rejected', reason: 'ip_not_allowed' });
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.5', greeting: false });
    const r = await c.read();
    assert.equal(r?.code, 554);
    await c.closedP;
    assert.equal((await relay.metric('smtp_relay_connections_total', { result: 'rejected', reason: 'ip_not_allowed' })) - before, 1);
    // also on the implicit TLS listener, where it is dropped before the TLS handshake
    // (nothing can be said before TLS there; test/relay/review.test.ts has the details)
    await assert.rejects(RawSmtp.connect(relay.ports.submissions, { localAddress: '127.0.0.5', implicitTls: true, greeting: false }));
    assert.equal((await relay.metric('smtp_relay_connections_total', { result: 'rejected', reason: 'ip_not_allowed' })) - before, 2);
  });

  test('IPv6: a client on ::1 (in the allow-list) is served', async () => {
    const c = await RawSmtp.connect(relay.ports.v6, { host: '::1' });
    assert.equal(c.greeting?.code, 220);
    await ehloTls(c);
    assert.equal((await c.login(CAROL.name, CAROL.password))?.code, 235);
    c.close();
  });

  test('PROXY protocol v1 from a trusted peer: the real client address decides', async () => {
    // allowed client behind the trusted proxy
    const ok = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.6', greeting: false });
    ok.write('PROXY TCP4 127.0.0.2 127.0.0.1 40000 587\r\n');
    assert.equal((await ok.read())?.code, 220);
    ok.close();
    // refused client behind the trusted proxy
    const no = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.6', greeting: false });
    no.write('PROXY TCP4 127.0.0.9 127.0.0.1 40000 587\r\n');
    assert.equal((await no.read())?.code, 554);
    no.close();
    // the trusted proxy without a header is not a client
    const raw = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.6', greeting: false });
    raw.write('EHLO x\r\n');
    const r = await raw.read(3000).catch(() => null);
    assert.ok(!r || r.code !== 250, `no SMTP session without a PROXY header: ${r?.text}`);
    raw.close();
  });

  test('PROXY header from an untrusted peer is not honoured', async () => {
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.1' });
    const r = await c.cmd('PROXY TCP4 127.0.0.2 127.0.0.1 40000 587');
    assert.equal(r?.code, 500, 'treated as an unknown command');
    c.close();
  });
});

describe('brute force', () => {
  test('wrong passwords until lockout: 421 + close, then even the right password is refused (per IP and per user)', async () => {
    const lockIp0 = await relay.metric('smtp_relay_lockouts_total', { scope: 'ip' });
    const lockUser0 = await relay.metric('smtp_relay_lockouts_total', { scope: 'user' });
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.3' });
    await ehloTls(c);
    assert.equal((await c.login(VICTIM.name, 'guess-1'))?.code, 535);
    assert.equal((await c.login(VICTIM.name, 'guess-2'))?.code, 535);
    const third = await c.login(VICTIM.name, 'guess-3');
    assert.equal(third?.code, 421);
    assert.match(third!.text, /locked out/);
    await c.closedP;

    // same IP, right password of another user: the IP is locked
    const d = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.3' });
    await ehloTls(d);
    const r = await d.login(CAROL.name, CAROL.password);
    assert.equal(r?.code, 421);
    await d.closedP;

    // another IP, right password of the locked user: the username is locked
    const e = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.2' });
    await ehloTls(e);
    assert.equal((await e.login(VICTIM.name, VICTIM.password))?.code, 421);
    e.close();

    // another IP, another user: unaffected
    const f = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.2' });
    await ehloTls(f);
    assert.equal((await f.login(CAROL.name, CAROL.password))?.code, 235);
    f.close();

    assert.equal((await relay.metric('smtp_relay_lockouts_total', { scope: 'ip' })) - lockIp0, 1);
    assert.equal((await relay.metric('smtp_relay_lockouts_total', { scope: 'user' })) - lockUser0, 1);
    assert.ok((await relay.metric('smtp_relay_auth_attempts_total', { mechanism: 'PLAIN', result: 'locked' })) >= 2);
    await relay.waitForLog((l) => l.event === 'lockout' && l.clientIp === '127.0.0.3');
  });

  test('an unknown user is refused like a wrong password and counts towards the lockout', async () => {
    const c = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true, localAddress: '127.0.0.1' });
    await c.cmd('EHLO client.test');
    const r = await c.login('nobody-here', 'whatever');
    assert.equal(r?.code, 535);
    c.close();
    const line = await relay.waitForLog((l) => l.event === 'auth_failure' && l.clientIp === '127.0.0.1');
    assert.equal(line.user, '(unknown user)', 'unknown usernames are not logged (they may be mistyped passwords)');
  });
});

describe('connection floods and broken handshakes', () => {
  test('1,000 connections held from one IP: the per-IP limit holds and the relay keeps serving', async () => {
    const sockets: net.Socket[] = [];
    const first = new Map<net.Socket, string>();
    const N = 1000;
    const started = Date.now();
    for (let i = 0; i < N; i++) {
      const s = net.connect({ host: '127.0.0.1', port: relay.ports.submission, localAddress: '127.0.0.2' });
      s.on('error', () => undefined);
      s.setEncoding('latin1');
      s.once('data', (d: string) => first.set(s, d.slice(0, 3)));
      sockets.push(s);
      if (i % 100 === 99) await delay(20);
    }
    // wait (bounded) until every socket got its first reply or was closed
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && sockets.some((s) => !first.has(s) && !s.destroyed && !s.readableEnded)) await delay(100);
    const greeted = [...first.values()].filter((c) => c === '220').length;
    const refused = [...first.values()].filter((c) => c === '421').length;
    assert.ok(greeted <= 20, `at most 20 sessions from one IP, got ${greeted}`);
    assert.ok(greeted >= 1, 'some sessions were served');
    assert.ok(refused + greeted >= N * 0.95, `the rest were refused with 421 (${refused} refused, ${greeted} greeted)`);

    // while the flood is held: another client is still served
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.1' });
    await ehloTls(c);
    assert.equal((await c.login(CAROL.name, CAROL.password))?.code, 235);
    c.close();
    for (const s of sockets) s.destroy();
    assert.equal(relay.exitCode, null, 'relay still running');
    // every session is accounted for once the clients are gone (no leaked per-IP slots)
    const end = Date.now() + 10_000;
    while (Date.now() < end && (await relay.metric('smtp_relay_active_connections')) > 0) await delay(100);
    assert.equal(await relay.metric('smtp_relay_active_connections'), 0);
    const again = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.2' });
    assert.equal(again.greeting?.code, 220, 'the flooding IP may connect again');
    again.close();
    assert.ok((await relay.metric('smtp_relay_connections_total', { reason: 'too_many_connections_per_ip' })) > 0);
    console.log(`# 1000 connections from one IP: ${greeted} greeted, ${refused} refused with 421, in ${Date.now() - started} ms`);
  });

  test('clients dropping during the TLS handshake (implicit and STARTTLS): the relay survives and counts them', async () => {
    await delay(300);
    const before = await relay.metric('smtp_relay_tls_failures_total');
    for (let i = 0; i < 5; i++) {
      // implicit TLS: half a ClientHello, then gone
      const s = net.connect({ host: '127.0.0.1', port: relay.ports.submissions });
      s.on('error', () => undefined);
      await new Promise((r) => s.once('connect', r));
      s.write(Buffer.from('16030100c4010000c00303', 'hex'));
      await delay(50);
      s.destroy();
      // implicit TLS: a real TLS client aborted mid-handshake
      const t = tls.connect({ host: '127.0.0.1', port: relay.ports.submissions, rejectUnauthorized: false });
      t.on('error', () => undefined);
      t.once('secureConnect', () => t.destroy());
      setImmediate(() => t.destroy());
      // STARTTLS then garbage
      const c = await RawSmtp.connect(relay.ports.submission);
      await c.cmd('EHLO x');
      c.write('STARTTLS\r\n');
      await c.read();
      c.write('not a tls record at all\r\n');
      await delay(50);
      c.close();
    }
    await delay(500);
    assert.equal(relay.exitCode, null, 'relay still running');
    assert.ok((await relay.metric('smtp_relay_tls_failures_total')) > before, 'TLS failures counted');
    const c = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true });
    assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
    c.close();
  });

  test('a message streamed for longer than the idle timeout (but never idle that long) is accepted', async () => {
    const before = sink.messages.length;
    const c = await RawSmtp.connect(relay.ports.submission);
    await ehloTls(c);
    assert.equal((await c.login(CAROL.name, CAROL.password))?.code, 235);
    assert.equal((await c.cmd('MAIL FROM:<carol@example.com>'))?.code, 250);
    assert.equal((await c.cmd('RCPT TO:<r@example.net>'))?.code, 250);
    assert.equal((await c.cmd('DATA'))?.code, 354);
    c.write('From: carol@example.com\r\nSubject: slow\r\n\r\n');
    for (let i = 0; i < 4; i++) {
      await delay(1000); // idleTimeout is 3s; 4s in total
      c.write(`chunk ${i}\r\n`);
    }
    c.write('.\r\n');
    const r = await c.read();
    assert.equal(r?.code, 250, r?.text);
    c.close();
    await sink.waitForMessages(before + 1);
  });

  test('an idle client is closed with 421 after the idle timeout', async () => {
    const c = await RawSmtp.connect(relay.ports.submission);
    const r = await c.read(8000);
    assert.equal(r?.code, 421);
    assert.match(r!.text, /Timeout/i);
    await c.closedP;
  });
});
