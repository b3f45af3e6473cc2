// The relay's shared limits: the state that must be exact for the whole relay, not per
// process: connection counts (global and per client address) with the unauthenticated
// connections that are shed for newcomers, the brute-force lockout (per username and per
// client address), and the per-user message rate limit. Behind one interface,
// SharedLimits, with two implementations:
//   LocalLimits  in-process and synchronous: a single-process relay (workers: 1) and the
//                primary of a multi-worker relay use it;
//   IpcLimits    a worker's: each call asks the primary over the cluster IPC channel
//                (relay/workers.ts serves it), answered in the order asked.
// A later replica-to-replica implementation sits behind the same interface
// (docs/relay-config.md, "Workers and replicas").
//
// Every answer is `T | Promise<T>`: LocalLimits answers synchronously, so a single
// process decides exactly as before, in the same tick. Connections are known by their
// socketKey (relay/connections.ts): unique among the open TCP connections of the host.

import type { LimitsSettings, LockoutSettings } from './config.js';
import { ConnectionTable, type ShedReason } from './connections.js';
import { Lockout, RateLimiter } from './policy/lockout.js';

export type Maybe<T> = T | Promise<T>;

/** The answer to a new connection or session: admitted, or the reason it is refused. */
export type Admission = 'ok' | 'too_many_connections' | 'too_many_connections_per_ip';

export interface ConnectionInfo {
  key: string;
  ip: string;
  listener: string;
}

export type LoginStart = { lockedMs: number } | { token: number };
export type LoginOutcome = { ok: true; forgive: string } | { ok: false } | { ok: undefined };

/**
 * What the lockout of this relay saw, for its siblings (relay/limits-gossip.ts): a failed
 * check of `key` at `t` ('f'), a lockout of `key` until `t` ('l'), a successful login
 * forgiving the failures of `key` up to `t` ('s').
 */
export interface LockoutEvent {
  k: 'f' | 'l' | 's';
  key: string;
  t: number;
}

/** A login that waits longer than this for a check of the same key to end is refused as locked for a second. */
export const LOGIN_WAIT_MS = 30_000;

export interface RateLimit {
  messages: number;
  perMs: number;
}

export interface SharedLimits {
  /** A connection at TCP accept (implicit TLS, before the handshake): counted and tracked as unauthenticated until closed(key). */
  accept(c: ConnectionInfo, shed: (reason: ShedReason) => void): Maybe<Admission>;
  /** A session at its connect phase: counted (unless at accept) and tracked as unauthenticated until authenticated(key) or closed(key). */
  connect(c: ConnectionInfo & { countedAtAccept: boolean }, shed: (reason: ShedReason) => void): Maybe<Admission>;
  authenticated(key: string): void;
  /** The connection's socket closed: releases whatever accept and connect counted (idempotent). */
  closed(key: string): void;
  /**
   * Before a password check: the longest lockout of `keys` in milliseconds, or a token
   * for endLogin. A check is let in only while, for every key, the failures in the
   * window plus the checks already running stay under maxFailures; otherwise it waits
   * for one of them to end. So at most maxFailures checks can fail per key and window,
   * however many arrive at once and on whichever worker.
   */
  beginLogin(keys: string[]): Maybe<LoginStart>;
  /**
   * After the check: `ok` clears the failures of `forgive` (the username's); a failure
   * counts for every key (which of them started a lockout); undefined (the check itself
   * failed) counts nothing.
   */
  endLogin(token: number, outcome: LoginOutcome): Maybe<boolean[]>;
  /** How long `user` must wait before its next message (0: may send now). */
  rateWait(user: string, limit: RateLimit): Maybe<number>;
  /** rateWait, and when 0 counts one message in the same step. */
  rateTake(user: string, limit: RateLimit): Maybe<number>;
}

/** Runs `f` on `v` now when it is a value, later when it is a promise. */
export function after<T, R>(v: Maybe<T>, f: (t: T) => Maybe<R>): Maybe<R> {
  return v instanceof Promise ? v.then(f) : f(v);
}

/** The settings LocalLimits reads: limits and lockout (both reload live). */
export interface LimitSettings {
  limits: Pick<LimitsSettings, 'maxConnections' | 'maxConnectionsPerIp' | 'maxUnauthenticated' | 'preAuthTimeoutMs'>;
  lockout: LockoutSettings;
}

/**
 * The in-process limits. `onShed` is told of each connection shed (its listener and
 * why), for the metric and the log line; the connection's own `shed` closes it.
 */
export class LocalLimits implements SharedLimits {
  private readonly table: ConnectionTable;
  private readonly lockout: Lockout;
  private readonly rate: RateLimiter;
  /** Password checks running, by lockout key. */
  private readonly checking = new Map<string, number>();
  /** Running checks by token: their keys. */
  private readonly logins = new Map<number, string[]>();
  private nextToken = 1;
  /** Logins waiting for a check of one of their keys to end, oldest first. */
  private waiting: { keys: string[]; since: number; resolve: (s: LoginStart) => void }[] = [];

  constructor(
    private settings: LimitSettings,
    private readonly onShed: (listener: string, reason: ShedReason) => void,
    private readonly now: () => number = Date.now,
  ) {
    this.table = new ConnectionTable(now);
    this.lockout = new Lockout(settings.lockout, now);
    this.rate = new RateLimiter(now);
  }

  /** Told of each lockout event of this relay's own logins (the gossip sends them to the siblings). */
  onLockoutEvent?: (e: LockoutEvent) => void;

  update(settings: LimitSettings): void {
    this.settings = settings;
    this.lockout.update(settings.lockout);
  }

  /** The fallback threshold while a sibling is unreachable (undefined: maxFailures). */
  setLockoutCap(cap: number | undefined): void {
    this.lockout.setCap(cap);
    this.admitWaiting();
  }

  /** The failures that lock a key now. */
  get lockoutThreshold(): number {
    return this.lockout.maxFailures;
  }

  get lockoutSettings(): LockoutSettings {
    return this.settings.lockout;
  }

  /** The lockouts running now (sent to a sibling that was out of reach). */
  activeLockouts(): [string, number][] {
    return this.lockout.activeLockouts();
  }

  /** Events from a sibling: counted, never passed on. Returns the lockouts they started here. */
  applyRemote(events: LockoutEvent[]): string[] {
    const started: string[] = [];
    for (const e of events) {
      if (e.k === 'f') {
        if (this.lockout.failRemote(e.key, e.t)) started.push(e.key);
      } else if (e.k === 'l') {
        if (this.lockout.lockRemote(e.key, e.t)) started.push(e.key);
      } else if (e.k === 's') this.lockout.succeedRemote(e.key, e.t);
    }
    // a login waiting for a check of a key that is now locked is refused at once
    this.admitWaiting();
    return started;
  }

  get unauthenticatedCount(): number {
    return this.table.unauthenticatedCount;
  }

  /** Open connections from `ip` (accepted or in session). */
  count(ip: string): number {
    return this.table.count(ip);
  }

  get sessionCount(): number {
    return this.table.sessionCount;
  }

  /** Sheds the unauthenticated connections older than preAuthTimeout (run each second). */
  sweep(): void {
    for (const listener of this.table.shedExpired(this.settings.limits.preAuthTimeoutMs)) this.onShed(listener, 'pre_auth_timeout');
    const cutoff = this.now() - LOGIN_WAIT_MS;
    const expired = this.waiting.filter((w) => w.since <= cutoff);
    if (expired.length === 0) return;
    this.waiting = this.waiting.filter((w) => w.since > cutoff);
    for (const w of expired) w.resolve({ lockedMs: 1000 });
  }

  /** Logins waiting for a running check of one of their keys (0 when none). */
  get waitingLogins(): number {
    return this.waiting.length;
  }

  private shedOne(reason: ShedReason, except?: string): boolean {
    const listener = this.table.shedOldest(reason, except);
    if (listener !== undefined) this.onShed(listener, reason);
    return listener !== undefined;
  }

  /** At maxUnauthenticated, an unauthenticated connection goes to admit a new one. */
  private makeRoomForUnauthenticated(newcomer?: string): void {
    if (this.table.unauthenticatedCount < this.settings.limits.maxUnauthenticated) return;
    this.shedOne('unauthenticated_cap', newcomer);
  }

  accept(c: ConnectionInfo, shed: (reason: ShedReason) => void): Admission {
    if (this.table.count(c.ip) >= this.settings.limits.maxConnectionsPerIp) return 'too_many_connections_per_ip';
    this.table.countKey(c.key, c.ip);
    this.makeRoomForUnauthenticated();
    this.table.trackUnauthenticated(c.key, c.listener, c.ip, shed);
    return 'ok';
  }

  connect(c: ConnectionInfo & { countedAtAccept: boolean }, shed: (reason: ShedReason) => void): Admission {
    const limits = this.settings.limits;
    // Full: an unauthenticated connection makes room (never an authenticated one).
    if (this.table.sessionCount >= limits.maxConnections && !this.shedOne('relay_full', c.key)) return 'too_many_connections';
    // A connection counted at accept is already in the count (accept refused it at the limit).
    if (this.table.count(c.ip) - (c.countedAtAccept ? 1 : 0) >= limits.maxConnectionsPerIp) return 'too_many_connections_per_ip';
    this.table.open(c.key, { listener: c.listener, ip: c.ip, countedAtAccept: c.countedAtAccept, key: c.key });
    // one counted at accept is unauthenticated since its handshake began, and keeps its age
    if (!c.countedAtAccept) this.makeRoomForUnauthenticated(c.key);
    this.table.trackUnauthenticated(c.key, c.listener, c.ip, shed);
    return 'ok';
  }

  authenticated(key: string): void {
    this.table.authenticated(key);
  }

  closed(key: string): void {
    this.table.close(key);
    this.table.closed(key);
    this.table.releaseKey(key);
  }

  lockedFor(keys: string[]): number {
    let most = 0;
    for (const k of keys) most = Math.max(most, this.lockout.lockedFor(k));
    return most;
  }

  /** A login's start now, or undefined when one of its keys has as many checks running as failures left. */
  private tryBegin(keys: string[]): LoginStart | undefined {
    const locked = this.lockedFor(keys);
    if (locked > 0) return { lockedMs: locked };
    const max = this.lockout.maxFailures;
    for (const k of keys) {
      const running = this.checking.get(k) ?? 0;
      // (running > 0: failures alone at the maximum, after maxFailures was lowered, lock at the next failure)
      if (running > 0 && this.lockout.failureCount(k) + running >= max) return undefined;
    }
    for (const k of keys) this.checking.set(k, (this.checking.get(k) ?? 0) + 1);
    const token = this.nextToken++;
    this.logins.set(token, keys);
    return { token };
  }

  beginLogin(keys: string[]): Maybe<LoginStart> {
    return this.tryBegin(keys) ?? new Promise<LoginStart>((resolve) => this.waiting.push({ keys, since: this.now(), resolve }));
  }

  endLogin(token: number, outcome: LoginOutcome): boolean[] {
    const keys = this.logins.get(token);
    if (!keys) return [];
    this.logins.delete(token);
    for (const k of keys) {
      const n = (this.checking.get(k) ?? 1) - 1;
      if (n <= 0) this.checking.delete(k);
      else this.checking.set(k, n);
    }
    let locked: boolean[] = [];
    const t = this.now();
    if (outcome.ok === true) {
      this.lockout.succeed(outcome.forgive);
      this.onLockoutEvent?.({ k: 's', key: outcome.forgive, t });
    } else if (outcome.ok === false) {
      locked = keys.map((k) => this.lockout.fail(k));
      if (this.onLockoutEvent) {
        for (const k of keys) this.onLockoutEvent({ k: 'f', key: k, t });
        keys.forEach((k, i) => locked[i] && this.onLockoutEvent!({ k: 'l', key: k, t: this.lockout.lockedUntil(k) }));
      }
    }
    this.admitWaiting();
    return locked;
  }

  /** Waiting logins, oldest first, go in as far as the keys allow now. */
  private admitWaiting(): void {
    if (this.waiting.length) {
      const still: typeof this.waiting = [];
      const ready: { resolve: (s: LoginStart) => void; start: LoginStart }[] = [];
      for (const w of this.waiting) {
        const start = this.tryBegin(w.keys);
        if (start) ready.push({ resolve: w.resolve, start });
        else still.push(w);
      }
      this.waiting = still;
      for (const r of ready) r.resolve(r.start);
    }
  }

  rateWait(user: string, limit: RateLimit): number {
    return this.rate.check(user, limit);
  }

  rateTake(user: string, limit: RateLimit): number {
    const wait = this.rate.check(user, limit);
    if (wait === 0) this.rate.record(user);
    return wait;
  }
}

// --- over IPC (a worker asks the primary) ---------------------------------------------

/** A call of a worker to the primary; `id` absent = no answer wanted. */
export interface LimitCall {
  t: 'limits';
  id?: number;
  op: 'accept' | 'connect' | 'authenticated' | 'closed' | 'beginLogin' | 'endLogin' | 'rateWait' | 'rateTake';
  args: unknown[];
}

export interface LimitAnswer {
  t: 'limits';
  id: number;
  result?: unknown;
  error?: string;
}

/** The primary tells the worker that holds `key` to shed it. */
export interface ShedOrder {
  t: 'shed';
  key: string;
  reason: ShedReason;
}

/** What IpcLimits needs of the channel (process.send / process.on('message') in a worker). */
export interface Channel {
  send(message: unknown): void;
  onMessage(handler: (message: unknown) => void): void;
}

/** A worker's limits: every decision is the primary's LocalLimits. */
export class IpcLimits implements SharedLimits {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  /** How to shed each connection this worker holds, by key. */
  private readonly sheds = new Map<string, (reason: ShedReason) => void>();

  constructor(private readonly channel: Channel) {
    channel.onMessage((m) => {
      const msg = m as LimitAnswer | ShedOrder;
      if (msg?.t === 'limits') {
        const w = this.waiting.get(msg.id);
        if (!w) return;
        this.waiting.delete(msg.id);
        if (msg.error !== undefined) w.reject(new Error(msg.error));
        else w.resolve(msg.result);
      } else if (msg?.t === 'shed') {
        const shed = this.sheds.get(msg.key);
        this.sheds.delete(msg.key);
        shed?.(msg.reason);
      }
    });
  }

  /** Calls waiting for an answer (the primary answers each; 0 when idle). */
  get pending(): number {
    return this.waiting.size;
  }

  private ask<T>(op: LimitCall['op'], args: unknown[]): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.channel.send({ t: 'limits', id, op, args } satisfies LimitCall);
    });
  }

  private tell(op: LimitCall['op'], args: unknown[]): void {
    this.channel.send({ t: 'limits', op, args } satisfies LimitCall);
  }

  accept(c: ConnectionInfo, shed: (reason: ShedReason) => void): Promise<Admission> {
    this.sheds.set(c.key, shed);
    return this.ask<Admission>('accept', [c]);
  }

  connect(c: ConnectionInfo & { countedAtAccept: boolean }, shed: (reason: ShedReason) => void): Promise<Admission> {
    this.sheds.set(c.key, shed);
    return this.ask<Admission>('connect', [c]);
  }

  authenticated(key: string): void {
    this.sheds.delete(key);
    this.tell('authenticated', [key]);
  }

  closed(key: string): void {
    this.sheds.delete(key);
    this.tell('closed', [key]);
  }

  beginLogin(keys: string[]): Promise<LoginStart> {
    return this.ask('beginLogin', [keys]);
  }

  endLogin(token: number, outcome: LoginOutcome): Maybe<boolean[]> {
    if (outcome.ok === false) return this.ask('endLogin', [token, outcome]);
    this.tell('endLogin', [token, outcome]);
    return [];
  }

  rateWait(user: string, limit: RateLimit): Promise<number> {
    return this.ask('rateWait', [user, limit]);
  }

  rateTake(user: string, limit: RateLimit): Promise<number> {
    return this.ask('rateTake', [user, limit]);
  }
}

/**
 * The primary's side: answers a worker's LimitCall from `local`. `owner` remembers
 * which worker holds each connection, so that a shed reaches it and a worker that dies
 * gives its connections back (releaseWorker).
 */
export class LimitServer {
  /** Connection key -> the worker holding it. */
  private readonly owners = new Map<string, number>();
  /** Login token -> the worker whose check it is. */
  private readonly loginOwners = new Map<number, number>();
  /** Workers that exited: a login that was waiting for them is ended at once. */
  private readonly gone = new Set<number>();

  constructor(
    private readonly local: LocalLimits,
    private readonly sendTo: (worker: number, message: unknown) => void,
  ) {}

  private shedVia(worker: number, key: string): (reason: ShedReason) => void {
    return (reason) => this.sendTo(worker, { t: 'shed', key, reason } satisfies ShedOrder);
  }

  handle(worker: number, call: LimitCall): void {
    const answer = (result: unknown) => {
      if (call.id !== undefined) this.sendTo(worker, { t: 'limits', id: call.id, result } satisfies LimitAnswer);
    };
    const fail = (err: unknown) => {
      if (call.id !== undefined) this.sendTo(worker, { t: 'limits', id: call.id, error: (err as Error).message } satisfies LimitAnswer);
    };
    let result: unknown;
    try {
      result = this.run(worker, call);
    } catch (err) {
      return fail(err);
    }
    if (result instanceof Promise) result.then(answer, fail);
    else answer(result);
  }

  /** A login started for `worker`: remembered, or ended at once when the worker is gone. */
  private started(worker: number, start: LoginStart): LoginStart {
    if (!('token' in start)) return start;
    if (this.gone.has(worker)) this.local.endLogin(start.token, { ok: undefined });
    else this.loginOwners.set(start.token, worker);
    return start;
  }

  private run(worker: number, call: LimitCall): unknown {
    const a = call.args;
    const l = this.local;
    switch (call.op) {
      case 'accept': {
        const c = a[0] as ConnectionInfo;
        const r = l.accept(c, this.shedVia(worker, c.key));
        if (r === 'ok') this.owners.set(c.key, worker);
        return r;
      }
      case 'connect': {
        const c = a[0] as ConnectionInfo & { countedAtAccept: boolean };
        const r = l.connect(c, this.shedVia(worker, c.key));
        if (r === 'ok') this.owners.set(c.key, worker);
        return r;
      }
      case 'authenticated':
        return l.authenticated(a[0] as string);
      case 'closed':
        this.owners.delete(a[0] as string);
        return l.closed(a[0] as string);
      case 'beginLogin': {
        const s = l.beginLogin(a[0] as string[]);
        return s instanceof Promise ? s.then((x) => this.started(worker, x)) : this.started(worker, s);
      }
      case 'endLogin':
        this.loginOwners.delete(a[0] as number);
        return l.endLogin(a[0] as number, a[1] as LoginOutcome);
      case 'rateWait':
        return l.rateWait(a[0] as string, a[1] as RateLimit);
      case 'rateTake':
        return l.rateTake(a[0] as string, a[1] as RateLimit);
      default:
        throw new Error(`unknown limits call ${JSON.stringify((call as { op: unknown }).op)}`);
    }
  }

  /** A worker exited: every connection it held is closed (its sockets died with it). */
  releaseWorker(worker: number): number {
    this.gone.add(worker);
    for (const [token, w] of this.loginOwners) {
      if (w !== worker) continue;
      this.loginOwners.delete(token);
      this.local.endLogin(token, { ok: undefined });
    }
    let n = 0;
    for (const [key, w] of this.owners) {
      if (w !== worker) continue;
      this.owners.delete(key);
      this.local.closed(key);
      n++;
    }
    return n;
  }
}
