// Password checks for AUTH: the users table, scrypt verification, and a memo of
// successful logins. Lockout counting is the auth phase's (relay/session.ts).

import type { Metrics } from './metrics.js';
import { VerificationMemo, dummyHash, formatHash, verifyPassword, type ParsedHash } from './password.js';
import type { User, UserTable } from './users.js';

/** The dummy hash for unknown users has the cost parameters of the first real user. */
function dummyFor(users: UserTable): ParsedHash {
  const first = users.values().next().value;
  return dummyHash(first ? first.hash : undefined);
}

export class Logins {
  private users: UserTable;
  private dummy: ParsedHash;
  /** Successful logins (HMAC under a per-process key, one per user): see check. */
  private readonly verified = new VerificationMemo();

  constructor(
    users: UserTable,
    private readonly metrics: Metrics,
  ) {
    this.users = users;
    this.dummy = dummyFor(users);
  }

  has(name: string): boolean {
    return this.users.has(name);
  }

  user(name: string): User | undefined {
    return this.users.get(name);
  }

  setUsers(users: UserTable): void {
    this.users = users;
    this.dummy = dummyFor(users);
    // a changed hash never matches its old entry anyway; removed users go now
    this.verified.retain((name) => users.has(name));
  }

  /**
   * A password this user already logged in with (same stored hash) is accepted from the
   * memo without scrypt, so a client that connects per message does not pay a full key
   * derivation each time. Anything else (unknown user, other password, changed hash) gets
   * the full check, so guessing stays as slow as before.
   */
  async check(username: string, password: string): Promise<boolean> {
    const known = this.users.get(username);
    if (!known) {
      // An unknown user is verified against a dummy hash so that both cost the same.
      this.metrics.passwordChecks.inc({ check: 'scrypt' });
      await verifyPassword(password, this.dummy);
      return false;
    }
    const { ok, how } = await this.verified.verify(username, password, formatHash(known.hash), () => {
      this.metrics.passwordChecks.inc({ check: 'scrypt' });
      return verifyPassword(password, known.hash);
    });
    if (how !== 'checked') this.metrics.passwordChecks.inc({ check: how });
    // the users file changed meanwhile: keep no entry for a removed user
    if (how === 'checked' && !this.users.has(username)) this.verified.forget(username);
    return ok;
  }
}
