// The ServiceAccounts that users log in as (spec.auth.users[].serviceAccount): whether each
// exists, and its uid. The relay verifies tokens offline, so without this a deleted
// ServiceAccount's tokens would work until they expire, and the tokens of a deleted one
// would work again for an account re-created under the same name. The API server refuses
// both online (it looks the account up, uid included); the operator does it for the relay:
// a missing account leaves its user out of the users file, and the uid goes in beside the
// name, so the relay refuses a token whose `kubernetes.io.serviceaccount.uid` differs.
//
// Read from the metadata-only ServiceAccount cache (caches.ts) when its namespace is
// watched, else with a GET; either way the read is recorded, so a ServiceAccount's
// creation or deletion reconciles the relays that name it (triggers.ts).

import { Reason, type UserSpec } from '../../api/v1alpha1.js';
import type { UserProblem } from '../../status/decisions.js';
import { KubeError, type KubeObject, resourcePath } from '../../runtime/kube.js';
import { ServiceAccounts } from '../../runtime/resources.js';
import type { ReconcileScope, SyncContext } from '../context.js';

/** The key of a ServiceAccount read in ReconcileScope.reads (Secrets are plain "namespace/name"). */
export function serviceAccountReadKey(namespace: string, name: string): string {
  return `ServiceAccount:${namespace}/${name}`;
}

/** The ServiceAccount's uid; undefined when it does not exist. Throws when it cannot be read. */
async function readServiceAccountUid(ctx: SyncContext, scope: ReconcileScope, namespace: string, name: string): Promise<string | undefined> {
  scope.reads.add(serviceAccountReadKey(namespace, name));
  const meta = ctx.caches.serviceAccountMeta;
  if (meta.watches(namespace) && meta.hasSynced()) return meta.get(namespace, name)?.metadata?.uid;
  const sa = await ctx.kube.getOrUndefined<KubeObject>(resourcePath(ServiceAccounts, namespace, name));
  return sa?.metadata?.uid;
}

/**
 * Each ServiceAccount user's account uid (user name → uid), or the problem that leaves the
 * user out: the account does not exist, or cannot be read (RBAC, with --namespaces).
 */
export async function serviceAccountUids(ctx: SyncContext, scope: ReconcileScope, users: readonly UserSpec[]): Promise<{ uids: Map<string, string>; problems: UserProblem[] }> {
  const uids = new Map<string, string>();
  const problems: UserProblem[] = [];
  for (const user of users) {
    const ref = user.serviceAccount;
    if (!ref) continue;
    let uid: string | undefined;
    try {
      uid = await readServiceAccountUid(ctx, scope, ref.namespace, ref.name);
    } catch (err) {
      const why = err instanceof KubeError ? `${err.code} ${err.reason}` : String(err);
      problems.push({ user: user.name, reason: Reason.ServiceAccountNotFound, message: `cannot read ServiceAccount ${ref.namespace}/${ref.name} (${why}); the operator needs get on serviceaccounts in namespace ${ref.namespace}` });
      continue;
    }
    if (uid === undefined) {
      problems.push({ user: user.name, reason: Reason.ServiceAccountNotFound, message: `ServiceAccount ${ref.namespace}/${ref.name} does not exist; its tokens are refused` });
      continue;
    }
    uids.set(user.name, uid);
  }
  return { uids, problems };
}
