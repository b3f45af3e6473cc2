// The hashed users file (relay/config-types.ts UsersFile) and its Secret.
//
// Hash stability: a password hash has a random salt, so hashing the same
// password again gives a different Secret, and every reconcile would write it.
// An existing hash is therefore kept while the password still verifies
// against it and has the cost that password should get; only a new user, a
// changed password or a changed cost is hashed afresh.
//
// Cost: a password the operator generated itself (≥ 32 random letters and
// digits, ≈ 190 bits) is hashed with a low scrypt cost; nobody can search 2^190
// candidates, fast KDF or slow, so the production cost (~0.1 CPU-s and 32 MiB
// per hash, paid by the operator for every relay and by the relay on every
// AUTH) would buy nothing. User-chosen passwords (a Secret the user supplied,
// or a generated one whose password the user has changed) keep the relay's
// production cost. The relay honours the parameters stored in each hash.

import YAML from 'yaml';
import type { UserEntry, UsersFile } from '../../relay/config-types.js';
import { DEFAULT_PARAMS, VerificationMemo, hashPassword, parseHash, verifyPassword } from '../../relay/password.js';
import { JWKS_KEY, USERS_KEY, type SmtpRelay } from '../api/v1alpha1.js';
import { renderYaml } from './relay-config.js';
import { childMetadata, childNames, type ChildMetadata } from './meta.js';

/** scrypt cost parameters, as in a "scrypt$N$r$p$..." hash. */
export interface ScryptCost {
  N: number;
  r: number;
  p: number;
}

/** User-chosen passwords: the relay's production cost (N=32768, r=8: 32 MiB, ~0.1 CPU-s). */
export const USER_PASSWORD_COST: ScryptCost = { ...DEFAULT_PARAMS };
/**
 * Passwords the operator generated (≈190 bits of randomness): 1 MiB and a few
 * ms. Not lower: the relay verifies an unknown user against a dummy hash with
 * the first user's cost, and this keeps such checks in the same range as before.
 */
export const GENERATED_PASSWORD_COST: ScryptCost = { N: 1024, r: 8, p: 1 };

export interface PasswordCosts {
  generated: ScryptCost;
  user: ScryptCost;
}
export const PASSWORD_COSTS: PasswordCosts = { generated: GENERATED_PASSWORD_COST, user: USER_PASSWORD_COST };

/** A password accepted for the users file, and whether it is still the one the operator generated. */
export interface AcceptedPassword {
  password: string;
  generated: boolean;
}

/** The relay's password hashing (relay/password.ts), injected so tests and callers choose it. */
export interface PasswordHasher {
  /** A new "scrypt$..." hash of the password with this cost, with a fresh random salt. */
  hash(password: string, cost: ScryptCost): Promise<string>;
  /** Whether the password matches the stored hash; false (not an error) for a malformed hash. */
  verify(password: string, passwordHash: string): Promise<boolean>;
}

/** The relay's own scrypt hashing: what the operator passes in production. */
export const relayPasswordHasher: PasswordHasher = {
  hash: (password, cost) => hashPassword(password, cost),
  async verify(password, passwordHash) {
    const parsed = parseHash(passwordHash);
    return typeof parsed === 'string' ? false : verifyPassword(password, parsed);
  },
};

export interface Secret {
  apiVersion: 'v1';
  kind: 'Secret';
  metadata: ChildMetadata;
  type: string;
  immutable?: boolean;
  data: Record<string, string>;
}

/** Whether a stored hash has exactly this cost (false for a malformed one). */
export function hasCost(passwordHash: string, cost: ScryptCost): boolean {
  const parsed = parseHash(passwordHash);
  return typeof parsed !== 'string' && parsed.N === cost.N && parsed.r === cost.r && parsed.p === cost.p;
}

/**
 * The users file for the users whose password was accepted (`passwords`,
 * user name → plaintext and whether it is generated), in spec order. A user
 * missing from `passwords` (refused, or its Secret unusable) is left out.
 */
export async function buildUsersFile(
  relay: SmtpRelay,
  passwords: ReadonlyMap<string, AcceptedPassword>,
  existing: UsersFile | undefined,
  hasher: PasswordHasher,
  costs: PasswordCosts = PASSWORD_COSTS,
  /**
   * The ServiceAccount users that go in, user name → the account's uid (written beside the
   * name: a token must carry it). Absent = every ServiceAccount user, without a uid; a user
   * missing from the map is left out (issuer keys unknown, or the account does not exist).
   */
  serviceAccounts?: ReadonlyMap<string, string>,
): Promise<UsersFile> {
  const previous = new Map<string, string>();
  for (const u of existing?.users ?? []) if (u.passwordHash !== undefined) previous.set(u.name, u.passwordHash);
  const users: UserEntry[] = [];
  for (const user of relay.spec.auth.users) {
    if (user.serviceAccount) {
      const uid = serviceAccounts?.get(user.name);
      if (serviceAccounts && uid === undefined) continue;
      // no password: the relay verifies the ServiceAccount's token (auth.serviceAccountTokens)
      const account = { namespace: user.serviceAccount.namespace, name: user.serviceAccount.name, ...(uid !== undefined ? { uid } : {}) };
      const entry: UserEntry = { name: user.name, serviceAccount: account, allowedSenders: [...user.allowedSenders] };
      if (user.rateLimit) entry.rateLimit = { messages: user.rateLimit.messages, per: user.rateLimit.per };
      users.push(entry);
      continue;
    }
    const accepted = passwords.get(user.name);
    if (accepted === undefined) continue;
    const { password } = accepted;
    const cost = accepted.generated ? costs.generated : costs.user;
    const old = previous.get(user.name);
    const keep = old !== undefined && hasCost(old, cost) && (await hasher.verify(password, old));
    const passwordHash = keep ? old : await hasher.hash(password, cost);
    const entry: UserEntry = { name: user.name, passwordHash, allowedSenders: [...user.allowedSenders] };
    if (user.rateLimit) entry.rateLimit = { messages: user.rateLimit.messages, per: user.rateLimit.per };
    users.push(entry);
  }
  return { users };
}

export function renderUsersFile(file: UsersFile): string {
  return `# Rendered by smtp-relay-operator; password hashes only, never plaintext.\n${renderYaml(file)}`;
}

/** The issuer's JWKS as the relay reads it (auth.serviceAccountTokens.jwksFile): keys in the issuer's order, one line each. */
export function renderJwks(jwks: { keys: readonly object[] }): string {
  return `{"keys": [\n${jwks.keys.map((k) => `  ${JSON.stringify(k)}`).join(',\n')}\n]}\n`;
}

/** `jwks`: the cluster's ServiceAccount issuer keys, present when a user logs in with a ServiceAccount token. */
export function buildUsersSecret(relay: SmtpRelay, file: UsersFile, jwks?: { keys: readonly object[] }): Secret {
  const data: Record<string, string> = { [USERS_KEY]: Buffer.from(renderUsersFile(file), 'utf8').toString('base64') };
  if (jwks) data[JWKS_KEY] = Buffer.from(renderJwks(jwks), 'utf8').toString('base64');
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: childMetadata(relay, childNames(relay).usersSecret),
    type: 'Opaque',
    data,
  };
}

/**
 * The users file in an existing hashed users Secret (from the API server: base64
 * `data`), or undefined when there is none or it cannot be read (then every
 * password is hashed afresh, which is safe).
 */
export function readUsersSecret(secret: { data?: Record<string, string> | undefined } | undefined): UsersFile | undefined {
  const b64 = secret?.data?.[USERS_KEY];
  if (typeof b64 !== 'string') return undefined;
  try {
    const parsed: unknown = YAML.parse(Buffer.from(b64, 'base64').toString('utf8'));
    if (!parsed || typeof parsed !== 'object' || !Array.isArray((parsed as UsersFile).users)) return undefined;
    const users = (parsed as UsersFile).users.filter(
      (u): u is UserEntry => !!u && typeof u === 'object' && typeof u.name === 'string' && (typeof u.passwordHash === 'string' || !!u.serviceAccount),
    );
    return { users };
  } catch {
    return undefined;
  }
}

/**
 * Remembers successful verifications, so a reconcile does not pay one scrypt
 * (tens of ms, tens of MiB) per unchanged user: the relay's VerificationMemo
 * (relay/password.ts; one entry per stored hash, an HMAC of (hash, password)
 * under a per-process random key, no plaintext kept). Bounded; oldest entries go first.
 */
export function cachingHasher(inner: PasswordHasher, maxEntries = 10_000): PasswordHasher {
  const memo = new VerificationMemo(maxEntries);
  return {
    hash: (password, cost) => inner.hash(password, cost),
    async verify(password, passwordHash) {
      return (await memo.verify(passwordHash, password, passwordHash, () => inner.verify(password, passwordHash))).ok;
    },
  };
}
