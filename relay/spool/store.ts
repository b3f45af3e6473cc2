// The spool: messages accepted in queue mode, kept on stable storage until every
// recipient is delivered or reported. A node:sqlite database in WAL mode with
// synchronous=FULL, run in a worker thread (db-worker.ts); why, in bench/spool.ts and
// docs/spool.md. This file keeps the in-memory index (envelopes and states, never
// bodies), the size limits and the free-space check.
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import type pino from 'pino';
import type { DbReply, DbRequest, OpenResult, QuarantinedEntry, ControlRow, SpaceInfo } from './db-protocol.js';
import type { SpoolMetrics } from './metrics.js';
import type { MessageDsn, RecipientDsn } from '../policy/dsn-params.js';
import { checkState, initialState, type EntryState, type StoredEnvelope } from './types.js';

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** A message id: its arrival time (base 36, so ids sort by age) and 40 random bits. */
const newId = (at: number): string => at.toString(36).padStart(9, '0') + randomHex5();

/** 5 random bytes as hex, from a pool drawn 1 KiB at a time (one RAND_bytes call per ~200 ids, not one per id). */
let randomPool = Buffer.alloc(0);
let randomAt = 0;
function randomHex5(): string {
  if (randomAt + 5 > randomPool.length) {
    randomPool = randomBytes(1020);
    randomAt = 0;
  }
  randomAt += 5;
  return randomPool.toString('hex', randomAt - 5, randomAt);
}

const ID_PATTERN = /^[0-9a-z]{9,}[0-9a-f]{10}$/;

/** The message could not be stored for another reason (database error). The session answers 451. */
export class SpoolWriteError extends Error {
  readonly code = 'SPOOL_WRITE';
  readonly responseCode = 451;
  constructor(cause: Error) {
    super('4.3.0 Could not queue the message, try again later', { cause });
    this.name = 'SpoolWriteError';
  }
}

/** What the session hands in: the envelope as the client gave it. */
export interface EnqueueEnvelope extends MessageDsn {
  /** '' for the null sender. */
  mailFrom: string;
  rcptTo: string[];
  user?: string;
  client?: string;
  /** Set by the spool itself for its delivery status notifications. */
  dsn?: boolean;
  /** NOTIFY/ORCPT per recipient (RFC 3461), in the order of rcptTo. */
  rcptDsn?: RecipientDsn[];
}

/** Why a message cannot be taken now. The session answers 452 4.3.1 (RFC 3463: mail system full). */
export class SpoolFullError extends Error {
  readonly code = 'SPOOL_FULL';
  readonly responseCode = 452;
  constructor(
    readonly reason: 'max_bytes' | 'max_messages' | 'disk_space' | 'disk_full',
    detail: string,
  ) {
    super(`4.3.1 Mail queue full (${detail}), try again later`);
    this.name = 'SpoolFullError';
  }
}

export interface Entry {
  envelope: StoredEnvelope;
  state: EntryState;
  /** Bytes of the message body. */
  size: number;
}

export interface SpoolLimits {
  maxBytes: number;
  maxMessages: number;
  minFreeBytes: number;
}

export interface SpoolOptions {
  directory: string;
  limits: SpoolLimits;
  logger: pino.Logger;
  metrics: SpoolMetrics;
  clock?: Clock;
}

/** How long a free-space reading is trusted (bytes written since are subtracted). */
const STATFS_TTL_MS = 1000;
/** Below 2 × minFreeSpace + this much free on the file system, the database's own free pages are counted too. */
const NEAR_FULL_MARGIN = 64 * 1024 ** 2;
/** Removals that could not be written (disk full) are retried this often. */
const DELETE_RETRY_MS = 1000;

export class Spool {
  readonly directory: string;
  readonly clock: Clock;
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  /** Bytes being written now: counted against the limits before they are durable. */
  private reserved = 0;
  private reservedMessages = 0;
  private worker?: Worker;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private free?: { bytes: number; inside: number; at: number; writtenSince: number };
  /**
   * Messages delivered (or deleted) whose removal could not be written yet (a full disk:
   * SQLite needs room even to delete). They are gone for this process at once, so they
   * are never delivered twice; the delete is retried every second until it lands. A crash
   * before that delivers them again after the restart, the one duplicate docs/spool.md allows.
   */
  private readonly pendingDeletes = new Map<string, Entry>();
  private retryTimer?: ReturnType<typeof setTimeout>;
  private readonly log: pino.Logger;
  private readonly metrics: SpoolMetrics;
  limits: SpoolLimits;

  private constructor(opts: SpoolOptions) {
    this.directory = opts.directory;
    this.limits = opts.limits;
    this.log = opts.logger;
    this.metrics = opts.metrics;
    this.clock = opts.clock ?? systemClock;
  }

  /**
   * Opens (creating if needed) the spool in `directory` and recovers it: a damaged
   * database or entry is moved to quarantine/, logged and counted, never thrown;
   * a write that never committed is gone (SQLite rolls it back).
   */
  static async open(opts: SpoolOptions): Promise<Spool> {
    const s = new Spool(opts);
    await fsp.mkdir(opts.directory, { recursive: true, mode: 0o700 });
    s.worker = new Worker(new URL('./db-worker.js', import.meta.url), { workerData: { directory: opts.directory } });
    s.worker.on('message', (replies: DbReply[]) => {
      for (const r of replies) {
        const w = s.waiting.get(r.seq);
        if (!w) continue;
        s.waiting.delete(r.seq);
        if (r.ok) w.resolve(r.value);
        else w.reject(Object.assign(new Error(r.error.message), { code: r.error.code }));
      }
    });
    const dead = (err: Error) => {
      // Every later request fails at once (451 to clients) instead of waiting forever.
      s.worker = undefined;
      for (const w of s.waiting.values()) w.reject(err);
      s.waiting.clear();
    };
    s.worker.on('error', (err) => {
      s.log.error({ err: err.message }, 'spool database thread failed');
      dead(err);
    });
    s.worker.on('exit', () => dead(new Error('spool database thread exited')));
    const opened = (await s.request({ op: 'open' })) as OpenResult;
    for (const q of opened.quarantined) s.reportQuarantine(q);
    for (const row of opened.rows) {
      const state = checkState(row.state, row.envelope) ?? initialState(row.envelope);
      s.entries.set(row.id, { envelope: row.envelope, state, size: row.size });
      s.bytes += row.size;
    }
    s.updateGauges();
    opts.metrics.source.current = s;
    s.log.info({ messages: s.entries.size, bytes: s.bytes, quarantined: opened.quarantined.length }, 'spool opened');
    return s;
  }

  private reportQuarantine(q: QuarantinedEntry): void {
    this.metrics.quarantined.inc();
    this.log.error({ id: q.id, reason: q.reason, movedTo: q.file }, 'damaged spool entry moved to quarantine');
  }

  /**
   * Sends a request to the database thread. The requests of one event-loop turn (the ends
   * of DATA of several sessions, deliveries' body reads and removals) go in one
   * postMessage: one wake-up of that thread and one structured clone instead of one per
   * request, and the thread groups them into one transaction. (Message bodies are copied,
   * not transferred: Node's Buffer.concat/allocUnsafe memory is pooled or marked
   * untransferable.)
   */
  private request(req: { op: DbRequest['op'] } & Record<string, unknown>): Promise<unknown> {
    if (!this.worker) return Promise.reject(new Error('spool is closed'));
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      this.outbox.push({ ...req, seq } as DbRequest);
      if (this.outbox.length === 1) setImmediate(() => this.sendOutbox());
    });
  }

  private outbox: DbRequest[] = [];

  private sendOutbox(): void {
    const batch = this.outbox;
    this.outbox = [];
    // No thread any more: dead() or close() already answered every waiting request.
    if (!this.worker) return;
    try {
      this.worker.postMessage(batch);
    } catch (err) {
      // (a value that cannot be cloned): these requests fail, nothing else does
      for (const r of batch) {
        const w = this.waiting.get(r.seq);
        this.waiting.delete(r.seq);
        w?.reject(err as Error);
      }
    }
  }

  private async timed<T>(operation: string, p: Promise<T>): Promise<T> {
    const t0 = performance.now();
    const v = await p;
    this.metrics.writeSeconds.observe({ operation }, (performance.now() - t0) / 1000);
    return v;
  }

  /**
   * Free bytes for new messages (cached for a second, minus what was written since): the
   * file system's, and near its limit also the free pages inside spool.db, which new
   * messages reuse before the file grows. Without them a spool that once filled its disk
   * would stay "full" after delivering everything (SQLite keeps freed pages in the file).
   */
  private async freeBytes(): Promise<{ fs: number; total: number }> {
    const now = performance.now();
    if (!this.free || now - this.free.at > STATFS_TTL_MS) {
      const statfs = async () => {
        const s = await fsp.statfs(this.directory);
        return s.bavail * s.bsize;
      };
      let fsFree = await statfs();
      let inside = 0;
      if (fsFree < 2 * this.limits.minFreeBytes + NEAR_FULL_MARGIN) {
        const sp = (await this.request({ op: 'space', truncateWal: true })) as SpaceInfo;
        // While the delivery reserve is given up, the database thread refuses new mail
        // until it can make it again: that room is not free for messages.
        fsFree = (await statfs()) - sp.reserveMissingBytes;
        inside = sp.freelistBytes;
      }
      this.free = { bytes: fsFree, inside, at: now, writtenSince: 0 };
    }
    const fsFree = this.free.bytes - this.free.writtenSince;
    return { fs: fsFree, total: fsFree + Math.max(0, this.free.inside - this.free.writtenSince) };
  }

  /**
   * Refusal for a message of `size` bytes (the SIZE parameter at MAIL, or the real size
   * at the end of DATA), or undefined when it fits now.
   */
  async checkSpace(size: number): Promise<SpoolFullError | undefined> {
    const l = this.limits;
    if (this.entries.size + this.reservedMessages + 1 > l.maxMessages) return new SpoolFullError('max_messages', `${l.maxMessages} messages`);
    if (this.bytes + this.reserved + size > l.maxBytes) return new SpoolFullError('max_bytes', `${l.maxBytes} bytes`);
    let free: { fs: number; total: number };
    try {
      free = await this.freeBytes();
    } catch {
      return undefined; // no statfs: the write itself will tell (ENOSPC)
    }
    // Room for the message twice over: the WAL holds it (on the file system), then the
    // checkpoint copies it into the database (into its free pages, else the file grows).
    if (free.fs - size < l.minFreeBytes || free.total - 2 * size < l.minFreeBytes) return new SpoolFullError('disk_space', 'disk nearly full');
    return undefined;
  }

  /**
   * Stores a message; resolves with its id only once the message and its envelope are
   * on stable storage (fsynced). Rejects with SpoolFullError (452) when it does not fit or
   * the disk is full, or SpoolWriteError (451) on any other failure; nothing is stored
   * then. Both carry `responseCode` and an enhanced-code message for the SMTP reply.
   */
  async enqueue(envelope: EnqueueEnvelope, body: Buffer): Promise<string> {
    await this.ensureRoom(body.length);
    const created = this.clock.now();
    const id = newId(created);
    const env: StoredEnvelope = { id, created, mailFrom: envelope.mailFrom, rcptTo: [...envelope.rcptTo] };
    if (envelope.dsn) env.dsn = true;
    if (envelope.user) env.user = envelope.user;
    if (envelope.client) env.client = envelope.client;
    if (envelope.ret) env.ret = envelope.ret;
    if (envelope.envid) env.envid = envelope.envid;
    if (envelope.rcptDsn?.length === envelope.rcptTo.length) env.rcptDsn = envelope.rcptDsn.map((r) => ({ ...r }));
    await this.insert(env, initialState(env), body, 'a message');
    return id;
  }

  /** Refuses (SpoolFullError, counted) a message of `size` bytes that does not fit. */
  private async ensureRoom(size: number): Promise<void> {
    const full = await this.checkSpace(size);
    if (full) {
      this.metrics.refused.inc({ reason: full.reason });
      throw full;
    }
  }

  /** The durable insert behind enqueue and adopt: fsynced, then counted and announced. */
  private async insert(env: StoredEnvelope, state: EntryState, body: Buffer, what: string): Promise<void> {
    this.reserved += body.length;
    this.reservedMessages++;
    try {
      await this.timed('enqueue', this.request({ op: 'insert', id: env.id, envelope: JSON.stringify(env), state: JSON.stringify(state), body }));
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOSPC') {
        this.metrics.refused.inc({ reason: 'disk_full' });
        this.free = undefined;
        throw new SpoolFullError('disk_full', 'disk full');
      }
      this.log.error({ err: (err as Error).message }, `could not store ${what} in the spool`);
      throw new SpoolWriteError(err as Error);
    } finally {
      this.reserved -= body.length;
      this.reservedMessages--;
    }
    if (this.free) this.free.writtenSince += body.length;
    this.entries.set(env.id, { envelope: env, state, size: body.length });
    this.bytes += body.length;
    this.updateGauges();
    this.onEnqueue?.(env.id);
  }

  /**
   * Stores a message handed over by a draining sibling (relay/handoff.ts) with its own
   * envelope and delivery state (arrival time, attempts), so its lifetime keeps counting.
   * Resolves only once it is on stable storage, as enqueue does, and rejects as enqueue
   * does. A message this spool already holds under the same id (the sibling sent it again
   * after losing the answer) is not stored twice: `duplicate` is true then.
   */
  async adopt(envelope: StoredEnvelope, state: EntryState, body: Buffer): Promise<{ id: string; duplicate: boolean }> {
    const held = this.entries.get(envelope.id);
    if (held && held.envelope.created === envelope.created && held.envelope.mailFrom === envelope.mailFrom && held.size === body.length) {
      return { id: envelope.id, duplicate: true };
    }
    await this.ensureRoom(body.length);
    const env: StoredEnvelope = { ...envelope, rcptTo: [...envelope.rcptTo] };
    // an id taken here by another message (or one whose removal is pending): a new one
    if (held || this.pendingDeletes.has(env.id) || !ID_PATTERN.test(env.id)) env.id = newId(this.clock.now());
    await this.insert(env, checkState(state, env) ?? initialState(env), body, 'a handed-over message');
    return { id: env.id, duplicate: false };
  }

  /** Called after each durable enqueue (the scheduler listens). */
  onEnqueue?: (id: string) => void;

  /**
   * Writes an entry's new state durably. The state applies in memory at once, even when
   * the write fails (disk full): this process then still does not deliver a recipient
   * twice, and the next successful write (a whole state) makes it durable.
   */
  async saveState(id: string, state: EntryState): Promise<void> {
    const e = this.entries.get(id);
    if (!e) return;
    e.state = state;
    await this.timed('update', this.request({ op: 'update', id, state: JSON.stringify(state) }));
  }

  async remove(id: string): Promise<void> {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    this.updateGauges();
    try {
      await this.timed('delete', this.request({ op: 'delete', id }));
      this.bytes -= e.size;
    } catch (err) {
      if (!this.worker) throw err; // closed: the entry is still in the database, as it must be
      this.pendingDeletes.set(id, e);
      this.log.warn({ id, err: (err as Error).message, pending: this.pendingDeletes.size }, 'could not record a removal in the spool yet; retrying every second');
      this.retryDeletes();
    }
  }

  private retryDeletes(): void {
    if (this.retryTimer || this.pendingDeletes.size === 0 || !this.worker) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void Promise.all(
        [...this.pendingDeletes].map(async ([id, e]) => {
          try {
            await this.request({ op: 'delete', id });
            if (this.pendingDeletes.delete(id)) this.bytes -= e.size;
          } catch {
            /* still no room: next round */
          }
        }),
      ).then(() => {
        if (this.pendingDeletes.size === 0) this.log.info('pending spool removals recorded');
        this.retryDeletes();
      });
    }, DELETE_RETRY_MS);
    this.retryTimer.unref();
  }

  /** The message bytes, checked against their checksum. */
  async body(id: string): Promise<Buffer> {
    // Structured clone turns the worker's Buffer into a plain Uint8Array; wrap, not copy.
    const u = (await this.request({ op: 'body', id })) as Uint8Array;
    return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
  }

  /** Moves an entry that failed its checksum on read to quarantine (and out of the spool). */
  async quarantine(id: string, reason: string): Promise<void> {
    this.reportQuarantine({ id, reason, file: '(removed; see the log)' });
    await this.remove(id);
  }

  get(id: string): Entry | undefined {
    return this.entries.get(id);
  }

  ids(): IterableIterator<string> {
    return this.entries.keys();
  }

  get size(): { messages: number; bytes: number } {
    return { messages: this.entries.size, bytes: this.bytes };
  }

  /** Pending commands of `smtp-relay queue` (cli.ts). */
  async controlRequests(): Promise<ControlRow[]> {
    return (await this.request({ op: 'control' })) as ControlRow[];
  }

  async controlDone(controlSeq: number, result: string): Promise<void> {
    await this.request({ op: 'controlDone', controlSeq, result });
  }

  updateGauges(): void {
    this.metrics.messages.set(this.entries.size);
    this.metrics.bytes.set(this.bytes);
  }

  /** Held messages and the oldest message's age, for the gauges (at scrape time). */
  scan(): { held: number; oldestAgeSeconds: number } {
    let oldest = Infinity;
    let held = 0;
    for (const e of this.entries.values()) {
      if (e.envelope.created < oldest) oldest = e.envelope.created;
      if (e.state.held) held++;
    }
    return { held, oldestAgeSeconds: oldest === Infinity ? 0 : Math.max(0, (this.clock.now() - oldest) / 1000) };
  }

  async close(): Promise<void> {
    const w = this.worker;
    if (!w) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    // One last try for removals the disk had no room for; what still fails is delivered again after the restart.
    for (const id of [...this.pendingDeletes.keys()]) {
      if (await this.request({ op: 'delete', id }).then(() => true, () => false)) this.pendingDeletes.delete(id);
    }
    if (this.pendingDeletes.size) this.log.warn({ pending: this.pendingDeletes.size }, 'spool closed with removals not recorded: those messages are delivered again after the restart');
    await this.request({ op: 'close' }).catch(() => undefined);
    this.worker = undefined;
    await w.terminate();
  }
}
