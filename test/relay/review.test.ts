// Adversarial cases found in a security review of the relay, against the real relay
// process and a recording upstream on loopback: header injection through the trace
// header, From: parser differentials, lockout and rate-limit bypasses, and the
// implicit-TLS allow-list. Each test failed before its fix.

import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, message, startRelay, tempDir, type RelayProcess, stopAll } from './harness.js';

let pki: Pki;
let sink: Sink;
let relay: RelayProcess;

const ALICE = { name: 'alice', password: 'alice-password-123', allowedSenders: ['alice@example.com'] };
const MALLORY = { name: 'mallory', password: 'mallory-password-123', allowedSenders: ['mallory@example.com'] };
const RATED = { name: 'rated', password: 'rated-password-123', allowedSenders: ['rated@example.com'], rateLimit: { messages: 1, per: '1h' } };

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki });
  relay = await startRelay({
    dir: await tempDir('relay-review-'),
    cert: await pki.issue({ name: 'relay' }),
    users: [ALICE, MALLORY, RATED],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    // 127.0.0.0-3 allowed; 127.0.0.6 is a trusted PROXY peer but not itself allowed
    access: '  allowedCidrs: ["127.0.0.0/30", "::1/128"]\n  proxyProtocol: {trustedCidrs: ["127.0.0.6/32"]}',
    lockout: '{maxFailures: 3, window: 10m, duration: 15m}',
    limits: '{maxMessageSize: 1Mi, maxRecipients: 5, maxConnections: 200, maxConnectionsPerIp: 50, idleTimeout: 30s}',
  });
});

after(() => stopAll(relay, sink, pki));

async function authed(user: { name: string; password: string } = ALICE, localAddress = '127.0.0.1'): Promise<RawSmtp> {
  const c = await RawSmtp.connect(relay.ports.submission, { localAddress });
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  await c.starttls();
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  assert.equal((await c.login(user.name, user.password))?.code, 235);
  return c;
}

/** The header fields of a raw message, unfolded, one string per field. */
function headerFields(raw: Buffer): string[] {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  return text.slice(0, end).split(/\r?\n(?![ \t])/);
}

describe('trace header', () => {
  test('a non-ASCII recipient cannot inject header fields through the Received header', async () => {
    // Each of these code points has a low byte of CR, LF, ':', ' ', '@': a latin1
    // encoding of the trace header would turn them into a header line "From: ceo@bank.com".
    const evil = 'x\u010d\u010aFrom\u013a\u0120ceo\u0140bank.com@example.net';
    const before = sink.messages.length;
    const c = await authed();
    assert.equal((await c.cmd('MAIL FROM:<alice@example.com>'))?.code, 250);
    assert.equal((await c.cmd(`RCPT TO:<${evil}>`))?.code, 250, 'an SMTPUTF8 recipient is relayed');
    assert.equal((await c.cmd('DATA'))?.code, 354);
    c.write(message('alice@example.com', 'someone@example.net') + '.\r\n');
    const done = await c.read();
    assert.equal(done?.code, 250, done?.text);
    await sink.waitForMessages(before + 1);
    const fields = headerFields(sink.messages.at(-1)!.raw);
    const from = fields.filter((f) => /^from\s*:/i.test(f));
    assert.deepEqual(from, ['From: alice@example.com'], `header fields at the upstream: ${JSON.stringify(fields)}`);
    assert.match(fields[0]!, /^Received: from client\.test /);
    assert.ok(!/[^\x20-\x7e\t]/.test(fields[0]!.replace(/\r\n[ \t]/g, '')), `the Received field is one folded ASCII field: ${JSON.stringify(fields[0])}`);
    c.close();
  });
});

/** MAIL FROM, RCPT TO, DATA with the bytes as given; returns the final reply. */
async function send(c: RawSmtp, from: string, data: string) {
  assert.equal((await c.cmd(`MAIL FROM:<${from}>`))?.code, 250);
  assert.equal((await c.cmd('RCPT TO:<rcpt@example.net>'))?.code, 250);
  assert.equal((await c.cmd('DATA'))?.code, 354);
  c.write(data + '.\r\n');
  return c.read();
}

describe('From: header parser differentials', () => {
  test('a From field hidden from the parser, or an address in a display name or comment, is refused', async () => {
    const before = sink.messages.length;
    const c = await authed();
    const refused = [
      // mailsplit drops a first line "From ..." as an mbox separator; other parsers read a From field
      'From : ceo@bank.example\r\nFrom: alice@example.com\r\nSubject: a\r\n\r\nx\r\n',
      'From :\r\n ceo@bank.example\r\nFrom: alice@example.com\r\n\r\nx\r\n',
      // addressparser reads alice only; Python's getaddresses reads a second mailbox
      'From: <alice@example.com> ceo@bank.example\r\n\r\nx\r\n',
      // display name or comment showing another address
      'From: "ceo@bank.example" <alice@example.com>\r\n\r\nx\r\n',
      'From: alice@example.com (ceo@bank.example)\r\n\r\nx\r\n',
      'From: =?utf-8?Q?ceo=40bank.example?= <alice@example.com>\r\n\r\nx\r\n',
      // an encoded-word that decodes to an angle-bracket address
      'From: =?utf-8?Q?=3Cceo=40bank.example=3E?= alice@example.com\r\n\r\nx\r\n',
    ];
    for (const v of refused) {
      const r = await send(c, 'alice@example.com', v);
      assert.equal(r?.code, 550, `${JSON.stringify(v)} -> ${r?.text}`);
    }
    const accepted = [
      'From: Alice <alice@example.com>\r\n\r\nx\r\n',
      'From: "Alice Smith (Example)" <Alice@EXAMPLE.com>\r\n\r\nx\r\n',
      'From: alice@example.com (Alice)\r\n\r\nx\r\n',
      'From: "alice@example.com" <alice@example.com>\r\n\r\nx\r\n',
      'From: =?utf-8?Q?Al=C3=AFce?= <alice@example.com>\r\n\r\nx\r\n',
    ];
    for (const v of accepted) {
      const r = await send(c, 'alice@example.com', v);
      assert.equal(r?.code, 250, `${JSON.stringify(v)} -> ${r?.text}`);
    }
    c.close();
    await sink.waitForMessages(before + accepted.length);
    assert.equal(sink.messages.length, before + accepted.length);
  });
});

describe('brute-force lockout', () => {
  test('a successful login with an own account does not reset the failures counted for the client IP', async () => {
    // Password spraying: 2 guesses (maxFailures is 3), a login with an account the
    // attacker owns, 2 more guesses ... Each guess is against another username, so
    // only the per-IP count can stop it.
    const ip = '127.0.0.2';
    const attempt = async (user: string, password: string) => {
      const c = await RawSmtp.connect(relay.ports.submission, { localAddress: ip });
      assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
      await c.starttls();
      assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
      const r = await c.login(user, password);
      c.close();
      return r?.code;
    };
    assert.equal(await attempt('spray-1', 'guess'), 535);
    assert.equal(await attempt('spray-2', 'guess'), 535);
    assert.equal(await attempt(MALLORY.name, MALLORY.password), 235);
    assert.equal(await attempt('spray-3', 'guess'), 421, 'the third failure from this IP within the window starts the lockout');
    assert.equal(await attempt(MALLORY.name, MALLORY.password), 421, 'the IP is locked');
    await relay.waitForLog((l) => l.event === 'lockout' && l.clientIp === ip);
  });
});

describe('rate limit', () => {
  test('parallel sessions cannot send more than the limit (checked again when the message is complete)', async () => {
    const before = sink.messages.length;
    const a = await authed(RATED, '127.0.0.3');
    const b = await authed(RATED, '127.0.0.3');
    // both transactions pass MAIL FROM while nothing has been sent yet
    for (const c of [a, b]) {
      assert.equal((await c.cmd('MAIL FROM:<rated@example.com>'))?.code, 250);
      assert.equal((await c.cmd('RCPT TO:<rcpt@example.net>'))?.code, 250);
      assert.equal((await c.cmd('DATA'))?.code, 354);
    }
    a.write(message('rated@example.com', 'rcpt@example.net') + '.\r\n');
    assert.equal((await a.read())?.code, 250);
    b.write(message('rated@example.com', 'rcpt@example.net') + '.\r\n');
    const second = await b.read();
    assert.equal(second?.code, 451, second?.text);
    assert.match(second!.text, /4\.7\.1 .*try again in \d+ seconds/);
    a.close();
    b.close();
    await sink.waitForMessages(before + 1);
    assert.equal(sink.messages.length, before + 1, 'one message for a limit of one per hour');
  });
});

/** Opens a TLS connection to the implicit listener; resolves with the first reply, or with the error if no handshake. */
function implicitTls(localAddress: string, proxyLine?: string): Promise<{ handshake: boolean; reply?: string; error?: string }> {
  return new Promise((resolve) => {
    const raw = net.connect({ host: '127.0.0.1', port: relay.ports.submissions, localAddress }, () => {
      if (proxyLine) raw.write(proxyLine);
      let handshake = false;
      const t = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' }, () => (handshake = true));
      let data = '';
      const timer = setTimeout(() => finish('timeout'), 10_000);
      const finish = (error?: string) => {
        clearTimeout(timer);
        t.destroy();
        resolve({ handshake, ...(data ? { reply: data } : {}), ...(error ? { error } : {}) });
      };
      t.setEncoding('latin1');
      t.on('data', (d: string) => {
        data += d;
        if (data.includes('\r\n')) finish();
      });
      t.on('error', (err) => finish(err.message));
      t.on('close', () => finish('closed'));
    });
    raw.on('error', (err) => resolve({ handshake: false, error: err.message }));
  });
}

describe('implicit-TLS listener allow-list', () => {
  test('a client outside the allow-list is dropped before the TLS handshake; a trusted PROXY peer still gets through', async () => {
    const refused0 = await relay.metric('smtp_relay_connections_total', { listener: 'submissions', result: 'rejected', reason: 'ip_not_allowed' });
    const handshakes0 = await relay.metric('smtp_relay_tls_handshakes_total', { listener: 'submissions' });
    const out = await implicitTls('127.0.0.5');
    assert.equal(out.handshake, false, `no TLS handshake for a refused address: ${JSON.stringify(out)}`);
    assert.equal(out.reply, undefined);
    assert.equal((await relay.metric('smtp_relay_connections_total', { listener: 'submissions', result: 'rejected', reason: 'ip_not_allowed' })) - refused0, 1);
    assert.equal(await relay.metric('smtp_relay_tls_handshakes_total', { listener: 'submissions' }), handshakes0);
    await relay.waitForLog((l) => l.event === 'connection_refused' && l.clientIp === '127.0.0.5' && l.listener === 'submissions');

    // an allowed client behind the trusted proxy (itself not in the allow-list) is served
    const ok = await implicitTls('127.0.0.6', 'PROXY TCP4 127.0.0.2 127.0.0.1 40000 465\r\n');
    assert.ok(ok.handshake && /^220 /.test(ok.reply ?? ''), JSON.stringify(ok));
    // a refused client behind it gets the 554 after the handshake (its address is in the header)
    const no = await implicitTls('127.0.0.6', 'PROXY TCP4 127.0.0.9 127.0.0.1 40000 465\r\n');
    assert.ok(no.handshake && /^554 /.test(no.reply ?? ''), JSON.stringify(no));
    // allowed clients are unaffected
    const direct = await implicitTls('127.0.0.1');
    assert.ok(direct.handshake && /^220 /.test(direct.reply ?? ''), JSON.stringify(direct));
  });
});

describe('implicit-TLS pending handshakes', () => {
  test('one address cannot fill every pending-handshake slot: the per-IP limit covers handshakes too', async () => {
    // harness limits: maxConnections 200, maxConnectionsPerIp 50. 220 silent TCP
    // connections from one address would otherwise take all of smtp-server's pending slots.
    const sockets: net.Socket[] = [];
    const refused0 = await relay.metric('smtp_relay_connections_total', { listener: 'submissions', reason: 'too_many_connections_per_ip' });
    try {
      for (let i = 0; i < 220; i++) {
        const s = net.connect({ host: '127.0.0.1', port: relay.ports.submissions, localAddress: '127.0.0.3' });
        s.on('error', () => undefined);
        sockets.push(s);
        if (i % 50 === 49) await new Promise((r) => setTimeout(r, 50));
      }
      await Promise.all(sockets.map((s) => new Promise((r) => (s.connecting ? s.once('connect', r).once('close', r) : r(null)))));
      await new Promise((r) => setTimeout(r, 300));
      const open = sockets.filter((s) => !s.destroyed && !s.readableEnded).length;
      assert.ok(open <= 50 + 5, `at most the per-IP limit held open, got ${open}`);
      assert.ok((await relay.metric('smtp_relay_connections_total', { listener: 'submissions', reason: 'too_many_connections_per_ip' })) - refused0 >= 150);
      const other = await implicitTls('127.0.0.1');
      assert.ok(other.handshake && /^220 /.test(other.reply ?? ''), `another client is served: ${JSON.stringify(other)}`);
    } finally {
      for (const s of sockets) s.destroy();
    }
  });
});

describe('header parsing cost', () => {
  test('a header block of many folded lines is parsed in linear time (the relay does not stall)', async () => {
    const before = sink.messages.length;
    const c = await authed();
    // ~300 KB of continuation lines in one unrelated field, then a valid From
    const bigField = 'From: alice@example.com\r\nX-Big: a' + '\r\n a'.repeat(75_000) + '\r\nSubject: big\r\n\r\nbody\r\n';
    let t = performance.now();
    const r1 = await send(c, 'alice@example.com', bigField);
    const ms1 = performance.now() - t;
    assert.equal(r1?.code, 250, r1?.text);
    // ~250 KB of From: field, folded into 12,000 lines
    const bigFrom = 'From: alice@example.com' + ',\r\n alice@example.com'.repeat(12_000) + '\r\n\r\nbody\r\n';
    t = performance.now();
    const r2 = await send(c, 'alice@example.com', bigFrom);
    const ms2 = performance.now() - t;
    assert.equal(r2?.code, 550, r2?.text);
    assert.match(r2!.text, /From/);
    console.log(`# 300 KB folded header: ${ms1.toFixed(0)} ms; 250 KB From field: ${ms2.toFixed(0)} ms`);
    assert.ok(ms1 < 3000 && ms2 < 3000, `answered in ${ms1.toFixed(0)} ms and ${ms2.toFixed(0)} ms`);
    c.close();
    await sink.waitForMessages(before + 1);
  });
});

describe('other originator fields', () => {
  test('Sender:, Resent-From: and Resent-Sender: are held to the allowed senders too', async () => {
    const before = sink.messages.length;
    const c = await authed();
    const refused = [
      // Outlook shows "ceo@bank.example on behalf of alice@example.com"
      'From: alice@example.com\r\nSender: ceo@bank.example\r\n\r\nx\r\n',
      'From: alice@example.com\r\nResent-From: CEO <ceo@bank.example>\r\n\r\nx\r\n',
      'From: alice@example.com\r\nresent-sender:\r\n ceo@bank.example\r\n\r\nx\r\n',
      'From: alice@example.com\r\nSender: nobody\r\n\r\nx\r\n',
    ];
    for (const v of refused) {
      const r = await send(c, 'alice@example.com', v);
      assert.equal(r?.code, 550, `${JSON.stringify(v)} -> ${r?.text}`);
    }
    const ok = await send(c, 'alice@example.com', 'From: Alice <alice@example.com>\r\nSender: alice@example.com\r\nReply-To: help@elsewhere.example\r\n\r\nx\r\n');
    assert.equal(ok?.code, 250, ok?.text);
    c.close();
    await sink.waitForMessages(before + 1);
    assert.equal(sink.messages.length, before + 1);
  });
});

describe('AUTH PLAIN authorization identity', () => {
  test('authzid naming another user is refused; empty or equal authzid works', async () => {
    const plain = (authzid: string, authcid: string, pass: string) => `AUTH PLAIN ${Buffer.from(`${authzid}\0${authcid}\0${pass}`).toString('base64')}`;
    const session = async () => {
      const c = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true, localAddress: '127.0.0.1' });
      assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
      return c;
    };
    let c = await session();
    const r = await c.cmd(plain(MALLORY.name, ALICE.name, ALICE.password));
    assert.equal(r?.code, 535, `act as mallory with alice's password: ${r?.text}`);
    c.close();
    c = await session();
    assert.equal((await c.cmd(plain(ALICE.name, ALICE.name, ALICE.password)))?.code, 235);
    c.close();
    c = await session();
    assert.equal((await c.cmd(plain(ALICE.name, '', ALICE.password)))?.code, 235, 'name in authzid only (client quirk)');
    c.close();
  });
});

describe('malformed PROXY headers from the trusted peer', () => {
  test('garbage, overlong, a bad v2 header, bad addresses: each connection is closed, the relay keeps serving', async () => {
    const lines: (string | Buffer)[] = [
      'PROXY\r\n',
      'PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n',
      'PROXY TCP4 127.0.0.2\r\nX\r\n',
      'PROXY TCP4 127.0.0.2\r\n127.0.0.1 40000 587\r\n'.replace('\r\n', '\r\r\n'),
      'PROXY TCP6 ::ffff:127.0.0.9 ::1 1 2\r\n',
      'HELO x\r\n',
      'PROXY ' + 'A'.repeat(5000) + '\r\n',
      // PROXY v2 with version nibble 1 (a valid v2 header is served: test/relay/proxy-v2.test.ts)
      Buffer.from('0d0a0d0a000d0a515549540a1111000c7f0000027f00000109c4024b', 'hex'),
      'PROXY TCP4 127.0.0.2 127.0.0.1 40000 587', // never finished; closed by the client
    ];
    for (const [port, name] of [[relay.ports.submission, 'starttls'], [relay.ports.submissions, 'implicit']] as const) {
      for (const l of lines) {
        const s = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.6' });
        s.on('error', () => undefined);
        await new Promise((r) => s.once('connect', r));
        s.write(l);
        let got = '';
        s.setEncoding('latin1');
        s.on('data', (d: string) => (got += d));
        const closed = await Promise.race([new Promise((r) => s.once('close', () => r(true))), new Promise((r) => setTimeout(() => r(false), 1500))]);
        s.destroy();
        assert.ok(!/^220 /.test(got), `${name} ${JSON.stringify(l.toString().slice(0, 40))}: no SMTP session (${JSON.stringify(got.slice(0, 60))}, closed=${closed})`);
      }
    }
    assert.equal(relay.exitCode, null, 'relay still running');
    const ok = await implicitTls('127.0.0.6', 'PROXY TCP4 127.0.0.2 127.0.0.1 40000 465\r\n');
    assert.ok(ok.handshake && /^220 /.test(ok.reply ?? ''), JSON.stringify(ok));
  });
});
