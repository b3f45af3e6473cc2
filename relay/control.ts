// The operator's control endpoints on the metrics port (docs/relay-config.md "Control
// endpoints"), each with `Authorization: Bearer <metrics.controlTokenFile's content>`:
//   GET    /queue   {"draining", "messages", "bytes", "oldestSeconds", "handedOff"}
//   POST   /drain   {"handoff": ["host:port", ...]} (optional): start or update the drain
//   DELETE /drain   leave the drain: ready again, taking mail
//   GET    /upstream the upstream's verdict on the relay's own login (relay/upstream-login.ts):
//                   {"authRefused", "since", "reply", "mechanism", "host", "lastSuccess", ...}
// A drain: /readyz false at once, new connections and MAIL commands get 421 4.3.2
// (sessions in a transaction finish), every queued message is tried now, and in queue
// mode one the upstream defers is handed to a sibling (relay/handoff.ts). The drain
// survives a restart: a marker file in the spool directory brings the relay back
// draining until DELETE /drain. In a multi-worker relay the primary serves these and
// orders its workers over IPC (relay/workers.ts), and asks them for their logins there.
// They are served in queue and inline mode alike, by the process that owns the metrics port.

import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import type pino from 'pino';
import type prom from 'prom-client';
import { createHandoffMetrics, HandoffSender, serveHandoff, type PeerLink } from './handoff.js';
import type { Scheduler, Spool } from './spool/index.js';
import type { UpstreamReport } from './upstream-login.js';

/** The drain marker in the spool directory: present = come up draining. */
export const DRAIN_MARKER = 'draining.json';

/** Hand-off targets a drain request may name. */
const MAX_TARGETS = 256;
/** "host:port": a DNS name, an IPv4 address or a bracketed IPv6 address, and a port. */
const TARGET = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})$/;

export interface QueueStatus {
  draining: boolean;
  messages: number;
  bytes: number;
  oldestSeconds: number;
  handedOff: number;
}

export interface DrainOptions {
  /** Queue mode: the spool and its scheduler; absent in inline mode (and in a worker). */
  spool?: Spool;
  scheduler?: Scheduler;
  /** Present when `peers` is configured: where deferred messages go during a drain. */
  sender?: HandoffSender;
  /** Turns SMTP intake off (true) or on: relay.setDrain, or the primary's order to its workers. */
  setIntake: (draining: boolean) => void;
  logger: pino.Logger;
}

/** The drain state of one relay (the process that owns the spool). */
export class Drain {
  private on = false;
  /** The drain's hand-off list; undefined = the peer channel's siblings, [] = no hand-off. */
  private targets: string[] | undefined = [];

  constructor(private readonly o: DrainOptions) {}

  get draining(): boolean {
    return this.on;
  }

  private marker(): string | undefined {
    return this.o.spool ? path.join(this.o.spool.directory, DRAIN_MARKER) : undefined;
  }

  /** At start: a marker left by a drain before the restart brings the relay up draining. */
  async restore(): Promise<boolean> {
    const file = this.marker();
    if (!file) return false;
    let saved: { handoff?: unknown };
    try {
      saved = JSON.parse(await fsp.readFile(file, 'utf8')) as { handoff?: unknown };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      // unreadable (a torn write cannot happen: it is renamed into place): drain anyway
      saved = {};
    }
    const targets = Array.isArray(saved.handoff) ? saved.handoff.filter((t): t is string => typeof t === 'string' && TARGET.test(t)) : undefined;
    this.o.logger.warn({ event: 'drain_restored', handoff: targets }, 'the relay was draining before it restarted: draining again (DELETE /drain ends it)');
    await this.start(targets, false);
    return true;
  }

  /** Starts or updates the drain (marker written first, so that a restart keeps it). */
  /** targets: the siblings to hand deferred mail to; undefined = the peer channel's siblings; [] = none (every replica goes). */
  async start(targets: string[] | undefined, persist = true): Promise<void> {
    if (persist) await this.writeMarker(targets);
    const starting = !this.on;
    this.on = true;
    this.targets = targets;
    this.o.sender?.setTargets(targets ?? []);
    this.o.setIntake(true);
    const sender = targets === undefined || targets.length > 0 ? this.o.sender : undefined;
    this.o.scheduler?.setDrain({ ...(sender ? { handoff: (e, s, b) => sender.send(e, s, b) } : {}) });
    if (starting) this.o.logger.info({ event: 'drain_started', handoff: targets, messages: this.o.spool?.size.messages ?? 0 }, 'draining: not ready, refusing new mail, delivering or handing off the queue');
    else this.o.logger.info({ event: 'drain_updated', handoff: targets }, 'drain updated');
  }

  async stop(): Promise<void> {
    const file = this.marker();
    if (file) {
      await fsp.rm(file, { force: true });
      await syncDir(path.dirname(file));
    }
    const was = this.on;
    this.on = false;
    this.targets = [];
    this.o.scheduler?.setDrain(undefined);
    this.o.setIntake(false);
    if (was) this.o.logger.info({ event: 'drain_stopped' }, 'drain ended: ready and taking mail again');
  }

  status(): QueueStatus {
    const spool = this.o.spool;
    const size = spool?.size ?? { messages: 0, bytes: 0 };
    return {
      draining: this.on,
      messages: size.messages,
      bytes: size.bytes,
      oldestSeconds: spool ? Math.floor(spool.scan().oldestAgeSeconds) : 0,
      handedOff: this.o.sender?.sent ?? 0,
    };
  }

  private async writeMarker(targets: string[] | undefined): Promise<void> {
    const file = this.marker();
    if (!file) return;
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify({ since: new Date().toISOString(), ...(targets ? { handoff: targets } : {}) }) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await syncDir(path.dirname(file));
  }
}

async function syncDir(dir: string): Promise<void> {
  const d = await fsp.open(dir, 'r').catch(() => undefined);
  if (!d) return;
  await d.sync().catch(() => undefined);
  await d.close();
}

/**
 * The hand-off list of a POST /drain body: undefined (no body, or no "handoff") = the peer
 * channel's siblings; [] = no hand-off. Throws an Error with the reason for a 400.
 */
export function parseDrainRequest(text: string): string[] | undefined {
  if (!text.trim()) return undefined;
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error('the body is not JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new Error('the body must be a JSON object like {"handoff": ["host:port"]}');
  const unknown = Object.keys(body).filter((k) => k !== 'handoff');
  if (unknown.length) throw new Error(`unknown field(s) ${unknown.join(', ')}; only "handoff" is allowed`);
  const list = (body as { handoff?: unknown }).handoff;
  if (list === undefined) return undefined;
  if (!Array.isArray(list)) throw new Error('handoff must be a list of "host:port" strings');
  if (list.length > MAX_TARGETS) throw new Error(`handoff has ${list.length} entries; at most ${MAX_TARGETS}`);
  const out: string[] = [];
  for (const [i, t] of list.entries()) {
    const m = typeof t === 'string' ? TARGET.exec(t) : null;
    if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) throw new Error(`handoff[${i}]: ${JSON.stringify(t)} is not "host:port"`);
    if (!out.includes(t as string)) out.push(t as string);
  }
  return out;
}

export interface ControlOptions {
  /** metrics.controlTokenFile; absent = every control endpoint answers 404. */
  tokenFile?: string;
  /** The drain of the process that owns the spool. */
  drain: Drain;
  /** GET /upstream's answer: this process's logins and, in a multi-worker relay, its workers'. */
  upstream: () => Promise<UpstreamReport>;
  logger: pino.Logger;
}

const json = (res: http.ServerResponse, status: number, body: object) => res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' }).end(JSON.stringify(body) + '\n');

/** The token file's content (re-read when its modification time or size changes; a Secret update swaps the file). */
class TokenReader {
  private cached?: { key: string; digest: Buffer | undefined };
  constructor(private readonly file: string) {}

  /** SHA-256 of the token, or undefined when the file is missing or empty (then nothing is accepted). */
  digest(): Buffer | undefined {
    let st: fs.Stats;
    try {
      st = fs.statSync(this.file);
    } catch {
      return undefined;
    }
    const key = `${st.ino}:${st.mtimeMs}:${st.size}`;
    if (this.cached?.key === key) return this.cached.digest;
    let token = '';
    try {
      token = fs.readFileSync(this.file, 'utf8').trim();
    } catch {
      return undefined;
    }
    const digest = token ? crypto.createHash('sha256').update(token).digest() : undefined;
    this.cached = { key, digest };
    return digest;
  }
}

/**
 * The control endpoints as a handler for the metrics server (relay/metrics.ts): true
 * when the request was one of them (answered), false to let the server route it.
 */
export function controlHandler(o: ControlOptions): (req: http.IncomingMessage, res: http.ServerResponse) => boolean {
  const tokens = o.tokenFile ? new TokenReader(o.tokenFile) : undefined;
  let warnedEmpty = false;
  return (req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url !== '/queue' && url !== '/drain' && url !== '/upstream') return false;
    if (!tokens) {
      json(res, 404, { error: 'control endpoints are off (metrics.controlTokenFile is not set)' });
      return true;
    }
    const expected = tokens.digest();
    if (!expected && !warnedEmpty) {
      warnedEmpty = true;
      o.logger.error({ event: 'control_token_missing' }, 'metrics.controlTokenFile is missing or empty: every control request is refused');
    }
    const m = /^Bearer +(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    const given = m ? crypto.createHash('sha256').update(m[1]!).digest() : undefined;
    // constant time over the digests (equal lengths); the token itself is never logged
    if (!expected || !given || !crypto.timingSafeEqual(expected, given)) {
      o.logger.warn({ event: 'control_unauthorized', method: req.method, path: url, remote: req.socket.remoteAddress, reason: m ? 'wrong token' : 'no bearer token' }, 'control request refused');
      res.setHeader('WWW-Authenticate', 'Bearer');
      json(res, 401, { error: 'unauthorized' });
      req.resume();
      return true;
    }
    if (url === '/queue' || url === '/upstream') {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.setHeader('Allow', 'GET, HEAD');
        json(res, 405, { error: 'method not allowed' });
        req.resume();
        return true;
      }
      if (url === '/queue') json(res, 200, o.drain.status());
      else {
        o.upstream().then(
          (report) => json(res, 200, report),
          (err: Error) => json(res, 500, { error: `upstream state unavailable: ${err.message}` }),
        );
      }
      return true;
    }
    if (req.method === 'DELETE') {
      req.resume();
      o.drain.stop().then(
        () => json(res, 200, o.drain.status()),
        (err: Error) => json(res, 500, { error: `drain marker not removed: ${err.message}` }),
      );
      return true;
    }
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'POST, DELETE');
      json(res, 405, { error: 'method not allowed' });
      req.resume();
      return true;
    }
    const chunks: Buffer[] = [];
    let n = 0;
    let tooLarge = false;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > 64 * 1024) tooLarge = true;
      else chunks.push(c);
    });
    req.on('end', () => {
      if (tooLarge) return json(res, 413, { error: 'body larger than 64 KiB' });
      let targets: string[] | undefined;
      try {
        targets = parseDrainRequest(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        return json(res, 400, { error: (err as Error).message });
      }
      o.drain.start(targets).then(
        () => json(res, 200, o.drain.status()),
        (err: Error) => {
          o.logger.error({ event: 'drain_failed', err: err.message }, 'could not start the drain');
          json(res, 500, { error: `drain not started: ${err.message}` });
        },
      );
    });
    return true;
  };
}

/**
 * The drain and hand-off of the process that owns the spool (a single-process relay, or
 * the primary of a multi-worker one): the receiving route on the peer channel, the
 * sender, the drain (restored from its marker) and the control endpoints' handler.
 */
export async function startDrainControl(o: {
  tokenFile?: string;
  queue?: { spool: Spool; scheduler: Scheduler };
  /** The peer channel (relay/peers.ts); absent when `peers` is not configured. */
  peers?: PeerLink;
  maxMessageBytes: number;
  setIntake: (draining: boolean) => void;
  /** GET /upstream's answer (relay/upstream-login.ts upstreamReport). */
  upstream: () => Promise<UpstreamReport>;
  /** Not shutting down (SIGTERM). */
  running: () => boolean;
  logger: pino.Logger;
  registry: prom.Registry;
}): Promise<{ drain: Drain; handler: (req: http.IncomingMessage, res: http.ServerResponse) => boolean }> {
  const counter = createHandoffMetrics(o.registry);
  let drain: Drain | undefined;
  if (o.peers) {
    serveHandoff(o.peers, {
      ...(o.queue ? { spool: o.queue.spool } : {}),
      accepting: () => o.running() && drain !== undefined && !drain.draining,
      maxMessageBytes: o.maxMessageBytes,
      logger: o.logger,
      counter,
    });
  }
  const sender = o.peers && o.queue ? new HandoffSender({ channel: o.peers, logger: o.logger, counter }) : undefined;
  drain = new Drain({ ...(o.queue ? { spool: o.queue.spool, scheduler: o.queue.scheduler } : {}), ...(sender ? { sender } : {}), setIntake: o.setIntake, logger: o.logger });
  await drain.restore();
  return { drain, handler: controlHandler({ ...(o.tokenFile ? { tokenFile: o.tokenFile } : {}), drain, upstream: o.upstream, logger: o.logger }) };
}
