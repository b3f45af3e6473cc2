// The hashed users file (relay/config-types.ts UsersFile) and its Secret.
//
// Hash stability: a password hash has a random salt, so hashing the same
// password again gives a different Secret, and every reconcile would write it.
// An existing hash is therefore kept while the password still verifies
// against it; only a new user or a changed password is hashed afresh.

import { createHmac, randomBytes } from 'node:crypto';
import YAML from 'yaml';
import type { UserEntry, UsersFile } from '../../relay/config-types.js';
import { hashPassword, parseHash, verifyPassword } from '../../relay/password.js';
import { USERS_KEY, type SmtpRelay } from '../api/v1alpha1.js';
import { renderYaml } from './config.js';
import { childMetadata, childNames, type ChildMetadata } from './meta.js';

/** The relay's password hashing (relay/password.ts), injected so tests and callers choose it. */
export interface PasswordHasher {
  /** A new "scrypt$..." hash of the password, with a fresh random salt. */
  hash(password: string): Promise<string>;
  /** Whether the password matches the stored hash; false (not an error) for a malformed hash. */
  verify(password: string, passwordHash: string): Promise<boolean>;
}

/** The relay's own scrypt hashing: what the operator passes in production. */
export const relayPasswordHasher: PasswordHasher = {
  hash: (password) => hashPassword(password),
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

/**
 * The users file for the users whose password was accepted (`passwords`,
 * user name → plaintext), in spec order. A user missing from `passwords`
 * (refused, or its Secret unusable) is left out.
 */
export async function buildUsersFile(
  relay: SmtpRelay,
  passwords: ReadonlyMap<string, string>,
  existing: UsersFile | undefined,
  hasher: PasswordHasher,
): Promise<UsersFile> {
  const previous = new Map<string, string>();
  for (const u of existing?.users ?? []) previous.set(u.name, u.passwordHash);
  const users: UserEntry[] = [];
  for (const user of relay.spec.auth.users) {
    const password = passwords.get(user.name);
    if (password === undefined) continue;
    const old = previous.get(user.name);
    const passwordHash = old !== undefined && (await hasher.verify(password, old)) ? old : await hasher.hash(password);
    const entry: UserEntry = { name: user.name, passwordHash, allowedSenders: [...user.allowedSenders] };
    if (user.rateLimit) entry.rateLimit = { messages: user.rateLimit.messages, per: user.rateLimit.per };
    users.push(entry);
  }
  return { users };
}

export function renderUsersFile(file: UsersFile): string {
  return `# Rendered by smtp-relay-operator; password hashes only, never plaintext.\n${renderYaml(file)}`;
}

export function buildUsersSecret(relay: SmtpRelay, file: UsersFile): Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: childMetadata(relay, childNames(relay).usersSecret),
    type: 'Opaque',
    data: { [USERS_KEY]: Buffer.from(renderUsersFile(file), 'utf8').toString('base64') },
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
      (u): u is UserEntry => !!u && typeof u === 'object' && typeof u.name === 'string' && typeof u.passwordHash === 'string',
    );
    return { users };
  } catch {
    return undefined;
  }
}

/**
 * Remembers successful verifications, so a reconcile does not pay one scrypt
 * (tens of ms, tens of MiB) per unchanged user. The key is an HMAC of
 * (hash, password) under a per-process random key: no plaintext and no fast
 * unsalted password hash is kept in memory. Bounded; oldest entries go first.
 */
export function cachingHasher(inner: PasswordHasher, maxEntries = 10_000): PasswordHasher {
  const key = randomBytes(32);
  const verified = new Set<string>();
  const id = (password: string, passwordHash: string) =>
    createHmac('sha256', key).update(passwordHash).update('\0').update(password, 'utf8').digest('base64');
  return {
    hash: (password) => inner.hash(password),
    async verify(password, passwordHash) {
      const k = id(password, passwordHash);
      if (verified.has(k)) return true;
      const ok = await inner.verify(password, passwordHash);
      if (ok) {
        verified.add(k);
        if (verified.size > maxEntries) verified.delete(verified.values().next().value as string);
      }
      return ok;
    },
  };
}
