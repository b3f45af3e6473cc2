// A de-duplicating work queue keyed by "namespace/name", in the shape of
// client-go's rate-limited workqueue:
// - a key waits at most once (adding a queued key is a no-op);
// - a key is never handled by two workers at once: a key added while it is
//   being handled is queued again when the handler returns;
// - a failing key is retried after a per-key exponential backoff (capped),
//   forgotten on success;
// - a handler may ask to be called again later (requeue-after).

import { type Clock, realClock } from './clock.js';

export interface SyncResult {
  /** Handle the key again after this many milliseconds (e.g. waiting for a certificate). */
  requeueAfterMs?: number;
}

export type SyncHandler = (key: string) => Promise<SyncResult | void>;

export interface WorkQueueOptions {
  workers: number;
  handler: SyncHandler;
  /** First retry delay after an error; doubles per consecutive failure. Default 200 ms. */
  baseDelayMs?: number;
  /** Cap of the retry delay. Default 5 minutes. */
  maxDelayMs?: number;
  clock?: Clock;
  /** Called with (key, error, retryInMs) when a handler throws. */
  onError?: (key: string, err: unknown, retryInMs: number) => void;
}

export class WorkQueue {
  private readonly workers: number;
  private readonly handler: SyncHandler;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly clock: Clock;
  private readonly onError: WorkQueueOptions['onError'];

  /** FIFO of keys ready to be handled; `dirty` mirrors it plus keys re-added while processing. */
  private readonly ready: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly waiting = new Map<string, { at: number; cancel: () => void }>();
  private running = false;
  private stopping = false;
  private readonly inFlight = new Set<Promise<void>>();
  private idleWaiters: (() => void)[] = [];

  constructor(opts: WorkQueueOptions) {
    if (!Number.isInteger(opts.workers) || opts.workers < 1) throw new Error('workers must be a positive integer');
    this.workers = opts.workers;
    this.handler = opts.handler;
    this.baseDelayMs = opts.baseDelayMs ?? 200;
    this.maxDelayMs = opts.maxDelayMs ?? 5 * 60_000;
    this.clock = opts.clock ?? realClock;
    this.onError = opts.onError;
  }

  /** Keys waiting to be handled (not counting those being handled or delayed). */
  depth(): number {
    return this.ready.length;
  }

  /** Keys being handled right now. */
  active(): number {
    return this.processing.size;
  }

  /** Failures in a row for a key (0 after a success). */
  failureCount(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  start(): void {
    this.running = true;
    this.pump();
  }

  add(key: string): void {
    if (this.stopping) return;
    // An immediate add supersedes a pending delayed one.
    const w = this.waiting.get(key);
    if (w) {
      w.cancel();
      this.waiting.delete(key);
    }
    if (this.dirty.has(key)) return;
    this.dirty.add(key);
    if (!this.processing.has(key)) {
      this.ready.push(key);
      this.pump();
    }
  }

  /** Adds the key after ms; if it is already due earlier, the earlier time wins. */
  addAfter(key: string, ms: number): void {
    if (this.stopping) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = this.clock.now() + ms;
    const w = this.waiting.get(key);
    if (w) {
      if (w.at <= at) return;
      w.cancel();
    }
    const cancel = this.clock.setTimer(() => {
      this.waiting.delete(key);
      this.add(key);
    }, ms);
    this.waiting.set(key, { at, cancel });
  }

  /** The delay the next failure of this key will wait. */
  backoffFor(failures: number): number {
    const exp = Math.min(failures - 1, 30);
    return Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** exp);
  }

  /**
   * Stops handing out keys, cancels delayed ones, and resolves once the handlers
   * in flight have returned. Queued keys are dropped: the next leader relists.
   */
  async shutdown(): Promise<void> {
    this.stopping = true;
    this.running = false;
    for (const w of this.waiting.values()) w.cancel();
    this.waiting.clear();
    this.ready.length = 0;
    this.dirty.clear();
    await Promise.allSettled([...this.inFlight]);
  }

  /** Resolves when nothing is queued or being handled (delayed keys do not count). Test helper. */
  whenIdle(): Promise<void> {
    if (this.ready.length === 0 && this.processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private pump(): void {
    if (!this.running) return;
    while (this.processing.size < this.workers && this.ready.length > 0) {
      const key = this.ready.shift()!;
      this.dirty.delete(key);
      this.processing.add(key);
      const p = this.run(key);
      this.inFlight.add(p);
      void p.finally(() => this.inFlight.delete(p));
    }
  }

  private async run(key: string): Promise<void> {
    let result: SyncResult | void = undefined;
    let failed = false;
    let error: unknown;
    try {
      result = await this.handler(key);
    } catch (err) {
      failed = true;
      error = err;
    }
    this.processing.delete(key);
    if (failed) {
      const n = (this.failures.get(key) ?? 0) + 1;
      this.failures.set(key, n);
      const delay = this.backoffFor(n);
      this.onError?.(key, error, delay);
      if (!this.dirty.has(key)) this.addAfter(key, delay);
    } else {
      this.failures.delete(key);
      if (result && result.requeueAfterMs !== undefined && !this.dirty.has(key)) {
        this.addAfter(key, result.requeueAfterMs);
      }
    }
    // Re-added while it was being handled: queue it now.
    if (this.dirty.has(key) && !this.stopping) this.ready.push(key);
    this.pump();
    if (this.ready.length === 0 && this.processing.size === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}
