import tls from 'node:tls';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { buildSettings, classifyError, dataPayload, sanitizeReply } from '../../../relay/upstream.js';

const rcpt = ['a@example.net', 'b@example.net'];
const err = (props: Record<string, unknown>) => Object.assign(new Error('x'), props);

describe('classifying upstream failures', () => {
  it('all recipients refused with 550 is permanent and lists them', () => {
    const r = err({ code: 'EENVELOPE', command: 'RCPT TO', responseCode: 550, rejected: rcpt, rejectedErrors: rcpt.map((r) => err({ responseCode: 550, response: `550 5.1.1 <${r}> unknown` })) });
    const { outcome, kind } = classifyError(r, rcpt);
    assert.equal(kind, 'recipient_refused');
    assert.ok(outcome.kind === 'permanent');
    assert.equal(outcome.code, 550);
    assert.deepEqual(outcome.refused, rcpt);
    assert.match(outcome.message, /^5\.1\.1 Upstream refused recipient\(s\) <a@example\.net>, <b@example\.net> \(upstream said: 550 5\.1\.1/);
  });
  it('a refusal mixing 4xx and 5xx is permanent: the message can never go to every recipient', () => {
    const r = err({ code: 'EENVELOPE', command: 'RCPT TO', rejected: rcpt, rejectedErrors: [err({ responseCode: 450 }), err({ responseCode: 553 })] });
    const { outcome } = classifyError(r, rcpt);
    assert.ok(outcome.kind === 'permanent' && outcome.code === 553);
  });
  it('only 4xx refusals are temporary (451)', () => {
    const r = err({ code: 'EENVELOPE', command: 'RCPT TO', rejected: ['b@example.net'], rejectedErrors: [err({ responseCode: 452 })] });
    const { outcome } = classifyError(r, rcpt);
    assert.ok(outcome.kind === 'temporary' && outcome.code === 451);
    assert.deepEqual(outcome.refused, ['b@example.net']);
    assert.match(outcome.message, /not sent to any recipient/);
  });
  it('wrong upstream credentials are temporary (an operator must fix them; clients retry meanwhile)', () => {
    const { outcome, kind } = classifyError(err({ code: 'EAUTH', responseCode: 535, response: '535 5.7.8 bad' }), rcpt);
    assert.equal(kind, 'auth');
    assert.ok(outcome.kind === 'temporary' && outcome.code === 451);
  });
  it('certificate errors are tls and temporary', () => {
    for (const code of ['DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_HAS_EXPIRED']) {
      const { outcome, kind } = classifyError(err({ code: 'ESOCKET', originalCode: code }), rcpt);
      assert.equal(kind, 'tls', code);
      assert.equal(outcome.kind, 'temporary');
    }
  });
  it('connection errors are temporary; a 5xx after DATA is permanent, mapped into 550-559 or 554', () => {
    assert.equal(classifyError(err({ code: 'ESOCKET', originalCode: 'ECONNREFUSED' }), rcpt).kind, 'connection');
    const p = classifyError(err({ code: 'EMESSAGE', command: 'DATA', responseCode: 552, response: '552 too big' }), rcpt).outcome;
    assert.ok(p.kind === 'permanent' && p.code === 552);
    const q = classifyError(err({ code: 'EMESSAGE', command: 'DATA', responseCode: 500, response: '500 what' }), rcpt).outcome;
    assert.ok(q.kind === 'permanent' && q.code === 554);
    const t = classifyError(err({ code: 'EMESSAGE', command: 'DATA', responseCode: 421, response: '421 bye' }), rcpt).outcome;
    assert.ok(t.kind === 'temporary' && t.code === 451, '421 is never passed on: it would close the client connection');
  });
  it('anything unknown is temporary, never accepted', () => {
    assert.equal(classifyError(new Error('boom'), rcpt).outcome.kind, 'temporary');
    assert.equal(classifyError(undefined, rcpt).outcome.kind, 'temporary');
  });
});

describe('upstream settings', () => {
  const base = { host: 'smtp.example.net', port: 587, tls: 'starttls' as const };
  it('verifies certificates always and defaults to 5 connections, 60 s, the relay hostname', () => {
    const s = buildSettings(base, [], {}, 'relay.example.com', 1);
    assert.equal(s.tls.rejectUnauthorized, true);
    assert.equal(s.tls.ca, undefined, 'no caFile: Node default trust store');
    assert.equal(s.maxConnections, 5);
    assert.equal(s.timeoutMs, 60_000);
    assert.equal(s.ehloName, 'relay.example.com');
    assert.equal(s.implicitTls, false);
  });
  it('adds the configured CA to the default roots instead of replacing them', () => {
    const pem = tls.rootCertificates[0]!;
    const s = buildSettings({ ...base, caFile: '/ca.pem' }, [], { '/ca.pem': pem }, 'h', 1);
    const ca = s.tls.ca as string[];
    assert.equal(ca.length, tls.getCACertificates('default').length + 1);
  });
  it('refuses a CA file without certificates', () => {
    assert.throws(() => buildSettings({ ...base, caFile: '/ca.pem' }, [], { '/ca.pem': 'nope' }, 'h', 1), /upstream\.caFile \/ca\.pem: no PEM certificate/);
  });
  it('reads credentials without the trailing newline and refuses empty ones', () => {
    const cfg = { ...base, usernameFile: '/u', passwordFile: '/p' };
    assert.deepEqual(buildSettings(cfg, [], { '/u': 'user\n', '/p': 'pa ss \r\n' }, 'h', 1).auth, { user: 'user', pass: 'pa ss ' });
    assert.throws(() => buildSettings(cfg, [], { '/u': 'user', '/p': '\n' }, 'h', 1), /passwordFile \/p: empty/);
    assert.throws(() => buildSettings({ ...base, usernameFile: '/u' }, [], { '/u': 'x' }, 'h', 1), /together/);
  });
  it('parses the timeout as a duration', () => {
    assert.equal(buildSettings({ ...base, timeout: '1m30s' }, [], {}, 'h', 1).timeoutMs, 90_000);
    assert.throws(() => buildSettings({ ...base, timeout: 'soon' }, [], {}, 'h', 1), /upstream\.timeout/);
  });
});

describe('replies', () => {
  it('sanitizes upstream text into one bounded printable line', () => {
    assert.equal(sanitizeReply('550 5.1.1 no\r\n550 such user\u0000'), '550 5.1.1 no 550 such user?');
    assert.equal(sanitizeReply('x'.repeat(300)).length, 200);
  });
});

describe('the DATA payload written upstream in one buffer', () => {
  // nodemailer's own DataStream (not exported; loaded from the file beside SMTPConnection)
  const dataStreamFile = path.join(path.dirname(createRequire(import.meta.url).resolve('nodemailer/lib/smtp-connection')), 'data-stream.js');
  const viaNodemailer = async (message: Buffer): Promise<Buffer> => {
    const { default: DataStream } = (await import(pathToFileURL(dataStreamFile).href)) as { default: new () => NodeJS.ReadWriteStream };
    const ds = new DataStream();
    const out: Buffer[] = [];
    ds.on('data', (c: Buffer) => out.push(c));
    const ended = new Promise((resolve) => ds.on('end', resolve));
    ds.write(message);
    ds.end();
    await ended;
    return Buffer.concat(out);
  };

  it('is byte for byte what nodemailer DataStream sends, for CRLF-only messages', async () => {
    const cases = [
      'From: a@example.com\r\n\r\nbody\r\n',
      '.leading dot\r\n..two\r\n.\r\nx\r\n',
      'no final line break',
      'ends in dot\r\n.',
      '\r\n',
      'a\r\n.\r\n.\r\n\r\n.b\r\n',
      'é 8-bit\r\n.ü\r\n',
    ];
    // and random ones made of the interesting pieces
    const pieces = ['\r\n', '.', 'a', '..', '\r\n.', 'xyz', ' '];
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % n);
    for (let i = 0; i < 300; i++) cases.push(Array.from({ length: rnd(40) }, () => pieces[rnd(pieces.length)]).join(''));
    for (const c of cases) {
      const m = Buffer.from(c, 'utf8');
      const mine = dataPayload(m);
      assert.ok(mine, JSON.stringify(c));
      assert.deepEqual(mine, await viaNodemailer(m), JSON.stringify(c));
    }
  });

  it('leaves messages with a bare CR or LF (or NUL) to nodemailer, which repairs them', () => {
    for (const c of ['a\nb\r\n', 'a\rb\r\n', 'a\r\nb\r', 'a\0b\r\n']) assert.equal(dataPayload(Buffer.from(c)), undefined, JSON.stringify(c));
  });
});
