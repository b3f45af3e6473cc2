// Leader election on a coordination.k8s.io/v1 Lease, as client-go's
// leaderelection does it:
// - a candidate takes the Lease when it is absent, released (no holder), or
//   not renewed for leaseDuration *as observed on our own clock* (remote
//   renewTime is only compared for change, so clock skew does not matter);
// - writes carry the resourceVersion read, so two candidates cannot both win;
// - the leader renews every retryPeriod and gives up leadership when it could
//   not renew within renewDeadline (the process should then exit: its
//   workers may be acting on stale state);
// - release() on graceful shutdown empties holderIdentity so the next
//   candidate takes over at once instead of waiting out the lease.
// renewTime/acquireTime are MicroTime: RFC 3339 with exactly 6 fractional
// digits (a JS Date's 3 are refused with 400).

import { type Clock, realClock } from './clock.js';
import { type Kube, isConflict, isNotFound } from './kube.js';

export interface LeaseSpec {
  holderIdentity?: string | null;
  leaseDurationSeconds?: number;
  acquireTime?: string | null;
  renewTime?: string | null;
  leaseTransitions?: number;
}

interface Lease {
  apiVersion: 'coordination.k8s.io/v1';
  kind: 'Lease';
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: LeaseSpec;
}

export function microTime(ms: number): string {
  // 2026-11-27T22:20:54.123Z → 2026-11-27T22:20:54.123000Z
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export interface LeaderElectorOptions {
  kube: Kube;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  clock?: Clock;
  onStartedLeading: () => void;
  /** Leadership lost (not called after release()). */
  onStoppedLeading: () => void;
  onNewLeader?: (identity: string) => void;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

export class LeaderElector {
  private readonly o: LeaderElectorOptions;
  private readonly clock: Clock;
  private observed: { holder: string; renewTime: string; at: number } | undefined;
  /** The acquire/renew round running now, if any: release() waits for it. */
  private inFlight: Promise<void> = Promise.resolve();
  private leading = false;
  private stopped = false;
  private lastRenew = 0;
  private cancelTimer: (() => void) | undefined;
  private lastSeenLeader = '';

  constructor(o: LeaderElectorOptions) {
    if (!(o.leaseDurationMs > o.renewDeadlineMs && o.renewDeadlineMs > o.retryPeriodMs)) {
      throw new Error('leader election needs lease duration > renew deadline > retry period');
    }
    this.o = o;
    this.clock = o.clock ?? realClock;
  }

  isLeader(): boolean {
    return this.leading;
  }

  private path(): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(this.o.namespace)}/leases/${encodeURIComponent(this.o.name)}`;
  }

  start(): void {
    this.stopped = false;
    void this.tick();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.cancelTimer = this.clock.setTimer(() => void this.tick(), ms);
  }

  private tick(): Promise<void> {
    this.inFlight = this.round();
    return this.inFlight;
  }

  private async round(): Promise<void> {
    if (this.stopped) return;
    let ok = false;
    // A renewal must not outlive the renew deadline: a request hanging on a dead
    // connection would otherwise keep us "leading" (and reconciling) after the
    // Lease expired and another replica took over.
    const abort = new AbortController();
    const budget = this.leading ? this.lastRenew + this.o.renewDeadlineMs - this.clock.now() : this.o.renewDeadlineMs;
    const cancelTimeout = this.clock.setTimer(() => abort.abort(), Math.max(1, budget));
    try {
      ok = await this.tryAcquireOrRenew(abort.signal);
    } catch (err) {
      this.o.log?.('lease update failed', { err: abort.signal.aborted ? 'timed out' : String(err) });
    } finally {
      cancelTimeout();
    }
    if (this.stopped) return;
    const now = this.clock.now();
    if (ok) {
      this.lastRenew = now;
      if (!this.leading) {
        this.leading = true;
        this.o.onStartedLeading();
      }
    } else if (this.leading && (abort.signal.aborted || now - this.lastRenew >= this.o.renewDeadlineMs)) {
      this.leading = false;
      this.stopped = true;
      this.o.onStoppedLeading();
      return;
    }
    // A little jitter (client-go uses 1.2x) keeps candidates from moving in step.
    const wait = this.leading ? this.o.retryPeriodMs : this.o.retryPeriodMs * (1 + Math.random() * 0.2);
    this.schedule(wait);
  }

  /** One round: true when we hold the Lease afterwards. */
  async tryAcquireOrRenew(signal?: AbortSignal): Promise<boolean> {
    const now = this.clock.now();
    const opts = signal ? { signal } : {};
    let lease: Lease | undefined;
    try {
      lease = await this.o.kube.get<Lease>(this.path(), opts);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const mine: LeaseSpec = {
      holderIdentity: this.o.identity,
      leaseDurationSeconds: Math.ceil(this.o.leaseDurationMs / 1000),
      renewTime: microTime(now),
    };
    if (!lease) {
      try {
        await this.o.kube.request('POST', `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(this.o.namespace)}/leases`, {
          ...opts,
          body: {
            apiVersion: 'coordination.k8s.io/v1',
            kind: 'Lease',
            metadata: { name: this.o.name, namespace: this.o.namespace },
            spec: { ...mine, acquireTime: microTime(now), leaseTransitions: 0 },
          },
        });
      } catch (err) {
        if (isConflict(err)) return false; // someone else created it first
        throw err;
      }
      this.observe(this.o.identity, mine.renewTime!, now);
      return true;
    }
    const holder = lease.spec.holderIdentity ?? '';
    const renewTime = lease.spec.renewTime ?? '';
    this.observe(holder, renewTime, now);
    const durationMs = (lease.spec.leaseDurationSeconds ?? 0) * 1000;
    const held = holder !== '' && holder !== this.o.identity;
    if (held && this.observed!.at + durationMs > now) return false;

    const spec: LeaseSpec = { ...lease.spec, ...mine };
    if (holder !== this.o.identity) {
      spec.acquireTime = microTime(now);
      spec.leaseTransitions = (lease.spec.leaseTransitions ?? 0) + 1;
    }
    try {
      await this.o.kube.request('PUT', this.path(), { ...opts, body: { ...lease, spec } });
    } catch (err) {
      if (isConflict(err)) return false; // another candidate wrote between our read and write
      throw err;
    }
    this.observe(this.o.identity, mine.renewTime!, now);
    return true;
  }

  private observe(holder: string, renewTime: string, now: number): void {
    if (!this.observed || this.observed.holder !== holder || this.observed.renewTime !== renewTime) {
      this.observed = { holder, renewTime, at: now };
      if (holder && holder !== this.lastSeenLeader) {
        this.lastSeenLeader = holder;
        this.o.onNewLeader?.(holder);
      }
    }
  }

  /** Stops campaigning; if leading, hands the Lease back so another replica takes over at once. */
  async release(): Promise<void> {
    this.stopped = true;
    this.cancelTimer?.();
    // A renewal still in flight would write after our release (or make it conflict):
    // let it finish first. It cannot outlive the renew deadline.
    await this.inFlight.catch(() => undefined);
    if (!this.leading) return;
    this.leading = false;
    // Best effort, bounded: a shutdown must not wait on a hung API server.
    const abort = new AbortController();
    const cancelTimeout = this.clock.setTimer(() => abort.abort(), this.o.renewDeadlineMs);
    try {
      // Twice at most: a 409 means the Lease changed between our read and write.
      for (let attempt = 0; ; attempt++) {
        const lease = await this.o.kube.get<Lease>(this.path(), { signal: abort.signal });
        if (lease.spec.holderIdentity !== this.o.identity) return;
        const now = this.clock.now();
        try {
          await this.o.kube.request('PUT', this.path(), {
            signal: abort.signal,
            body: { ...lease, spec: { ...lease.spec, holderIdentity: null, leaseDurationSeconds: 1, renewTime: microTime(now), acquireTime: microTime(now) } },
          });
          return;
        } catch (err) {
          if (attempt > 0 || !isConflict(err)) throw err;
        }
      }
    } catch (err) {
      if (!isNotFound(err)) this.o.log?.('lease release failed', { err: abort.signal.aborted ? 'timed out' : String(err) });
    } finally {
      cancelTimeout();
    }
  }
}
