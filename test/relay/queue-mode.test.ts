// Queue mode end to end: the real relay process with a `queue:` section, real clients,
// a real upstream (test/harness/support/sink.ts) that goes away and comes back, and the
// relay killed with SIGKILL while it holds mail. A 250 means the message is on stable
// storage; it reaches the upstream once it is back, DKIM-signed before it was stored.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync, createPublicKey } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { dkimTxtRecord, verifyDkim } from '../harness/support/dkim-verify.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { MAIN, NODE, message, restartRelay, sendPooled, startRelay, tempDir, type RelayProcess } from './harness.js';

const run = promisify(execFile);
const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };

let pki: Pki;
let dir: string;
let port: number;
let relay: RelayProcess;
let sink: Sink | undefined;
let records: Record<string, string>;

before(async () => {
  pki = await createPki();
  dir = await tempDir('relay-queue-');
  port = await closedPort(); // the upstream starts down
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const keyFile = join(dir, 'example.com.key');
  await writeFile(keyFile, key.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  records = { 'relay1._domainkey.example.com': dkimTxtRecord(createPublicKey(key)) };
  relay = await startRelay({
    dir,
    cert: await pki.issue({ name: 'relay' }),
    users: [APP],
    upstream: { host: '127.0.0.1', port, caFile: pki.ca.certFile },
    dkim: `dkim:\n  - {domain: example.com, selector: relay1, keyFile: ${keyFile}}`,
    queue: `{directory: ${join(dir, 'spool')}, retry: {initialDelay: 1s, maxDelay: 2s}}`,
  });
});

after(async () => {
  await relay?.stop();
  await sink?.stop();
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function send(n: number, tag: string): Promise<string[]> {
  return sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n, tag });
}

async function queueCli(...args: string[]): Promise<string> {
  const { stdout } = await run(NODE, [MAIN, 'queue', '--config', relay.configFile, ...args], { timeout: 20_000 });
  return stdout;
}

describe('queue mode', () => {
  test('with the upstream down every message gets 250 queued, the queue tool lists them, and all arrive DKIM-signed once it is back', async () => {
    const replies = await send(200, 'outage');
    assert.deepEqual(replies.filter((r) => !/^250 2\.0\.0 Ok: queued as \S+/.test(r)), [], 'every message acknowledged as queued');
    const listed = await queueCli('list');
    assert.ok(listed.split('\n').filter((l) => /outage|app@example\.com/.test(l)).length >= 1, listed);
    assert.doesNotMatch(listed, /Hello\./, 'no message body in the listing');
    sink = await startSink({ pki, port });
    const got = await sink.waitForMessages(200, 60_000);
    const subjects = new Set(got.map((m) => /Subject: (outage \d+)/.exec(m.raw.toString('latin1'))?.[1]));
    assert.equal(subjects.size, 200, 'each message arrived');
    const first = got[0]!.raw;
    assert.match(first.toString('latin1'), /^DKIM-Signature: [^]*?\r\nReceived: from /, 'signed before it was stored, then the trace header');
    const v = await verifyDkim(first, records);
    assert.ok(v.ok, v.output);
    assert.equal(await relay.metric('smtp_relay_messages_total', { result: 'accepted' }), 200);
  });

  test('the relay killed with SIGKILL while it holds mail: after a restart every acknowledged message is delivered', async () => {
    await sink!.stop();
    sink = undefined;
    const replies = await send(50, 'crash');
    assert.equal(replies.filter((r) => r.startsWith('250 ')).length, 50);
    relay.child.kill('SIGKILL');
    await relay.exited;
    relay = await restartRelay(relay);
    sink = await startSink({ pki, port });
    const got = await sink.waitForMessages(50, 60_000);
    const subjects = new Set(got.map((m) => /Subject: (crash \d+)/.exec(m.raw.toString('latin1'))?.[1]).filter(Boolean));
    assert.equal(subjects.size, 50, 'nothing acknowledged was lost');
  });

  test('the queue tool against the running relay: hold, delete, retry and release are applied by it', async () => {
    await sink!.stop();
    sink = undefined;
    const replies = await send(2, 'tool');
    const ids = replies.map((r) => /queued as (\S+)/.exec(r)?.[1]);
    assert.ok(ids[0] && ids[1], replies.join(' | '));
    const [held, deleted] = ids as [string, string];
    assert.match(await queueCli('hold', held), new RegExp(`^${held}: held`, 'm'));
    assert.match(await queueCli('delete', deleted), new RegExp(`^${deleted}: deleted`, 'm'));
    const listed = await queueCli('list');
    assert.match(listed, new RegExp(`^${held}\t.*\theld\t`, 'm'), listed);
    assert.doesNotMatch(listed, new RegExp(deleted));
    sink = await startSink({ pki, port });
    // held: not delivered, even on an explicit retry of everything
    await queueCli('retry', 'ALL');
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(sink.messages.filter((m) => /Subject: tool /.test(m.raw.toString('latin1'))).length, 0);
    assert.match(await queueCli('release', held), new RegExp(`^${held}: released`, 'm'));
    // released: delivered at its next attempt (retry would race with that delivery)
    const got = await sink.waitForMessages(1, 30_000);
    const tools = got.map((m) => /Subject: (tool \d)/.exec(m.raw.toString('latin1'))?.[1]).filter(Boolean);
    assert.equal(tools.length, 1, 'the released message arrives, the deleted one never');
    assert.doesNotMatch(await queueCli('list'), new RegExp(held));
  });

  test('inline checks still apply before anything is stored: a foreign From: is refused, nothing is queued', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: relay.ports.submission, requireTLS: true, auth: { user: APP.name, pass: APP.password }, tls: { ca: pki.ca.certPem, servername: 'localhost' } });
    const before = sink!.messages.length;
    await assert.rejects(
      t.sendMail({ envelope: { from: 'app@example.com', to: ['x@example.net'] }, raw: message('ceo@bank.example', 'x@example.net', 'spoof') }),
      (err: Error & { responseCode?: number }) => err.responseCode === 550,
    );
    t.close();
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(sink!.messages.length, before);
    assert.doesNotMatch(await queueCli('list'), /spoof/);
  });
});
