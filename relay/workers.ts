// A relay of several worker processes (config `workers`, docs/relay-config.md "Workers").
//
// The primary forks the workers (node:cluster) and serves SMTP itself not at all. Each
// worker runs the whole single-process relay (listeners, session phases, upstream, its
// own file watches for hot reload) and shares the listening sockets: node:cluster's
// round-robin hands each accepted TCP connection to the next worker. What must be exact
// for the whole relay is decided by the primary (relay/limits.ts LimitServer over a
// LocalLimits): connection counts (global and per client address) with the shedding of
// unauthenticated connections, the lockout and the per-user rate limit. In queue mode
// the primary also owns the spool and the one scheduler, so a message is stored and
// delivered by one process only; workers hand it over after signing it. The primary
// serves /metrics (every worker's series and its own, aggregated), /healthz and /readyz,
// and the control endpoints (relay/control.ts; GET /upstream combines every worker's
// upstream logins with its own, asked for like their metrics), and on SIGTERM tells
// every worker to drain, then exits once they have.

import cluster, { type Worker } from 'node:cluster';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type http from 'node:http';
import type pino from 'pino';
import prom from 'prom-client';
import { loadConfig, upstreamFiles, type RelaySettings } from './config.js';
import { LimitServer, LocalLimits, type Channel, type LimitCall } from './limits.js';
import { createMetrics, startMetricsServer } from './metrics.js';
import { startDrainControl } from './control.js';
import type { Queue, QueuedEnvelope } from './session.js';
import { startQueueMode, stopQueueMode, type QueueMode } from './spool/index.js';
import { Upstream } from './upstream.js';
import { upstreamReport, type LoginRecord } from './upstream-login.js';
import { startPeers } from './peers.js';
import { LockoutGossip } from './limits-gossip.js';
import { watchFiles, type FileWatch } from './watch.js';

// --- how many ---------------------------------------------------------------------------

/**
 * The CPUs this process may use by its cgroup's CPU quota (v2 cpu.max, v1
 * cpu.cfs_quota_us / cpu.cfs_period_us), the smallest along its cgroup path, rounded
 * up; undefined when there is no quota. `root` is /sys/fs/cgroup (tests pass another).
 */
export function cgroupCpuLimit(root = '/sys/fs/cgroup', procSelfCgroup = '/proc/self/cgroup'): number | undefined {
  const read = (f: string) => {
    try {
      return fs.readFileSync(f, 'utf8').trim();
    } catch {
      return undefined;
    }
  };
  let best: number | undefined;
  const consider = (quota: number, period: number) => {
    if (!(quota > 0) || !(period > 0)) return;
    const cpus = quota / period;
    if (best === undefined || cpus < best) best = cpus;
  };
  /** The directory and its ancestors up to `top`. */
  const upFrom = (top: string, rel: string) => {
    const dirs: string[] = [];
    let d = path.join(top, rel);
    for (let i = 0; i < 64; i++) {
      dirs.push(d);
      if (path.relative(top, d) === '' || !d.startsWith(top)) break;
      d = path.dirname(d);
    }
    return dirs;
  };
  const lines = (read(procSelfCgroup) ?? '').split('\n').filter(Boolean);
  const v2 = lines.find((l) => l.startsWith('0::'));
  const v1 = lines.find((l) => /^\d+:[^:]*\bcpu\b[^:]*:/.test(l));
  if (v1) {
    const [, controllers, rel] = /^\d+:([^:]*):(.*)$/.exec(v1)!;
    for (const name of [controllers!, 'cpu', 'cpu,cpuacct']) {
      const top = path.join(root, name!);
      if (read(path.join(top, 'cpu.cfs_period_us')) === undefined && read(path.join(top, rel!, 'cpu.cfs_period_us')) === undefined) continue;
      for (const d of [...upFrom(top, rel!), top]) consider(Number(read(path.join(d, 'cpu.cfs_quota_us'))), Number(read(path.join(d, 'cpu.cfs_period_us'))));
      break;
    }
  }
  if (v2 || !v1) {
    const rel = v2 ? v2.slice(3) : '/';
    for (const d of upFrom(root, rel)) {
      const max = read(path.join(d, 'cpu.max'));
      if (!max) continue;
      const [q, p] = max.split(/\s+/);
      if (q !== 'max') consider(Number(q), Number(p ?? 100000));
    }
  }
  return best === undefined ? undefined : Math.max(1, Math.ceil(best - 1e-9));
}

/** The worker count of a `workers` setting: 'auto' = the cgroup CPU quota, else the cores node may use. */
export function workerCount(setting: number | 'auto', opts: { cgroupRoot?: string; procSelfCgroup?: string; cores?: number } = {}): number {
  if (setting !== 'auto') return setting;
  const cores = opts.cores ?? os.availableParallelism();
  const quota = cgroupCpuLimit(opts.cgroupRoot, opts.procSelfCgroup);
  return Math.max(1, Math.min(cores, quota ?? cores));
}

// --- the worker's side --------------------------------------------------------------------

/** How the primary hands its workers the shared TLS session-ticket keys (read once, then removed from the environment). */
export const TICKET_KEYS_ENV = 'SMTP_RELAY_TLS_TICKET_KEYS';

/** A worker's ticket keys from its environment (and removes them from it, so that nothing forked later inherits them). */
export function takeTicketKeys(): Buffer | undefined {
  const v = process.env[TICKET_KEYS_ENV];
  delete process.env[TICKET_KEYS_ENV];
  return v ? Buffer.from(v, 'base64') : undefined;
}

/** The IPC channel of a worker to its primary. */
export function workerChannel(): Channel {
  return {
    send: (m) => {
      if (process.connected) process.send!(m);
    },
    onMessage: (h) => process.on('message', h),
  };
}

interface QueueCall {
  t: 'queue';
  id: number;
  op: 'checkSpace' | 'enqueue';
  size?: number;
  envelope?: QueuedEnvelope;
  message?: Uint8Array;
}

interface QueueAnswer {
  t: 'queue';
  id: number;
  result?: unknown;
  error?: { message: string; responseCode?: number };
}

/** A worker's spool: the primary's, over IPC (the message bytes travel as a structured-clone buffer). */
export class IpcQueue implements Queue {
  private nextId = 1;
  private readonly waiting = new Map<number, (a: QueueAnswer) => void>();

  constructor(private readonly channel: Channel) {
    channel.onMessage((m) => {
      const a = m as QueueAnswer;
      if (a?.t !== 'queue') return;
      const w = this.waiting.get(a.id);
      this.waiting.delete(a.id);
      w?.(a);
    });
  }

  private call(c: Omit<QueueCall, 't' | 'id'>): Promise<QueueAnswer> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.channel.send({ t: 'queue', id, ...c });
    });
  }

  async checkSpace(size: number): Promise<(Error & { responseCode: number }) | undefined> {
    const a = await this.call({ op: 'checkSpace', size });
    if (!a.error) return undefined;
    return Object.assign(new Error(a.error.message), { responseCode: a.error.responseCode ?? 451 });
  }

  async enqueue(envelope: QueuedEnvelope, message: Buffer): Promise<string> {
    const a = await this.call({ op: 'enqueue', envelope, message });
    if (a.error) throw Object.assign(new Error(a.error.message), { responseCode: a.error.responseCode ?? 451 });
    return a.result as string;
  }
}

/** Messages from the primary to a worker besides the limits' and the queue's. */
export type PrimaryOrder = { t: 'metrics'; id: number } | { t: 'upstream'; id: number } | { t: 'stop' } | { t: 'drain'; on: boolean };

/** Set to "1" in the environment of a worker forked while the relay drains (relay/control.ts). */
export const DRAINING_ENV = 'SMTP_RELAY_DRAINING';

/** Messages from a worker besides the limits' and the queue's. */
export type WorkerNotice =
  | { t: 'ready'; ports: Record<string, number> }
  | { t: 'metrics'; id: number; json: prom.MetricObjectWithValues<prom.MetricValue<string>>[] }
  /** Its upstream logins (relay/upstream-login.ts), for GET /upstream. */
  | { t: 'upstream'; id: number; record: LoginRecord };

/** A worker's answer to a question of its primary (metrics, upstream). */
type WorkerAnswer = Extract<WorkerNotice, { id: number }>;

// --- the primary ----------------------------------------------------------------------------

/** The worker entry point: this module's sibling main.js. */
const MAIN = path.join(path.dirname(new URL(import.meta.url).pathname), 'main.js');

/** Reforks of workers that died after start, within a minute, before the primary gives up. */
const MAX_REFORKS_PER_MINUTE = 5;

export async function runPrimary(file: string, first: RelaySettings, count: number, logger: pino.Logger): Promise<void> {
  let settings = first;
  const registry = new prom.Registry();
  prom.collectDefaultMetrics({ register: registry });
  const metrics = createMetrics(registry);
  const local = new LocalLimits({ limits: settings.limits, lockout: settings.auth.lockout }, (listener, reason) => {
    metrics.connectionsShed.inc({ listener, reason });
    logger.info({ event: 'connection_shed', listener, reason }, 'unauthenticated connection closed');
  });
  const sweep = setInterval(() => {
    local.sweep();
    metrics.unauthenticatedConnections.set(local.unauthenticatedCount);
  }, 1000);
  sweep.unref();

  let upstream: Upstream | undefined;
  let queue: QueueMode | undefined;
  try {
    if (settings.queue) {
      upstream = new Upstream(settings.upstream, { hostname: settings.hostname, dkim: settings.dkim, logger, registry });
      const up = upstream;
      queue = await startQueueMode(settings.queue, { deliver: (e, m) => up.deliver(e, m, { signed: true }), hostname: settings.hostname, logger, registry });
      logger.info({ event: 'queue_mode', directory: settings.queue.directory }, 'queue mode: a 250 once a message is in the spool (the primary stores and delivers)');
    }
  } catch (err) {
    logger.fatal({ event: 'startup_failed', err: (err as Error).message }, 'cannot start');
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(1);
  }

  cluster.setupPrimary({ exec: MAIN, args: ['serve', '--config', file], serialization: 'advanced' });
  const workers = new Map<number, { worker: Worker; ready: boolean }>();
  const limitServer = new LimitServer(local, (id, m) => {
    const w = workers.get(id)?.worker;
    if (w?.isConnected()) w.send(m as object);
  });
  const answerWaits = new Map<number, (a: WorkerAnswer) => void>();
  let nextAnswerId = 1;
  let stopping = false;
  let announced = false;
  let ports: Record<string, number> = {};
  let metricsServer: http.Server | undefined;
  const reforks: number[] = [];

  const answerQueue = async (w: Worker, c: QueueCall) => {
    const reply = (a: Omit<QueueAnswer, 't' | 'id'>) => {
      if (w.isConnected()) w.send({ t: 'queue', id: c.id, ...a });
    };
    const spool = queue?.spool;
    if (!spool) return reply({ error: { message: '4.3.0 The spool is not open', responseCode: 451 } });
    try {
      if (c.op === 'checkSpace') {
        const full = await spool.checkSpace(c.size ?? 0);
        return reply(full ? { error: { message: full.message, responseCode: full.responseCode } } : {});
      }
      const m = c.message!;
      const id = await spool.enqueue(c.envelope!, Buffer.from(m.buffer, m.byteOffset, m.byteLength));
      reply({ result: id });
    } catch (err) {
      const e = err as Error & { responseCode?: number };
      reply({ error: { message: e.message, responseCode: e.responseCode ?? 451 } });
    }
  };

  // the sibling channel is the primary's: it owns the limits and the spool
  let peers: Awaited<ReturnType<typeof startPeers>>;
  let gossip: LockoutGossip | undefined;
  try {
    peers = await startPeers(settings, logger, registry);
    if (peers) gossip = new LockoutGossip(peers.channel, local, { logger, registry }).start();
  } catch (err) {
    logger.fatal({ event: 'startup_failed', err: (err as Error).message }, 'cannot start the peer channel');
    process.exit(1);
  }

  // The drain (relay/control.ts): the primary owns the spool, so it serves the control
  // endpoints and the hand-off (on the sibling channel), and orders its workers to refuse or take mail.
  let control: Awaited<ReturnType<typeof startDrainControl>>;
  try {
    control = await startDrainControl({
      ...(settings.metrics.controlTokenFile ? { tokenFile: settings.metrics.controlTokenFile } : {}),
      ...(queue ? { queue } : {}),
      ...(peers ? { peers: peers.channel } : {}),
      maxMessageBytes: settings.limits.maxMessageSize,
      setIntake: (on) => {
        for (const w of workers.values()) if (w.worker.isConnected()) w.worker.send({ t: 'drain', on } satisfies PrimaryOrder);
      },
      // queue mode: the primary delivers (its own logins); inline mode: the workers do
      upstream: async () => {
        const answers = await askWorkers('upstream');
        return upstreamReport(settings.upstream, [...(upstream ? [upstream.loginRecord] : []), ...answers.flatMap((a) => (a ? [a.record] : []))]);
      },
      running: () => !stopping,
      logger,
      registry,
    });
  } catch (err) {
    logger.fatal({ event: 'startup_failed', err: (err as Error).message }, 'cannot start the drain control');
    process.exit(1);
  }

  // one set of TLS session-ticket keys for every worker (relay/certificate.ts useTicketKeys)
  const ticketKeys = crypto.randomBytes(48).toString('base64');
  const fork = () => {
    const worker = cluster.fork({ [TICKET_KEYS_ENV]: ticketKeys, [DRAINING_ENV]: control.drain.draining ? '1' : '0' });
    workers.set(worker.id, { worker, ready: false });
    worker.on('message', (m: LimitCall | QueueCall | WorkerNotice) => {
      if (m?.t === 'limits') limitServer.handle(worker.id, m);
      else if (m?.t === 'queue') void answerQueue(worker, m);
      else if (m?.t === 'metrics' || m?.t === 'upstream') answerWaits.get(m.id)?.(m);
      else if (m?.t === 'ready') {
        workers.get(worker.id)!.ready = true;
        // an order sent while it was starting may have been missed: the current state again
        worker.send({ t: 'drain', on: control.drain.draining } satisfies PrimaryOrder);
        ports = m.ports;
        if (!announced && [...workers.values()].every((w) => w.ready)) {
          announced = true;
          logger.info({ event: 'ready', ports, metricsPort: settings.metrics.port, workers: workers.size }, 'relay ready');
        }
      }
    });
  };

  cluster.on('exit', (worker, code, signal) => {
    const was = workers.get(worker.id);
    workers.delete(worker.id);
    const released = limitServer.releaseWorker(worker.id);
    if (stopping) return;
    logger.error({ event: 'worker_exited', worker: worker.id, pid: worker.process.pid, code, signal, connectionsReleased: released }, 'a worker exited');
    const now = Date.now();
    while (reforks.length && now - reforks[0]! > 60_000) reforks.shift();
    if (!announced || !was?.ready || reforks.length >= MAX_REFORKS_PER_MINUTE) {
      // a worker that cannot start (or keeps dying) will not do better the next time
      logger.fatal({ event: 'startup_failed', err: `worker exited with ${signal ?? code}` }, 'a worker could not start or keeps exiting');
      for (const w of workers.values()) w.worker.process.kill('SIGKILL');
      process.exit(1);
    }
    reforks.push(now);
    fork();
  });

  for (let i = 0; i < count; i++) fork();

  /** Asks every live worker (`t`: metrics or upstream); each answer, or undefined for one that did not answer within 3 s. */
  const askWorkers = <T extends WorkerAnswer['t']>(t: T): Promise<(Extract<WorkerAnswer, { t: T }> | undefined)[]> => {
    const live = [...workers.values()].filter((w) => w.worker.isConnected());
    return Promise.all(
      live.map(
        (w) =>
          new Promise<Extract<WorkerAnswer, { t: T }> | undefined>((resolve) => {
            const id = nextAnswerId++;
            const timer = setTimeout(() => {
              answerWaits.delete(id);
              resolve(undefined);
            }, 3000);
            answerWaits.set(id, (a) => {
              clearTimeout(timer);
              answerWaits.delete(id);
              resolve(a.t === t ? (a as Extract<WorkerAnswer, { t: T }>) : undefined);
            });
            w.worker.send({ t, id } satisfies PrimaryOrder);
          }),
      ),
    );
  };

  /** Every worker's metrics and the primary's, aggregated (counters summed, gauges as each metric's aggregator says). */
  const aggregated = async (): Promise<string> => {
    const own = await registry.getMetricsAsJSON();
    const answers = await askWorkers('metrics');
    return prom.AggregatorRegistry.aggregate([own, ...answers.map((a) => a?.json ?? [])]).metrics();
  };

  try {
    metricsServer = await startMetricsServer(
      { metrics: aggregated, contentType: registry.contentType },
      settings.metrics.address,
      settings.metrics.port,
      () => announced && !stopping && !control.drain.draining && workers.size > 0 && [...workers.values()].every((w) => w.ready),
      control.handler,
    );
  } catch (err) {
    logger.fatal({ event: 'startup_failed', err: (err as Error).message }, 'cannot listen');
    process.exit(1);
  }

  // The primary's part of a config reload: the limits and lockout settings, and in queue
  // mode the upstream it delivers to. Each worker reloads its own (relay/main.ts).
  let configWatch: FileWatch;
  const watchConfig = () =>
    watchFiles([file, ...(upstream ? upstreamFiles(settings) : [])], () => {
      let next: RelaySettings;
      try {
        next = loadConfig(file);
      } catch {
        return; // the workers log the refusal
      }
      local.update({ limits: next.limits, lockout: next.auth.lockout });
      if (peers && next.peers) peers.channel.update(next.peers);
      upstream?.reload(next.upstream, next.dkim).catch((err: unknown) => logger.error({ event: 'reload_failed', kind: 'upstream', err: (err as Error).message }, 'upstream settings refused'));
      const changed = upstreamFiles(settings).join('\0') !== upstreamFiles(next).join('\0');
      settings = { ...settings, limits: next.limits, auth: { ...settings.auth, lockout: next.auth.lockout }, upstream: next.upstream, dkim: next.dkim, shutdownGracePeriodMs: next.shutdownGracePeriodMs };
      if (changed) {
        configWatch.close();
        configWatch = watchConfig();
      }
    });
  configWatch = watchConfig();

  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ event: 'shutdown', signal, workers: workers.size, gracePeriodSeconds: settings.shutdownGracePeriodMs / 1000 }, 'shutting down');
    configWatch.close();
    const deadline = Date.now() + settings.shutdownGracePeriodMs;
    const exited = Promise.all([...workers.values()].map((w) => new Promise<void>((resolve) => (w.worker.isDead() ? resolve() : w.worker.once('exit', () => resolve())))));
    for (const w of workers.values()) if (w.worker.isConnected()) w.worker.send({ t: 'stop' } satisfies PrimaryOrder);
    // each worker drains within the grace period, then exits; a few seconds more for that
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, settings.shutdownGracePeriodMs + 5000)))]);
    clearTimeout(timer);
    for (const w of workers.values()) if (!w.worker.isDead()) w.worker.process.kill('SIGKILL');
    if (queue) await stopQueueMode(queue, Math.max(1000, deadline - Date.now())).catch(() => undefined);
    await upstream?.close().catch(() => undefined);
    await gossip?.close();
    peers?.identity.close();
    await peers?.channel.close().catch(() => undefined);
    clearInterval(sweep);
    metricsServer?.close();
    metricsServer?.closeAllConnections();
    logger.info({ event: 'stopped' }, 'stopped');
    logger.flush?.();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}
