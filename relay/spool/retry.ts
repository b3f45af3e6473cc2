// The retry schedule (docs/spool.md explains the choice against Postfix and Stalwart).
import type { RetrySettings } from './settings.js';

/**
 * Milliseconds to wait after the `attempts`-th failed attempt (1 = the first): the
 * initial delay doubled each time, capped at the maximum, then shortened by up to
 * `jitter` at random (`random` in [0, 1)) so that messages deferred together by one
 * upstream outage do not all come back in the same second. Never above maxDelayMs.
 */
export function retryDelay(attempts: number, r: RetrySettings, random: number): number {
  const n = Math.max(1, Math.min(attempts, 64));
  const base = Math.min(r.maxDelayMs, r.initialDelayMs * r.factor ** (n - 1));
  return Math.max(1, Math.round(base * (1 - r.jitter * random)));
}

/** When to try again: after the delay, but never after the message's expiry. */
export function nextAttemptAt(now: number, created: number, lifetimeMs: number, attempts: number, r: RetrySettings, random: number): number {
  return Math.min(now + retryDelay(attempts, r, random), Math.max(now, created + lifetimeMs));
}
