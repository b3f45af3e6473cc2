// Queue hand-off between sibling replicas (docs/spool.md "Drain and hand-off"): a
// draining relay whose upstream defers a message hands it to a sibling over the peer
// channel (relay/peers.ts) instead of waiting. One message per request:
//
//   POST /v1/handoff   body: one line of JSON (the envelope and state), "\n", the raw message
//   200 {"id": ...}    stored on the receiver's disk (fsynced), the sender may remove it
//   503                the receiver is draining, shutting down or not in queue mode
//   507                the receiver's spool is full
//   400                not a hand-off the receiver can read
//
// Only the recipients still to be delivered travel, with their attempts and retry times;
// the envelope keeps its arrival time, so the lifetime (and the delay warning, and the
// reports' Arrival-Date) keep counting from the first relay. The message bytes are the
// already DKIM-signed ones the spool holds. At least once: the sender removes its copy
// only after the 200; a sender that crashes between the 200 and its own delete sends the
// message again after its restart (the receiver keeps one copy if it still holds it).

import type http from 'node:http';
import type pino from 'pino';
import prom from 'prom-client';
import type { EntryState, RecipientState, StoredEnvelope } from './spool/types.js';
import type { Spool } from './spool/store.js';
import { oneLine } from './replies.js';
import { collectBody } from './peers.js';

export const HANDOFF_PATH = '/v1/handoff';

/** The parts of the peer channel (relay/peers.ts PeerChannel) the hand-off uses. */
export interface PeerLink {
  route(path: string, handler: (req: http.IncomingMessage, res: http.ServerResponse) => void | Promise<void>): void;
  peers(): string[];
  request(peer: string, path: string, body: Buffer, opts?: { timeoutMs?: number }): Promise<{ status: number; body: Buffer }>;
}

/** The header line of a hand-off request. */
export interface HandoffHeader {
  v: 1;
  envelope: StoredEnvelope;
  state: EntryState;
}

const undone = (r: RecipientState) => r.status === 'pending' || r.status === 'failed-temporary';

/** The message with only its recipients still to be delivered (delivered and reported ones stay behind). */
export function pendingPart(envelope: StoredEnvelope, state: EntryState): { envelope: StoredEnvelope; state: EntryState } {
  const keep = state.recipients.map((r, i) => (undone(r) ? i : -1)).filter((i) => i >= 0);
  const env: StoredEnvelope = { ...envelope, rcptTo: keep.map((i) => envelope.rcptTo[i]!) };
  if (envelope.rcptDsn) env.rcptDsn = keep.map((i) => ({ ...envelope.rcptDsn![i] }));
  return { envelope: env, state: { held: state.held, warned: state.warned, recipients: keep.map((i) => ({ ...state.recipients[i]! })) } };
}

export function encodeHandoff(envelope: StoredEnvelope, state: EntryState, body: Buffer): Buffer {
  const header: HandoffHeader = { v: 1, envelope, state };
  return Buffer.concat([Buffer.from(JSON.stringify(header) + '\n', 'utf8'), body]);
}

const isStr = (v: unknown): v is string => typeof v === 'string';
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const STATUSES = new Set(['pending', 'failed-temporary']);

/** Reads a hand-off request; throws an Error naming what is wrong. */
export function decodeHandoff(data: Buffer): { envelope: StoredEnvelope; state: EntryState; body: Buffer } {
  const nl = data.indexOf(0x0a);
  if (nl < 0 || nl > 4 * 1024 * 1024) throw new Error('no header line');
  let h: HandoffHeader;
  try {
    h = JSON.parse(data.subarray(0, nl).toString('utf8')) as HandoffHeader;
  } catch {
    throw new Error('header is not JSON');
  }
  if (h?.v !== 1) throw new Error('unknown hand-off version');
  const e = h.envelope;
  const s = h.state;
  if (!e || !isStr(e.id) || !isNum(e.created) || !isStr(e.mailFrom) || !Array.isArray(e.rcptTo) || !e.rcptTo.length || !e.rcptTo.every(isStr)) {
    throw new Error('envelope incomplete (id, created, mailFrom, rcptTo)');
  }
  if (e.rcptDsn !== undefined && (!Array.isArray(e.rcptDsn) || e.rcptDsn.length !== e.rcptTo.length)) throw new Error('rcptDsn does not match rcptTo');
  if (e.ret !== undefined && e.ret !== 'FULL' && e.ret !== 'HDRS') throw new Error('ret must be FULL or HDRS');
  if (e.envid !== undefined && !isStr(e.envid)) throw new Error('envid must be a string');
  if (!s || typeof s.held !== 'boolean' || typeof s.warned !== 'boolean' || !Array.isArray(s.recipients) || s.recipients.length !== e.rcptTo.length) {
    throw new Error('state does not match the envelope');
  }
  s.recipients.forEach((r, i) => {
    if (r?.address !== e.rcptTo[i] || !STATUSES.has(r.status) || !isNum(r.attempts) || !isNum(r.nextAttempt)) throw new Error(`recipient ${i}: not a recipient still to be delivered`);
  });
  const body = data.subarray(nl + 1);
  if (!body.length) throw new Error('empty message');
  const envelope: StoredEnvelope = { id: e.id, created: e.created, mailFrom: e.mailFrom, rcptTo: [...e.rcptTo] };
  if (e.dsn) envelope.dsn = true;
  if (e.rcptDsn) envelope.rcptDsn = e.rcptDsn.map((d) => ({ ...(d?.notify ? { notify: d.notify } : {}), ...(d?.orcpt ? { orcpt: d.orcpt } : {}) }));
  if (e.ret) envelope.ret = e.ret;
  if (e.envid) envelope.envid = e.envid;
  if (isStr(e.user)) envelope.user = e.user;
  if (isStr(e.client)) envelope.client = e.client;
  const state: EntryState = {
    held: s.held,
    warned: s.warned,
    recipients: s.recipients.map((r) => ({ address: r.address, status: r.status, attempts: r.attempts, nextAttempt: r.nextAttempt, ...(isStr(r.lastError) ? { lastError: oneLine(r.lastError) } : {}) })),
  };
  return { envelope, state, body: Buffer.from(body) };
}

export function createHandoffMetrics(registry: prom.Registry) {
  return new prom.Counter({
    name: 'smtp_relay_queue_handoff_total',
    help: 'Queued messages handed between sibling replicas during a drain, by direction (sent, received) and result (ok, duplicate, refused: the sibling is draining or not in queue mode, full: its spool is full, invalid, error: no answer or another failure).',
    labelNames: ['direction', 'result'] as const,
    registers: [registry],
  });
}

export type HandoffCounter = ReturnType<typeof createHandoffMetrics>;

export interface ReceiverOptions {
  /** The spool messages are stored in; undefined in inline mode (every hand-off refused). */
  spool?: Spool;
  /** Whether this relay takes hand-offs now (not draining, not shutting down). */
  accepting: () => boolean;
  /** The largest message taken (limits.maxMessageSize); a request larger than this plus its header is refused. */
  maxMessageBytes: number;
  logger: pino.Logger;
  counter: HandoffCounter;
}

const answer = (res: http.ServerResponse, status: number, body: object) => {
  if (!res.headersSent) res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body) + '\n');
};

/** The receiving side: registers POST /v1/handoff on the peer channel. */
export function serveHandoff(channel: Pick<PeerLink, 'route'>, o: ReceiverOptions): void {
  channel.route(HANDOFF_PATH, async (req, res) => {
    const refuse = (status: number, result: string, error: string) => {
      o.counter.inc({ direction: 'received', result });
      answer(res, status, { error });
    };
    if (req.method !== 'POST') {
      res.writeHead(405, { Allow: 'POST' }).end();
      return;
    }
    if (!o.spool) return refuse(503, 'refused', 'not in queue mode');
    if (!o.accepting()) return refuse(503, 'refused', 'draining');
    let data: Buffer | undefined;
    try {
      data = await collectBody(req, o.maxMessageBytes + 4 * 1024 * 1024 + 1);
    } catch {
      return refuse(400, 'invalid', 'request not read');
    }
    if (!data) {
      res.setHeader('Connection', 'close');
      res.once('finish', () => req.destroy());
      return refuse(507, 'full', 'message larger than this relay takes');
    }
    let msg: ReturnType<typeof decodeHandoff>;
    try {
      msg = decodeHandoff(data);
    } catch (err) {
      return refuse(400, 'invalid', (err as Error).message);
    }
    // asked again after the decode: a drain may have started meanwhile
    if (!o.accepting()) return refuse(503, 'refused', 'draining');
    try {
      const { id, duplicate } = await o.spool.adopt(msg.envelope, msg.state, msg.body);
      o.counter.inc({ direction: 'received', result: duplicate ? 'duplicate' : 'ok' });
      o.logger.info({ event: 'handoff_received', id, from: msg.envelope.id, recipients: msg.envelope.rcptTo.length, size: msg.body.length, duplicate }, 'queued message taken over from a sibling');
      answer(res, 200, { id });
    } catch (err) {
      const e = err as Error & { responseCode?: number };
      if (e.responseCode === 452) return refuse(507, 'full', e.message);
      o.logger.error({ event: 'handoff_failed', err: e.message }, 'could not store a handed-over message');
      return refuse(503, 'error', e.message);
    }
  });
}

export interface SenderOptions {
  channel: Pick<PeerLink, 'peers' | 'request'>;
  logger: pino.Logger;
  counter: HandoffCounter;
  /** Per request; default 30 s. */
  timeoutMs?: number;
}

/**
 * The sending side: round robin over the targets (the drain's `handoff` list, else the
 * channel's current siblings); a target that refuses or does not answer is skipped for
 * the next. True once one answered 200.
 */
export class HandoffSender {
  private next = 0;
  private targets: string[] = [];
  /** Messages handed over since the start. */
  sent = 0;

  constructor(private readonly o: SenderOptions) {}

  /** The drain's hand-off list; empty = the peer channel's siblings. */
  setTargets(targets: string[]): void {
    this.targets = [...targets];
  }

  private candidates(): string[] {
    return this.targets.length ? this.targets : this.o.channel.peers();
  }

  async send(envelope: StoredEnvelope, state: EntryState, body: Buffer): Promise<boolean> {
    const part = pendingPart(envelope, state);
    if (!part.envelope.rcptTo.length) return false;
    const payload = encodeHandoff(part.envelope, part.state, body);
    const targets = this.candidates();
    for (let i = 0; i < targets.length; i++) {
      const peer = targets[(this.next + i) % targets.length]!;
      let status = 0;
      let detail = '';
      try {
        const r = await this.o.channel.request(peer, HANDOFF_PATH, payload, { timeoutMs: this.o.timeoutMs ?? 30_000 });
        status = r.status;
        detail = r.body.toString('utf8', 0, 300);
      } catch (err) {
        detail = (err as Error).message;
      }
      if (status === 200) {
        this.next = (this.next + i + 1) % targets.length;
        this.sent++;
        this.o.counter.inc({ direction: 'sent', result: 'ok' });
        let remoteId: string | undefined;
        try {
          remoteId = (JSON.parse(detail) as { id?: string }).id;
        } catch {
          /* the id is for the log only */
        }
        this.o.logger.info({ event: 'handoff_sent', id: envelope.id, to: peer, remoteId, recipients: part.envelope.rcptTo.length }, 'queued message handed to a sibling');
        return true;
      }
      const result = status === 503 ? 'refused' : status === 507 ? 'full' : status === 400 ? 'invalid' : 'error';
      this.o.counter.inc({ direction: 'sent', result });
      this.o.logger.warn({ event: 'handoff_refused', id: envelope.id, to: peer, status, detail: oneLine(detail, 200) }, 'a sibling did not take a queued message; trying another');
    }
    if (targets.length) this.next = (this.next + 1) % targets.length;
    return false;
  }
}
