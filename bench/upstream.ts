// Upstream hand-off throughput on loopback: relay/upstream.ts against what a
// user would otherwise pick (nodemailer's pooled and unpooled SMTP transports),
// and the cost of DKIM signing. Bounded: a fixed number of messages per row.
//
//   part of make bench (bench/main.ts); upstreamHandOff(messages, concurrency) returns the table
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { Registry } from 'prom-client';
import type { DkimKeyConfig } from '../relay/config-types.js';
import { Upstream } from '../relay/upstream.js';
import { createPki } from '../test/harness/support/pki.js';
import { startSink, type Sink } from '../test/harness/support/sink.js';

let MESSAGES = 300;
let CONCURRENCY = 10;
const MAX_CONNECTIONS = 5;

function message(i: number): Buffer {
  const body = ('Lorem ipsum dolor sit amet, consectetur adipiscing elit. '.repeat(2) + '\r\n').repeat(80); // ~10 KB
  return Buffer.from(
    `From: Billing <billing@example.com>\r\nTo: alice@example.net\r\nSubject: bench ${i}\r\nMessage-ID: <bench-${i}@example.com>\r\n` +
      `Date: ${new Date().toUTCString()}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n${body}`,
  );
}
const envelope = { mailFrom: 'billing@example.com', rcptTo: ['alice@example.net'] };

async function drive(send: (i: number) => Promise<boolean>): Promise<{ ms: number; ok: number }> {
  let next = 0;
  let ok = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < MESSAGES) {
        const i = next++;
        if (await send(i)) ok++;
      }
    }),
  );
  return { ms: performance.now() - t0, ok };
}

interface Row {
  name: string;
  ms: number;
  ok: number;
  connections: number;
}

export async function upstreamHandOff(messages = 300, concurrency = 10): Promise<string> {
  MESSAGES = messages;
  CONCURRENCY = concurrency;
  const dir = await mkdtemp(join(tmpdir(), 'bench-upstream-'));
  const pki = await createPki({ caName: 'bench CA' });
  const rows: Row[] = [];
  const logger = pino({ level: 'silent' });
  const rsaFile = join(dir, 'rsa.key');
  const edFile = join(dir, 'ed.key');
  await writeFile(rsaFile, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
  await writeFile(edFile, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);

  const withSink = async (name: string, fn: (sink: Sink) => Promise<{ ms: number; ok: number }>) => {
    const sink = await startSink({ pki });
    try {
      const r = await fn(sink);
      rows.push({ name, ...r, connections: sink.connections });
    } finally {
      await sink.stop();
    }
  };

  const ours = (dkim: DkimKeyConfig[]) => async (sink: Sink) => {
    const up = new Upstream(
      { host: sink.host, port: sink.port, tls: 'starttls', caFile: sink.caFile, maxConnections: MAX_CONNECTIONS, timeout: '30s' },
      { hostname: 'bench.example', dkim, logger, registry: new Registry() },
    );
    try {
      return await drive(async (i) => (await up.deliver(envelope, message(i))).kind === 'accepted');
    } finally {
      await up.close();
    }
  };

  await withSink('relay Upstream (pool, all-or-nothing)', ours([]));
  await withSink('relay Upstream + DKIM rsa-sha256 2048', ours([{ domain: 'example.com', selector: 's', keyFile: rsaFile }]));
  await withSink('relay Upstream + DKIM ed25519-sha256', ours([{ domain: 'example.com', selector: 's', keyFile: edFile }]));
  for (const pool of [true, false]) {
    await withSink(`nodemailer transport, pool: ${pool}`, async (sink) => {
      const base = { host: sink.host, port: sink.port, requireTLS: true, tls: { ca: sink.caPem } };
      const t = pool ? nodemailer.createTransport({ ...base, pool: true, maxConnections: MAX_CONNECTIONS }) : nodemailer.createTransport(base);
      try {
        return await drive(async (i) => {
          try {
            const info = await t.sendMail({ envelope: { from: envelope.mailFrom, to: envelope.rcptTo }, raw: message(i) });
            return info.rejected.length === 0;
          } catch {
            return false;
          }
        });
      } finally {
        t.close();
      }
    });
  }

  const lines = [`### Upstream hand-off (relay/upstream.ts in-process), loopback, STARTTLS with verified certificate; ${MESSAGES} messages of ~10 KB, ${CONCURRENCY} concurrent senders, maxConnections ${MAX_CONNECTIONS}\n`];
  lines.push('| scenario | delivered | time (ms) | msg/s | upstream connections |');
  lines.push('|---|---:|---:|---:|---:|');
  for (const r of rows) {
    lines.push(`| ${r.name} | ${r.ok}/${MESSAGES} | ${r.ms.toFixed(0)} | ${((r.ok / r.ms) * 1000).toFixed(0)} | ${r.connections} |`);
  }
  await pki.cleanup();
  await rm(dir, { recursive: true, force: true });
  return lines.join('\n') + '\n';
}
