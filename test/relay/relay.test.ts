// The relay process end to end: real clients (nodemailer, swaks, openssl s_client,
// raw sockets) -> relay -> a recording upstream on loopback. One relay for the file.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, message, startRelay, tempDir, type RelayProcess, stopAll } from './harness.js';

const run = promisify(execFile);

let pki: Pki;
let sink: Sink;
let relay: RelayProcess;
let dir: string;

const ALICE = { name: 'alice', password: 'correct horse battery staple', allowedSenders: ['alice@example.com', '*@billing.example.com'] };
const FRANK = { name: 'frank', password: 'frank-password-123', allowedSenders: ['frank@example.com'], strongHash: true };
const BOB = { name: 'bob', password: 'bob-password-123456', allowedSenders: ['bob@example.org'], rateLimit: { messages: 2, per: '1h' } };

before(async () => {
  dir = await tempDir('relay-test-');
  pki = await createPki();
  const cert = await pki.issue({ name: 'relay' });
  sink = await startSink({ pki });
  relay = await startRelay({ dir, cert, users: [FRANK, ALICE, BOB], upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile } });
});

after(() => stopAll(relay, sink, pki));

/** An authenticated session over STARTTLS, ready for MAIL FROM. */
async function authed(user = ALICE): Promise<RawSmtp> {
  const c = await RawSmtp.connect(relay.ports.submission);
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  await c.starttls();
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  assert.equal((await c.login(user.name, user.password))?.code, 235);
  return c;
}

/** Sends DATA bytes as given (no dot-stuffing, no line-ending fixes) and returns the final reply. */
async function rawData(c: RawSmtp, from: string, to: string, data: string | Buffer) {
  assert.equal((await c.cmd(`MAIL FROM:<${from}>`))?.code, 250);
  assert.equal((await c.cmd(`RCPT TO:<${to}>`))?.code, 250);
  assert.equal((await c.cmd('DATA'))?.code, 354);
  c.write(data);
  return c.read();
}

describe('listeners and TLS', () => {
  test('before STARTTLS: AUTH is not advertised, AUTH and MAIL are refused, VRFY is unknown', async () => {
    const c = await RawSmtp.connect(relay.ports.submission);
    const ehlo = await c.cmd('EHLO client.test');
    assert.equal(ehlo?.code, 250);
    assert.match(ehlo!.text, /STARTTLS/);
    assert.doesNotMatch(ehlo!.text, /AUTH/);
    assert.match(ehlo!.text, /SIZE 65536/);
    const auth = await c.login(ALICE.name, ALICE.password);
    assert.ok(auth && auth.code >= 500, `AUTH before TLS: ${auth?.text}`);
    assert.equal((await c.cmd('MAIL FROM:<alice@example.com>'))?.code, 530);
    assert.equal((await c.cmd('RCPT TO:<x@example.net>'))?.code, 503);
    assert.ok(((await c.cmd('DATA'))?.code ?? 0) >= 500);
    assert.equal((await c.cmd('VRFY alice'))?.code, 500);
    assert.equal((await c.cmd('NOOP'))?.code, 250);
    assert.equal((await c.cmd('RSET'))?.code, 250);
    assert.equal((await c.cmd('QUIT'))?.code, 221);
    c.close();
    assert.equal(sink.messages.length, 0);
  });

  test('a client that keeps talking in plaintext is closed after 10 commands', async () => {
    const c = await RawSmtp.connect(relay.ports.submission);
    const codes: number[] = [];
    for (let i = 0; i < 12 && !c.closed; i++) codes.push((await c.cmd('NOOP'))?.code ?? 0);
    assert.deepEqual(codes.slice(0, 10), Array(10).fill(250));
    assert.equal(codes[10], 421);
    await c.closedP;
    assert.ok((await relay.metric('smtp_relay_rejections_total', { reason: 'too_many_plaintext_commands' })) >= 1);
  });

  test('after STARTTLS AUTH is advertised; without AUTH nothing is accepted (both listeners)', async () => {
    const c = await RawSmtp.connect(relay.ports.submission);
    await c.cmd('EHLO client.test');
    await c.starttls();
    const ehlo = await c.cmd('EHLO client.test');
    assert.match(ehlo!.text, /AUTH PLAIN LOGIN/);
    assert.doesNotMatch(ehlo!.text, /STARTTLS/);
    assert.equal((await c.cmd('MAIL FROM:<alice@example.com>'))?.code, 530);
    assert.equal((await c.cmd('RCPT TO:<x@example.net>'))?.code, 530);
    assert.equal((await c.cmd('DATA'))?.code, 530);
    c.close();

    const i = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true });
    const e2 = await i.cmd('EHLO client.test');
    assert.match(e2!.text, /AUTH PLAIN LOGIN/);
    assert.doesNotMatch(e2!.text, /STARTTLS/);
    assert.equal((await i.cmd('MAIL FROM:<alice@example.com>'))?.code, 530);
    assert.equal((await i.cmd('RCPT TO:<x@example.net>'))?.code, 530);
    i.close();
    assert.equal(sink.messages.length, 0);
  });

  test('commands pipelined after STARTTLS in the same packet are not executed', async () => {
    const c = await RawSmtp.connect(relay.ports.submission);
    await c.cmd('EHLO client.test');
    // STARTTLS plus injected commands in one write
    c.write('STARTTLS\r\nAUTH PLAIN ' + Buffer.from(`\0alice\0${ALICE.password}`).toString('base64') + '\r\nMAIL FROM:<alice@example.com>\r\n');
    const r = await c.read();
    assert.equal(r?.code, 220);
    // hand-rolled upgrade: the client state machine must see no more plaintext replies
    const tlsMod = await import('node:tls');
    const raw = c.socket;
    raw.removeAllListeners('data');
    const s = await new Promise<import('node:tls').TLSSocket>((resolve, reject) => {
      const t = tlsMod.connect({ socket: raw, rejectUnauthorized: false }, () => resolve(t));
      t.once('error', reject);
    });
    const got: string[] = [];
    s.setEncoding('latin1');
    s.on('data', (d: string) => got.push(d));
    s.write('EHLO client.test\r\nMAIL FROM:<alice@example.com>\r\n');
    await new Promise((r) => setTimeout(r, 400));
    // exactly one reply per command sent inside TLS: the injected AUTH and MAIL produced
    // nothing, and the MAIL sent inside TLS is refused for lack of AUTH
    const replies = got.join('').split('\r\n').filter((l) => /^\d{3} /.test(l));
    assert.deepEqual(replies.map((l) => l.slice(0, 3)), ['250', '530'], got.join(''));
    s.destroy();
  });

  test('TLS 1.1 is refused, TLS 1.2 uses an AEAD cipher, no compression or renegotiation', async () => {
    const tlsMod = await import('node:tls');
    await assert.rejects(
      new Promise((resolve, reject) => {
        const s = tlsMod.connect({ host: '127.0.0.1', port: relay.ports.submissions, rejectUnauthorized: false, maxVersion: 'TLSv1.1', minVersion: 'TLSv1' }, () => resolve(s));
        s.once('error', reject);
      }),
    );
    const out = await opensslSession(['-connect', `127.0.0.1:${relay.ports.submissions}`, '-tls1_2'], 'QUIT\r\n');
    assert.match(out, /Protocol *: TLSv1\.2/);
    assert.match(out, /Cipher *: ECDHE-(ECDSA|RSA)-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)/);
    assert.match(out, /Compression: NONE/);
    // a TLS 1.2 client asking to renegotiate is refused (the server sends a no_renegotiation alert)
    const s12 = await new Promise<import('node:tls').TLSSocket>((resolve, reject) => {
      const s = tlsMod.connect({ host: '127.0.0.1', port: relay.ports.submissions, rejectUnauthorized: false, maxVersion: 'TLSv1.2' }, () => resolve(s));
      s.once('error', reject);
    });
    const renegError = new Promise<string>((resolve) => {
      s12.on('error', (e) => resolve(e.message));
      s12.on('close', () => resolve('closed'));
    });
    await new Promise((r) => setTimeout(r, 200));
    s12.renegotiate({ rejectUnauthorized: false }, () => undefined);
    assert.match(await renegError, /no renegotiation|closed/);
    s12.destroy();
    const weak = await opensslSession(['-connect', `127.0.0.1:${relay.ports.submissions}`, '-tls1_2', '-cipher', 'AES128-SHA'], 'QUIT\r\n');
    assert.doesNotMatch(weak, /Cipher *: AES128-SHA/);
  });

  test('openssl s_client -starttls smtp: certificate served, AUTH offered inside TLS', async () => {
    const out = await opensslSession(['-connect', `127.0.0.1:${relay.ports.submission}`, '-starttls', 'smtp', '-CAfile', pki.ca.certFile, '-verify_return_error'], 'EHLO client.test\r\nQUIT\r\n');
    assert.match(out, /Verify return code: 0 \(ok\)/);
    assert.match(out, /250-AUTH PLAIN LOGIN/);
    assert.match(out, /221 /);
  });
});

/** Runs openssl s_client with input; resolves with stdout+stderr. */
function opensslSession(args: string[], input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn('openssl', ['s_client', ...args, '-ign_eof'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', (e) => reject(new Error(`openssl not runnable (apt-get install openssl): ${e.message}`)));
    const t = setTimeout(() => p.kill(), 10_000);
    p.on('exit', () => {
      clearTimeout(t);
      resolve(out);
    });
    // give the handshake a moment, then talk, then let -ign_eof end on QUIT
    setTimeout(() => {
      p.stdin.write(input);
      setTimeout(() => p.stdin.end(), 1500);
    }, 700);
  });
}

describe('delivery', () => {
  test('nodemailer over STARTTLS and implicit TLS: delivered with a Received header, bytes unchanged', async () => {
    for (const [port, secure] of [
      [relay.ports.submission, false],
      [relay.ports.submissions, true],
    ] as const) {
      const before = sink.messages.length;
      const t = nodemailer.createTransport({ host: '127.0.0.1', port, secure, requireTLS: !secure, auth: { user: ALICE.name, pass: ALICE.password }, tls: { ca: pki.ca.certPem, servername: 'localhost' } });
      const raw = message('Alice <alice@example.com>', 'rcpt@example.net', `via ${secure ? 'implicit' : 'starttls'}`, 'line 1\r\n.leading dot\r\nline 3');
      const info = await t.sendMail({ envelope: { from: 'alice@example.com', to: ['rcpt@example.net'] }, raw });
      t.close();
      assert.match(info.response, /^250 /);
      const [m] = (await sink.waitForMessages(before + 1)).slice(before);
      assert.equal(m!.mailFrom, 'alice@example.com');
      assert.deepEqual(m!.rcptTo, ['rcpt@example.net']);
      const text = m!.raw.toString('latin1');
      assert.match(text, /^Received: from [^\r\n]+\r\n\tby relay\.test\.example with ESMTPSA \(TLSv1\.3, cipher=TLS_/);
      assert.match(text, /\tfor <rcpt@example\.net>;\r\n\t\w{3}, /);
      const end = text.indexOf(';\r\n\t') + 3;
      const afterReceived = text.slice(text.indexOf('\r\n', end) + 2);
      assert.equal(afterReceived, raw, 'message bytes after the Received header are unchanged');
    }
  });

  test('swaks with AUTH LOGIN over STARTTLS', async () => {
    const before = sink.messages.length;
    const { stdout } = await run(
      'swaks',
      ['--server', '127.0.0.1', '--port', String(relay.ports.submission), '--tls', '--auth', 'LOGIN', '--auth-user', ALICE.name, '--auth-password', ALICE.password,
        '--from', 'ops@billing.example.com', '--to', 'rcpt@example.net', '--header', 'From: ops@billing.example.com', '--helo', 'swaks.test', '--tls-verify', '--tls-ca-path', pki.ca.certFile],
      { timeout: 20_000 },
    ).catch((e: Error & { stdout?: string; code?: string }) => {
      if (e.code === 'ENOENT') throw new Error('swaks not found: apt-get install swaks');
      return { stdout: e.stdout ?? String(e) };
    });
    assert.match(stdout, /<~ {2}250 2\.0\.0 Ok: relayed/);
    await sink.waitForMessages(before + 1);
  });

  test('upstream refusing one recipient: never 250, the client hears the refusal', async () => {
    sink.behaviour.refuseRecipients = ['bad@example.net'];
    try {
      const c = await authed();
      assert.equal((await c.cmd('MAIL FROM:<alice@example.com>'))?.code, 250);
      assert.equal((await c.cmd('RCPT TO:<good@example.net>'))?.code, 250);
      assert.equal((await c.cmd('RCPT TO:<bad@example.net>'))?.code, 250);
      assert.equal((await c.cmd('DATA'))?.code, 354);
      c.write(message('alice@example.com', 'good@example.net') + '.\r\n');
      const r = await c.read();
      assert.ok(r && r.code >= 500, `reply after DATA: ${r?.text}`);
      assert.match(r!.text, /bad@example\.net/);
      c.close();
    } finally {
      sink.behaviour.refuseRecipients = [];
    }
  });

  test('upstream temporarily failing: 451, nothing claimed delivered', async () => {
    sink.behaviour.tempFailAll = true;
    try {
      const c = await authed();
      const r = await rawData(c, 'alice@example.com', 'rcpt@example.net', message('alice@example.com', 'rcpt@example.net') + '.\r\n');
      assert.equal(r?.code, 451, r?.text);
      c.close();
    } finally {
      sink.behaviour.tempFailAll = false;
    }
  });
});

describe('sender enforcement', () => {
  test('MAIL FROM outside the allowed senders: 553 5.7.1', async () => {
    const c = await authed();
    const r = await c.cmd('MAIL FROM:<ceo@example.com>');
    assert.equal(r?.code, 553);
    assert.match(r!.text, /5\.7\.1/);
    assert.equal((await c.cmd('MAIL FROM:<>'))?.code, 553);
    c.close();
  });

  test('From: header differing from an allowed MAIL FROM: 550 5.7.1, not delivered', async () => {
    const before = sink.messages.length;
    const c = await authed();
    const variants = [
      message('"alice@example.com" <ceo@example.com>', 'rcpt@example.net'),
      message('alice@example.com, ceo@example.com', 'rcpt@example.net'),
      'From: alice@example.com\r\nFrom: ceo@example.com\r\nSubject: two\r\n\r\nx\r\n',
      'From: =?utf-8?Q?Alice?= <ceo@example.com>\r\nSubject: encoded\r\n\r\nx\r\n',
      'Subject: no from\r\n\r\nx\r\n',
      'From: alice@example.com\r\n (folded) <ceo@example.com>\r\n\r\nx\r\n',
      'From: =?utf-8?Q?=22?= <ceo@example.com> =?utf-8?Q?=22?= alice@example.com\r\n\r\nx\r\n',
    ];
    for (const v of variants) {
      const r = await rawData(c, 'alice@example.com', 'rcpt@example.net', v + '.\r\n');
      assert.equal(r?.code, 550, `${JSON.stringify(v)} -> ${r?.text}`);
    }
    // a From: only in the body is not a header
    const ok = await rawData(c, 'alice@example.com', 'rcpt@example.net', 'From: alice@example.com\r\nSubject: ok\r\n\r\nFrom: ceo@example.com\r\n.\r\n');
    assert.equal(ok?.code, 250, ok?.text);
    c.close();
    await sink.waitForMessages(before + 1);
    assert.equal(sink.messages.length, before + 1);
    assert.ok((await relay.metric('smtp_relay_rejections_total', { reason: 'sender_not_allowed' })) >= 6);
  });
});

describe('SMTP smuggling', () => {
  const variants: [string, string][] = [
    ['\\n.\\n', 'From: alice@example.com\r\nSubject: a\r\n\r\nfirst\n.\nMAIL FROM:<ceo@example.com>\r\n'],
    ['\\r\\n.\\n', 'From: alice@example.com\r\nSubject: b\r\n\r\nfirst\r\n.\nMAIL FROM:<ceo@example.com>\r\n'],
    ['\\n.\\r\\n', 'From: alice@example.com\r\nSubject: c\r\n\r\nfirst\n.\r\nMAIL FROM:<ceo@example.com>\r\n'],
    ['\\r.\\r', 'From: alice@example.com\r\nSubject: d\r\n\r\nfirst\r.\rMAIL FROM:<ceo@example.com>\r\n'],
    ['bare LF in a header', 'From: alice@example.com\nSubject: e\r\n\r\nbody\r\n'],
  ];
  test('bare LF / bare CR variants are refused with 550 and counted', async () => {
    const before = sink.messages.length;
    const lf0 = await relay.metric('smtp_relay_rejections_total', { reason: 'bare_lf' });
    const cr0 = await relay.metric('smtp_relay_rejections_total', { reason: 'bare_cr' });
    const c = await authed();
    for (const [name, data] of variants) {
      const r = await rawData(c, 'alice@example.com', 'rcpt@example.net', data + '.\r\n');
      assert.equal(r?.code, 550, `${name}: ${r?.text}`);
      assert.match(r!.text, /bare (LF|CR)/);
    }
    // the session is still in sync: a clean message goes through
    const ok = await rawData(c, 'alice@example.com', 'rcpt@example.net', message('alice@example.com', 'rcpt@example.net') + '.\r\n');
    assert.equal(ok?.code, 250, ok?.text);
    c.close();
    await sink.waitForMessages(before + 1);
    assert.equal(sink.messages.length, before + 1, 'no smuggled message reached the upstream');
    assert.equal((await relay.metric('smtp_relay_rejections_total', { reason: 'bare_lf' })) - lf0, 4);
    assert.equal((await relay.metric('smtp_relay_rejections_total', { reason: 'bare_cr' })) - cr0, 1);
  });
});

describe('limits and malformed input', () => {
  test('oversized message: 552, not delivered', async () => {
    const before = sink.messages.length;
    const c = await authed();
    const big = 'From: alice@example.com\r\n\r\n' + ('x'.repeat(998) + '\r\n').repeat(80) + '.\r\n';
    const r = await rawData(c, 'alice@example.com', 'rcpt@example.net', big);
    assert.equal(r?.code, 552, r?.text);
    assert.equal((await c.cmd('MAIL FROM:<alice@example.com> SIZE=999999'))?.code, 552);
    c.close();
    assert.equal(sink.messages.length, before);
  });

  test('a client dropping in the middle of DATA: nothing is delivered', async () => {
    const before = sink.messages.length;
    const c = await authed();
    assert.equal((await c.cmd('MAIL FROM:<alice@example.com>'))?.code, 250);
    assert.equal((await c.cmd('RCPT TO:<rcpt@example.net>'))?.code, 250);
    assert.equal((await c.cmd('DATA'))?.code, 354);
    c.write('From: alice@example.com\r\nSubject: cut\r\n\r\nhalf a mess');
    await new Promise((r) => setTimeout(r, 100));
    c.close();
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(sink.messages.length, before);
  });

  test('more recipients than maxRecipients: 452', async () => {
    const c = await authed();
    assert.equal((await c.cmd('MAIL FROM:<alice@example.com>'))?.code, 250);
    for (let i = 0; i < 5; i++) assert.equal((await c.cmd(`RCPT TO:<r${i}@example.net>`))?.code, 250);
    const r = await c.cmd('RCPT TO:<r6@example.net>');
    assert.equal(r?.code, 452);
    c.close();
  });

  test('per-user rate limit: 451 4.7.1 with a retry hint', async () => {
    const c = await authed(BOB);
    for (let i = 0; i < 2; i++) {
      const r = await rawData(c, 'bob@example.org', 'rcpt@example.net', message('bob@example.org', 'rcpt@example.net') + '.\r\n');
      assert.equal(r?.code, 250, r?.text);
    }
    const r = await c.cmd('MAIL FROM:<bob@example.org>');
    assert.equal(r?.code, 451);
    assert.match(r!.text, /4\.7\.1 .*try again in \d+ seconds/);
    c.close();
  });

  test('an unknown user takes as long to refuse as a wrong password', async () => {
    const c = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true });
    await c.cmd('EHLO client.test');
    const timeLogin = async (user: string) => {
      const t = process.hrtime.bigint();
      const r = await c.login(user, 'wrong-password');
      assert.equal(r?.code, 535);
      return Number(process.hrtime.bigint() - t) / 1e6;
    };
    const wrong: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < 5; i++) {
      wrong.push(await timeLogin(FRANK.name));
      unknown.push(await timeLogin(`ghost${i}`));
    }
    c.close();
    const median = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
    const [w, u] = [median(wrong), median(unknown)];
    console.log(`# AUTH refusal median: wrong password ${w.toFixed(1)} ms, unknown user ${u.toFixed(1)} ms`);
    assert.ok(w > 10, 'the production scrypt cost is paid');
    assert.ok(u > w * 0.6 && u < w * 1.6, `unknown user ${u.toFixed(1)} ms vs wrong password ${w.toFixed(1)} ms`);
  });

  test('overlong command line, NUL bytes, malformed AUTH base64: refused, relay still serves', async () => {
    const c = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true });
    await c.cmd('EHLO client.test');
    const long = await c.cmd('NOOP ' + 'A'.repeat(20_000));
    assert.ok(!long || long.code >= 400, `overlong line: ${long?.text}`);
    c.close();

    const d = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true });
    await d.cmd('EHLO client.test');
    const nul = await d.cmd('MAIL FROM:<alice\0@example.com>');
    assert.ok(nul && nul.code >= 500, `NUL: ${nul?.text}`);
    const b1 = await d.cmd('AUTH PLAIN %%%not-base64%%%');
    assert.ok(b1 && b1.code >= 500, `bad base64: ${b1?.text}`);
    const b2 = await d.cmd('AUTH LOGIN');
    assert.equal(b2?.code, 334);
    const b3 = await d.cmd('@@@@');
    assert.ok(b3 && (b3.code === 334 || b3.code >= 500), `bad base64 username: ${b3?.text}`);
    if (b3?.code === 334) {
      const b4 = await d.cmd('!!!!');
      assert.ok(b4 && b4.code >= 500, b4?.text);
    }
    // NUL inside message data
    assert.equal((await d.login(ALICE.name, ALICE.password))?.code, 235);
    const nulData = await rawData(d, 'alice@example.com', 'rcpt@example.net', 'From: alice@example.com\r\n\r\nbin\0ary\r\n.\r\n');
    assert.equal(nulData?.code, 550, nulData?.text);
    assert.match(nulData!.text, /NUL byte/);
    d.close();
    // still alive
    const e = await authed();
    e.close();
  });

  test('metrics endpoint, health and readiness', async () => {
    const text = await relay.metricsText();
    for (const name of [
      'smtp_relay_connections_total',
      'smtp_relay_active_connections',
      'smtp_relay_tls_handshakes_total',
      'smtp_relay_certificate_expiry_timestamp_seconds',
      'smtp_relay_auth_attempts_total',
      'smtp_relay_messages_total',
      'smtp_relay_message_bytes_total',
      'smtp_relay_rejections_total',
      'smtp_relay_upstream_duration_seconds',
    ]) {
      assert.match(text, new RegExp(`^${name}`, 'm'), name);
    }
    assert.match(text, /smtp_relay_tls_handshakes_total\{listener="submission",version="TLSv1\.3",cipher="TLS_AES_256_GCM_SHA384"\} \d+/);
    assert.ok((await relay.metric('smtp_relay_certificate_expiry_timestamp_seconds')) > Date.now() / 1000);
    assert.equal((await fetch(`http://127.0.0.1:${relay.ports.metrics}/healthz`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${relay.ports.metrics}/readyz`)).status, 200);
    // no secrets in logs (the relay writes its lines in order: once a message line is read, the logins' lines before it are too)
    const msg = await relay.waitForLog((l) => l.event === 'message' && l.result === 'accepted');
    const all = JSON.stringify(relay.logs);
    assert.ok(!all.includes(ALICE.password) && !all.includes(BOB.password), 'passwords never logged');
    assert.ok(!all.includes(Buffer.from(`\0alice\0${ALICE.password}`).toString('base64')), 'AUTH payloads never logged');
    for (const k of ['session', 'clientIp', 'tlsVersion', 'cipher', 'user', 'mailFrom', 'recipients', 'size', 'result', 'upstreamReply']) assert.ok(k in msg!, `message log has ${k}`);
  });
});
