// Delivery of spooled messages: a bounded number at a time, each recipient retried
// alone after a temporary failure (exponential backoff with jitter, capped), reported
// to the sender after a permanent refusal or at expiry (dsn.ts), removed when done.
//
// State machine of a recipient (types.ts):
//   pending --accepted--> delivered
//   pending --4xx--> failed-temporary --(retry)--> delivered | failed-temporary | failed-permanent
//   pending|failed-temporary --5xx, or lifetime over--> failed-permanent (+ report once)
// Reports follow each recipient's NOTIFY (RFC 3461; policy/dsn-params.ts wantsNotice):
// failures and expiry unless NOTIFY leaves out FAILURE, delay warnings only with DELAY
// (or without NOTIFY), and a "relayed" notice for NOTIFY=SUCCESS when the upstream was
// not handed the request. Nothing is ever reported to the null sender (no backscatter).
// A message leaves the spool when no recipient is pending or failed-temporary and every
// report is queued.
import fsp from 'node:fs/promises';
import path from 'node:path';
import type pino from 'pino';
import { wantsNotice, type RecipientDsn } from '../policy/dsn-params.js';
import type { DeliveryOutcome, Envelope } from '../upstream.js';
import { buildDsn, type DsnRecipient } from './dsn.js';
import type { SpoolMetrics } from './metrics.js';
import { nextAttemptAt } from './retry.js';
import type { RetrySettings } from './settings.js';
import type { Spool } from './store.js';
import { owesReport, type EntryState, type RecipientState, type StoredEnvelope } from './types.js';

/** An envelope to deliver, with the DSN request (RFC 3461) for an upstream that takes one. */
export type SpoolDelivery = Envelope;

/** The upstream's outcome; `dsnPassed` when it advertised DSN and was given the request. */
export type SpoolOutcome = DeliveryOutcome;

/** The signature of Upstream.deliver (relay/upstream.ts). */
export type DeliverFn = (envelope: SpoolDelivery, message: Buffer) => Promise<SpoolOutcome>;

export interface SchedulerOptions {
  spool: Spool;
  deliver: DeliverFn;
  /** Reporting-MTA and MAILER-DAEMON domain of the reports. */
  hostname: string;
  lifetimeMs: number;
  retry: RetrySettings;
  concurrency: number;
  /** 0 = no delay warnings. */
  delayWarningMs: number;
  logger: pino.Logger;
  metrics: SpoolMetrics;
  /** [0, 1) source for the jitter; default Math.random. */
  random?: () => number;
  /** How often `smtp-relay queue` commands are looked for; default 1000 ms (real time). */
  controlPollMs?: number;
}

/**
 * During a drain (relay/control.ts): hands one message (only its recipients still to be
 * delivered, with their state) to a sibling; true once the sibling has it on stable
 * storage (then this spool removes it), false when no sibling took it.
 */
export type HandOffFn = (envelope: StoredEnvelope, state: EntryState, body: Buffer) => Promise<boolean>;

/** While draining: a message no sibling took, or that the upstream deferred, is tried again this soon. */
export const DRAIN_RETRY_MS = 3000;
/** While draining: after the upstream failed as a whole, messages go straight to a sibling for this long. */
const DRAIN_UPSTREAM_SKIP_MS = 5000;

/** File whose mtime shows a running scheduler to `smtp-relay queue` (cli.ts). */
export const ALIVE_FILE = 'scheduler.alive';

const undone = (r: RecipientState) => r.status === 'pending' || r.status === 'failed-temporary';

/** A min-heap of (due, id); stale items are skipped when popped (see `scheduled`). */
class DueHeap {
  private a: { due: number; id: string }[] = [];
  get size(): number {
    return this.a.length;
  }
  peek(): { due: number; id: string } | undefined {
    return this.a[0];
  }
  push(item: { due: number; id: string }): void {
    const a = this.a;
    a.push(item);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]!.due <= a[i]!.due) break;
      [a[p], a[i]] = [a[i]!, a[p]!];
      i = p;
    }
  }
  pop(): { due: number; id: string } | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && a[l]!.due < a[m]!.due) m = l;
        if (r < a.length && a[r]!.due < a[m]!.due) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i]!, a[m]!];
        i = m;
      }
    }
    return top;
  }
}

export class Scheduler {
  private readonly o: SchedulerOptions;
  private readonly heap = new DueHeap();
  /** The due time each entry is queued under in `heap` (others there are stale). */
  private readonly scheduled = new Map<string, number>();
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Entries whose last failure was the upstream's (no recipient named): retried at once when it accepts again. */
  private readonly upstreamDeferred = new Set<string>();
  /** Deleted with `queue delete` while being delivered: removed when the attempt ends. */
  private readonly deleteAfter = new Set<string>();
  /** A report could not be queued (spool full): try again at this time. */
  private readonly notifyRetry = new Map<string, number>();
  private timer: unknown;
  private timerDue = Infinity;
  private controlTimer?: NodeJS.Timeout;
  private stopped = true;
  private readonly random: () => number;
  /** The drain's hand-off (setDrain); undefined = not draining. */
  private drain?: { handoff?: HandOffFn };
  /** When the upstream last failed as a whole (a temporary failure naming no recipient); 0 after it accepted. */
  private upstreamFailedAt = 0;

  constructor(opts: SchedulerOptions) {
    this.o = opts;
    this.random = opts.random ?? Math.random;
  }

  /** Schedules everything in the spool and starts delivering; new messages are picked up as they are enqueued. */
  start(): void {
    this.stopped = false;
    this.o.spool.onEnqueue = (id) => this.schedule(id);
    for (const id of this.o.spool.ids()) this.schedule(id, false);
    this.pump();
    const poll = this.o.controlPollMs ?? 1000;
    void this.pollControl();
    this.controlTimer = setInterval(() => void this.pollControl(), poll);
    this.controlTimer.unref();
  }

  /**
   * Stops starting deliveries and waits up to `graceMs` for those in progress to finish
   * (their results are saved). Everything else stays in the spool for the next start.
   */
  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    this.o.spool.onEnqueue = undefined;
    if (this.controlTimer) clearInterval(this.controlTimer);
    if (this.timer !== undefined) this.o.spool.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await fsp.rm(path.join(this.o.spool.directory, ALIVE_FILE), { force: true }).catch(() => undefined);
    if (!this.inFlight.size) return;
    let t: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.inFlight.values()]), new Promise<void>((r) => (t = setTimeout(r, graceMs)))]);
    clearTimeout(t);
  }

  /**
   * Starts (or updates) a drain: every message still to be delivered is tried now, held
   * ones included; one whose delivery fails temporarily goes to a sibling through
   * `handoff` instead of waiting, and when none takes it, it is tried again within
   * DRAIN_RETRY_MS. `undefined` ends the drain (the retry times stay as they are).
   */
  setDrain(drain: { handoff?: HandOffFn } | undefined): void {
    const starting = !this.drain && drain;
    this.drain = drain;
    if (!starting) return;
    const now = this.o.spool.clock.now();
    for (const id of [...this.o.spool.ids()]) {
      const e = this.o.spool.get(id);
      if (!e) continue;
      // in memory only: a restart before the drain ends keeps the saved times (it comes back draining)
      for (const r of e.state.recipients) if (undone(r) && r.nextAttempt > now) r.nextAttempt = now;
      this.scheduled.delete(id);
      this.schedule(id, false);
    }
    this.pump();
  }

  get draining(): boolean {
    return this.drain !== undefined;
  }

  /** Deliveries in progress. */
  get active(): number {
    return this.inFlight.size;
  }

  /** When the entry next needs work, or undefined (held, or nothing to do but remove it). */
  private dueOf(id: string): number | undefined {
    const e = this.o.spool.get(id);
    if (!e) return undefined;
    // a held message is not delivered; during a drain it goes to a sibling (still held)
    if (e.state.held) return this.drain?.handoff ? (this.notifyRetry.get(id) ?? 0) : undefined;
    let due = Infinity;
    for (const r of e.state.recipients) if (undone(r) && r.nextAttempt < due) due = r.nextAttempt;
    const needsReport = e.state.recipients.some(owesReport);
    if (needsReport) due = Math.min(due, this.notifyRetry.get(id) ?? 0);
    if (due === Infinity) return 0; // finished: remove it now
    const w = this.o.delayWarningMs;
    if (w && !e.state.warned && e.envelope.mailFrom && !e.envelope.dsn) due = Math.min(due, Math.max(e.envelope.created + w, this.notifyRetry.get(id) ?? 0));
    return due;
  }

  private schedule(id: string, pump = true): void {
    if (this.inFlight.has(id)) return; // rescheduled when the attempt ends
    const due = this.dueOf(id);
    if (due === undefined) {
      this.scheduled.delete(id);
      return;
    }
    if (this.scheduled.get(id) === due) return;
    this.scheduled.set(id, due);
    this.heap.push({ due, id });
    if (pump) this.pump();
  }

  private pump(): void {
    if (this.stopped) return;
    const now = this.o.spool.clock.now();
    // Bounded: each turn pops one heap item, and nothing is pushed inside the loop.
    while (this.inFlight.size < this.o.concurrency && this.heap.size) {
      const top = this.heap.peek()!;
      if (this.scheduled.get(top.id) !== top.due) {
        this.heap.pop(); // stale
        continue;
      }
      if (top.due > now) break;
      this.heap.pop();
      this.scheduled.delete(top.id);
      const p = this.process(top.id)
        .catch((err: Error) => {
          this.o.logger.error({ id: top.id, err: err.message }, 'spool delivery failed unexpectedly; retrying later');
          this.backoffAll(top.id);
        })
        .finally(() => {
          this.inFlight.delete(top.id);
          if (this.deleteAfter.delete(top.id)) void this.o.spool.remove(top.id).catch(() => undefined);
          else this.schedule(top.id, false);
          this.pump();
        });
      this.inFlight.set(top.id, p);
    }
    this.arm();
  }

  /** One timer, for the earliest due entry that is not running. */
  private arm(): void {
    if (this.stopped) return;
    let top = this.heap.peek();
    while (top && this.scheduled.get(top.id) !== top.due) {
      this.heap.pop();
      top = this.heap.peek();
    }
    const due = top ? top.due : Infinity;
    if (due === this.timerDue && this.timer !== undefined) return;
    if (this.timer !== undefined) this.o.spool.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.timerDue = due;
    if (due === Infinity || this.inFlight.size >= this.o.concurrency) return;
    const clock = this.o.spool.clock;
    this.timer = clock.setTimeout(
      () => {
        this.timer = undefined;
        this.timerDue = Infinity;
        this.pump();
      },
      Math.max(0, due - clock.now()),
    );
  }

  /** After an unexpected error: every undone recipient waits the initial delay. */
  private backoffAll(id: string): void {
    const e = this.o.spool.get(id);
    if (!e) return;
    const at = this.o.spool.clock.now() + this.o.retry.initialDelayMs;
    for (const r of e.state.recipients) if (undone(r)) r.nextAttempt = Math.max(r.nextAttempt, at);
    this.notifyRetry.set(id, at);
  }

  private async process(id: string): Promise<void> {
    const spool = this.o.spool;
    const entry = spool.get(id);
    if (!entry) return;
    const env = entry.envelope;
    const now = spool.clock.now();
    const state: EntryState = structuredClone(entry.state);
    const canReport = env.mailFrom !== '' && !env.dsn;
    const requestOf = (r: RecipientState): RecipientDsn | undefined => env.rcptDsn?.[state.recipients.indexOf(r)];
    let body: Buffer | undefined;
    const loadBody = async (): Promise<Buffer> => (body ??= await spool.body(id));
    let changed = false;

    // While draining with the upstream down (it failed as a whole a moment ago), straight to a sibling.
    const skipUpstream = this.drain?.handoff !== undefined && this.upstreamFailedAt > 0 && now - this.upstreamFailedAt < DRAIN_UPSTREAM_SKIP_MS;
    const due = state.held || skipUpstream ? [] : state.recipients.filter((r) => undone(r) && r.nextAttempt <= now);
    if (due.length) {
      try {
        await loadBody();
      } catch (err) {
        if ((err as { code?: string }).code === 'EDAMAGED') {
          await spool.quarantine(id, (err as Error).message);
          return;
        }
        throw err;
      }
      await this.attempt(id, env, due, body!, now, requestOf, canReport);
      changed = true;
    }

    // Delay warning: once, for a message from a real sender that is still waiting.
    const w = this.o.delayWarningMs;
    if (w && canReport && !state.warned && now - env.created >= w) {
      const waiting = state.recipients.filter((r) => undone(r) && wantsNotice(requestOf(r), 'delayed'));
      if (waiting.length) {
        if (await this.report('delayed', id, env, waiting, requestOf, await loadBody(), now)) {
          state.warned = true;
          changed = true;
        } else {
          this.notifyRetry.set(id, now + this.o.retry.initialDelayMs);
        }
      } else {
        state.warned = true; // nobody asked for one (NOTIFY without DELAY)
        changed = true;
      }
    }

    // Reports for permanent failures (one per attempt that produced them), then the
    // "relayed" notices; a recipient whose NOTIFY wants neither is settled at once.
    for (const kind of ['failed', 'relayed'] as const) {
      const owed = state.recipients.filter((r) => owesReport(r) && (kind === 'failed') === (r.status === 'failed-permanent'));
      if (!owed.length) continue;
      const toReport = canReport ? owed.filter((r) => wantsNotice(requestOf(r), kind)) : [];
      if (!toReport.length || (await this.report(kind, id, env, toReport, requestOf, await loadBody(), now))) {
        for (const r of owed) r.notified = true;
        this.notifyRetry.delete(id);
        changed = true;
      } else {
        this.notifyRetry.set(id, now + this.o.retry.initialDelayMs);
      }
    }

    const current = spool.get(id);
    if (!current) return; // deleted meanwhile
    state.held = current.state.held;
    if (!state.recipients.some(undone) && !state.recipients.some(owesReport)) {
      this.upstreamDeferred.delete(id);
      this.notifyRetry.delete(id);
      await spool.remove(id);
      return;
    }
    const handoff = this.drain?.handoff;
    if (handoff && state.recipients.some(undone) && !state.recipients.some(owesReport) && !this.deleteAfter.has(id)) {
      // Draining: what is still to be delivered goes to a sibling; removed here only once it
      // is on the sibling's disk (at least once; docs/spool.md "Drain and hand-off").
      if (changed) await spool.saveState(id, state);
      changed = false;
      let taken = false;
      try {
        taken = await handoff(env, state, await loadBody());
      } catch (err) {
        if ((err as { code?: string }).code === 'EDAMAGED') {
          await spool.quarantine(id, (err as Error).message);
          return;
        }
        this.o.logger.warn({ id, err: (err as Error).message }, 'hand-off failed');
      }
      if (taken) {
        this.upstreamDeferred.delete(id);
        this.notifyRetry.delete(id);
        if (spool.get(id)) await spool.remove(id);
        return;
      }
      // nobody took it: again soon (upstream first, unless it just failed)
      const again = spool.clock.now() + DRAIN_RETRY_MS;
      for (const r of state.recipients) if (undone(r)) r.nextAttempt = again;
      if (state.held) this.notifyRetry.set(id, again);
      const cur = spool.get(id);
      if (cur) cur.state = state; // in memory: the saved (later) times apply after a restart
      return;
    }
    if (changed) await spool.saveState(id, state);
  }

  /**
   * Hands `due` (recipients of one message) to the upstream and records the outcome in
   * them (they are the objects of the state being built). The upstream is all-or-nothing:
   * when it refuses some recipients it sends to none, so the rest are tried again at once
   * without them; the set shrinks each time, so this ends.
   */
  private async attempt(
    id: string,
    env: StoredEnvelope,
    due: RecipientState[],
    body: Buffer,
    now: number,
    requestOf: (r: RecipientState) => RecipientDsn | undefined,
    canReport: boolean,
  ): Promise<void> {
    const m = this.o.metrics;
    const created = env.created;
    const expired = now - created >= this.o.lifetimeMs;
    let left = due;
    for (let round = 0; left.length && round <= due.length; round++) {
      const delivery: SpoolDelivery = { mailFrom: env.mailFrom, rcptTo: left.map((r) => r.address) };
      // The request as the client made it (also for the null sender, to whom the relay itself
      // never reports); the upstream gets it only when it advertises DSN (relay/upstream.ts).
      if (env.ret || env.envid || env.rcptDsn) {
        delivery.dsn = { ...(env.ret ? { ret: env.ret } : {}), ...(env.envid ? { envid: env.envid } : {}), recipients: left.map((r) => requestOf(r) ?? {}) };
      }
      const outcome = await this.o.deliver(delivery, body);
      m.attempts.inc({ outcome: outcome.kind });
      if (outcome.kind === 'accepted') {
        for (const r of left) {
          r.status = 'delivered';
          r.attempts++;
          r.lastError = undefined;
          // RFC 3461 4.2: an upstream without DSN gets no request; the relay says "relayed" itself.
          if (canReport && wantsNotice(requestOf(r), 'relayed') && !outcome.dsnPassed) {
            r.notified = false;
            r.lastError = outcome.response || '250 Ok';
          }
        }
        m.deliveries.inc({ result: 'delivered' }, left.length);
        this.upstreamWorks(id);
        return;
      }
      const refused = new Set(outcome.refused.map((a) => a.toLowerCase()));
      const named = left.filter((r) => refused.has(r.address.toLowerCase()));
      const failedNow = named.length ? named : left;
      const reason = `${outcome.code} ${outcome.message}`;
      for (const r of failedNow) {
        r.attempts++;
        r.lastError = reason;
        if (outcome.kind === 'permanent') {
          r.status = 'failed-permanent';
          m.deliveries.inc({ result: 'bounced' });
        } else if (expired) {
          r.status = 'failed-permanent';
          r.lastError = `4.4.7 Message expired after ${Math.round((now - created) / 3_600_000)} h in the queue; last error: ${reason}`;
          m.deliveries.inc({ result: 'expired' });
        } else {
          r.status = 'failed-temporary';
          r.nextAttempt = nextAttemptAt(now, created, this.o.lifetimeMs, r.attempts, this.o.retry, this.random());
          m.deliveries.inc({ result: 'deferred' });
        }
      }
      if (!named.length) {
        if (outcome.kind === 'temporary') {
          this.upstreamDeferred.add(id);
          this.upstreamFailedAt = this.o.spool.clock.now();
        }
        return;
      }
      left = left.filter((r) => !refused.has(r.address.toLowerCase()));
    }
  }

  /** The upstream accepted a message: those deferred only because it failed are tried now. */
  private upstreamWorks(id: string): void {
    this.upstreamFailedAt = 0;
    this.upstreamDeferred.delete(id);
    if (!this.upstreamDeferred.size) return;
    const now = this.o.spool.clock.now();
    for (const other of [...this.upstreamDeferred]) {
      this.upstreamDeferred.delete(other);
      const e = this.o.spool.get(other);
      if (!e) continue;
      // In memory only: if the relay stops first, the saved (later) times apply.
      for (const r of e.state.recipients) if (r.status === 'failed-temporary' && r.nextAttempt > now) r.nextAttempt = now;
      this.schedule(other, false);
    }
  }

  /** Queues a report to the sender; false when the spool cannot take it now. */
  private async report(
    kind: 'failed' | 'delayed' | 'relayed',
    id: string,
    env: StoredEnvelope,
    rcpts: RecipientState[],
    requestOf: (r: RecipientState) => RecipientDsn | undefined,
    original: Buffer,
    now: number,
  ): Promise<boolean> {
    const sender = env.mailFrom;
    const created = env.created;
    const recipients: DsnRecipient[] = rcpts.map((r) => {
      const orcpt = requestOf(r)?.orcpt;
      return {
        address: r.address,
        diagnostic: r.lastError ?? (kind === 'delayed' ? '4.4.1 Not delivered yet' : kind === 'relayed' ? '250 2.0.0 Relayed' : '5.0.0 Delivery failed'),
        ...(kind === 'relayed' ? { status: '2.0.0' } : {}),
        ...(r.status === 'failed-permanent' && r.lastError?.startsWith('4.4.7') ? { status: '4.4.7' } : {}),
        ...(r.attempts ? { lastAttempt: now } : {}),
        ...(orcpt ? { orcpt } : {}),
      };
    });
    const dsn = buildDsn({
      kind,
      hostname: this.o.hostname,
      to: sender,
      queueId: id,
      arrival: created,
      now,
      recipients,
      original,
      expires: created + this.o.lifetimeMs,
      ...(env.ret ? { ret: env.ret } : {}),
      ...(env.envid ? { envid: env.envid } : {}),
    });
    try {
      const dsnId = await this.o.spool.enqueue({ mailFrom: '', rcptTo: [sender], dsn: true }, dsn);
      this.o.metrics.notifications.inc({ kind });
      this.o.logger.info({ id, dsnId, kind, recipients: rcpts.map((r) => r.address) }, 'delivery status notification queued');
      return true;
    } catch (err) {
      this.o.logger.warn({ id, kind, err: (err as Error).message }, 'could not queue a delivery status notification; will try again');
      return false;
    }
  }

  // Commands of `smtp-relay queue` (cli.ts), applied here so that only this process
  // writes entry states while the relay runs.

  async hold(id: string): Promise<string> {
    return this.setHeld(id, true);
  }

  async release(id: string): Promise<string> {
    return this.setHeld(id, false);
  }

  private async setHeld(id: string, held: boolean): Promise<string> {
    const e = this.o.spool.get(id);
    if (!e) return 'not found';
    if (e.state.held === held) return held ? 'already held' : 'not held';
    await this.o.spool.saveState(id, { ...e.state, held });
    if (!held) this.schedule(id);
    else this.scheduled.delete(id);
    return held ? 'held' : 'released';
  }

  async retryNow(id: string): Promise<string> {
    const e = this.o.spool.get(id);
    if (!e) return 'not found';
    const now = this.o.spool.clock.now();
    const state = structuredClone(e.state);
    for (const r of state.recipients) if (undone(r)) r.nextAttempt = now;
    await this.o.spool.saveState(id, state);
    this.schedule(id);
    return state.held ? 'scheduled (still held: release it to deliver)' : 'scheduled';
  }

  async delete(id: string): Promise<string> {
    if (!this.o.spool.get(id)) return 'not found';
    if (this.inFlight.has(id)) {
      this.deleteAfter.add(id);
      return 'deleted (after the delivery in progress)';
    }
    this.scheduled.delete(id);
    await this.o.spool.remove(id);
    return 'deleted';
  }

  /** Applies one command by name; the CLI's results. */
  async command(op: string, id: string): Promise<string> {
    switch (op) {
      case 'hold':
        return this.hold(id);
      case 'release':
        return this.release(id);
      case 'retry':
        return this.retryNow(id);
      case 'delete':
        return this.delete(id);
      default:
        return `unknown command ${op}`;
    }
  }

  private polling = false;

  private async pollControl(): Promise<void> {
    if (this.polling || this.stopped) return;
    this.polling = true;
    try {
      const alive = path.join(this.o.spool.directory, ALIVE_FILE);
      await fsp.writeFile(alive, `${process.pid}\n`).catch(() => undefined);
      for (const req of await this.o.spool.controlRequests()) {
        const ids = resolveIds(JSON.parse(req.ids) as string[], [...this.o.spool.ids()]);
        const results: Record<string, string> = {};
        for (const [given, id] of ids) results[given] = id ? await this.command(req.op, id) : 'not found';
        await this.o.spool.controlDone(req.seq, JSON.stringify(results));
      }
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message }, 'queue command processing failed');
    } finally {
      this.polling = false;
    }
  }
}

/** Ids as given to the CLI ("ALL", a full id or a unique prefix of at least 6 characters) → spool ids. */
export function resolveIds(given: string[], known: string[]): [string, string | undefined][] {
  const out: [string, string | undefined][] = [];
  for (const g of given) {
    if (g === 'ALL') {
      for (const id of known) out.push([id, id]);
      continue;
    }
    if (known.includes(g)) {
      out.push([g, g]);
      continue;
    }
    const matches = g.length >= 6 ? known.filter((k) => k.startsWith(g)) : [];
    out.push([g, matches.length === 1 ? matches[0] : undefined]);
  }
  return out;
}
