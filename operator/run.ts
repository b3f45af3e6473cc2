// What this replica runs while it leads: discover the optional APIs, fill the
// caches (caches.ts), route their events to the reconcile loop (triggers.ts,
// reconcile-loop.ts), and watch for optional APIs installed later. Two periodic
// pollers feed the loop too, each reconciling the relays whose input changed: the
// ServiceAccount issuer keys (issuer-keys.ts) and the relay pods' upstream logins
// (upstream-logins.ts).

import type { Logger } from 'pino';
import { FIELD_MANAGER, MANAGED_BY } from './api/v1alpha1.js';
import { cachingHasher, relayPasswordHasher, type PasswordHasher } from './builders/users.js';
import { createCaches, type OperatorCaches } from './caches.js';
import type { Features, OperatorOptions, SyncContext } from './controllers/context.js';
import { RelayReconciler } from './controllers/reconciler.js';
import { SecretDerivations } from './controllers/secrets.js';
import { OPTIONAL_APIS, discoverFeatures, served } from './discovery.js';
import { IssuerKeysRefresh, fetchIssuerKeys } from './issuer-keys.js';
import { UpstreamLogins } from './upstream-logins.js';
import type { OperatorMetrics } from './metrics.js';
import { reconcileQueue } from './reconcile-loop.js';
import { Applier } from './runtime/apply.js';
import type { Clock } from './runtime/clock.js';
import { EventRecorder } from './runtime/events.js';
import type { InformerGroup } from './runtime/informer.js';
import { type Kube, type KubeObject, apiVersionOf, keyOf } from './runtime/kube.js';
import type { WorkQueue } from './runtime/queue.js';
import { SecretIndex, routeChildEvents, routeEvents } from './triggers.js';

export interface RunOptions {
  kube: Kube;
  namespaces: string[] | undefined;
  identity: string;
  log: Logger;
  clock: Clock;
  metrics: OperatorMetrics;
  options: OperatorOptions;
  hasher?: PasswordHasher | undefined;
  workers?: number | undefined;
  watchdogMs?: number | undefined;
  discoveryIntervalMs?: number | undefined;
  /** How often the ServiceAccount issuer keys are fetched again; default 10 minutes (issuer-keys.ts). */
  issuerKeysRefreshMs?: number | undefined;
}

export class ControllerRun {
  /** Every informer started, including those added for late APIs: stop() stops them all. */
  private readonly informers: InformerGroup<KubeObject>[] = [];
  private queue: WorkQueue | undefined;
  private cancelDiscovery: (() => void) | undefined;
  private issuerKeys: IssuerKeysRefresh | undefined;
  private upstreamLogins: UpstreamLogins | undefined;
  private stopped = false;
  private running = false;
  private waiters: (() => void)[] = [];

  constructor(private readonly o: RunOptions) {}

  /** True once the caches are synced and the workers run, until halted or stopped. */
  isRunning(): boolean {
    return this.running;
  }

  whenRunning(): Promise<void> {
    return this.running ? Promise.resolve() : new Promise<void>((r) => this.waiters.push(r));
  }

  queueDepth(): number {
    return this.queue?.depth() ?? 0;
  }

  async start(): Promise<void> {
    const { kube, log } = this.o;
    const features = await discoverFeatures(kube);
    log.info({ features, namespaces: this.o.namespaces ?? 'all' }, 'starting controllers');
    const cache = createCaches(this.o, features);
    this.informers.push(...cache.informers);

    const index = new SecretIndex();
    // Relays with ServiceAccount users are reconciled again when the issuer's keys change.
    const issuerKeys = new IssuerKeysRefresh(() => fetchIssuerKeys(kube), this.o.clock, log, () => {
      for (const r of cache.caches.relays.list()) if (r.spec.auth.users.some((u) => u.serviceAccount)) this.queue?.add(keyOf(r));
    }, this.o.issuerKeysRefreshMs);
    this.issuerKeys = issuerKeys;
    const events = new EventRecorder({ kube, component: MANAGED_BY, instance: this.o.identity, clock: this.o.clock, log: (m, e) => log.warn(e ?? {}, m) });
    // Relays whose pods report a refused (or again accepted) upstream login are reconciled.
    const upstreamLogins = new UpstreamLogins({
      caches: cache.caches,
      events,
      clock: this.o.clock,
      log,
      onChange: (key) => this.queue?.add(key),
      ...(this.o.options.upstreamPollMs !== undefined ? { pollMs: this.o.options.upstreamPollMs } : {}),
      ...(this.o.options.relayPods ? { relayPods: this.o.options.relayPods } : {}),
    });
    this.upstreamLogins = upstreamLogins;
    const reconciler = new RelayReconciler(this.syncContext(cache, features, issuerKeys, events, upstreamLogins), log, (key, secrets, complete) => (complete ? index.set(key, secrets) : index.add(key, secrets)));
    const queue = reconcileQueue(reconciler, { workers: this.o.workers ?? 16, clock: this.o.clock, log });
    this.queue = queue;
    routeEvents(cache.caches, index, (key) => queue.add(key));

    for (const g of this.informers) g.start();
    // the first reconciles then have the keys (start never throws; a failure is retried on the refresh)
    await Promise.all([...this.informers.map((g) => g.waitForSync()), issuerKeys.start()]);
    if (this.stopped) return;
    log.info({ relays: cache.caches.relays.size() }, 'caches synced');
    queue.start();
    this.running = true;
    for (const w of this.waiters.splice(0)) w();
    this.watchLateApis(cache, features, queue);
    upstreamLogins.start();
  }

  /** Leadership lost: stop work at once, without waiting (another replica may lead already). */
  halt(): void {
    this.running = false;
    this.issuerKeys?.stop();
    this.upstreamLogins?.stop();
    void this.queue?.shutdown();
    for (const g of this.informers) void g.stop();
  }

  /** Graceful: finish reconciles in flight, then stop the informers. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelDiscovery?.();
    this.issuerKeys?.stop();
    this.upstreamLogins?.stop();
    await this.queue?.shutdown();
    await Promise.all(this.informers.map((g) => g.stop()));
    this.waiters = [];
  }

  private syncContext(cache: OperatorCaches, features: Features, issuerKeys: IssuerKeysRefresh, events: EventRecorder, upstreamLogins: UpstreamLogins): SyncContext {
    const { kube, clock, metrics } = this.o;
    return {
      kube,
      applier: new Applier({ kube, fieldManager: FIELD_MANAGER, onRecreate: (o) => metrics.recreateTotal.inc({ kind: o.kind ?? '' }) }),
      caches: cache.caches,
      events,
      metrics,
      hasher: this.o.hasher ?? cachingHasher(relayPasswordHasher),
      derived: new SecretDerivations(),
      clock,
      options: this.o.options,
      // Shared, not copied: watchLateApis turns a flag on once its API is served.
      features,
      issuerKeys,
      upstreamLogins,
    };
  }

  /**
   * cert-manager or prometheus-operator installed after we started: look again
   * now and then; once served, watch the kind and reconcile every relay (their
   * conditions said the API was missing).
   */
  private watchLateApis(cache: OperatorCaches, features: Features, queue: WorkQueue): void {
    const { kube, log, clock } = this.o;
    const rediscover = async () => {
      for (const o of OPTIONAL_APIS) {
        if (features[o.feature] || this.stopped) continue;
        if (!(await served(kube, apiVersionOf(o.resource), o.resource.plural).catch(() => false))) continue;
        const g = cache.childInformer(o.resource);
        routeChildEvents(g, (key) => queue.add(key));
        this.informers.push(g);
        g.start();
        await g.waitForSync();
        if (this.stopped) return;
        cache.caches.children.set(o.resource.kind, g);
        features[o.feature] = true;
        log.info({ kind: o.resource.kind, features }, 'API now served; watching it');
        for (const r of cache.caches.relays.list()) queue.add(keyOf(r));
      }
    };
    const again = () => {
      if (this.stopped || !this.running || (features.certManager && features.serviceMonitor)) return;
      this.cancelDiscovery = clock.setTimer(() => void rediscover().finally(again), this.o.discoveryIntervalMs ?? 60_000);
    };
    again();
  }
}
