// The spool's scheduler delivering through the real Upstream (relay/upstream.ts) to a
// real SMTP sink (test/harness/support/sink.ts) over verified TLS. Delivery status
// notifications are read back by Python's email package.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, afterEach, before, test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { startQueueMode, stopQueueMode, type QueueMode } from '../../relay/spool/index.js';
import { QUEUE_DEFAULTS, type SpoolSettings } from '../../relay/spool/settings.js';
import { Upstream } from '../../relay/upstream.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';

const run = promisify(execFile);
const PARSER = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/harness/spool/parse_dsn.py');
const MESSAGE = Buffer.from('From: App <app@example.com>\r\nTo: <a@example.net>\r\nSubject: quarterly report\r\nMessage-ID: <q1@example.com>\r\n\r\nHello.\r\n');

let pki: Pki;
let base: string;
before(async () => {
  pki = await createPki({ caName: 'spool upstream test CA' });
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-upstream-'));
});
after(async () => {
  await pki.cleanup();
  fs.rmSync(base, { recursive: true, force: true });
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(sink: Sink, over: Partial<SpoolSettings> = {}): Promise<{ q: QueueMode; registry: Registry }> {
  const registry = new Registry();
  const logger = pino({ level: 'silent' });
  const upstream = new Upstream({ host: '127.0.0.1', port: sink.port, tls: 'starttls', caFile: sink.caFile, timeout: '5s', maxConnections: 4 }, { hostname: 'relay.test.example', dkim: [], logger, registry });
  const settings: SpoolSettings = {
    directory: fs.mkdtempSync(path.join(base, 'q-')),
    maxBytes: 1 << 30,
    maxMessages: 100_000,
    minFreeBytes: 0,
    lifetimeMs: QUEUE_DEFAULTS.lifetimeMs,
    retry: { ...QUEUE_DEFAULTS.retry, initialDelayMs: 100, maxDelayMs: 400 },
    concurrency: 16,
    delayWarningMs: 0,
    ...over,
  };
  const q = await startQueueMode(settings, { deliver: (e, m) => upstream.deliver(e, m), hostname: 'relay.test.example', logger, registry });
  cleanups.push(async () => {
    await stopQueueMode(q, 1000);
    await upstream.close();
  });
  return { q, registry };
}

interface Parsed {
  content_type: string;
  report_type: string;
  from: string;
  to: string;
  auto_submitted: string;
  parts: string[];
  per_message: Record<string, string>;
  recipients: Record<string, string>[];
  original_headers: string;
  defects: string[];
}

async function parseDsn(raw: Buffer): Promise<Parsed> {
  const f = path.join(base, `dsn-${Date.now()}-${Math.random()}.eml`);
  fs.writeFileSync(f, raw);
  const { stdout } = await run('python3', [PARSER, f], { timeout: 20_000 });
  return JSON.parse(stdout) as Parsed;
}

async function waitFor(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('partial acceptance: the accepted recipients get the message exactly once, the sender one report naming the refused one', async () => {
  const sink = await startSink({ pki, behaviour: { refuseRecipients: ['gone@example.net'] } });
  cleanups.push(() => sink.stop());
  const { q } = await setup(sink);
  await q.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'gone@example.net', 'b@example.net'] }, MESSAGE);
  await waitFor(() => sink.messages.length === 2 && q.spool.size.messages === 0, 'message and report');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(sink.messages.length, 2, 'nothing more arrives');
  const [msg, dsn] = sink.messages as [(typeof sink.messages)[0], (typeof sink.messages)[0]];
  assert.deepEqual([msg.mailFrom, msg.rcptTo], ['app@example.com', ['a@example.net', 'b@example.net']]);
  assert.ok(msg.raw.equals(MESSAGE), 'the stored bytes are what went upstream');
  assert.deepEqual([dsn.mailFrom, dsn.rcptTo], ['', ['app@example.com']]);
  const p = await parseDsn(dsn.raw);
  assert.equal(p.content_type, 'multipart/report');
  assert.equal(p.report_type, 'delivery-status');
  assert.deepEqual(p.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
  assert.deepEqual(p.defects, []);
  assert.equal(p.per_message['Reporting-MTA'], 'dns; relay.test.example');
  assert.equal(p.recipients.length, 1);
  assert.equal(p.recipients[0]!['Final-Recipient'], 'rfc822; gone@example.net');
  assert.equal(p.recipients[0]!['Action'], 'failed');
  assert.equal(p.recipients[0]!['Status'], '5.1.1');
  assert.match(p.recipients[0]!['Diagnostic-Code']!, /^smtp; 550 /);
  assert.match(p.original_headers, /Subject: quarterly report/);
  assert.equal(p.auto_submitted, 'auto-replied');
});

test('a temporary refusal is retried for that recipient alone and then succeeds; no report', async () => {
  const sink = await startSink({ pki, behaviour: { tempFailRecipients: ['slow@example.net'] } });
  cleanups.push(() => sink.stop());
  const { q } = await setup(sink);
  await q.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'slow@example.net'] }, MESSAGE);
  await waitFor(() => sink.messages.length === 1 && sink.rcptAttempts.filter((r) => r === 'slow@example.net').length >= 2, 'a@ delivered, slow@ retried');
  sink.behaviour.tempFailRecipients = [];
  await waitFor(() => q.spool.size.messages === 0, 'slow@ delivered');
  assert.deepEqual(sink.messages.map((m) => m.rcptTo), [['a@example.net'], ['slow@example.net']]);
});

test('expiry: a recipient still failing at the end of the lifetime is reported with 4.4.7', async () => {
  const sink = await startSink({ pki, behaviour: { tempFailRecipients: ['slow@example.net'] } });
  cleanups.push(() => sink.stop());
  const { q, registry } = await setup(sink, { lifetimeMs: 1500 });
  await q.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['slow@example.net'] }, MESSAGE);
  await waitFor(() => sink.messages.length === 1 && q.spool.size.messages === 0, 'expiry report');
  const p = await parseDsn(sink.messages[0]!.raw);
  assert.equal(p.recipients[0]!['Final-Recipient'], 'rfc822; slow@example.net');
  assert.equal(p.recipients[0]!['Status'], '4.4.7');
  assert.equal(p.recipients[0]!['Action'], 'failed');
  const expired = (await registry.getSingleMetric('smtp_relay_queue_deliveries_total')!.get()).values.find((v) => v.labels.result === 'expired');
  assert.equal(expired?.value, 1);
});

test('upstream outage: 300 messages queued while it is down are all delivered once it is back', async () => {
  const first = await startSink({ pki });
  const port = first.port;
  await first.stop();
  const stub = { port, caFile: first.caFile } as Sink;
  const { q } = await setup(stub);
  const t0 = Date.now();
  const results = await Promise.allSettled(Array.from({ length: 300 }, (_, i) => q.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: [`r${i}@example.net`] }, MESSAGE)));
  assert.equal(results.filter((r) => r.status === 'rejected').length, 0, 'none refused');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(q.spool.size.messages, 300);
  const sink = await startSink({ pki, port, cert: first.cert });
  cleanups.push(() => sink.stop());
  await waitFor(() => q.spool.size.messages === 0, 'all delivered', 30_000);
  const rcpts = new Set(sink.messages.flatMap((m) => m.rcptTo));
  assert.equal(rcpts.size, 300);
  process.stdout.write(`# outage: 300 queued, all delivered ${Date.now() - t0} ms after the first enqueue\n`);
});

test('upstream flaps: killed and restarted 10 times while 500 messages are queued: none refused, none lost', async () => {
  let sink = await startSink({ pki });
  const { port, caFile, cert } = sink;
  const { q } = await setup({ port, caFile } as Sink);
  const received = new Set<string>();
  const collect = (s: Sink) => s.messages.forEach((m) => m.rcptTo.forEach((r) => received.add(r)));
  let refused = 0;
  const sending = (async () => {
    for (let i = 0; i < 500; i++) {
      await q.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: [`f${i}@example.net`] }, MESSAGE).catch(() => refused++);
      if (i % 10 === 0) await new Promise((r) => setTimeout(r, 5));
    }
  })();
  for (let k = 0; k < 10; k++) {
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
    collect(sink);
    await sink.stop();
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 150));
    sink = await startSink({ pki, port, cert });
  }
  await sending;
  cleanups.push(() => sink.stop());
  await waitFor(() => q.spool.size.messages === 0, 'all delivered after the last restart', 30_000);
  collect(sink);
  assert.equal(refused, 0);
  assert.equal(received.size, 500, `${500 - received.size} lost`);
});
