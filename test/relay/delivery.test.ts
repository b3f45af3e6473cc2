// End to end through the real relay process (node dist/relay/main.js serve):
// nodemailer client -> relay (STARTTLS + AUTH) -> recording upstream over
// verified TLS. Proves what reaches the upstream: a DKIM-Signature and the
// relay's Received header in front of the client's unchanged bytes, DKIM that
// dkimpy verifies, S/MIME that openssl still verifies, and that refusals and
// outages never produce a 250.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { createPki, type Pki } from '../harness/support/pki.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { dkimTxtRecord, verifyDkim } from '../harness/support/dkim-verify.js';
import { startRelay, tempDir, type RelayProcess, stopAll } from './harness.js';

const run = promisify(execFile);

const USER = { name: 'billing', password: 'billing-password-0123456789', allowedSenders: ['*@example.com', '*@example.org'] };

let pki: Pki;
let dir: string;
let sink: Sink;
let relay: RelayProcess;
let records: Record<string, string>;

function client(port: number) {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    requireTLS: true,
    auth: { user: USER.name, pass: USER.password },
    tls: { ca: pki.ca.certPem, servername: 'localhost' },
  });
}

function richMessage(from: string): Buffer {
  return Buffer.from(
    [
      `From: Billing <${from}>`,
      'To: alice@example.net',
      'Subject: =?UTF-8?Q?Rechnung_f=C3=BCr_M=C3=A4rz?=',
      `Date: ${new Date().toUTCString()}`,
      `Message-ID: <${Math.random().toString(36).slice(2)}@example.com>`,
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      'X-Folded: one',
      '\t two   spaces ',
      '',
      'Grüße.',
      '.leading dot',
      '.',
      'trailing space ',
      '',
    ].join('\r\n'),
  );
}

/** Splits what the upstream got into the header fields the relay added and the client's bytes. */
function split(got: Buffer, original: Buffer): string[] {
  assert.ok(got.length > original.length);
  assert.ok(got.subarray(got.length - original.length).equals(original), 'the client bytes arrive unchanged, after the added fields');
  const added = got.subarray(0, got.length - original.length).toString('latin1');
  assert.ok(added.endsWith('\r\n'));
  return added.slice(0, -2).split(/\r\n(?![ \t])/);
}

before(async () => {
  dir = await tempDir('delivery-test-');
  pki = await createPki({ caName: 'delivery test CA' });
  sink = await startSink({ pki });
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ed = generateKeyPairSync('ed25519').privateKey;
  const rsaFile = join(dir, 'example.com.key');
  const edFile = join(dir, 'example.org.key');
  await writeFile(rsaFile, rsa.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  await writeFile(edFile, ed.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  records = {
    'relay1._domainkey.example.com': dkimTxtRecord(createPublicKey(rsa)),
    'relay2._domainkey.example.org': dkimTxtRecord(createPublicKey(ed)),
  };
  relay = await startRelay({
    dir,
    cert: await pki.issue({ name: 'relay' }),
    users: [USER],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    dkim: `dkim:\n  - {domain: example.com, selector: relay1, keyFile: ${rsaFile}}\n  - {domain: example.org, selector: relay2, keyFile: ${edFile}}`,
  });
});

after(() => stopAll(relay, sink, pki));

describe('what the upstream receives from the relay', () => {
  it('DKIM-Signature, then Received, then the client bytes unchanged; dkimpy verifies it (RSA and Ed25519)', async () => {
    for (const [domain, selector, algo] of [
      ['example.com', 'relay1', 'rsa-sha256'],
      ['example.org', 'relay2', 'ed25519-sha256'],
    ] as const) {
      const raw = richMessage(`invoices@${domain}`);
      const before = sink.messages.length;
      const t = client(relay.ports.submission);
      const info = await t.sendMail({ envelope: { from: `invoices@${domain}`, to: ['alice@example.net'] }, raw });
      t.close();
      assert.match(info.response, /^250 /);
      const got = (await sink.waitForMessages(before + 1))[before]!;
      assert.equal(got.mailFrom, `invoices@${domain}`);
      assert.deepEqual(got.rcptTo, ['alice@example.net']);
      const fields = split(got.raw, raw);
      assert.equal(fields.length, 2, `added fields: ${JSON.stringify(fields)}`);
      assert.match(fields[0]!, new RegExp(`^DKIM-Signature: v=1; a=${algo}; c=relaxed/relaxed; d=${domain.replace('.', '\\.')};[\\s\\S]*\\ss=${selector};`));
      assert.match(fields[1]!, /^Received: from .*\r\n\tby relay\.test\.example with ESMTPSA/);
      const v = await verifyDkim(got.raw, records);
      assert.ok(v.ok, `${domain}: ${v.output}`);
      assert.match(v.output, new RegExp(`PASS d=${domain}`));
    }
    assert.equal(await relay.metric('smtp_relay_dkim_signatures_total', { domain: 'example.com' }), 1);
    assert.equal(await relay.metric('smtp_relay_dkim_signatures_total', { domain: 'example.org' }), 1);
    assert.ok((await relay.metric('smtp_relay_upstream_duration_seconds_count', { result: 'accepted' })) >= 2);
  });

  it('an S/MIME-signed message still verifies with openssl smime -verify after the relay', async () => {
    const signer = await pki.issue({ name: 'smime', usage: 'email', emails: ['invoices@example.com'] });
    const content = join(dir, 'content.txt');
    await writeFile(content, 'Content-Type: text/plain; charset=utf-8\r\n\r\nAmount due: 42 EUR\r\n.\r\nThanks\r\n');
    const signedFile = join(dir, 'signed.eml');
    await run('openssl', ['smime', '-sign', '-in', content, '-signer', signer.certFile, '-inkey', signer.keyFile,
      '-from', 'invoices@example.com', '-to', 'alice@example.net', '-subject', 'Invoice', '-crlfeol', '-out', signedFile]);
    // openssl leaves bare LF in the base64 signature part; SMTP needs CRLF (outside the signed content).
    const raw = Buffer.from((await readFile(signedFile)).toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
    const before = sink.messages.length;
    const t = client(relay.ports.submission);
    await t.sendMail({ envelope: { from: 'invoices@example.com', to: ['alice@example.net'] }, raw });
    t.close();
    const got = (await sink.waitForMessages(before + 1))[before]!;
    assert.equal(split(got.raw, raw).length, 2);
    const out = join(dir, 'received.eml');
    await writeFile(out, got.raw);
    const { stderr } = await run('openssl', ['smime', '-verify', '-in', out, '-CAfile', pki.ca.certFile, '-out', '/dev/null']);
    assert.match(stderr, /Verification successful/);
    assert.ok((await verifyDkim(got.raw, records)).ok);
  });

  it('a recipient the upstream refuses: the client gets 5xx naming it, and no recipient receives the message', async () => {
    sink.behaviour.refuseRecipients = ['gone@example.net'];
    const before = sink.messages.length;
    const attempts = sink.rcptAttempts.length;
    try {
      const t = client(relay.ports.submission);
      await assert.rejects(
        t.sendMail({ envelope: { from: 'invoices@example.com', to: ['alice@example.net', 'gone@example.net'] }, raw: richMessage('invoices@example.com') }),
        (e: Error & { responseCode?: number; response?: string }) => {
          assert.ok(e.responseCode !== undefined && e.responseCode >= 500 && e.responseCode < 600, String(e.response));
          assert.match(String(e.response), /gone@example\.net/);
          return true;
        },
      );
      t.close();
      assert.deepEqual(sink.rcptAttempts.slice(attempts), ['alice@example.net', 'gone@example.net']);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(sink.messages.length, before, 'alice must not have received a copy either');
    } finally {
      sink.behaviour.refuseRecipients = [];
    }
  });
});

describe('upstream outage through the relay', () => {
  it('upstream down: 451 to the client; once it is back the retry is delivered exactly once', async () => {
    const port = await closedPort();
    const r2 = await startRelay({ dir, cert: await pki.issue({ name: 'relay-outage' }), users: [USER], upstream: { host: '127.0.0.1', port, caFile: pki.ca.certFile } });
    let back: Sink | undefined;
    try {
      const raw = richMessage('invoices@example.com');
      const send = async () => {
        const t = client(r2.ports.submission);
        try {
          return await t.sendMail({ envelope: { from: 'invoices@example.com', to: ['alice@example.net'] }, raw });
        } finally {
          t.close();
        }
      };
      await assert.rejects(send(), (e: Error & { responseCode?: number }) => e.responseCode === 451);
      assert.ok((await r2.metric('smtp_relay_upstream_errors_total', { kind: 'connection' })) >= 1);
      back = await startSink({ pki, port });
      const info = await send();
      assert.match(info.response, /^250 /);
      const got = await back.waitForMessages(1);
      assert.equal(got.length, 1);
      assert.ok(got[0]!.raw.subarray(got[0]!.raw.length - raw.length).equals(raw));
    } finally {
      assert.equal(await r2.stop(), 0, r2.stderr);
      await back?.stop();
    }
  });
});
