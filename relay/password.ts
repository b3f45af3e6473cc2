// Password hashes for the users file: "scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>"
// (node:crypto scrypt, 16-byte random salt, 32-byte key). Verification is
// constant-time, and an unknown user is verified against a dummy hash so that it
// costs the same as a wrong password.

import crypto from 'node:crypto';

export const DEFAULT_PARAMS = { N: 32768, r: 8, p: 1 };
const KEY_LEN = 32;
const SALT_LEN = 16;
/** Bounds on what a users file may ask for, so a hash cannot exhaust memory or CPU. */
export const LIMITS = { maxN: 1 << 20, maxR: 32, maxP: 16, maxMem: 1024 * 1024 * 1024 };

export interface ParsedHash {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  hash: Buffer;
}

const B64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Parses a hash line; returns an error text when it is malformed. */
export function parseHash(text: string): ParsedHash | string {
  const parts = text.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return 'must look like scrypt$N$r$p$salt$hash (output of `smtp-relay hash-password`)';
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string];
  const N = Number(n);
  const R = Number(r);
  const P = Number(p);
  if (!/^\d+$/.test(n) || N < 2 || N > LIMITS.maxN || (N & (N - 1)) !== 0) return `N=${n} must be a power of two between 2 and ${LIMITS.maxN}`;
  if (!/^\d+$/.test(r) || R < 1 || R > LIMITS.maxR) return `r=${r} must be between 1 and ${LIMITS.maxR}`;
  if (!/^\d+$/.test(p) || P < 1 || P > LIMITS.maxP) return `p=${p} must be between 1 and ${LIMITS.maxP}`;
  if (!B64.test(salt) || !B64.test(hash)) return 'salt and hash must be base64';
  const saltBuf = Buffer.from(salt, 'base64');
  const hashBuf = Buffer.from(hash, 'base64');
  if (saltBuf.length < 8) return 'salt must be at least 8 bytes';
  if (hashBuf.length < 16 || hashBuf.length > 64) return 'hash must be 16..64 bytes';
  return { N, r: R, p: P, salt: saltBuf, hash: hashBuf };
}

function derive(password: string, salt: Buffer, len: number, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    crypto.scrypt(password.normalize('NFC'), salt, len, { N, r, p, maxmem: Math.min(LIMITS.maxMem, 256 * N * r + 1024 * 1024) }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

export async function hashPassword(password: string, params = DEFAULT_PARAMS): Promise<string> {
  const salt = crypto.randomBytes(SALT_LEN);
  const key = await derive(password, salt, KEY_LEN, params.N, params.r, params.p);
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

export async function verifyPassword(password: string, stored: ParsedHash): Promise<boolean> {
  const key = await derive(password, stored.salt, stored.hash.length, stored.N, stored.r, stored.p);
  return crypto.timingSafeEqual(key, stored.hash);
}

const dummies = new Map<string, ParsedHash>();
/**
 * A hash nobody knows the password of. Pass the parameters the real users have
 * (the relay uses the first user's), so an unknown user costs what a known one does.
 */
export function dummyHash(params: { N: number; r: number; p: number } = DEFAULT_PARAMS): ParsedHash {
  const key = `${params.N}/${params.r}/${params.p}`;
  let d = dummies.get(key);
  if (!d) {
    d = { N: params.N, r: params.r, p: params.p, salt: crypto.randomBytes(SALT_LEN), hash: crypto.randomBytes(KEY_LEN) };
    dummies.set(key, d);
  }
  return d;
}

/** The stored form of a parsed hash ("scrypt$N$r$p$salt$hash"), e.g. as the input of a VerificationMemo. */
export function formatHash(h: ParsedHash): string {
  return `scrypt$${h.N}$${h.r}$${h.p}$${h.salt.toString('base64')}$${h.hash.toString('base64')}`;
}

/**
 * Remembers successful verifications, so that checking the same password against the
 * same stored hash again costs an HMAC instead of a scrypt (tens of ms, tens of MiB).
 * One entry per slot (the relay: the username; the operator: the stored hash): an
 * HMAC-SHA256 of (stored hash, password) under a per-process random key, so neither
 * the plaintext nor a fast unsalted hash of it is kept, and nothing survives the process.
 * A lookup compares in constant time. The stored hash is part of the HMAC input, so a
 * changed hash (new password, new salt) never matches an old entry. Only successes are
 * remembered: a wrong password always misses and must be checked in full by the caller.
 * Bounded: beyond `maxEntries` the oldest entries go first.
 */
export class VerificationMemo {
  // a KeyObject: createHmac with a raw Buffer key costs ~5x more per call
  private readonly key = crypto.createSecretKey(crypto.randomBytes(32));
  private readonly macs = new Map<string, Buffer>();
  /** Checks running now, at most one per slot (see verify). */
  private readonly pending = new Map<string, { mac: Buffer; result: Promise<boolean> }>();

  constructor(readonly maxEntries = 10_000) {}

  private mac(password: string, stored: string): Buffer {
    // the stored hash has no NUL (digits, '$', base64), so the split is unambiguous
    return crypto.createHmac('sha256', this.key).update(stored).update('\0').update(password, 'utf8').digest();
  }

  private store(slot: string, mac: Buffer): void {
    this.macs.delete(slot);
    this.macs.set(slot, mac);
    if (this.macs.size > this.maxEntries) this.macs.delete(this.macs.keys().next().value as string);
  }

  /**
   * Verifies with the memo: `remembered` when this password succeeded against this stored
   * hash in this slot before; else `check()` runs (the full verification) and a success is
   * remembered. A call made while the same check (same slot, password and stored hash) is
   * still running waits for that one instead of starting another (`shared`): a client
   * opening many sessions at once pays for one scrypt, not one per session. A different
   * password never shares (it gets its own full check).
   */
  async verify(slot: string, password: string, stored: string, check: () => Promise<boolean>): Promise<{ ok: boolean; how: 'remembered' | 'shared' | 'checked' }> {
    const mac = this.mac(password, stored);
    const known = this.macs.get(slot);
    if (known !== undefined && crypto.timingSafeEqual(known, mac)) return { ok: true, how: 'remembered' };
    const running = this.pending.get(slot);
    if (running && crypto.timingSafeEqual(running.mac, mac)) return { ok: await running.result, how: 'shared' };
    const result = check();
    if (!running) this.pending.set(slot, { mac, result });
    try {
      const ok = await result;
      if (ok) this.store(slot, mac);
      return { ok, how: 'checked' };
    } finally {
      if (this.pending.get(slot)?.result === result) this.pending.delete(slot);
    }
  }

  forget(slot: string): void {
    this.macs.delete(slot);
  }

  /** Drops the entries of slots `keep` says no to (e.g. users removed from the users file). */
  retain(keep: (slot: string) => boolean): void {
    for (const slot of this.macs.keys()) if (!keep(slot)) this.macs.delete(slot);
  }

  get size(): number {
    return this.macs.size;
  }
}
