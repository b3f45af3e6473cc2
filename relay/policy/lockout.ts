// Brute-force lockout: after `maxFailures` failed AUTH attempts within `window`
// from one key (a client IP or a username), that key is locked for `duration`.

import type { LockoutSettings } from '../config.js';

interface Entry {
  failures: number[]; // timestamps within the window
  lockedUntil: number;
}

/** Bound on tracked keys so an attacker rotating usernames cannot grow memory without limit. */
export const MAX_KEYS = 100_000;

/** The users file allows names up to this length (relay/users.ts). */
export const MAX_USERNAME_LENGTH = 256;

/**
 * The lockout key of a username. An AUTH line may carry a username of ~12 KB; longer
 * than any user can have, such names share one key, so MAX_KEYS entries stay a few
 * hundred bytes each instead of up to 12 KB (over a gigabyte when full).
 */
export function userLockoutKey(username: string): string {
  return username.length > MAX_USERNAME_LENGTH ? 'user:(overlong)' : `user:${username}`;
}

export class Lockout {
  private readonly entries = new Map<string, Entry>();
  /** A lower threshold while a sibling replica is unreachable (relay/limits-gossip.ts); undefined = maxFailures. */
  private cap?: number;

  constructor(
    private settings: LockoutSettings,
    private readonly now: () => number = Date.now,
  ) {}

  update(settings: LockoutSettings): void {
    this.settings = settings;
  }

  /** Milliseconds left on a lockout, or 0. */
  lockedFor(key: string): number {
    const e = this.entries.get(key);
    if (!e) return 0;
    const left = e.lockedUntil - this.now();
    return left > 0 ? left : 0;
  }

  /** Failures of `key` within the window now. */
  failureCount(key: string): number {
    const e = this.entries.get(key);
    if (!e) return 0;
    const t = this.now();
    let n = 0;
    for (const f of e.failures) if (t - f < this.settings.windowMs) n++;
    return n;
  }

  /** The failures that start a lockout now: maxFailures, or the fallback cap while it is lower. */
  get maxFailures(): number {
    return this.cap === undefined ? this.settings.maxFailures : Math.min(this.cap, this.settings.maxFailures);
  }

  get durationMs(): number {
    return this.settings.durationMs;
  }

  /** Sets (or with undefined, lifts) the fallback threshold. */
  setCap(cap: number | undefined): void {
    this.cap = cap === undefined ? undefined : Math.max(1, cap);
  }

  private entry(key: string, t: number): Entry {
    let e = this.entries.get(key);
    if (!e) {
      if (this.entries.size >= MAX_KEYS) this.prune(t);
      e = { failures: [], lockedUntil: 0 };
      this.entries.set(key, e);
    }
    return e;
  }

  /** Records a failure; returns true when it started a lockout. */
  fail(key: string): boolean {
    const t = this.now();
    const e = this.entry(key, t);
    e.failures = e.failures.filter((f) => t - f < this.settings.windowMs);
    e.failures.push(t);
    if (e.failures.length >= this.maxFailures && e.lockedUntil <= t) {
      e.lockedUntil = t + this.settings.durationMs;
      e.failures = [];
      return true;
    }
    return false;
  }

  /** When the lockout of `key` ends (0: none). */
  lockedUntil(key: string): number {
    return this.entries.get(key)?.lockedUntil ?? 0;
  }

  /**
   * A failure a sibling replica saw at `at` (its clock, never later than ours): counted in
   * the window like a local one; it may start the lockout here (ending `at` + duration).
   * Ignored while the key is locked here (a local attempt would not have been checked).
   */
  failRemote(key: string, at: number): boolean {
    const t = this.now();
    const when = Math.min(at, t);
    if (t - when >= this.settings.windowMs || this.lockedFor(key) > 0) return false;
    const e = this.entry(key, t);
    e.failures = e.failures.filter((f) => t - f < this.settings.windowMs);
    e.failures.push(when);
    if (e.failures.length >= this.maxFailures) {
      e.lockedUntil = when + this.settings.durationMs;
      e.failures = [];
      return e.lockedUntil > t;
    }
    return false;
  }

  /** A lockout a sibling started, until `until` (at most one duration from now); returns true when it locks a key not locked here. */
  lockRemote(key: string, until: number): boolean {
    const t = this.now();
    const end = Math.min(until, t + this.settings.durationMs);
    if (end <= t) return false;
    const e = this.entry(key, t);
    const was = e.lockedUntil > t;
    if (end > e.lockedUntil) e.lockedUntil = end;
    e.failures = [];
    return !was;
  }

  /** A successful login on a sibling at `at`: forgives the failures of `key` counted up to then, unless it is locked. */
  succeedRemote(key: string, at: number): void {
    const e = this.entries.get(key);
    if (!e || e.lockedUntil > this.now()) return;
    e.failures = e.failures.filter((f) => f > at);
    if (e.failures.length === 0) this.entries.delete(key);
  }

  /** The lockouts running now: key and end. */
  activeLockouts(): [string, number][] {
    const t = this.now();
    const out: [string, number][] = [];
    for (const [k, e] of this.entries) if (e.lockedUntil > t) out.push([k, e.lockedUntil]);
    return out;
  }

  /** A successful login clears the failures of its key (the relay passes the username's only). */
  succeed(key: string): void {
    const e = this.entries.get(key);
    if (e && e.lockedUntil <= this.now()) this.entries.delete(key);
  }

  /**
   * Makes room: drops what no longer matters, then the oldest entries that only count
   * failures, and only then the oldest lockouts. Evicting oldest-first regardless would
   * let a flood of new usernames push a running lockout (the victim's) out of the map.
   * Prunes down to 90 % so that a full map is not scanned on every new key.
   */
  private prune(t: number): void {
    const target = Math.floor(MAX_KEYS * 0.9);
    for (const [k, e] of this.entries) {
      if (e.lockedUntil <= t && e.failures.every((f) => t - f >= this.settings.windowMs)) this.entries.delete(k);
    }
    // Map keeps insertion order: oldest first
    for (const [k, e] of this.entries) {
      if (this.entries.size <= target) return;
      if (e.lockedUntil <= t) this.entries.delete(k);
    }
    for (const k of this.entries.keys()) {
      if (this.entries.size <= target) return;
      this.entries.delete(k);
    }
  }
}

/**
 * Per-user message rate limit over a sliding window. `check` says how long to
 * wait (0 = may send now); `record` counts one message.
 */
export class RateLimiter {
  private readonly sent = new Map<string, number[]>();

  constructor(private readonly now: () => number = Date.now) {}

  check(user: string, limit: { messages: number; perMs: number }): number {
    const t = this.now();
    const list = (this.sent.get(user) ?? []).filter((s) => t - s < limit.perMs);
    this.sent.set(user, list);
    if (list.length < limit.messages) return 0;
    return list[list.length - limit.messages]! + limit.perMs - t;
  }

  record(user: string): void {
    const list = this.sent.get(user) ?? [];
    list.push(this.now());
    this.sent.set(user, list);
  }
}
