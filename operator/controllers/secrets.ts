// Reading Secrets the relay references without caching their data:
// owned Secrets (labelled managed-by) come from the full cache; for the
// others the metadata-only cache says whether the Secret exists, and a GET
// reads it when it does. Creating is always a POST (create-only), never an
// apply: a user's Secret that appears meanwhile must not be overwritten.

import type { SecretLike } from '../builders/credentials.js';
import { type KubeObject, isConflict, resourcePath } from '../runtime/kube.js';
import { Secrets } from '../runtime/resources.js';
import { cachedChild, type ReconcileState, type SyncContext } from './context.js';

export type SecretObject = KubeObject & SecretLike;

export async function readSecret(ctx: SyncContext, st: ReconcileState, namespace: string, name: string): Promise<SecretObject | undefined> {
  st.referencedSecrets.add(`${namespace}/${name}`);
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
