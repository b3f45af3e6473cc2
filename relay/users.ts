// Loads and validates the users file (format: UsersFile in relay/config-types.ts).

import fs from 'node:fs';
import { parseYamlDocument } from './config.js';
import { MAX_USERNAME_LENGTH } from './policy/lockout.js';
import { parseHash, type ParsedHash } from './password.js';
import { parseSenderPattern, type SenderPattern } from './policy/senders.js';
import { Checker, ValidationError, join, show } from './validate.js';

export interface User {
  name: string;
  hash: ParsedHash;
  allowedSenders: SenderPattern[];
  rateLimit?: { messages: number; perMs: number };
}

export type UserTable = Map<string, User>;

export function validateUsers(doc: unknown, file: string): UserTable {
  const c = new Checker();
  const users: UserTable = new Map();
  const top = c.object('', doc, ['users'], []);
  const list = top?.users === undefined ? undefined : c.list('users', top.users);
  list?.forEach((item, i) => {
    const p = join('users', i);
    const o = c.object(p, item, ['name', 'passwordHash', 'allowedSenders'], ['rateLimit']);
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
    if (name !== undefined && hash && senders.length) {
      const user: User = { name, hash, allowedSenders: senders };
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
