// The spool (queue mode): what the relay's session, main and CLI use. docs/spool.md.
export { Spool, SpoolFullError, SpoolWriteError, systemClock, type Clock, type EnqueueEnvelope, type Entry, type SpoolLimits, type SpoolOptions } from './store.js';
export { Scheduler, type DeliverFn, type SchedulerOptions } from './scheduler.js';
export { createSpoolMetrics, type SpoolMetrics } from './metrics.js';
export { checkQueueSection, validateQueueConfig, QUEUE_DEFAULTS, type QueueConfig, type SpoolSettings, type RetrySettings } from './settings.js';
export { queueCommand, QUEUE_USAGE, type QueueCliOptions } from './cli.js';
export type { EntryState, RecipientState, RecipientStatus, StoredEnvelope } from './types.js';

import type pino from 'pino';
import type prom from 'prom-client';
import { createSpoolMetrics } from './metrics.js';
import { Scheduler, type DeliverFn } from './scheduler.js';
import type { SpoolSettings } from './settings.js';
import { Spool, type Clock } from './store.js';

export interface QueueMode {
  spool: Spool;
  scheduler: Scheduler;
}

/**
 * Opens (and recovers) the spool and starts delivering: what main calls at start when
 * the config has a `queue` section. `deliver` is `(e, m) => upstream.deliver(e, m)`.
 */
export async function startQueueMode(
  settings: SpoolSettings,
  opts: { deliver: DeliverFn; hostname: string; logger: pino.Logger; registry: prom.Registry; clock?: Clock; random?: () => number },
): Promise<QueueMode> {
  const metrics = createSpoolMetrics(opts.registry);
  const spool = await Spool.open({
    directory: settings.directory,
    limits: { maxBytes: settings.maxBytes, maxMessages: settings.maxMessages, minFreeBytes: settings.minFreeBytes },
    logger: opts.logger,
    metrics,
    ...(opts.clock ? { clock: opts.clock } : {}),
  });
  const scheduler = new Scheduler({
    spool,
    deliver: opts.deliver,
    hostname: opts.hostname,
    lifetimeMs: settings.lifetimeMs,
    retry: settings.retry,
    concurrency: settings.concurrency,
    delayWarningMs: settings.delayWarningMs,
    logger: opts.logger,
    metrics,
    ...(opts.random ? { random: opts.random } : {}),
  });
  scheduler.start();
  return { spool, scheduler };
}

/** SIGTERM: stop delivering, give running deliveries `graceMs`, close the database. */
export async function stopQueueMode(q: QueueMode, graceMs: number): Promise<void> {
  await q.scheduler.stop(graceMs);
  await q.spool.close();
}
