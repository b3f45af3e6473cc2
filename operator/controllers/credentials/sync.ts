// Credentials: users' passwords (generated and owned when absent, only read
// when present, refused below the policy), the hashed users Secret, the
// upstream credentials/CA Secrets, and the DKIM keys (dkim.ts).
// Conditions owned here: CredentialsReady, UpstreamReady, DkimReady (decided in
// operator/status/decisions.ts). The reconciler runs syncUsers, syncUpstream
// and syncDkim in that order and hands their results to the relay phase.

import { Reason, oauth2SecretSource, type BindingStatus, type UserSpec } from '../../api/v1alpha1.js';
import { bindingSecretName, buildBindingSecret } from '../../builders/binding.js';
import { buildGeneratedUserSecret, generatePassword, generatedPasswordLength, isGeneratedPassword } from '../../builders/credentials.js';
import { childNames, userSecretName } from '../../builders/meta.js';
import { buildUsersFile, buildUsersSecret, readUsersSecret, type AcceptedPassword, type Secret } from '../../builders/users.js';
import type { ConditionInput, Problem } from '../../status/conditions.js';
import { credentialsCondition, upstreamCondition, type UserProblem } from '../../status/decisions.js';
import { checkPassword, checkUpstreamCaSecret, checkUpstreamCredentialsSecret, checkUpstreamOAuth2Secret, readUserPassword } from '../../status/secret-checks.js';
import { cachedChild, type ReconcileScope, type SyncContext } from '../context.js';
import { refusalMessage } from '../../upstream-logins.js';
import { createSecretIfAbsent, readSecret, readSecretDerived } from '../secrets.js';
import { serviceAccountUids } from './service-accounts.js';

export const CONTROLLER = 'credentials';

export interface UsersResult {
  credentialsReady: ConditionInput;
  /** The hashed users Secret; applied with the other children (relay/sync.ts), so a failure shows in Reconciled. */
  usersSecret: Secret;
  /** Each usable user's binding Secret (servicebinding.io), applied with the children too. */
  bindingSecrets: Secret[];
  bindings: BindingStatus[];
  /** The ServiceAccount token issuer, when a user logs in with a token and its keys are known (for the relay config). */
  serviceAccountIssuer?: string;
}

/** The key of the CA bundle cert-manager (and most TLS Secret makers) put beside tls.crt. */
const TLS_CA_KEY = 'ca.crt';

export async function syncUsers(ctx: SyncContext, scope: ReconcileScope): Promise<UsersResult> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const { passwords, problems } = await acceptPasswords(ctx, scope);
  const names = childNames(relay);
  // ServiceAccount users need the cluster issuer's keys; without them they are left out
  const tokenUsers = relay.spec.auth.users.filter((u) => u.serviceAccount);
  const issuer = tokenUsers.length > 0 ? ctx.issuerKeys?.keys : undefined;
  if (tokenUsers.length > 0 && !issuer) {
    const why = ctx.issuerKeys?.error ?? 'not fetched yet';
    for (const u of tokenUsers) {
      problems.push({ user: u.name, reason: Reason.IssuerKeysUnavailable, message: `the cluster's ServiceAccount issuer keys are unavailable (${why}); the operator needs get on ${'/.well-known/openid-configuration'} and /openid/v1/jwks` });
    }
  }
  // ...and their ServiceAccounts must exist: a deleted one's tokens are refused at once
  const accounts = issuer ? await serviceAccountUids(ctx, scope, tokenUsers) : { uids: new Map<string, string>(), problems: [] };
  problems.push(...accounts.problems);
  const caCrt = await readSecretDerived(ctx, scope, ns, names.tlsSecret, 'tls-ca', (s) => {
    const b64 = s?.data?.[TLS_CA_KEY];
    return b64 ? Buffer.from(b64, 'base64').toString('utf8') : undefined;
  });
  let usersSecret: Secret;
  const bindingSecrets: Secret[] = [];
  const bindings: BindingStatus[] = [];
  try {
    // The hashed users file keeps a hash while its password still matches, so an
    // unchanged password never rewrites the Secret.
    const existing = readUsersSecret(cachedChild(ctx, 'Secret', ns, names.usersSecret) as { data?: Record<string, string> } | undefined);
    usersSecret = buildUsersSecret(relay, await buildUsersFile(relay, passwords, existing, ctx.hasher, undefined, accounts.uids), issuer?.jwks);
    for (const user of relay.spec.auth.users) {
      const accepted = passwords.get(user.name);
      if (user.serviceAccount ? !accounts.uids.has(user.name) : !accepted) continue;
      bindingSecrets.push(buildBindingSecret(relay, user, { ...(accepted ? { password: accepted.password } : {}), ...(caCrt ? { caCrt } : {}) }));
      bindings.push({ user: user.name, secretName: bindingSecretName(relay, user) });
    }
  } finally {
    passwords.clear();
  }
  for (const p of problems) await ctx.events.warning(relay, p.reason, `user ${p.user} left out: ${p.message}`);
  return {
    credentialsReady: credentialsCondition(relay, problems),
    usersSecret,
    bindingSecrets,
    bindings,
    ...(issuer ? { serviceAccountIssuer: issuer.issuer } : {}),
  };
}

/**
 * Each user's password from its Secret (generated when the Secret is absent),
 * or why the user is left out. The plaintext stays in memory only, for hashing;
 * the caller clears it.
 */
async function acceptPasswords(ctx: SyncContext, scope: ReconcileScope): Promise<{ passwords: Map<string, AcceptedPassword>; problems: UserProblem[] }> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const policy = relay.spec.auth.passwordPolicy;
  const passwords = new Map<string, AcceptedPassword>();
  const problems: UserProblem[] = [];
  // Generated names replace characters a Secret name cannot hold ("app.one" and
  // "app-one" both give <relay>-user-app-one): two users must not end up with
  // one password, and so one another's sender rights.
  const firstUser = new Map<string, UserSpec>();
  for (const user of relay.spec.auth.users) {
    if (user.serviceAccount) continue; // no password: a token login
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
    let secret = await readSecret(ctx, scope, ns, secretName);
    if (!secret) {
      const password = generatePassword(generatedPasswordLength(policy));
      const result = await createSecretIfAbsent(ctx, buildGeneratedUserSecret(relay, user, password));
      secret = result.secret;
      if (result.created) {
        scope.log.info({ user: user.name, secret: secretName }, 'generated user password Secret');
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
    passwords.set(user.name, { password: read.password, generated: isGeneratedPassword(secret, read.password) });
  }
  return { passwords, problems };
}

/**
 * UpstreamReady: the credentials and CA Secrets spec.upstream references exist and are well
 * formed, and no pod reports that the upstream refused the relay's login (ctx.upstreamLogins,
 * polled from the pods; its change reconciles the relay, its transition has its Event).
 */
export async function syncUpstream(ctx: SyncContext, scope: ReconcileScope): Promise<ConditionInput> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const up = relay.spec.upstream;
  const problems: Problem[] = [];
  if (up.credentialsSecretRef) {
    const name = up.credentialsSecretRef.name;
    const p = await readSecretDerived(ctx, scope, ns, name, 'upstream-credentials', (s) => checkUpstreamCredentialsSecret(s, name));
    if (p) problems.push(p);
  }
  const oauth2 = up.oauth2 && oauth2SecretSource(up.oauth2);
  if (oauth2) {
    const kind = up.oauth2?.google ? 'service-account' : 'client-secret';
    const p = await readSecretDerived(ctx, scope, ns, oauth2.ref.name, `upstream-oauth2/${kind}/${oauth2.ref.key}`, (s) => checkUpstreamOAuth2Secret(s, oauth2, kind));
    if (p) problems.push(p);
  }
  if (up.caSecretRef) {
    const ref = up.caSecretRef;
    const p = await readSecretDerived(ctx, scope, ns, ref.name, `upstream-ca/${ref.key}`, (s) => checkUpstreamCaSecret(s, ref));
    if (p) problems.push(p);
  }
  for (const p of problems) await ctx.events.warning(relay, p.reason, p.message);
  const refused = ctx.upstreamLogins ? ctx.upstreamLogins.refused(`${ns}/${relay.metadata.name}`) : [];
  return upstreamCondition(relay, problems, refusalMessage(relay, refused));
}
