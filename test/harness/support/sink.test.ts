// Self-test of the test PKI and the recording sink, so other tests can trust them.
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { createPki, DAY, type Pki } from './pki.js';
import { startSink } from './sink.js';

const run = promisify(execFile);

describe('test PKI', () => {
  let pki: Pki;
  before(async () => {
    pki = await createPki();
  });
  after(async () => {
    await pki.cleanup();
  });

  it('issues server certificates for localhost, 127.0.0.1 and ::1 that openssl verifies against the CA', async () => {
    const c = await pki.issue({ name: 'srv' });
    const x = new X509Certificate(c.certPem);
    assert.equal(x.checkHost('localhost'), 'localhost');
    assert.equal(x.checkIP('127.0.0.1'), '127.0.0.1');
    assert.equal(x.checkIP('::1'), '::1');
    assert.ok(x.verify(new X509Certificate(c.caPem).publicKey));
    const { stdout } = await run('openssl', ['verify', '-CAfile', c.caFile, '-purpose', 'sslserver', c.certFile]);
    assert.match(stdout, /OK/);
  });

  it('issues a second, different certificate from the same CA (rotation) and honours validity', async () => {
    const a = await pki.issue({ name: 'a', dnsNames: ['relay.example.com'] });
    const b = await pki.issue({ name: 'b', notBefore: -2 * DAY, notAfter: -DAY, keyType: 'rsa' });
    assert.notEqual(a.certPem, b.certPem);
    assert.equal(new X509Certificate(a.certPem).checkHost('relay.example.com'), 'relay.example.com');
    const xb = new X509Certificate(b.certPem);
    assert.ok(new Date(xb.validTo).getTime() < Date.now());
    assert.equal(xb.publicKey.asymmetricKeyType, 'rsa');
    await assert.rejects(run('openssl', ['verify', '-CAfile', b.caFile, b.certFile]), /expired/);
  });
});

describe('recording sink', () => {
  it('records envelope and exact bytes over STARTTLS with AUTH, and refuses configured recipients', async () => {
    const sink = await startSink({ auth: { user: 'up', pass: 'secret' }, behaviour: { refuseRecipients: ['no@example.net'] } });
    try {
      const t = nodemailer.createTransport({
        host: sink.host,
        port: sink.port,
        requireTLS: true,
        tls: { ca: sink.caPem, servername: 'localhost' },
        auth: { user: 'up', pass: 'secret' },
      });
      const raw = Buffer.from('From: a@example.com\r\nTo: b@example.net\r\nSubject: x\r\n\r\n.leading dot\r\nbody\r\n');
      const info = await t.sendMail({ envelope: { from: 'a@example.com', to: ['b@example.net', 'no@example.net'] }, raw });
      assert.deepEqual(info.rejected, ['no@example.net']);
      assert.equal(sink.messages.length, 1);
      const m = sink.messages[0]!;
      assert.equal(m.mailFrom, 'a@example.com');
      assert.deepEqual(m.rcptTo, ['b@example.net']);
      assert.ok(m.raw.equals(raw), 'bytes unchanged (dot-stuffing undone)');
      assert.equal(m.user, 'up');
      assert.equal(m.secure, true);
      t.close();

      const bad = nodemailer.createTransport({
        host: sink.host,
        port: sink.port,
        requireTLS: true,
        tls: { ca: sink.caPem, servername: 'localhost' },
        auth: { user: 'up', pass: 'wrong' },
      });
      await assert.rejects(bad.sendMail({ envelope: { from: 'a@example.com', to: ['b@example.net'] }, raw }), /535/);
      assert.equal(sink.authFailures, 1);
      bad.close();
    } finally {
      await sink.stop();
    }
  });

  it('serves implicit TLS and can answer 4xx to everything', async () => {
    const sink = await startSink({ tls: 'implicit', behaviour: { tempFailAll: true } });
    try {
      const t = nodemailer.createTransport({ host: sink.host, port: sink.port, secure: true, tls: { ca: sink.caPem, servername: 'localhost' } });
      await assert.rejects(
        t.sendMail({ envelope: { from: 'a@example.com', to: ['b@example.net'] }, raw: Buffer.from('Subject: x\r\n\r\nx\r\n') }),
        (e: Error & { responseCode?: number }) => e.responseCode === 451,
      );
      assert.equal(sink.messages.length, 0);
      t.close();
    } finally {
      await sink.stop();
    }
  });
});
