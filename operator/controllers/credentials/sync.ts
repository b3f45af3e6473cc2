// Credentials: users' passwords (generated and owned when absent, only read
// when present, refused below the policy), the hashed users Secret, the
// upstream credentials/CA Secrets, and the DKIM keys.
// Conditions owned here: CredentialsReady, UpstreamReady, DkimReady.

import { ConditionType, Reason, type UserSpec } from '../../api/v1alpha1.js';
import {
  buildGeneratedUserSecret,
  checkPassword,
  checkUpstreamCaSecret,
  checkUpstreamCredentialsSecret,
  generatePassword,
  generatedPasswordLength,
  isGeneratedPassword,
  readUserPassword,
} from '../../builders/credentials.js';
import { childNames, userSecretName } from '../../builders/meta.js';
import type { Problem } from '../../builders/credentials.js';
import { conditionFromProblems, credentialsCondition, type UserProblem } from '../../builders/status.js';
import { buildUsersFile, buildUsersSecret, readUsersSecret } from '../../builders/users.js';
import { cachedChild, decide, type ReconcileState, type SyncContext } from '../context.js';
import { createSecretIfAbsent, readSecret, readSecretDerived } from '../secrets.js';
import { syncDkim } from './dkim.js';

export const CONTROLLER = 'credentials';

export async function syncCredentials(ctx: SyncContext, st: ReconcileState): Promise<void> {
  await syncUsers(ctx, st);
  await syncUpstream(ctx, st);
  await syncDkim(ctx, st);
}

async function syncUsers(ctx: SyncContext, st: ReconcileState): Promise<void> {
  const relay = st.relay;
  const ns = relay.metadata.namespace;
  const policy = relay.spec.auth.passwordPolicy;
  const problems: UserProblem[] = [];

  // Generated names replace characters a Secret name cannot hold ("app.one" and
  // "app-one" both give <relay>-user-app-one): two users must not end up with
  // one password, and so one another's sender rights.
  const firstUser = new Map<string, UserSpec>();
  for (const user of relay.spec.auth.users) {
    const secretName = userSecretName(relay, user);
    const first = firstUser.get(secretName);
    if (first && (!first.secretRef || !user.secretRef)) {
      problems.push({
        user: user.name,
        reason: Reason.UserSecretInvalid,
        message: `its password Secret ${secretName} would also be user ${first.name}'s; give one of them its own spec.auth.users[].secretRef`,
      });
      continue;
    }
    if (!first) firstUser.set(secretName, user);
    let secret = await readSecret(ctx, st, ns, secretName);
    if (!secret) {
      const password = generatePassword(generatedPasswordLength(policy));
      const result = await createSecretIfAbsent(ctx, buildGeneratedUserSecret(relay, user, password));
      secret = result.secret;
      if (result.created) {
        st.log.info({ user: user.name, secret: secretName }, 'generated user password Secret');
        void ctx.events.normal(relay, 'PasswordGenerated', `Generated Secret ${secretName} with a random password for user ${user.name}`);
      }
    }
    const read = readUserPassword(secret, secretName);
    if ('reason' in read) {
      problems.push({ user: user.name, reason: read.reason, message: read.message });
      continue;
    }
    const refusal = checkPassword(read.password, policy, user.name);
    if (refusal) {
      problems.push({ user: user.name, reason: Reason.PasswordRefused, message: `${refusal.message} (Secret ${secretName})` });
      continue;
    }
    // Generated (low scrypt cost) only while the Secret's password is still the
    // one the operator put there, as its marker annotation records.
    st.passwords.set(user.name, { password: read.password, generated: isGeneratedPassword(secret, read.password) });
  }

  // The hashed users file keeps a hash while its password still matches, so an
  // unchanged password never rewrites the Secret.
  const names = childNames(relay);
  const existing = readUsersSecret(cachedChild(ctx, 'Secret', ns, names.usersSecret) as { data?: Record<string, string> } | undefined);
  const file = await buildUsersFile(relay, st.passwords, existing, ctx.hasher);
  st.passwords.clear();
  // Applied with the other children (relay/sync.ts), so a failure shows in Reconciled.
  st.usersSecret = buildUsersSecret(relay, file);

  for (const p of problems) await ctx.events.warning(relay, p.reason, `user ${p.user} left out: ${p.message}`);
  const c = credentialsCondition(relay, problems);
  decide(st, c.type, c.status, c.reason, c.message);
}

async function syncUpstream(ctx: SyncContext, st: ReconcileState): Promise<void> {
  const relay = st.relay;
  const ns = relay.metadata.namespace;
  const up = relay.spec.upstream;
  const problems: Problem[] = [];
  if (up.credentialsSecretRef) {
    const name = up.credentialsSecretRef.name;
    const p = await readSecretDerived(ctx, st, ns, name, 'upstream-credentials', (s) => checkUpstreamCredentialsSecret(s, name));
    if (p) problems.push(p);
  }
  if (up.caSecretRef) {
    const ref = up.caSecretRef;
    const p = await readSecretDerived(ctx, st, ns, ref.name, `upstream-ca/${ref.key}`, (s) => checkUpstreamCaSecret(s, ref));
    if (p) problems.push(p);
  }
  for (const p of problems) await ctx.events.warning(relay, p.reason, p.message);
  const c = conditionFromProblems(ConditionType.UpstreamReady, problems, {
    reason: Reason.UpstreamConfigured,
    message: `upstream ${up.host}:${up.port} (${up.tls})${up.credentialsSecretRef ? ' with credentials' : ''}`,
  });
  decide(st, c.type, c.status, c.reason, c.message);
}
