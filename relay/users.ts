// Loads and validates the users file (format: UsersFile in relay/config-types.ts).

import fs from 'node:fs';
import { parseYamlDocument } from './config.js';
import { MAX_USERNAME_LENGTH } from './policy/lockout.js';
import { parseHash, type ParsedHash } from './password.js';
import { parseSenderPattern, type SenderPattern } from './policy/senders.js';
import type { ServiceAccountRef } from './sa-token.js';
import { Checker, ValidationError, join, show } from './validate.js';

/** A user logs in with a password (hash) or with a ServiceAccount token (serviceAccount), never both. */
export interface User {
  name: string;
  hash?: ParsedHash;
  serviceAccount?: ServiceAccountRef;
  allowedSenders: SenderPattern[];
  rateLimit?: { messages: number; perMs: number };
}

export type UserTable = Map<string, User>;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** metadata.uid: a UUID as the API server writes it (lower-case hex with dashes). */
const UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function validateUsers(doc: unknown, file: string): UserTable {
  const c = new Checker();
  const users: UserTable = new Map();
  const top = c.object('', doc, ['users'], []);
  const list = top?.users === undefined ? undefined : c.list('users', top.users);
  list?.forEach((item, i) => {
    const p = join('users', i);
    const o = c.object(p, item, ['name', 'allowedSenders'], ['passwordHash', 'serviceAccount', 'rateLimit']);
    if (!o) return;
    const name = o.name === undefined ? undefined : c.string(join(p, 'name'), o.name);
    if (name !== undefined) {
      if (/[\x00-\x20\x7f]/.test(name) || name.length > MAX_USERNAME_LENGTH) c.fail(join(p, 'name'), `${show(name)} must have no spaces or control characters (max 256)`);
      else if (users.has(name)) c.fail(join(p, 'name'), `${show(name)} is listed twice`);
    }
    let hash: ParsedHash | undefined;
    if (o.passwordHash !== undefined) {
      const s = c.string(join(p, 'passwordHash'), o.passwordHash);
      if (s !== undefined) {
        const parsed = parseHash(s.trim());
        if (typeof parsed === 'string') c.fail(join(p, 'passwordHash'), parsed);
        else hash = parsed;
      }
    }
    let serviceAccount: ServiceAccountRef | undefined;
    if (o.serviceAccount !== undefined) {
      const sa = c.object(join(p, 'serviceAccount'), o.serviceAccount, ['namespace', 'name'], ['uid']);
      const namespace = sa?.namespace === undefined ? undefined : c.string(join(p, 'serviceAccount.namespace'), sa.namespace);
      const saName = sa?.name === undefined ? undefined : c.string(join(p, 'serviceAccount.name'), sa.name);
      const uid = sa?.uid === undefined ? undefined : c.string(join(p, 'serviceAccount.uid'), sa.uid);
      if (namespace !== undefined && saName !== undefined) {
        if (!DNS_LABEL.test(namespace)) c.fail(join(p, 'serviceAccount.namespace'), `${show(namespace)} is not a namespace name`);
        else if (!DNS_SUBDOMAIN.test(saName)) c.fail(join(p, 'serviceAccount.name'), `${show(saName)} is not a ServiceAccount name`);
        else if (uid !== undefined && !UID.test(uid)) c.fail(join(p, 'serviceAccount.uid'), `${show(uid)} is not a Kubernetes uid`);
        else serviceAccount = uid !== undefined ? { namespace, name: saName, uid } : { namespace, name: saName };
      }
    }
    if (o.passwordHash !== undefined && o.serviceAccount !== undefined) c.fail(p, 'has both passwordHash and serviceAccount; give one');
    else if (o.passwordHash === undefined && o.serviceAccount === undefined) c.fail(p, 'needs passwordHash (a password login) or serviceAccount (a token login)');
    const senders: SenderPattern[] = [];
    if (o.allowedSenders !== undefined) {
      const sl = c.list(join(p, 'allowedSenders'), o.allowedSenders);
      if (sl && sl.length === 0) c.fail(join(p, 'allowedSenders'), 'must list at least one sender pattern');
      sl?.forEach((v, j) => {
        const sp = join(join(p, 'allowedSenders'), j);
        const s = c.string(sp, v);
        if (s === undefined) return;
        const pat = parseSenderPattern(s);
        if (typeof pat === 'string') c.fail(sp, `${show(s)}: ${pat}`);
        else senders.push(pat);
      });
    }
    let rateLimit: User['rateLimit'];
    if (o.rateLimit !== undefined) {
      const r = c.object(join(p, 'rateLimit'), o.rateLimit, ['messages', 'per'], []);
      if (r) {
        const messages = r.messages === undefined ? undefined : c.int(join(p, 'rateLimit.messages'), r.messages, 1, 10_000_000);
        const perMs = r.per === undefined ? undefined : c.duration(join(p, 'rateLimit.per'), r.per, 1000);
        if (messages !== undefined && perMs !== undefined) rateLimit = { messages, perMs };
      }
    }
    if (name !== undefined && (hash || serviceAccount) && senders.length) {
      const user: User = hash ? { name, hash, allowedSenders: senders } : { name, serviceAccount: serviceAccount!, allowedSenders: senders };
      if (rateLimit) user.rateLimit = rateLimit;
      users.set(name, user);
    }
  });
  if (c.problems.length) throw new ValidationError(file, c.problems);
  return users;
}

export function loadUsers(file: string): UserTable {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ValidationError(file, [`cannot read the users file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  return validateUsers(parseYamlDocument(file, text), file);
}
