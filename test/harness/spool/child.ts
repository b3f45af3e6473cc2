// A process that uses the spool and can be killed with SIGKILL at any moment
// (test/relay/spool-crash.test.ts, spool-cli.test.ts). Settings come as JSON in
// SPOOL_CHILD. Modes:
//   write  enqueue test messages with `writers` concurrent writers until killed (or
//          `count` are done); print "ACK <id> <n> <sha256>" once each is durable
//   run    open the spool and deliver through a real Upstream to host:port (the test's
//          sink, trusting caFile); print "READY" once delivering; SIGTERM stops it
import pino from 'pino';
import { Registry } from 'prom-client';
import { Upstream } from '../../../relay/upstream.js';
import { createSpoolMetrics } from '../../../relay/spool/metrics.js';
import { startQueueMode, stopQueueMode } from '../../../relay/spool/index.js';
import { QUEUE_DEFAULTS, type SpoolSettings } from '../../../relay/spool/settings.js';
import { Spool } from '../../../relay/spool/store.js';
import { sha, testMessage } from './messages.js';

interface ChildSettings {
  mode: 'write' | 'run';
  directory: string;
  run?: string;
  start?: number;
  count?: number;
  writers?: number;
  upstream?: { port: number; caFile: string };
  concurrency?: number;
  retryMs?: number;
}

const cfg = JSON.parse(process.env.SPOOL_CHILD ?? '{}') as ChildSettings;
const logger = pino({ level: process.env.SPOOL_CHILD_LOG ?? 'warn' }, pino.destination(2));

if (cfg.mode === 'write') {
  const spool = await Spool.open({
    directory: cfg.directory,
    limits: { maxBytes: 1 << 30, maxMessages: 1_000_000, minFreeBytes: 0 },
    logger,
    metrics: createSpoolMetrics(new Registry()),
  });
  let next = cfg.start ?? 0;
  const end = next + (cfg.count ?? 1_000_000);
  await Promise.all(
    Array.from({ length: cfg.writers ?? 8 }, async () => {
      while (next < end) {
        const n = next++;
        const m = testMessage(cfg.run!, n);
        const id = await spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['rcpt@example.net'] }, m);
        // stdout to a pipe is synchronous on Linux: the line is out before the next await.
        process.stdout.write(`ACK ${id} ${n} ${sha(m)}\n`);
      }
    }),
  );
  await spool.close();
  process.stdout.write('DONE\n');
} else if (cfg.mode === 'run') {
  const registry = new Registry();
  const upstream = new Upstream(
    { host: '127.0.0.1', port: cfg.upstream!.port, tls: 'starttls', caFile: cfg.upstream!.caFile, timeout: '10s', maxConnections: 4 },
    { hostname: 'relay.test.example', dkim: [], logger, registry },
  );
  const settings: SpoolSettings = {
    directory: cfg.directory,
    maxBytes: 1 << 30,
    maxMessages: 1_000_000,
    minFreeBytes: 0,
    lifetimeMs: QUEUE_DEFAULTS.lifetimeMs,
    retry: { ...QUEUE_DEFAULTS.retry, initialDelayMs: cfg.retryMs ?? 200, maxDelayMs: (cfg.retryMs ?? 200) * 4 },
    concurrency: cfg.concurrency ?? 8,
    delayWarningMs: 0,
  };
  const q = await startQueueMode(settings, { deliver: (e, m) => upstream.deliver(e, m), hostname: 'relay.test.example', logger, registry });
  process.stdout.write('READY\n');
  process.once('SIGTERM', () => {
    void stopQueueMode(q, 5000)
      .then(() => upstream.close())
      .then(() => process.exit(0));
  });
}
