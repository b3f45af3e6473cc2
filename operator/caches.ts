// The informers a reconcile reads from (controllers/context.ts Caches): the
// SmtpRelays, the children by kind (managed-by label), and every Secret's and
// ServiceAccount's metadata. What each keeps is trimmed, so memory grows with what the
// reconcile reads and status churn on children triggers nothing.

import type { Logger } from 'pino';
import { LABEL_MANAGED_BY, MANAGED_BY, type SmtpRelay } from './api/v1alpha1.js';
import type { Caches, Features } from './controllers/context.js';
import type { OperatorMetrics } from './metrics.js';
import type { Clock } from './runtime/clock.js';
import { InformerGroup, type ListReason } from './runtime/informer.js';
import type { Kube, KubeObject, Resource } from './runtime/kube.js';
import { CORE_CHILD_RESOURCES, Certificates, Secrets, ServiceAccounts, ServiceMonitors, SmtpRelays } from './runtime/resources.js';

export interface CacheOptions {
  kube: Kube;
  /** Watched namespaces; undefined = all. */
  namespaces: string[] | undefined;
  clock: Clock;
  /** Informer watchdog: relist after this much silence. */
  watchdogMs?: number | undefined;
  log: Logger;
  /** Counts each informer's lists (smtp_relay_operator_informer_lists_total). */
  metrics?: OperatorMetrics | undefined;
}

export interface OperatorCaches {
  caches: Caches;
  /** Every informer above, to start, sync and stop together. */
  informers: InformerGroup<KubeObject>[];
  /** A children informer for one more kind (an optional API served later; run.ts). */
  childInformer: (resource: Resource) => InformerGroup<KubeObject>;
}

/** The informers for the kinds `features` says are served; not started. */
export function createCaches(o: CacheOptions, features: Features): OperatorCaches {
  const informerOpts = (r: Resource) => ({
    kube: o.kube,
    ...(o.watchdogMs !== undefined ? { watchdogMs: o.watchdogMs } : {}),
    clock: o.clock,
    onError: (err: unknown, retryInMs: number) => o.log.warn({ resource: r.plural, err: String(err), retryInMs }, 'watch failed; retrying'),
    onList: (count: number, reason: ListReason) => {
      o.metrics?.informerLists.inc({ resource: r.plural, reason });
      if (reason !== 'initial') o.log.info({ resource: r.plural, reason, count }, 'relisted');
    },
  });
  const selector = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;
  const relays = new InformerGroup<SmtpRelay & KubeObject>(o.namespaces, { ...informerOpts(SmtpRelays), resource: SmtpRelays });
  const childInformer = (r: Resource) =>
    new InformerGroup<KubeObject>(o.namespaces, { ...informerOpts(r), resource: r, labelSelector: selector, transform: (obj) => trimChild(r.kind, obj) });
  const children = new Map<string, InformerGroup<KubeObject>>();
  const childResources = [...CORE_CHILD_RESOURCES];
  if (features.certManager) childResources.push(Certificates);
  if (features.serviceMonitor) childResources.push(ServiceMonitors);
  for (const r of childResources) children.set(r.kind, childInformer(r));
  // Memory: Secrets we own (labelled) are cached whole; for every other Secret
  // only PartialObjectMetadata is cached (a few hundred bytes each, managedFields
  // and annotations dropped, which may hold kubectl's last-applied copy of the
  // data). That tells us a referenced Secret appeared, changed or went away;
  // its data is read with a GET during the reconcile that needs it.
  const secretMeta = new InformerGroup<KubeObject>(o.namespaces, {
    ...informerOpts(Secrets),
    resource: Secrets,
    metadataOnly: true,
    transform: (obj) => {
      if (obj.metadata) delete obj.metadata.annotations;
      return obj;
    },
  });
  // Every ServiceAccount's metadata (name, namespace, uid: a few hundred bytes each), for
  // the users that log in with a ServiceAccount token: one deleted or re-created takes
  // its user out of the relay, or changes the uid its tokens must carry, at once.
  const serviceAccountMeta = new InformerGroup<KubeObject>(o.namespaces, {
    ...informerOpts(ServiceAccounts),
    resource: ServiceAccounts,
    metadataOnly: true,
    transform: (obj) => {
      if (obj.metadata) {
        delete obj.metadata.annotations;
        delete obj.metadata.labels;
      }
      return obj;
    },
  });
  return {
    caches: { relays, children, secretMeta, serviceAccountMeta },
    informers: [relays as unknown as InformerGroup<KubeObject>, ...children.values(), secretMeta, serviceAccountMeta],
    childInformer,
  };
}

/**
 * What the children cache keeps of a child (informer transform): everything the
 * appliers compare, but of a status only what the reconcile reads: a Deployment's or StatefulSet's
 * ready and available replica counts, a Certificate's conditions and
 * notAfter; no other status (a PodDisruptionBudget's, kept up to date by the
 * disruption controller as pods come and go, would otherwise reconcile the relay).
 */
export function trimChild(kind: string, obj: KubeObject): KubeObject {
  const o = obj as KubeObject & { status?: Record<string, unknown> };
  if (!o.status) return obj;
  if (kind === 'Deployment' || kind === 'StatefulSet') {
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
