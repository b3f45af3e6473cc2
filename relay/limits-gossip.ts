// The lockout across replicas (docs/relay-config.md "Across replicas"): each replica's
// LocalLimits (the single process's, or a multi-worker relay's primary's) sends what its
// own logins did to the lockout to every sibling over the peer channel (relay/peers.ts,
// POST /v1/lockout), and counts what the siblings send in the same window as its own:
//   f  a failed check of a key (a username's or a client address's) at t
//   l  a lockout of a key until t
//   s  a successful login at t: the username's failures up to t are forgiven everywhere
// Events received are never sent on. Each sibling has its own queue (bounded, oldest
// dropped first); a batch goes as soon as the previous one to that sibling is answered,
// so under load events wait at most one round trip and go together. An idle sibling
// gets an empty batch each second, which tells whether it is reachable.
//
// Fallback: while a known sibling has not answered for longer than UNREACHABLE_MS, new
// failures lock at ceil(maxFailures / (siblings + 1)); when it answers again it is sent
// the lockouts running now (it may have restarted and forgotten them) and its queue.

import crypto from 'node:crypto';
import type http from 'node:http';
import type pino from 'pino';
import prom from 'prom-client';
import type { LocalLimits, LockoutEvent } from './limits.js';
import { readBody, type PeerChannel } from './peers.js';

export const LOCKOUT_PATH = '/v1/lockout';
/** A sibling that has not answered for this long puts the relay on the fallback threshold. */
export const UNREACHABLE_MS = 3_000;
/** An empty batch to an idle sibling this often. */
export const HEARTBEAT_MS = 1_000;
/** After a failed send, the next try to that sibling waits this long. */
export const RETRY_MS = 250;
/** The periodic pass (heartbeats, retries, the fallback decision). */
export const TICK_MS = 50;
export const REQUEST_TIMEOUT_MS = 2_000;
/** Events waiting for one sibling; beyond, the oldest are dropped (and counted). */
export const MAX_QUEUE = 20_000;
/** Events in one request. */
export const MAX_BATCH = 2_000;
const MAX_BODY = 1024 * 1024;
/** Senders remembered for de-duplication (a sibling restarts with a new origin). */
const MAX_ORIGINS = 1_000;

interface Numbered extends LockoutEvent {
  /** The sender's sequence number: the receiver applies each once. */
  s: number;
}

interface Batch {
  origin: string;
  events: Numbered[];
}

interface Sibling {
  queue: Numbered[];
  sending: boolean;
  /** Last answered request, or when the sibling was first known. */
  lastOk: number;
  lastSent: number;
  retryAt: number;
  /** The last request failed. */
  failing: boolean;
  /** Not reached since it was found, or out of reach for longer than UNREACHABLE_MS: it gets the running lockouts when it answers. */
  away: boolean;
}

export interface GossipOptions {
  logger: pino.Logger;
  registry: prom.Registry;
  now?: () => number;
}

export class LockoutGossip {
  /** This process's name among the senders; new at each start. */
  readonly origin = crypto.randomBytes(9).toString('base64url');
  private seq = 0;
  private readonly siblings = new Map<string, Sibling>();
  /** Highest sequence number applied, by sender. */
  private readonly applied = new Map<string, number>();
  private tick?: NodeJS.Timeout;
  private flushSoon = false;
  private fallback = false;
  private closed = false;
  private readonly now: () => number;
  private readonly m: {
    events: prom.Counter<'direction' | 'kind'>;
    dropped: prom.Counter;
    threshold: prom.Gauge;
    fallback: prom.Gauge;
    unreachable: prom.Gauge;
  };

  constructor(
    private readonly channel: PeerChannel,
    private readonly limits: LocalLimits,
    private readonly opts: GossipOptions,
  ) {
    this.now = opts.now ?? Date.now;
    const r = [opts.registry];
    this.m = {
      events: new prom.Counter({ name: 'smtp_relay_lockout_gossip_events_total', help: 'Lockout events sent to and received from sibling replicas, by direction (sent: delivered to one sibling; received: applied) and kind (failure, lockout, success).', labelNames: ['direction', 'kind'] as const, registers: r }),
      dropped: new prom.Counter({ name: 'smtp_relay_lockout_gossip_dropped_total', help: 'Lockout events dropped for a sibling whose queue was full (it was out of reach for long).', registers: r }),
      threshold: new prom.Gauge({ name: 'smtp_relay_lockout_threshold', help: 'Failed logins that lock a username or client address now: auth.lockout.maxFailures, or ceil(maxFailures / (siblings + 1)) while a sibling is unreachable.', registers: r }),
      fallback: new prom.Gauge({ name: 'smtp_relay_lockout_fallback', help: '1 while a sibling replica is unreachable and the fallback lockout threshold applies.', registers: r }),
      unreachable: new prom.Gauge({ name: 'smtp_relay_peers_unreachable', help: 'Sibling replicas that have not answered for longer than 3 seconds.', registers: r }),
    };
    this.m.threshold.set(limits.lockoutThreshold);
  }

  /** Serves POST /v1/lockout and starts sending this relay's events. */
  start(): this {
    this.channel.route(LOCKOUT_PATH, (req, res) => this.receive(req, res));
    this.limits.onLockoutEvent = (e) => this.enqueue(e);
    this.tick = setInterval(() => this.pass(), TICK_MS);
    this.tick.unref();
    this.pass();
    return this;
  }

  private kind(k: LockoutEvent['k']): string {
    return k === 'f' ? 'failure' : k === 'l' ? 'lockout' : 'success';
  }

  private enqueue(e: LockoutEvent): void {
    this.sync();
    const n: Numbered = { ...e, s: ++this.seq };
    for (const sib of this.siblings.values()) this.push(sib, n);
    if (!this.flushSoon) {
      this.flushSoon = true;
      setImmediate(() => {
        this.flushSoon = false;
        this.sendAll();
      });
    }
  }

  private push(sib: Sibling, e: Numbered): void {
    sib.queue.push(e);
    if (sib.queue.length > MAX_QUEUE) {
      this.prune(sib);
      const over = sib.queue.length - MAX_QUEUE;
      if (over > 0) {
        sib.queue.splice(0, over);
        this.m.dropped.inc(over);
      }
    }
  }

  /** Drops what no longer matters: failures out of the window, lockouts that ended. Successes stay (they are few). */
  private prune(sib: Sibling): void {
    const t = this.now();
    const window = this.limits.lockoutSettings.windowMs;
    sib.queue = sib.queue.filter((e) => (e.k === 'f' ? t - e.t < window : e.k === 'l' ? e.t > t : true));
  }

  /** The sibling table follows the channel's list. */
  private sync(): void {
    const now = this.now();
    const current = new Set(this.channel.peers());
    for (const p of current) {
      if (!this.siblings.has(p)) this.siblings.set(p, { queue: [], sending: false, lastOk: now, lastSent: 0, retryAt: 0, failing: false, away: true });
    }
    for (const p of [...this.siblings.keys()]) if (!current.has(p)) this.siblings.delete(p);
  }

  private pass(): void {
    if (this.closed) return;
    this.sync();
    this.sendAll();
    this.decide();
  }

  private sendAll(): void {
    const now = this.now();
    for (const [peer, sib] of this.siblings) {
      if (sib.sending || now < sib.retryAt) continue;
      if (sib.queue.length === 0 && now - sib.lastSent < HEARTBEAT_MS) continue;
      void this.send(peer, sib);
    }
  }

  private async send(peer: string, sib: Sibling): Promise<void> {
    sib.sending = true;
    sib.lastSent = this.now();
    if (sib.queue.length > MAX_BATCH) this.prune(sib);
    const events = sib.queue.slice(0, MAX_BATCH);
    const body = Buffer.from(JSON.stringify({ origin: this.origin, events } satisfies Batch));
    let ok = false;
    try {
      const r = await this.channel.request(peer, LOCKOUT_PATH, body, { timeoutMs: REQUEST_TIMEOUT_MS });
      ok = r.status === 204 || r.status === 200;
      if (!ok) this.opts.logger.warn({ event: 'lockout_gossip_refused', peer, status: r.status }, 'a sibling refused lockout events');
    } catch (err) {
      if (!sib.failing) this.opts.logger.warn({ event: 'lockout_gossip_failed', peer, err: (err as Error).message }, 'cannot reach a sibling');
    }
    sib.sending = false;
    if (this.siblings.get(peer) !== sib) return; // left the list meanwhile
    const now = this.now();
    if (ok) {
      const last = events.length ? events[events.length - 1]!.s : 0;
      sib.queue = sib.queue.filter((e) => e.s > last);
      for (const e of events) this.m.events.inc({ direction: 'sent', kind: this.kind(e.k) });
      if (sib.failing) this.opts.logger.info({ event: 'lockout_gossip_resumed', peer, sent: events.length }, 'a sibling answers again');
      if (sib.away) {
        // the lockouts running now: the sibling is new, or may have restarted and forgotten them
        for (const [key, until] of this.limits.activeLockouts()) sib.queue.push({ k: 'l', key, t: until, s: ++this.seq });
        sib.away = false;
      }
      sib.failing = false;
      sib.lastOk = now;
      if (sib.queue.length) void this.send(peer, sib);
    } else {
      sib.failing = true;
      // once it answers again: the running lockouts once more
      if (now - sib.lastOk > UNREACHABLE_MS) sib.away = true;
      sib.retryAt = now + RETRY_MS;
    }
    this.decide();
  }

  /** The fallback threshold while a known sibling is out of reach. */
  private decide(): void {
    const now = this.now();
    const unreachable = [...this.siblings].filter(([, s]) => s.failing && now - s.lastOk > UNREACHABLE_MS).map(([p]) => p);
    this.m.unreachable.set(unreachable.length);
    const max = this.limits.lockoutSettings.maxFailures;
    const cap = Math.ceil(max / (this.siblings.size + 1));
    const fallback = unreachable.length > 0;
    if (fallback !== this.fallback) {
      this.fallback = fallback;
      if (fallback) this.opts.logger.warn({ event: 'lockout_fallback', threshold: cap, maxFailures: max, unreachable, siblings: this.siblings.size }, 'a sibling is unreachable: failed logins lock at the fallback threshold');
      else this.opts.logger.info({ event: 'lockout_fallback_ended', threshold: max }, 'every sibling answers: failed logins lock at maxFailures again');
    }
    const want = fallback ? cap : undefined;
    if (this.limits.lockoutThreshold !== (want ?? max)) this.limits.setLockoutCap(want);
    this.m.fallback.set(fallback ? 1 : 0);
    this.m.threshold.set(this.limits.lockoutThreshold);
  }

  private async receive(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      res.writeHead(405, { Allow: 'POST' }).end();
      return;
    }
    let body: Buffer;
    try {
      body = await readBody(req, res, MAX_BODY);
    } catch {
      return; // 413 sent
    }
    const batch = parseBatch(body);
    if (typeof batch === 'string') {
      res.writeHead(400, { 'Content-Type': 'text/plain' }).end(`${batch}\n`);
      return;
    }
    const last = this.applied.get(batch.origin) ?? 0;
    const fresh = batch.events.filter((e) => e.s > last);
    if (fresh.length) {
      this.applied.delete(batch.origin); // re-inserted last: the oldest sender goes first when full
      this.applied.set(batch.origin, Math.max(last, ...fresh.map((e) => e.s)));
      if (this.applied.size > MAX_ORIGINS) this.applied.delete(this.applied.keys().next().value!);
      const started = this.limits.applyRemote(fresh);
      for (const e of fresh) this.m.events.inc({ direction: 'received', kind: this.kind(e.k) });
      if (started.length) this.opts.logger.info({ event: 'lockout_from_sibling', count: started.length, scope: [...new Set(started.map((k) => k.slice(0, k.indexOf(':'))))] }, 'a sibling\'s failures locked keys here too');
    }
    res.writeHead(204).end();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.tick);
    if (this.limits.onLockoutEvent) this.limits.onLockoutEvent = undefined;
  }
}

/** A batch from a sibling, checked; or what is wrong with it. */
export function parseBatch(body: Buffer): Batch | string {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    return 'not JSON';
  }
  const b = doc as Partial<Batch>;
  if (!b || typeof b !== 'object' || typeof b.origin !== 'string' || b.origin.length === 0 || b.origin.length > 64) return 'origin missing';
  if (!Array.isArray(b.events) || b.events.length > MAX_BATCH) return `events must be a list of at most ${MAX_BATCH}`;
  let prev = 0;
  for (const e of b.events as unknown[]) {
    const x = e as Partial<Numbered>;
    if (!x || typeof x !== 'object') return 'an event is not an object';
    if (x.k !== 'f' && x.k !== 'l' && x.k !== 's') return 'an event kind is not f, l or s';
    // "user:" + a username of at most 256 characters, or "ip:" + an address
    if (typeof x.key !== 'string' || x.key.length > 300 || !/^(user|ip):/.test(x.key)) return 'an event key is not a lockout key';
    if (typeof x.t !== 'number' || !Number.isFinite(x.t)) return 'an event time is not a number';
    if (typeof x.s !== 'number' || !Number.isSafeInteger(x.s) || x.s <= prev) return 'event numbers must increase';
    prev = x.s;
  }
  return b as Batch;
}
