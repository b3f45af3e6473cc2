// Integration tests of relay/upstream.ts: a real Upstream delivering to a real
// SMTP server (test/harness/support/sink.ts, smtp-server) on loopback over verified TLS.
import { execFile } from 'node:child_process';
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { Registry } from 'prom-client';
import type { DkimKeyConfig, UpstreamConfig } from '../../relay/config-types.js';
import { MAX_MESSAGES_PER_CONNECTION, Upstream, type DeliveryOutcome } from '../../relay/upstream.js';
import { createPki, DAY, type Pki } from '../harness/support/pki.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { dkimTxtRecord, verifyDkim } from '../harness/support/dkim-verify.js';

const run = promisify(execFile);

let dir: string;
let pki: Pki;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'upstream-test-'));
  pki = await createPki({ caName: 'upstream test CA' });
});
after(async () => {
  await pki.cleanup();
  await rm(dir, { recursive: true, force: true });
});

interface Harness {
  upstream: Upstream;
  registry: Registry;
  logs: string[];
}

function makeUpstream(cfg: Partial<UpstreamConfig> & { port: number }, dkim: DkimKeyConfig[] = []): Harness {
  const logs: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(chunk.toString());
      cb();
    },
  });
  const registry = new Registry();
  const upstream = new Upstream(
    { host: '127.0.0.1', tls: 'starttls', timeout: '10s', ...cfg },
    { hostname: 'relay.test.example', dkim, logger: pino({ level: 'debug' }, stream), registry },
  );
  return { upstream, registry, logs };
}

async function metric(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = (m?.values as { value: number; labels: Record<string, string> }[] | undefined)?.find((x) =>
    Object.entries(labels).every(([k, val]) => x.labels[k] === val),
  );
  return v?.value ?? 0;
}

let seq = 0;
async function file(name: string, content: string | Buffer): Promise<string> {
  const p = join(dir, `${++seq}-${name}`);
  await writeFile(p, content, { mode: 0o600 });
  return p;
}

function message(from = 'Billing <billing@example.com>', extra = ''): Buffer {
  return Buffer.from(
    [
      `From: ${from}`,
      'To: Alice <alice@example.net>, bob@example.net',
      'Subject: =?UTF-8?Q?Rechnung_f=C3=BCr_M=C3=A4rz?=',
      'Date: Fri, 27 Nov 2026 22:00:00 +0000',
      'Message-ID: <upstream-test-1@example.com>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      'X-Folded: first part',
      '\tsecond part   with  spaces ',
      '',
      'Grüße aus dem Relay.',
      '.a line that starts with a dot',
      '.',
      '..',
      'trailing spaces   ',
      'x'.repeat(990),
      extra,
      '',
    ].join('\r\n'),
  );
}

const env = { mailFrom: 'billing@example.com', rcptTo: ['alice@example.net', 'bob@example.net'] };

function assertAccepted(o: DeliveryOutcome): asserts o is Extract<DeliveryOutcome, { kind: 'accepted' }> {
  assert.equal(o.kind, 'accepted', JSON.stringify(o));
}

describe('upstream delivery over verified TLS', () => {
  let sink: Sink;
  let caFile: string;
  before(async () => {
    sink = await startSink({ pki });
    caFile = sink.caFile;
  });
  after(async () => {
    await sink.stop();
  });

  it('passes the message bytes through unchanged when no DKIM key matches, with the envelope given', async () => {
    const h = makeUpstream({ port: sink.port, caFile }, []);
    try {
      const raw = message();
      const before = sink.messages.length;
      const o = await h.upstream.deliver(env, raw);
      assertAccepted(o);
      assert.match(o.response, /queued as/);
      const got = sink.messages[before]!;
      assert.ok(got.raw.equals(raw), 'exact bytes');
      assert.equal(got.mailFrom, env.mailFrom);
      assert.deepEqual(got.rcptTo, env.rcptTo);
      assert.equal(got.secure, true);
      assert.equal(got.clientHostname, 'relay.test.example');
      const json = await h.registry.getSingleMetricAsString('smtp_relay_upstream_duration_seconds');
      assert.match(json, /smtp_relay_upstream_duration_seconds_count\{result="accepted"\} 1/);
    } finally {
      await h.upstream.close();
    }
  });

  it('reuses one pooled connection for consecutive messages and survives the server dropping it', async () => {
    const h = makeUpstream({ port: sink.port, caFile, maxConnections: 2 });
    try {
      const c0 = sink.connections;
      for (let i = 0; i < 3; i++) assertAccepted(await h.upstream.deliver(env, message()));
      assert.equal(sink.connections - c0, 1, 'one connection for three messages');
      sink.dropConnections(); // the server ends the idle session
      await new Promise((r) => setTimeout(r, 50));
      assertAccepted(await h.upstream.deliver(env, message()));
      assert.equal(sink.connections - c0, 2);
    } finally {
      await h.upstream.close();
    }
  });

  it('replaces a connection retired after its message limit in the background: the next message does not wait for a connect', async () => {
    const h = makeUpstream({ port: sink.port, caFile, maxConnections: 2 });
    try {
      const c0 = sink.connections;
      for (let i = 0; i < MAX_MESSAGES_PER_CONNECTION; i++) assertAccepted(await h.upstream.deliver(env, message()));
      // the limit retired the first connection; a replacement is being opened without any message waiting for it
      const deadline = Date.now() + 5000;
      while (sink.connections - c0 < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.equal(sink.connections - c0, 2, 'replacement opened before the next message');
      await new Promise((r) => setTimeout(r, 200)); // connected and parked idle
      const t0 = performance.now();
      assertAccepted(await h.upstream.deliver(env, message()));
      assert.equal(sink.connections - c0, 2, 'the next message used the replacement');
      assert.ok(performance.now() - t0 < 1000);
    } finally {
      await h.upstream.close();
    }
  });

  it('refuses a certificate from an untrusted CA: temporary, nothing sent', async () => {
    const h = makeUpstream({ port: sink.port }); // no caFile: only the public roots are trusted
    try {
      const before = sink.messages.length;
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.equal(o.kind === 'temporary' && o.code, 451);
      assert.equal(sink.messages.length, before);
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'tls' }), 1);
    } finally {
      await h.upstream.close();
    }
  });

  it('refuses a trusted certificate issued for another host name', async () => {
    const other = await startSink({ cert: await pki.issue({ name: 'wrong-name', dnsNames: ['mail.other.example'], ips: [] }) });
    const h = makeUpstream({ port: other.port, caFile });
    try {
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.equal(other.messages.length, 0);
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'tls' }), 1);
    } finally {
      await h.upstream.close();
      await other.stop();
    }
  });

  it('refuses an expired certificate from the trusted CA', async () => {
    const expired = await startSink({ cert: await pki.issue({ name: 'expired', notBefore: -2 * DAY, notAfter: -DAY }) });
    const h = makeUpstream({ port: expired.port, caFile });
    try {
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.equal(expired.messages.length, 0);
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'tls' }), 1);
    } finally {
      await h.upstream.close();
      await expired.stop();
    }
  });

  it('never sends in plaintext to an upstream that offers no STARTTLS', async () => {
    const plain = await startSink({ tls: 'none', pki });
    const h = makeUpstream({ port: plain.port, caFile });
    try {
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.equal(plain.messages.length, 0);
    } finally {
      await h.upstream.close();
      await plain.stop();
    }
  });
});

describe('upstream AUTH, implicit TLS and reload', () => {
  it('authenticates with the mounted credentials over implicit TLS and never logs the password', async () => {
    const password = 'pw-' + 'Zq8#secret-upstream';
    const sink = await startSink({ tls: 'implicit', pki, auth: { user: 'relay-user', pass: password } });
    const h = makeUpstream({
      port: sink.port,
      tls: 'implicit',
      caFile: sink.caFile,
      usernameFile: await file('user', 'relay-user\n'),
      passwordFile: await file('pass', password + '\n'),
    });
    try {
      assertAccepted(await h.upstream.deliver(env, message()));
      assert.equal(sink.messages[0]!.user, 'relay-user');
      assert.ok(!h.logs.join('').includes(password), 'password in logs');
      assert.ok(!h.logs.join('').includes(Buffer.from(`\0relay-user\0${password}`).toString('base64')), 'AUTH payload in logs');
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('wrong upstream credentials give a temporary failure, counted as auth, and reload picks up fixed ones', async () => {
    const sink = await startSink({ pki, auth: { user: 'relay-user', pass: 'right' } });
    const userFile = await file('user', 'relay-user');
    const passFile = await file('pass', 'wrong');
    const cfg: UpstreamConfig = { host: '127.0.0.1', port: sink.port, tls: 'starttls', caFile: sink.caFile, usernameFile: userFile, passwordFile: passFile, timeout: '10s' };
    const h = makeUpstream(cfg);
    try {
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.ok(o.kind === 'temporary' && o.code >= 400 && o.code < 500);
      assert.equal(sink.messages.length, 0);
      assert.equal(sink.authFailures, 1);
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'auth' }), 1);

      // A reload that cannot read its files throws and keeps the old settings.
      await assert.rejects(h.upstream.reload({ ...cfg, passwordFile: join(dir, 'missing') }, []), /ENOENT/);
      // Fixed secret, then reload.
      await writeFile(passFile, 'right\n');
      await h.upstream.reload(cfg, []);
      assertAccepted(await h.upstream.deliver(env, message()));
      assert.equal(sink.messages.length, 1);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });
});

describe('loss-free outcomes', () => {
  it('upstream down: temporary 4xx, nothing claimed accepted', async () => {
    const h = makeUpstream({ port: await closedPort() });
    try {
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary');
      assert.ok(o.kind === 'temporary' && o.code === 451 && /^4\.\d\.\d /.test(o.message), JSON.stringify(o));
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'connection' }), 1);
    } finally {
      await h.upstream.close();
    }
  });

  it('one recipient refused: not accepted, the refused one is named, and NO recipient got the message', async () => {
    const sink = await startSink({ pki });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    try {
      // Two messages first, so the refusal happens on a reused pooled connection.
      for (let i = 0; i < 2; i++) assertAccepted(await h.upstream.deliver(env, message()));
      sink.messages.length = 0;
      sink.rcptAttempts.length = 0;
      sink.behaviour.refuseRecipients = ['bob@example.net'];
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'permanent', JSON.stringify(o));
      assert.ok(o.kind === 'permanent');
      assert.deepEqual(o.refused, ['bob@example.net']);
      assert.equal(o.code, 550);
      assert.match(o.message, /^5\.1\.1 .*<bob@example\.net>/);
      assert.deepEqual(sink.rcptAttempts, ['alice@example.net', 'bob@example.net']);
      // Give the sink a moment: it must not deliver the aborted transaction.
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(sink.messages.length, 0, 'the accepted recipient must not have received it');
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'recipient_refused' }), 1);
      // The pool recovers: the next message to good recipients goes through.
      assertAccepted(await h.upstream.deliver({ mailFrom: env.mailFrom, rcptTo: ['alice@example.net'] }, message()));
      assert.equal(sink.messages.length, 1);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('all-or-nothing also without PIPELINING, and a message over the upstream SIZE is refused before sending', async () => {
    const sink = await startSink({ pki, noPipelining: true, size: 1000, behaviour: { refuseRecipients: ['bob@example.net'] } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    try {
      const small = Buffer.from('From: billing@example.com\r\nSubject: s\r\n\r\nsmall\r\n');
      const o = await h.upstream.deliver(env, small);
      assert.ok(o.kind === 'permanent', JSON.stringify(o));
      assert.deepEqual(o.refused, ['bob@example.net']);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(sink.messages.length, 0);
      const big = await h.upstream.deliver({ mailFrom: env.mailFrom, rcptTo: ['alice@example.net'] }, message());
      assert.ok(big.kind === 'permanent' && big.code === 552, JSON.stringify(big));
      assertAccepted(await h.upstream.deliver({ mailFrom: env.mailFrom, rcptTo: ['alice@example.net'] }, small));
      assert.ok(sink.messages[0]!.raw.equals(small));
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('a recipient deferred (4xx) gives a temporary outcome naming it; all refused (5xx) gives permanent', async () => {
    const sink = await startSink({ pki, behaviour: { tempFailRecipients: ['bob@example.net'] } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    try {
      const o = await h.upstream.deliver(env, message());
      assert.ok(o.kind === 'temporary', JSON.stringify(o));
      assert.deepEqual(o.refused, ['bob@example.net']);
      sink.behaviour.tempFailRecipients = [];
      sink.behaviour.refuseRecipients = ['alice@example.net', 'bob@example.net'];
      const p = await h.upstream.deliver(env, message());
      assert.ok(p.kind === 'permanent', JSON.stringify(p));
      assert.deepEqual(p.refused, ['alice@example.net', 'bob@example.net']);
      assert.equal(sink.messages.length, 0);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('4xx to everything → temporary; 5xx after DATA → permanent; 4xx after DATA → temporary', async () => {
    const sink = await startSink({ pki, behaviour: { tempFailAll: true } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    try {
      assert.equal((await h.upstream.deliver(env, message())).kind, 'temporary');
      sink.behaviour.tempFailAll = false;
      sink.behaviour.dataReply = { code: 554, message: '5.7.1 Spam detected' };
      const p = await h.upstream.deliver(env, message());
      assert.ok(p.kind === 'permanent' && p.code === 554 && /Spam detected/.test(p.message), JSON.stringify(p));
      sink.behaviour.dataReply = { code: 452, message: '4.3.1 Insufficient storage' };
      const t = await h.upstream.deliver(env, message());
      assert.ok(t.kind === 'temporary' && t.code === 451, JSON.stringify(t));
      assert.equal(sink.messages.length, 0);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('a slow upstream runs into upstream.timeout: temporary, in bounded time', async () => {
    const sink = await startSink({ pki, behaviour: { delayDataMs: 5000 } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile, timeout: '1s' });
    try {
      const t0 = Date.now();
      const o = await h.upstream.deliver(env, message());
      const took = Date.now() - t0;
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.ok(took >= 900 && took < 3000, `took ${took} ms`);
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'timeout' }), 1);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('an upstream that drops the connection after DATA gives temporary', async () => {
    const sink = await startSink({ pki, behaviour: { close: 'data' } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    try {
      const o = await h.upstream.deliver(env, message());
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
      assert.equal(sink.messages.length, 0);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('bounds concurrency: at most maxConnections connections, overflow answered 4xx at once', async () => {
    const sink = await startSink({ pki, behaviour: { delayDataMs: 300 } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile, maxConnections: 2 });
    try {
      assert.equal(h.upstream.maxInFlight, 8);
      const outcomes = await Promise.all(Array.from({ length: 12 }, () => h.upstream.deliver(env, message())));
      const accepted = outcomes.filter((o) => o.kind === 'accepted').length;
      const busy = outcomes.filter((o) => o.kind === 'temporary' && /busy/.test(o.message)).length;
      assert.equal(accepted, 8);
      assert.equal(busy, 4);
      assert.ok(sink.connections <= 2, `${sink.connections} connections`);
      assert.equal(sink.messages.length, 8);
      assert.equal(await metric(h.registry, 'smtp_relay_upstream_errors_total', { kind: 'overloaded' }), 4);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });

  it('close() cuts off a delivery still in flight at once: it resolves temporary, never accepted', async () => {
    const sink = await startSink({ pki, behaviour: { delayDataMs: 5000 } });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile, timeout: '20s' });
    try {
      const pending = h.upstream.deliver(env, message());
      await new Promise((r) => setTimeout(r, 400)); // the data is sent, the reply is pending
      const t0 = Date.now();
      await h.upstream.close();
      assert.ok(Date.now() - t0 < 2000, `close() took ${Date.now() - t0} ms`);
      const o = await pending;
      assert.equal(o.kind, 'temporary', JSON.stringify(o));
    } finally {
      await sink.stop();
    }
  });

  it('after close() deliveries are deferred and no connection is left open', async () => {
    const sink = await startSink({ pki });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    assertAccepted(await h.upstream.deliver(env, message()));
    await h.upstream.close();
    assert.equal((await h.upstream.deliver(env, message())).kind, 'temporary');
    await sink.stop(); // would hang for closeTimeout if the pooled connection were still open
  });
});

describe('DKIM and S/MIME through the upstream', () => {
  let sink: Sink;
  let keyFile: string;
  let records: Record<string, string>;
  before(async () => {
    sink = await startSink({ pki });
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    keyFile = await file('dkim.key', privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    records = { 'relay1._domainkey.example.com': dkimTxtRecord(createPublicKey(privateKey)) };
  });
  after(async () => {
    await sink.stop();
  });

  it('adds exactly one DKIM-Signature for the From domain, verified by dkimpy; all other bytes unchanged', async () => {
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const otherKey = await file('other.key', other.export({ type: 'pkcs8', format: 'pem' }) as string);
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile }, [
      { domain: 'other.org', selector: 'x', keyFile: otherKey },
      { domain: 'example.com', selector: 'relay1', keyFile },
    ]);
    try {
      const raw = message();
      const before = sink.messages.length;
      assertAccepted(await h.upstream.deliver(env, raw));
      const got = sink.messages[before]!.raw;
      const prefix = got.subarray(0, got.length - raw.length);
      assert.ok(got.subarray(prefix.length).equals(raw), 'original bytes follow the signature unchanged');
      const sigText = prefix.toString('latin1');
      assert.match(sigText, /^DKIM-Signature: /);
      assert.equal(sigText.match(/^DKIM-Signature:/gm)?.length, 1);
      assert.match(sigText, /d=example\.com;/);
      assert.match(sigText, /s=relay1;/);
      assert.match(sigText, /c=relaxed\/relaxed/);
      assert.ok(sigText.endsWith('\r\n') && !/\r\n(?![ \t])[^\r]/.test(sigText.slice(0, -2)), 'one folded header field');
      const v = await verifyDkim(got, records);
      assert.ok(v.ok, v.output);
      // The verifier can fail: a changed body must not verify.
      const tampered = Buffer.from(got.toString('latin1').replace('aus dem Relay.', 'aus dem Relaz.'), 'latin1');
      assert.ok(!tampered.equals(got));
      assert.equal((await verifyDkim(tampered, records)).ok, false);
      assert.equal(await metric(h.registry, 'smtp_relay_dkim_signatures_total', { domain: 'example.com' }), 1);
    } finally {
      await h.upstream.close();
    }
  });

  it('signs with an Ed25519 key (ed25519-sha256, RFC 8463), verified by dkimpy', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    const edKey = await file('ed.key', privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
    const edRecords = { 'ed1._domainkey.example.com': dkimTxtRecord(createPublicKey(privateKey)) };
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile }, [{ domain: 'example.com', selector: 'ed1', keyFile: edKey }]);
    try {
      const raw = message();
      const before = sink.messages.length;
      assertAccepted(await h.upstream.deliver(env, raw));
      const got = sink.messages[before]!.raw;
      assert.ok(got.subarray(got.length - raw.length).equals(raw));
      assert.match(got.toString('latin1'), /^DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed\/relaxed; d=example\.com;\s+s=ed1;/);
      const v = await verifyDkim(got, edRecords);
      assert.ok(v.ok, v.output);
      const tampered = Buffer.from(got.toString('latin1').replace('Date: Fri, 27 Nov', 'Date: Sat, 28 Nov'), 'latin1');
      assert.equal((await verifyDkim(tampered, edRecords)).ok, false);
    } finally {
      await h.upstream.close();
    }
  });

  it('signs a subdomain From with the parent domain key, and leaves other domains unsigned', async () => {
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile }, [{ domain: 'example.com', selector: 'relay1', keyFile }]);
    try {
      let before = sink.messages.length;
      assertAccepted(await h.upstream.deliver(env, message('noreply@billing.example.com')));
      const sub = sink.messages[before]!.raw;
      assert.match(sub.toString('latin1'), /^DKIM-Signature: [^]*d=example\.com;/);
      assert.ok((await verifyDkim(sub, records)).ok);

      before = sink.messages.length;
      const raw = message('someone@example.org');
      assertAccepted(await h.upstream.deliver(env, raw));
      assert.ok(sink.messages[before]!.raw.equals(raw), 'no key for example.org: unchanged');
    } finally {
      await h.upstream.close();
    }
  });

  it('an S/MIME-signed message still verifies with openssl smime -verify after DKIM signing and relaying', async () => {
    const signer = await pki.issue({ name: 'smime-signer', usage: 'email', emails: ['billing@example.com'] });
    const content = await file('content.txt', 'Content-Type: text/plain; charset=utf-8\r\n\r\nSigned body line 1\r\n.leading dot\r\nend\r\n');
    const signedFile = join(dir, 'signed.eml');
    await run('openssl', [
      'smime', '-sign', '-in', content, '-signer', signer.certFile, '-inkey', signer.keyFile,
      '-from', 'billing@example.com', '-to', 'alice@example.net', '-subject', 'S/MIME test', '-crlfeol', '-out', signedFile,
    ]);
    // openssl writes the base64 signature part with bare LF even with -crlfeol; SMTP needs
    // CRLF everywhere (the relay refuses bare LF). That part is outside the signed content.
    const raw = Buffer.from((await readFile(signedFile)).toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
    assert.ok(!/[^\r]\n/.test(raw.toString('latin1')), 'test message uses CRLF only');
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile }, [{ domain: 'example.com', selector: 'relay1', keyFile }]);
    try {
      const before = sink.messages.length;
      assertAccepted(await h.upstream.deliver({ mailFrom: 'billing@example.com', rcptTo: ['alice@example.net'] }, raw));
      const got = sink.messages[before]!.raw;
      assert.match(got.toString('latin1'), /^DKIM-Signature:/);
      assert.ok(got.subarray(got.length - raw.length).equals(raw));
      const receivedFile = join(dir, 'received.eml');
      await writeFile(receivedFile, got);
      const { stderr } = await run('openssl', ['smime', '-verify', '-in', receivedFile, '-CAfile', signer.caFile, '-out', '/dev/null']);
      assert.match(stderr, /Verification successful/);
      assert.ok((await verifyDkim(got, records)).ok);
      // and the check can fail: a changed signed body does not verify
      await writeFile(receivedFile, Buffer.from(got.toString('latin1').replace('Signed body line 1', 'Signed body line 2'), 'latin1'));
      await assert.rejects(run('openssl', ['smime', '-verify', '-in', receivedFile, '-CAfile', signer.caFile, '-out', '/dev/null']));
    } finally {
      await h.upstream.close();
    }
  });
});

describe('DSN requests (RFC 3461) handed to the upstream', () => {
  const rcpts = ['a@example.net', 'b@example.net', 'c@example.net'];
  const request = {
    ret: 'FULL' as const,
    envid: 'env=1+x',
    recipients: [{ notify: ['SUCCESS' as const, 'FAILURE' as const], orcpt: 'rfc822;A+b@example.net' }, {}, { notify: ['NEVER' as const] }],
  };
  const bare = (m: { commands: string[] }) => m.commands.map((l) => l.replace(/ SIZE=\d+/, ''));

  for (const pipelining of [true, false]) {
    it(`${pipelining ? 'pipelined' : 'one command at a time'}: per-recipient NOTIFY/ORCPT and RET/ENVID when the upstream advertises DSN, and nothing left over for the next message on the same connection`, async () => {
      const sink = await startSink({ pki, dsn: true, noPipelining: !pipelining });
      const h = makeUpstream({ port: sink.port, caFile: sink.caFile, maxConnections: 1 });
      try {
        const withDsn = await h.upstream.deliver({ mailFrom: 'billing@example.com', rcptTo: rcpts, dsn: request }, message());
        assertAccepted(withDsn);
        assert.equal(withDsn.dsnPassed, true);
        assert.deepEqual(bare(sink.messages[0]!), [
          'MAIL FROM:<billing@example.com> BODY=8BITMIME RET=FULL ENVID=env+3D1+2Bx',
          'RCPT TO:<a@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2Bb@example.net',
          'RCPT TO:<b@example.net>',
          'RCPT TO:<c@example.net> NOTIFY=NEVER',
        ]);
        const without = await h.upstream.deliver({ mailFrom: 'billing@example.com', rcptTo: rcpts }, message());
        assertAccepted(without);
        assert.equal(without.dsnPassed, undefined, 'no request, nothing to say about it');
        assert.deepEqual(bare(sink.messages[1]!), ['MAIL FROM:<billing@example.com> BODY=8BITMIME', ...rcpts.map((r) => `RCPT TO:<${r}>`)]);
        assert.equal(sink.connections, 1, 'both on one pooled connection');
      } finally {
        await h.upstream.close();
        await sink.stop();
      }
    });
  }

  it('an upstream that does not advertise DSN is sent none of it, and the outcome says so', async () => {
    const sink = await startSink({ pki });
    const h = makeUpstream({ port: sink.port, caFile: sink.caFile });
    try {
      const o = await h.upstream.deliver({ mailFrom: 'billing@example.com', rcptTo: rcpts, dsn: request }, message());
      assertAccepted(o);
      assert.equal(o.dsnPassed, false);
      assert.deepEqual(bare(sink.messages[0]!), ['MAIL FROM:<billing@example.com> BODY=8BITMIME', ...rcpts.map((r) => `RCPT TO:<${r}>`)]);
    } finally {
      await h.upstream.close();
      await sink.stop();
    }
  });
});
