// What every phase of a reconcile gets: clients, caches, recorders and
// options (SyncContext), and the relay it works on (ReconcileScope).

import type { Logger } from 'pino';
import type { SmtpRelay } from '../api/v1alpha1.js';
import type { PasswordHasher } from '../builders/users.js';
import type { Applier } from '../runtime/apply.js';
import type { Clock } from '../runtime/clock.js';
import type { EventRecorder } from '../runtime/events.js';
import type { InformerGroup } from '../runtime/informer.js';
import { FROM_WATCH_CACHE, type Kube, type KubeObject, resourcePath } from '../runtime/kube.js';
import { resourceForKind } from '../runtime/resources.js';
import { KIND, LABEL_MANAGED_BY, MANAGED_BY } from '../api/v1alpha1.js';
import type { IssuerKeys } from '../issuer-keys.js';
import type { RefusedPod, RelayPod } from '../upstream-logins.js';
import type { OperatorMetrics } from '../metrics.js';
import type { SecretDerivations } from './secrets.js';
import type { OperatorPods } from '../builders/networkpolicy.js';

export interface Caches {
  relays: InformerGroup<SmtpRelay & KubeObject>;
  /** Children by kind, watched with the managed-by label selector (full objects). */
  children: Map<string, InformerGroup<KubeObject>>;
  /** Every Secret in the watched namespaces, metadata only (PartialObjectMetadata). */
  secretMeta: InformerGroup<KubeObject>;
  /** Every ServiceAccount in the watched namespaces, metadata only (for ServiceAccount-token users). */
  serviceAccountMeta: InformerGroup<KubeObject>;
}

export interface OperatorOptions {
  relayImage: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** The operator's own pods (namespace, labels), admitted by each relay's NetworkPolicy to the metrics port. */
  operatorPods?: OperatorPods;
  /** How often a drain in progress is looked at again; default controllers/relay/drain.ts DRAIN_POLL_MS. */
  drainPollMs?: number;
  /**
   * TEST ONLY: where to reach a pod's control endpoints instead of <podIP>:<metrics port>
   * (the operator tests play the relay pods with loopback HTTP servers). Undefined = the pod IP.
   */
  podAddress?: (pod: { metadata: { name: string; namespace: string }; status?: { podIP?: string } }) => string | undefined;
  /** How often each relay pod is asked for its upstream login state (GET /upstream); default operator/upstream-logins.ts UPSTREAM_POLL_MS. */
  upstreamPollMs?: number;
  /**
   * TEST ONLY: a relay's pods' control endpoints (address, pod name) instead of the DNS
   * records of its headless Service (the operator tests have no cluster DNS).
   */
  relayPods?: (relay: SmtpRelay) => Promise<RelayPod[]>;
}

export interface Features {
  /** cert-manager.io/v1 is served: Certificates can be created and watched. */
  certManager: boolean;
  /** monitoring.coreos.com/v1 ServiceMonitor is served. */
  serviceMonitor: boolean;
}

export interface SyncContext {
  kube: Kube;
  applier: Applier;
  caches: Caches;
  events: EventRecorder;
  metrics: OperatorMetrics;
  hasher: PasswordHasher;
  /** Non-secret values derived from referenced Secrets, per resourceVersion (secrets.ts). */
  derived: SecretDerivations;
  clock: Clock;
  options: OperatorOptions;
  features: Features;
  /** The cluster's ServiceAccount token issuer keys (operator/issuer-keys.ts); absent = not fetched (no ServiceAccount logins). */
  issuerKeys?: { readonly keys: IssuerKeys | undefined; readonly error: string | undefined };
  /** What the relay pods report of their upstream logins (operator/upstream-logins.ts); absent = not polled. */
  upstreamLogins?: { refused(relayKey: string): RefusedPod[] | undefined };
}

/**
 * One reconcile's fixed inputs. The phases pass their results to one another
 * through return values (reconciler.ts); `reads` is only a record of the
 * Secrets read so far, added to by the Secret readers (secrets.ts) and read by
 * the reconciler, even when a phase throws, for the Secret → relay index.
 */
export interface ReconcileScope {
  readonly relay: SmtpRelay & KubeObject;
  readonly log: Logger;
  /** Secrets (namespace/name) and ServiceAccounts (serviceAccountReadKey) this relay reads. */
  readonly reads: Set<string>;
}

/** The cached child of a kind, or undefined. */
export function cachedChild(ctx: SyncContext, kind: string, namespace: string, name: string): KubeObject | undefined {
  return ctx.caches.children.get(kind)?.get(namespace, name);
}

/** Applies one child if it differs from the cache; counts what happened. */
export async function applyChild(ctx: SyncContext, scope: ReconcileScope, desired: KubeObject): Promise<void> {
  const kind = desired.kind ?? '';
  const resource = resourceForKind(kind);
  if (!resource) throw new Error(`no API resource known for kind ${kind}`);
  const ns = desired.metadata?.namespace ?? '';
  const name = desired.metadata?.name ?? '';
  const cached = cachedChild(ctx, kind, ns, name);
  // The cache holds only labelled objects: a miss may still be someone else's object
  // of that name, which a forced apply would take over (and an immutable-field
  // rejection would delete). Look before writing; the API server's watch cache
  // answers (no etcd read: a new relay makes ten such lookups), which is as good
  // as any GET here: an object could appear between the look and the write anyway.
  const existing = cached ?? (await ctx.kube.getOrUndefined<KubeObject>(resourcePath(resource, ns, name), { query: FROM_WATCH_CACHE }));
  const foreign = existing && notOurs(ctx, scope.relay, existing);
  if (foreign) throw new Error(`${kind} ${name} exists and is not managed by this SmtpRelay (${foreign}); delete or rename it, or rename the SmtpRelay`);
  const outcome = await ctx.applier.apply(resource, desired, cached);
  if (outcome !== 'unchanged') {
    ctx.metrics.applyTotal.inc({ kind, outcome });
    scope.log.info({ kind, child: name, outcome }, 'child written');
  }
}

/**
 * Why an existing object must not be written as this relay's child, or
 * undefined when it is ours: controlled by this relay, or left by the operator
 * (managed-by label) with no live controller (e.g. orphaned by a relay deleted
 * with --cascade=orphan). Never someone else's object or another relay's child.
 */
export function notOurs(ctx: SyncContext, relay: SmtpRelay & KubeObject, obj: KubeObject): string | undefined {
  const owner = obj.metadata?.ownerReferences?.find((r) => r.controller);
  if (owner?.uid === relay.metadata.uid) return undefined;
  if (obj.metadata?.labels?.[LABEL_MANAGED_BY] !== MANAGED_BY) return 'it has no app.kubernetes.io/managed-by=smtp-relay-operator label';
  if (!owner) return undefined;
  const live = owner.kind === KIND && ctx.caches.relays.list(relay.metadata.namespace).some((r) => r.metadata.uid === owner.uid);
  return live || owner.kind !== KIND ? `it is controlled by ${owner.kind} ${owner.name}` : undefined;
}
