// Wires the operator: informers → work queue → RelayReconciler, behind leader
// election, with the metrics/health server. startOperator() is what main.ts
// and the in-process integration tests call.

import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import pino, { type Logger } from 'pino';
import { FIELD_MANAGER, GROUP, KIND, LABEL_MANAGED_BY, MANAGED_BY, type SmtpRelay } from './api/v1alpha1.js';
import { cachingHasher, relayPasswordHasher, type PasswordHasher } from './builders/users.js';
import { RelayReconciler } from './controllers/reconciler.js';
import { SecretDerivations } from './controllers/secrets.js';
import { CERTIFICATE_POLL_MS } from './controllers/readiness/sync.js';
import type { Caches, Features, SyncContext } from './controllers/context.js';
import { OperatorMetrics, serveMetrics, RESULT_ERROR, RESULT_REQUEUE, RESULT_SUCCESS } from './metrics.js';
import { Applier } from './runtime/apply.js';
import { realClock, type Clock } from './runtime/clock.js';
import { EventRecorder } from './runtime/events.js';
import { InformerGroup } from './runtime/informer.js';
import { type Kube, type KubeObject, type Resource, apiVersionOf, isNotFound, keyOf } from './runtime/kube.js';
import { LeaderElector } from './runtime/leader.js';
import { WorkQueue } from './runtime/queue.js';
import { CORE_CHILD_RESOURCES, Certificates, SmtpRelays, Secrets, ServiceMonitors } from './runtime/resources.js';
import type { Server } from 'node:http';

export interface OperatorConfig {
  kube: Kube;
  /** Watched namespaces; undefined or empty = all. */
  namespaces?: string[];
  relayImage: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
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

async function served(kube: Kube, groupVersion: string, plural: string): Promise<boolean> {
  try {
    const list = await kube.get<{ resources?: { name: string }[] }>(`/apis/${groupVersion}`);
    return (list.resources ?? []).some((r) => r.name === plural);
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

/** The SmtpRelay key named by an object's controller ownerReference, if any. */
export function ownerKey(obj: KubeObject): string | undefined {
  const ref = obj.metadata?.ownerReferences?.find((r) => r.controller && r.kind === KIND && r.apiVersion.startsWith(`${GROUP}/`));
  return ref && obj.metadata?.namespace ? `${obj.metadata.namespace}/${ref.name}` : undefined;
}

/**
 * What the children cache keeps of a child (informer transform): everything the
 * appliers compare, but of a status only what the reconcile reads: a Deployment's
 * ready and available replica counts, a Certificate's conditions and
 * notAfter; no other status (a PodDisruptionBudget's, kept up to date by the
 * disruption controller as pods come and go, would otherwise reconcile the relay).
 */
export function trimChild(kind: string, obj: KubeObject): KubeObject {
  const o = obj as KubeObject & { status?: Record<string, unknown> };
  if (!o.status) return obj;
  if (kind === 'Deployment') {
    const { readyReplicas, availableReplicas } = o.status;
    o.status = {
      ...(readyReplicas !== undefined ? { readyReplicas } : {}),
      ...(availableReplicas !== undefined ? { availableReplicas } : {}),
    };
  } else if (kind === 'Certificate') {
    const { conditions, notAfter } = o.status as { conditions?: Array<Record<string, unknown>>; notAfter?: unknown };
    o.status = {
      ...(Array.isArray(conditions) ? { conditions: conditions.map(({ type, status, reason, message }) => ({ type, status, reason, message })) } : {}),
      ...(notAfter !== undefined ? { notAfter } : {}),
    };
  } else {
    delete o.status;
  }
  return obj;
}

/** Whether two cached versions of a child differ in more than their resourceVersion. */
export function childChanged(a: KubeObject, b: KubeObject): boolean {
  if (a.metadata?.resourceVersion === b.metadata?.resourceVersion) return false;
  const bare = (o: KubeObject) => JSON.stringify({ ...o, metadata: { ...o.metadata, resourceVersion: undefined } });
  return bare(a) !== bare(b);
}

/** Secret (namespace/name) → SmtpRelays that read it; maintained from each reconcile. */
export class SecretIndex {
  private readonly bySecret = new Map<string, Set<string>>();
  private readonly byRelay = new Map<string, Set<string>>();

  set(relayKey: string, secrets: Set<string>): void {
    for (const s of this.byRelay.get(relayKey) ?? []) {
      const relays = this.bySecret.get(s);
      relays?.delete(relayKey);
      if (relays?.size === 0) this.bySecret.delete(s);
    }
    if (secrets.size === 0) this.byRelay.delete(relayKey);
    else this.byRelay.set(relayKey, new Set(secrets));
    for (const s of secrets) {
      let relays = this.bySecret.get(s);
      if (!relays) this.bySecret.set(s, (relays = new Set()));
      relays.add(relayKey);
    }
  }

  /** Adds references without dropping the known ones. */
  add(relayKey: string, secrets: Set<string>): void {
    this.set(relayKey, new Set([...(this.byRelay.get(relayKey) ?? []), ...secrets]));
  }

  relaysFor(secretKey: string): string[] {
    return [...(this.bySecret.get(secretKey) ?? [])];
  }

  size(): number {
    return this.bySecret.size;
  }
}

export async function startOperator(cfg: OperatorConfig): Promise<RunningOperator> {
  const identity = cfg.identity ?? `${hostname()}_${randomUUID().slice(0, 8)}`;
  const log = (cfg.log ?? pino({ level: 'info' })).child({ identity });
  const clock = cfg.clock ?? realClock;
  const kube = cfg.kube;
  const namespaces = cfg.namespaces && cfg.namespaces.length > 0 ? cfg.namespaces : undefined;

  let queue: WorkQueue | undefined;
  const metrics = new OperatorMetrics({ defaultMetrics: true, queueDepth: () => queue?.depth() ?? 0 });
  let running = false;
  let stopped = false;
  let runningWaiters: (() => void)[] = [];
  const groups: InformerGroup<KubeObject>[] = [];
  let elector: LeaderElector | undefined;
  let server: Server | undefined;
  let cancelDiscovery: (() => void) | undefined;

  const health = {
    live: () => true,
    // A standby replica is ready (it serves metrics and waits); a leader once synced.
    ready: () => !stopped && (running || (cfg.leaderElect === true && !elector?.isLeader())),
  };
  if (cfg.metricsPort !== undefined) {
    server = await serveMetrics(metrics, health, cfg.metricsPort, cfg.metricsHost ?? '::');
  }
  const addr = server?.address();
  const metricsPort = addr && typeof addr === 'object' ? addr.port : undefined;

  async function startControllers(): Promise<void> {
    const features: Features = {
      certManager: await served(kube, 'cert-manager.io/v1', 'certificates'),
      serviceMonitor: await served(kube, 'monitoring.coreos.com/v1', 'servicemonitors'),
    };
    log.info({ features, namespaces: namespaces ?? 'all' }, 'starting controllers');
    const informerOpts = {
      kube,
      ...(cfg.watchdogMs !== undefined ? { watchdogMs: cfg.watchdogMs } : {}),
      clock,
      onError: (err: unknown, retryInMs: number) => log.warn({ err: String(err), retryInMs }, 'watch failed; retrying'),
    };
    const selector = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;
    const relays = new InformerGroup<SmtpRelay & KubeObject>(namespaces, { ...informerOpts, resource: SmtpRelays });
    const children = new Map<string, InformerGroup<KubeObject>>();
    const childResources = [...CORE_CHILD_RESOURCES];
    if (features.certManager) childResources.push(Certificates);
    if (features.serviceMonitor) childResources.push(ServiceMonitors);
    const childGroup = (r: Resource) =>
      new InformerGroup<KubeObject>(namespaces, { ...informerOpts, resource: r, labelSelector: selector, transform: (o) => trimChild(r.kind, o) });
    for (const r of childResources) children.set(r.kind, childGroup(r));
    // Memory: Secrets we own (labelled) are cached whole; for every other Secret
    // only PartialObjectMetadata is cached (a few hundred bytes each, managedFields
    // and annotations dropped, which may hold kubectl's last-applied copy of the
    // data). That tells us a referenced Secret appeared, changed or went away;
    // its data is read with a GET during the reconcile that needs it.
    const secretMeta = new InformerGroup<KubeObject>(namespaces, {
      ...informerOpts,
      resource: Secrets,
      metadataOnly: true,
      transform: (o) => {
        if (o.metadata) delete o.metadata.annotations;
        return o;
      },
    });
    const caches: Caches = { relays, children, secretMeta };
    groups.push(relays as unknown as InformerGroup<KubeObject>, ...children.values(), secretMeta);

    const ctx: SyncContext = {
      kube,
      applier: new Applier({ kube, fieldManager: FIELD_MANAGER, onRecreate: (o) => metrics.recreateTotal.inc({ kind: o.kind ?? '' }) }),
      caches,
      events: new EventRecorder({ kube, component: MANAGED_BY, instance: identity, clock, log: (m, e) => log.warn(e ?? {}, m) }),
      metrics,
      hasher: cfg.hasher ?? cachingHasher(relayPasswordHasher),
      derived: new SecretDerivations(),
      clock,
      options: { relayImage: cfg.relayImage, ...(cfg.imagePullPolicy ? { imagePullPolicy: cfg.imagePullPolicy } : {}) },
      features,
    };
    const index = new SecretIndex();
    const reconciler = new RelayReconciler(ctx, log, (key, secrets, complete) => (complete ? index.set(key, secrets) : index.add(key, secrets)));
    const q = new WorkQueue({
      workers: cfg.workers ?? 16,
      clock,
      onError: (key, err, retryInMs) => log.warn({ key, err: String(err), retryInMs }, 'reconcile failed; retrying'),
      handler: async (key) => {
        try {
          const r = await reconciler.reconcile(key);
          // "requeue": waiting for something outside our control (a certificate being issued).
          reconciler.recordResult(r.requeueAfterMs !== undefined && r.requeueAfterMs <= CERTIFICATE_POLL_MS ? RESULT_REQUEUE : RESULT_SUCCESS);
          return r;
        } catch (err) {
          reconciler.recordResult(RESULT_ERROR);
          throw err;
        }
      },
    });
    queue = q;

    relays.on({
      add: (o) => q.add(keyOf(o)),
      // Our own status writes change resourceVersion but not generation: no reconcile.
      update: (a, b) => {
        const am = a.metadata;
        const bm = b.metadata;
        if (am.generation !== bm.generation || am.deletionTimestamp !== bm.deletionTimestamp || JSON.stringify(am.labels) !== JSON.stringify(bm.labels)) q.add(keyOf(b));
      },
      delete: (o) => q.add(keyOf(o)),
    });
    const toOwner = (o: KubeObject) => {
      const k = ownerKey(o);
      if (k) q.add(k);
    };
    const watchChildren = (g: InformerGroup<KubeObject>) =>
      g.on({
        add: toOwner,
        // Only a change in what the cache keeps (trimChild) matters: the
        // controller-manager's bookkeeping on Deployment status (observedGeneration,
        // updatedReplicas, condition timestamps) must not reconcile the relay.
        update: (a, b) => {
          if (childChanged(a, b)) toOwner(b);
        },
        delete: toOwner,
      });
    for (const g of children.values()) watchChildren(g);
    const toReaders = (o: KubeObject) => {
      for (const k of index.relaysFor(keyOf(o))) q.add(k);
    };
    secretMeta.on({
      add: toReaders,
      update: (a, b) => {
        if (a.metadata?.resourceVersion !== b.metadata?.resourceVersion) toReaders(b);
      },
      delete: toReaders,
    });

    for (const g of groups) g.start();
    await Promise.all(groups.map((g) => g.waitForSync()));
    if (stopped) return;
    log.info({ relays: relays.size() }, 'caches synced');
    q.start();
    running = true;
    for (const w of runningWaiters.splice(0)) w();

    // cert-manager or prometheus-operator installed after we started: look again
    // now and then; once served, watch the kind and reconcile every relay (their
    // conditions said the API was missing).
    const optional = [
      { feature: 'certManager' as const, resource: Certificates },
      { feature: 'serviceMonitor' as const, resource: ServiceMonitors },
    ];
    const rediscover = async () => {
      for (const o of optional) {
        if (features[o.feature] || stopped) continue;
        if (!(await served(kube, apiVersionOf(o.resource), o.resource.plural).catch(() => false))) continue;
        const g = childGroup(o.resource);
        watchChildren(g);
        groups.push(g);
        g.start();
        await g.waitForSync();
        if (stopped) return;
        children.set(o.resource.kind, g);
        features[o.feature] = true;
        log.info({ kind: o.resource.kind, features }, 'API now served; watching it');
        for (const r of relays.list()) q.add(keyOf(r));
      }
    };
    const again = () => {
      if (stopped || !running || (features.certManager && features.serviceMonitor)) return;
      cancelDiscovery = clock.setTimer(() => void rediscover().finally(again), cfg.discoveryIntervalMs ?? 60_000);
    };
    again();
  }

  const begin = () =>
    startControllers().catch((err) => {
      log.error({ err: String(err) }, 'controllers failed to start');
      if (!stopped) (cfg.onLostLeadership ?? (() => process.exit(1)))();
    });

  if (cfg.leaderElect) {
    elector = new LeaderElector({
      kube,
      namespace: cfg.leaseNamespace ?? 'default',
      name: cfg.leaseName ?? MANAGED_BY,
      identity,
      leaseDurationMs: cfg.leaseDurationMs ?? 15_000,
      renewDeadlineMs: cfg.renewDeadlineMs ?? 10_000,
      retryPeriodMs: cfg.retryPeriodMs ?? 2_000,
      clock,
      log: (m, e) => log.warn(e ?? {}, m),
      onNewLeader: (id) => log.info({ leader: id }, 'leader observed'),
      onStartedLeading: () => {
        metrics.leader.set(1);
        log.info('became leader');
        void begin();
      },
      onStoppedLeading: () => {
        metrics.leader.set(0);
        log.error('lost leadership; stopping');
        // Stop work now, whatever onLostLeadership does: another replica may lead already.
        running = false;
        void queue?.shutdown();
        for (const g of groups) void g.stop();
        (cfg.onLostLeadership ?? (() => process.exit(1)))();
      },
    });
    elector.start();
  } else {
    metrics.leader.set(1);
    void begin();
  }

  return {
    identity,
    metrics,
    metricsPort,
    isLeader: () => (elector ? elector.isLeader() : true),
    whenRunning: () => (running ? Promise.resolve() : new Promise<void>((r) => runningWaiters.push(r))),
    async stop() {
      if (stopped) return;
      stopped = true;
      log.info('stopping');
      cancelDiscovery?.();
      await queue?.shutdown();
      await Promise.all(groups.map((g) => g.stop()));
      await elector?.release();
      metrics.leader.set(0);
      if (server) await new Promise<void>((r) => server!.close(() => r()));
      runningWaiters = [];
      log.info('stopped');
    },
  };
}
