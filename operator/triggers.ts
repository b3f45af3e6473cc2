// Which cache events reconcile which SmtpRelay: a relay's own spec changes,
// any change its children's cache keeps, a change to a Secret it reads, and
// the creation or deletion of a ServiceAccount its users log in as.

import { GROUP, KIND, type SmtpRelay } from './api/v1alpha1.js';
import type { Caches } from './controllers/context.js';
import { childChanged } from './caches.js';
import { serviceAccountReadKey } from './controllers/credentials/service-accounts.js';
import type { InformerGroup } from './runtime/informer.js';
import { type KubeObject, keyOf } from './runtime/kube.js';

type Enqueue = (relayKey: string) => void;

/** Hands every relevant event of `caches` to `enqueue` as the SmtpRelay key to reconcile. */
export function routeEvents(caches: Caches, index: SecretIndex, enqueue: Enqueue): void {
  caches.relays.on({
    add: (o: SmtpRelay & KubeObject) => enqueue(keyOf(o)),
    // Our own status writes change resourceVersion but not generation: no reconcile.
    update: (a, b) => {
      const am = a.metadata;
      const bm = b.metadata;
      if (am.generation !== bm.generation || am.deletionTimestamp !== bm.deletionTimestamp || JSON.stringify(am.labels) !== JSON.stringify(bm.labels)) enqueue(keyOf(b));
    },
    delete: (o) => enqueue(keyOf(o)),
  });
  for (const g of caches.children.values()) routeChildEvents(g, enqueue);
  const toReaders = (o: KubeObject) => {
    for (const k of index.relaysFor(keyOf(o))) enqueue(k);
  };
  caches.secretMeta.on({
    add: toReaders,
    update: (a, b) => {
      if (a.metadata?.resourceVersion !== b.metadata?.resourceVersion) toReaders(b);
    },
    delete: toReaders,
  });
  // A ServiceAccount's existence and uid are all a relay reads of it: updates don't matter.
  const toAccountUsers = (o: KubeObject) => {
    for (const k of index.relaysFor(serviceAccountReadKey(o.metadata?.namespace ?? '', o.metadata?.name ?? ''))) enqueue(k);
  };
  caches.serviceAccountMeta.on({ add: toAccountUsers, update: () => {}, delete: toAccountUsers });
}

/** A child's events reconcile its controlling SmtpRelay. */
export function routeChildEvents(children: InformerGroup<KubeObject>, enqueue: Enqueue): void {
  const toOwner = (o: KubeObject) => {
    const k = ownerKey(o);
    if (k) enqueue(k);
  };
  children.on({
    add: toOwner,
    // Only a change in what the cache keeps (caches.ts trimChild) matters: the
    // controller-manager's bookkeeping on Deployment status (observedGeneration,
    // updatedReplicas, condition timestamps) must not reconcile the relay.
    update: (a, b) => {
      if (childChanged(a, b)) toOwner(b);
    },
    delete: toOwner,
  });
}

/** The SmtpRelay key named by an object's controller ownerReference, if any. */
export function ownerKey(obj: KubeObject): string | undefined {
  const ref = obj.metadata?.ownerReferences?.find((r) => r.controller && r.kind === KIND && r.apiVersion.startsWith(`${GROUP}/`));
  return ref && obj.metadata?.namespace ? `${obj.metadata.namespace}/${ref.name}` : undefined;
}

/** Secret (namespace/name) or ServiceAccount (serviceAccountReadKey) → SmtpRelays that read it; maintained from each reconcile. */
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
