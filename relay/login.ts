// Password checks for AUTH: the users table, scrypt verification, a memo of
// successful logins, and ServiceAccount-token logins (relay/sa-token.ts: the
// token is the password). Lockout counting is the auth phase's (relay/session.ts).

import type { Metrics } from './metrics.js';
import { VerificationMemo, dummyHash, formatHash, verifyPassword, type ParsedHash } from './password.js';
import type { TokenVerifier } from './sa-token.js';
import type { User, UserTable } from './users.js';

/** The dummy hash for unknown users has the cost parameters of the first password user. */
function dummyFor(users: UserTable): ParsedHash {
  for (const u of users.values()) if (u.hash) return dummyHash(u.hash);
  return dummyHash(undefined);
}

/** A login's outcome; `pod` names the pod a ServiceAccount token was bound to, `reason` why a token was refused (for the log). */
export interface LoginResult {
  ok: boolean;
  pod?: string;
  reason?: string;
}

export class Logins {
  private users: UserTable;
  private dummy: ParsedHash;
  /** Successful logins (HMAC under a per-process key, one per user): see check. */
  private readonly verified = new VerificationMemo();
  /** ServiceAccount tokens; undefined = no token logins configured (or no keys yet). */
  private tokens: TokenVerifier | undefined;

  constructor(
    users: UserTable,
    private readonly metrics: Metrics,
    tokens?: TokenVerifier,
  ) {
    this.users = users;
    this.dummy = dummyFor(users);
    this.tokens = tokens;
  }

  /** New issuer keys (the JWKS file was reloaded). */
  setTokenVerifier(tokens: TokenVerifier | undefined): void {
    this.tokens = tokens;
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
  async check(username: string, password: string): Promise<LoginResult> {
    const known = this.users.get(username);
    if (known?.serviceAccount) {
      // A signature check (~0.05 ms for RS256): no memo needed, and nothing to slow down,
      // as a token cannot be guessed. Lockout still counts every refusal.
      this.metrics.passwordChecks.inc({ check: 'token' });
      if (!this.tokens) return { ok: false, reason: 'no service-account issuer keys configured (auth.serviceAccountTokens)' };
      const r = await this.tokens.verify(password, known.serviceAccount);
      return r.ok ? (r.pod ? { ok: true, pod: r.pod } : { ok: true }) : { ok: false, reason: r.reason };
    }
    if (!known || !known.hash) {
      // An unknown user is verified against a dummy hash so that both cost the same.
      this.metrics.passwordChecks.inc({ check: 'scrypt' });
      await verifyPassword(password, this.dummy);
      return { ok: false };
    }
    const hash = known.hash;
    const { ok, how } = await this.verified.verify(username, password, formatHash(hash), () => {
      this.metrics.passwordChecks.inc({ check: 'scrypt' });
      return verifyPassword(password, hash);
    });
    if (how !== 'checked') this.metrics.passwordChecks.inc({ check: how });
    // the users file changed meanwhile: keep no entry for a removed user
    if (how === 'checked' && !this.users.has(username)) this.verified.forget(username);
    return { ok };
  }
}
