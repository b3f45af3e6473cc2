// startOperator(), what main.ts and the in-process integration tests call,
// in four parts:
//   serveHealth     /metrics, /healthz, /readyz (metrics.ts), on every replica
//   electLeader     a Lease (runtime/leader.ts); only the leader runs the controllers
//   ControllerRun   (run.ts) informers → work queue → RelayReconciler while leading
//   stop()          the reverse: workers, informers, the Lease, the server

import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import pino, { type Logger } from 'pino';
import { MANAGED_BY } from './api/v1alpha1.js';
import type { PasswordHasher } from './builders/users.js';
import { OperatorMetrics, serveMetrics } from './metrics.js';
import { ControllerRun } from './run.js';
import { realClock, type Clock } from './runtime/clock.js';
import type { Kube } from './runtime/kube.js';
import type { OperatorOptions } from './controllers/context.js';
import { LeaderElector } from './runtime/leader.js';

export interface OperatorConfig {
  kube: Kube;
  /** Watched namespaces; undefined or empty = all. */
  namespaces?: string[];
  relayImage: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** The operator's own pods, admitted to the relays' metrics port (their control endpoints). */
  operatorPods?: OperatorOptions['operatorPods'];
  /** Drain poll interval (tests). */
  drainPollMs?: number;
  /** How often each relay pod is asked for its upstream login state; default 60 s (tests: less). */
  upstreamPollMs?: number;
  /** TEST ONLY: a relay's pods' control endpoints instead of its headless Service's DNS records (see OperatorOptions.relayPods). */
  relayPods?: OperatorOptions['relayPods'];
  /** TEST ONLY: map a relay pod to the address of its control endpoints (see OperatorOptions.podAddress). */
  podAddress?: OperatorOptions['podAddress'];
  workers?: number;
  /** 0 picks a free port; undefined = no metrics server. */
  metricsPort?: number;
  metricsHost?: string;
  leaderElect?: boolean;
  leaseName?: string;
  leaseNamespace?: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  identity?: string;
  log?: Logger;
  clock?: Clock;
  hasher?: PasswordHasher;
  /** Informer watchdog: relist after this much silence. */
  watchdogMs?: number;
  /** How often to look again for optional APIs (cert-manager, ServiceMonitor) not served at start. Default 60 s. */
  discoveryIntervalMs?: number;
  /** How often to fetch the cluster's ServiceAccount issuer keys again. Default 10 min. */
  issuerKeysRefreshMs?: number;
  /** Called when leadership is lost; default exits the process with status 1. */
  onLostLeadership?: () => void;
}

export interface RunningOperator {
  readonly identity: string;
  readonly metrics: OperatorMetrics;
  /** Port of the metrics server, when one runs. */
  readonly metricsPort: number | undefined;
  isLeader(): boolean;
  /** Resolves once this instance leads and its caches are synced. */
  whenRunning(): Promise<void>;
  /** Graceful: stop workers (finish in-flight), stop informers, release the lease, close the server. */
  stop(): Promise<void>;
}

export async function startOperator(cfg: OperatorConfig): Promise<RunningOperator> {
  const identity = cfg.identity ?? `${hostname()}_${randomUUID().slice(0, 8)}`;
  const log = (cfg.log ?? pino({ level: 'info' })).child({ identity });
  const clock = cfg.clock ?? realClock;
  const lostLeadership = cfg.onLostLeadership ?? (() => process.exit(1));
  let stopped = false;
  let elector: LeaderElector | undefined;

  // queueDepth is read at scrape time, once `controllers` exists.
  const metrics: OperatorMetrics = new OperatorMetrics({ defaultMetrics: true, queueDepth: (): number => controllers.queueDepth() });
  const controllers: ControllerRun = new ControllerRun({
    kube: cfg.kube,
    namespaces: cfg.namespaces && cfg.namespaces.length > 0 ? cfg.namespaces : undefined,
    identity,
    log,
    clock,
    metrics,
    options: {
      relayImage: cfg.relayImage,
      ...(cfg.imagePullPolicy ? { imagePullPolicy: cfg.imagePullPolicy } : {}),
      ...(cfg.operatorPods ? { operatorPods: cfg.operatorPods } : {}),
      ...(cfg.drainPollMs !== undefined ? { drainPollMs: cfg.drainPollMs } : {}),
      ...(cfg.podAddress ? { podAddress: cfg.podAddress } : {}),
      ...(cfg.upstreamPollMs !== undefined ? { upstreamPollMs: cfg.upstreamPollMs } : {}),
      ...(cfg.relayPods ? { relayPods: cfg.relayPods } : {}),
    },
    hasher: cfg.hasher,
    workers: cfg.workers,
    watchdogMs: cfg.watchdogMs,
    discoveryIntervalMs: cfg.discoveryIntervalMs,
    issuerKeysRefreshMs: cfg.issuerKeysRefreshMs,
  });

  // A standby replica is ready (it serves metrics and waits); a leader once synced.
  const ready = () => !stopped && (controllers.isRunning() || (cfg.leaderElect === true && !elector?.isLeader()));
  const server = await serveHealth(cfg, metrics, ready);

  const begin = () =>
    controllers.start().catch((err) => {
      log.error({ err: String(err) }, 'controllers failed to start');
      if (!stopped) lostLeadership();
    });
  if (cfg.leaderElect) {
    elector = electLeader(cfg, identity, clock, log, {
      started: () => {
        metrics.leader.set(1);
        log.info('became leader');
        void begin();
      },
      stopped: () => {
        metrics.leader.set(0);
        log.error('lost leadership; stopping');
        // Stop work now, whatever onLostLeadership does: another replica may lead already.
        controllers.halt();
        lostLeadership();
      },
    });
    elector.start();
  } else {
    metrics.leader.set(1);
    void begin();
  }

  const addr = server?.address();
  return {
    identity,
    metrics,
    metricsPort: addr && typeof addr === 'object' ? addr.port : undefined,
    isLeader: () => (elector ? elector.isLeader() : true),
    whenRunning: () => controllers.whenRunning(),
    async stop() {
      if (stopped) return;
      stopped = true;
      log.info('stopping');
      await controllers.stop();
      await elector?.release();
      metrics.leader.set(0);
      if (server) await new Promise<void>((r) => server.close(() => r()));
      log.info('stopped');
    },
  };
}

/** The metrics and health server, when cfg.metricsPort is set. */
async function serveHealth(cfg: OperatorConfig, metrics: OperatorMetrics, ready: () => boolean): Promise<Server | undefined> {
  if (cfg.metricsPort === undefined) return undefined;
  return serveMetrics(metrics, { live: () => true, ready }, cfg.metricsPort, cfg.metricsHost ?? '::');
}

/** The Lease election, not yet started; `started`/`stopped` follow this replica's leadership. */
function electLeader(cfg: OperatorConfig, identity: string, clock: Clock, log: Logger, on: { started: () => void; stopped: () => void }): LeaderElector {
  return new LeaderElector({
    kube: cfg.kube,
    namespace: cfg.leaseNamespace ?? 'default',
    name: cfg.leaseName ?? MANAGED_BY,
    identity,
    leaseDurationMs: cfg.leaseDurationMs ?? 15_000,
    renewDeadlineMs: cfg.renewDeadlineMs ?? 10_000,
    retryPeriodMs: cfg.retryPeriodMs ?? 2_000,
    clock,
    log: (m, e) => log.warn(e ?? {}, m),
    onNewLeader: (id) => log.info({ leader: id }, 'leader observed'),
    onStartedLeading: on.started,
    onStoppedLeading: on.stopped,
  });
}
