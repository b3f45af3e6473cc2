// Queue mode under load, at the sizes of issue 12: the real relay process (queue mode),
// real SMTP clients (nodemailer, pooled STARTTLS + AUTH), a real upstream (the test sink
// over verified STARTTLS) that goes down, flaps, and a relay killed with SIGKILL.
//
//   - outage: the upstream is down while messages are sent at a steady rate; every one
//     gets 250, and all arrive once it is back. make test: 750 messages in 15 s;
//     QUEUE_SOAK=1 (make test-soak): the issue's 3,000 messages in 60 s.
//   - upstream flaps: killed and restarted 10 times while messages are sent; 0 refused,
//     0 lost, duplicates counted.
//   - relay crashes: 10 kill -9 of the relay at random moments while clients send; every
//     message a client got 250 for arrives at the upstream; duplicates counted and reported.
//
// Each test is bounded (every wait has a deadline) and prints its numbers as a `#` line.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { createPki, type CertFiles, type Pki } from '../harness/support/pki.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { delay, message, restartRelay, startRelay, tempDir, type RelayProcess } from './harness.js';

const SOAK = process.env.QUEUE_SOAK === '1';
const OUTAGE = SOAK ? { messages: 3000, seconds: 60 } : { messages: 750, seconds: 15 };
const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };

let pki: Pki;
let dir: string;
let cert: CertFiles;
before(async () => {
  pki = await createPki();
  dir = await tempDir('relay-queue-load-');
  cert = await pki.issue({ name: 'relay' });
});
after(async () => {
  await pki?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Sent {
  /** Ids a client got 250 for. */
  acked: Set<string>;
  /** Ids sent whose transaction failed without a reply (connection lost) or with a refusal. */
  unacked: Set<string>;
  /** SMTP refusals (a reply other than 250), by reply. */
  refusals: string[];
  /** Connection-level failures (refused connect, connection lost). */
  connectionErrors: number;
}

function transport(relay: RelayProcess) {
  return nodemailer.createTransport({
    pool: true,
    maxConnections: 8,
    host: '127.0.0.1',
    port: relay.ports.submission,
    requireTLS: true,
    auth: { user: APP.name, pass: APP.password },
    tls: { ca: pki.ca.certPem, servername: 'localhost' },
    connectionTimeout: 5000,
    greetingTimeout: 5000,
    socketTimeout: 30_000,
  });
}

/**
 * Sends `count` messages spread evenly over `durationMs` (at most `concurrency` in flight),
 * each with a unique id in its Subject. With `resendUntil`, a message whose transaction
 * failed is sent again under a new id (as an application would), until that time.
 */
async function sendPaced(relay: RelayProcess, o: { count: number; durationMs: number; tag: string; concurrency?: number; resendUntil?: number }): Promise<Sent> {
  const t = transport(relay);
  const sent: Sent = { acked: new Set(), unacked: new Set(), refusals: [], connectionErrors: 0 };
  const t0 = Date.now();
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: o.concurrency ?? 16 }, async () => {
        while (next < o.count) {
          const i = next++;
          const at = t0 + (i * o.durationMs) / o.count;
          if (at > Date.now()) await delay(at - Date.now());
          for (let attempt = 0; ; attempt++) {
            const id = `${o.tag}-${i}-${attempt}`;
            const to = `r${i}@example.net`;
            const err = await t.sendMail({ envelope: { from: 'app@example.com', to: [to] }, raw: message('app@example.com', to, id) }).then(
              (info) => (/^250 /.test(info.response) ? undefined : { response: info.response }),
              (e: Error & { response?: string; responseCode?: number }) => e,
            );
            if (!err) {
              sent.acked.add(id);
              break;
            }
            sent.unacked.add(id);
            if ('responseCode' in err && err.responseCode) sent.refusals.push(err.response ?? String(err.responseCode));
            else if ('response' in err && err.response && !(err instanceof Error)) sent.refusals.push(err.response);
            else sent.connectionErrors++;
            if (!o.resendUntil || Date.now() > o.resendUntil) break;
            await delay(50 + Math.random() * 100);
          }
        }
      }),
    );
  } finally {
    t.close();
  }
  return sent;
}

/** Every message the sinks got, by the id in its Subject. */
function received(sinks: Sink[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const s of sinks) {
    for (const m of s.messages) {
      const id = /^Subject: (\S+)\r?$/m.exec(m.raw.toString('latin1'))?.[1];
      if (id) counts.set(id, (counts.get(id) ?? 0) + 1);
    }
  }
  return counts;
}

async function waitUntil(cond: () => boolean | Promise<boolean>, what: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(100);
  }
}

async function queueRelay(port: number, name: string): Promise<RelayProcess> {
  return startRelay({
    dir,
    cert,
    users: [APP],
    upstream: { host: '127.0.0.1', port, caFile: pki.ca.certFile },
    limits: '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 200, maxConnectionsPerIp: 50, idleTimeout: 30s}',
    queue: `{directory: ${join(dir, `spool-${name}`)}, retry: {initialDelay: 1s, maxDelay: 2s}}`,
  });
}

describe('queue mode under load', { concurrency: false }, () => {
  test(`upstream outage: ${OUTAGE.messages} messages sent over ${OUTAGE.seconds} s while the upstream is down: 0 refused, all delivered once it is back`, async () => {
    const port = await closedPort();
    const relay = await queueRelay(port, 'outage');
    let sink: Sink | undefined;
    try {
      const t0 = Date.now();
      const sent = await sendPaced(relay, { count: OUTAGE.messages, durationMs: OUTAGE.seconds * 1000, tag: 'outage' });
      const sendS = (Date.now() - t0) / 1000;
      assert.deepEqual(sent.refusals.slice(0, 5), [], 'no message refused');
      assert.equal(sent.connectionErrors, 0, 'no connection failed');
      assert.equal(sent.acked.size, OUTAGE.messages);
      assert.equal(await relay.metric('smtp_relay_queue_messages'), OUTAGE.messages, 'all held in the spool while the upstream is down');
      assert.ok(sendS >= OUTAGE.seconds * 0.95, `the upstream stayed down for the whole ${OUTAGE.seconds} s of sending (${sendS} s)`);
      const t1 = Date.now();
      sink = await startSink({ pki, port });
      const s = sink;
      await waitUntil(() => received([s]).size >= OUTAGE.messages, `${OUTAGE.messages} messages at the upstream`, 120_000);
      const drainS = (Date.now() - t1) / 1000;
      await waitUntil(async () => (await relay.metric('smtp_relay_queue_messages')) === 0, 'an empty spool', 30_000);
      const got = received([sink]);
      const missing = [...sent.acked].filter((id) => !got.has(id));
      assert.deepEqual(missing.slice(0, 10), [], `${missing.length} acknowledged message(s) never arrived`);
      const duplicates = [...got.values()].reduce((a, n) => a + n - 1, 0);
      assert.equal(duplicates, 0, 'no crash, no duplicate');
      assert.equal(await relay.metric('smtp_relay_queue_deliveries_total', { result: 'delivered' }), OUTAGE.messages);
      process.stdout.write(`# outage: ${sent.acked.size} acknowledged over ${sendS.toFixed(1)} s with the upstream down, 0 refused; all ${got.size} delivered ${drainS.toFixed(1)} s after it came back, 0 duplicates\n`);
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
      await sink?.stop();
    }
  });

  test('upstream flaps: killed and restarted 10 times while 1,000 messages are sent over 15 s: 0 refused, 0 lost', async () => {
    let sink = await startSink({ pki });
    const { port } = sink;
    const sinks: Sink[] = [sink];
    const relay = await queueRelay(port, 'flaps').catch(async (e: unknown) => {
      await sink.stop();
      throw e;
    });
    try {
      const sending = sendPaced(relay, { count: 1000, durationMs: 15_000, tag: 'flap' });
      let done = false;
      void sending.finally(() => (done = true));
      let flaps = 0;
      for (; flaps < 10 && !done; flaps++) {
        await delay(300 + Math.random() * 400);
        await sink.stop(); // every connection cut, as a killed process
        await delay(100 + Math.random() * 300);
        sink = await startSink({ pki, port, cert: sinks[0]!.cert });
        sinks.push(sink);
      }
      const sent = await sending;
      assert.equal(flaps, 10, 'the upstream flapped 10 times while the clients sent');
      assert.deepEqual(sent.refusals.slice(0, 5), [], 'no message refused');
      assert.equal(sent.connectionErrors, 0);
      assert.equal(sent.acked.size, 1000);
      await waitUntil(async () => (await relay.metric('smtp_relay_queue_messages')) === 0, 'an empty spool after the last restart', 60_000);
      const got = received(sinks);
      const missing = [...sent.acked].filter((id) => !got.has(id));
      assert.deepEqual(missing.slice(0, 10), [], `${missing.length} acknowledged message(s) lost`);
      const duplicates = [...got.values()].reduce((a, n) => a + n - 1, 0);
      process.stdout.write(`# upstream flaps: ${flaps} kills of the upstream, ${sent.acked.size} acknowledged, 0 refused, 0 lost, ${duplicates} duplicate(s) (the upstream cut after it had the message, before its 250 reached the relay)\n`);
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
      await sink.stop();
    }
  });

  test('relay crashes: 10 kill -9 of the relay at random moments while clients send: every message acknowledged with 250 reaches the upstream', async () => {
    const sink = await startSink({ pki });
    let relay = await queueRelay(sink.port, 'crash').catch(async (e: unknown) => {
      await sink.stop();
      throw e;
    });
    try {
      // The clients keep sending (and resend what failed, under a new id) while the relay dies and comes back.
      const sendFor = 25_000;
      const sending = sendPaced(relay, { count: 3000, durationMs: sendFor, tag: 'crash', resendUntil: Date.now() + sendFor + 20_000 });
      const kills: number[] = [];
      const started = Date.now();
      for (let k = 0; k < 10; k++) {
        // a random moment while the clients send: somewhere in a session, a commit, a delivery
        await delay(400 + Math.random() * 1200);
        kills.push(Date.now() - started);
        relay.child.kill('SIGKILL');
        await relay.exited;
        relay = await restartRelay(relay);
        assert.equal(await relay.metric('smtp_relay_queue_quarantined_total'), 0, `kill ${k + 1} left no damaged entry`);
      }
      const sent = await sending;
      assert.ok(sent.acked.size >= 2000, `the clients got through (${sent.acked.size} acknowledged)`);
      await waitUntil(async () => (await relay.metric('smtp_relay_queue_messages')) === 0, 'an empty spool', 60_000);
      const got = received([sink]);
      const lost = [...sent.acked].filter((id) => !got.has(id));
      assert.deepEqual(lost.slice(0, 10), [], `${lost.length} acknowledged message(s) lost`);
      const duplicates = [...got.values()].reduce((a, n) => a + n - 1, 0);
      const unackedDelivered = [...sent.unacked].filter((id) => got.has(id)).length;
      for (const m of sink.messages) assert.match(m.raw.toString('latin1'), /\r\n\r\nHello\.\r\n$/, 'nothing partly written reached the upstream');
      process.stdout.write(
        `# relay crashes: 10 kill -9 at ${kills.map((t) => (t / 1000).toFixed(1)).join(', ')} s; ${sent.acked.size} acknowledged, 0 lost; ${duplicates} duplicate(s) at the upstream; ` +
          `${sent.unacked.size} transaction(s) cut without a 250 (${sent.connectionErrors} connection errors, ${sent.refusals.length} refusals), ${unackedDelivered} of them delivered anyway (stored, the 250 lost with the process)\n`,
      );
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
      await sink.stop();
    }
  });
});
