// Reading Secrets the relay references without caching their data:
// owned Secrets (labelled managed-by) come from the full cache; for the
// others the metadata-only cache says whether the Secret exists, and a GET
// reads it when it does. Where a reconcile needs only something derived from
// a Secret (a certificate's notAfter, whether it is well formed), that
// derived value is remembered per resourceVersion, so an unchanged Secret
// costs no GET (at 1,000 relays every reconcile paid one for the TLS Secret). Creating is always a POST (create-only), never an
// apply: a user's Secret that appears meanwhile must not be overwritten.

import type { SecretLike } from '../builders/credentials.js';
import { type KubeObject, isConflict, resourcePath } from '../runtime/kube.js';
import { Secrets } from '../runtime/resources.js';
import { cachedChild, type ReconcileScope, type SyncContext } from './context.js';

export type SecretObject = KubeObject & SecretLike;

export async function readSecret(ctx: SyncContext, scope: ReconcileScope, namespace: string, name: string): Promise<SecretObject | undefined> {
  scope.reads.add(`${namespace}/${name}`);
  const owned = cachedChild(ctx, 'Secret', namespace, name);
  if (owned) return owned as SecretObject;
  const meta = ctx.caches.secretMeta;
  if (meta.hasSynced() && !meta.get(namespace, name)) return undefined;
  return ctx.kube.getOrUndefined<SecretObject>(resourcePath(Secrets, namespace, name));
}

/** Creates the Secret unless one of that name exists; returns what is there afterwards and whether we created it. */
export async function createSecretIfAbsent(ctx: SyncContext, secret: KubeObject): Promise<{ secret: SecretObject; created: boolean }> {
  const ns = secret.metadata?.namespace ?? '';
  try {
    const created = await ctx.kube.request<SecretObject>('POST', resourcePath(Secrets, ns), { body: secret });
    return { secret: created, created: true };
  } catch (err) {
    if (!isConflict(err)) throw err;
    const existing = await ctx.kube.get<SecretObject>(resourcePath(Secrets, ns, secret.metadata?.name ?? ''));
    return { secret: existing, created: false };
  }
}

/**
 * Values derived from Secrets (never their data), by purpose and namespace/name,
 * each valid for one resourceVersion. Bounded: the oldest entries go first.
 */
export class SecretDerivations {
  private readonly entries = new Map<string, { rv: string; value: unknown }>();
  constructor(private readonly maxEntries = 20_000) {}

  get(key: string, rv: string): { value: unknown } | undefined {
    const e = this.entries.get(key);
    return e && e.rv === rv ? { value: e.value } : undefined;
  }

  set(key: string, rv: string, value: unknown): void {
    this.entries.delete(key);
    this.entries.set(key, { rv, value });
    if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
  }

  size(): number {
    return this.entries.size;
  }
}

/**
 * `derive(secret)` for a referenced Secret (undefined when it does not exist),
 * without a GET when the metadata cache shows the resourceVersion the value was
 * derived from. `derive` must return nothing secret: the value is kept in memory.
 */
export async function readSecretDerived<T>(
  ctx: SyncContext,
  scope: ReconcileScope,
  namespace: string,
  name: string,
  purpose: string,
  derive: (secret: SecretObject | undefined) => T,
): Promise<T> {
  scope.reads.add(`${namespace}/${name}`);
  const owned = cachedChild(ctx, 'Secret', namespace, name);
  if (owned) return derive(owned as SecretObject);
  const meta = ctx.caches.secretMeta;
  const synced = meta.hasSynced();
  const cachedMeta = synced ? meta.get(namespace, name) : undefined;
  if (synced && !cachedMeta) return derive(undefined);
  const key = `${purpose}\0${namespace}/${name}`;
  const rv = cachedMeta?.metadata?.resourceVersion;
  const hit = rv ? ctx.derived.get(key, rv) : undefined;
  if (hit) return hit.value as T;
  const secret = await ctx.kube.getOrUndefined<SecretObject>(resourcePath(Secrets, namespace, name));
  const value = derive(secret);
  const fetchedRv = secret?.metadata?.resourceVersion;
  if (fetchedRv) ctx.derived.set(key, fetchedRv, value);
  return value;
}
