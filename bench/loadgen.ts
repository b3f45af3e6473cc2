// The load generator every throughput/latency target gets: raw sockets and TLS,
// PIPELINING when the server offers it (MAIL+RCPT+DATA in one write), one message
// buffer reused, Nagle off. It runs in worker processes (fork of this file) so it is
// not held to one core; each worker reports its own CPU time, so the report can say
// which share of the machine the generator itself used.
//
// Modes: 'send' (messages, pooled or a new connection per message with TLS session
// resumption), 'hold' (open N idle sessions after STARTTLS+EHLO and keep them),
// 'handshake' (full TLS handshakes per second, no resumption).

import { fork, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { FROM, TO, messageBytes } from './common.js';

export interface SendOptions {
  mode: 'send';
  host: string;
  port: number;
  /** 'plain' (no TLS), 'starttls', or 'implicit' TLS from the first byte. */
  tls: 'plain' | 'starttls' | 'implicit';
  auth?: { user: string; pass: string };
  /** false: one connection per message (TLS sessions resumed where the server allows). */
  pooled: boolean;
  connections: number;
  /** Measured window, after warmupMs. */
  durationMs: number;
  warmupMs: number;
  /** Total messages/s over all connections; 0 = as fast as the target answers. */
  rate?: number;
  /** Hard cap of messages per connection (a bound besides the time). */
  maxPerConnection?: number;
  localAddresses?: string[];
  size?: number;
}

export interface HoldOptions {
  mode: 'hold';
  host: string;
  port: number;
  connections: number;
  localAddresses: string[];
  /** Opening concurrency. */
  parallel: number;
  /** Default 'starttls' (STARTTLS + EHLO); 'implicit': TLS from the first byte, then EHLO. */
  tls?: 'starttls' | 'implicit';
  timeoutMs: number;
}

export interface HandshakeOptions {
  mode: 'handshake';
  host: string;
  port: number;
  connections: number;
  durationMs: number;
  warmupMs: number;
}

export type WorkerOptions = SendOptions | HoldOptions | HandshakeOptions;

export interface WorkerResult {
  ok: number;
  /** Every 250 at the end of DATA, warm-up and ramp-down included (what a queue must deliver). */
  acked: number;
  failed: number;
  errors: string[];
  /** End of DATA -> final reply, ms, in the measured window. */
  latencies: number[];
  cpuSeconds: number;
  windowSeconds: number;
  tlsHandshakes: number;
  tlsResumed: number;
  held?: number;
}

interface Reply {
  code: number;
  text: string;
}

const TLS_CLIENT: tls.ConnectionOptions = { rejectUnauthorized: false, servername: 'localhost' };

/** One SMTP client session on a raw socket. */
export class Client {
  private buf = '';
  private readonly replies: Reply[] = [];
  private waiter?: (r: Reply | Error) => void;
  private closedErr?: Error;
  pipelining = false;
  resumed = false;
  private lines: string[] = [];

  constructor(public sock: net.Socket | tls.TLSSocket) {
    this.attach(sock);
  }

  private attach(sock: net.Socket) {
    sock.setNoDelay(true);
    sock.setEncoding('latin1');
    sock.on('data', this.onData);
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }

  private fail(e: Error) {
    this.closedErr ??= e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.(e);
  }

  private onData = (d: string) => {
    this.buf += d;
    let i: number;
    while ((i = this.buf.indexOf('\r\n')) >= 0) {
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 2);
      this.lines.push(line);
      if (line.length === 3 || line[3] === ' ') {
        const r = { code: Number(line.slice(0, 3)), text: this.lines.join('\n') };
        this.lines = [];
        const w = this.waiter;
        if (w) {
          this.waiter = undefined;
          w(r);
        } else this.replies.push(r);
      }
    }
  };

  read(): Promise<Reply> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    if (this.closedErr) return Promise.reject(this.closedErr);
    return new Promise((resolve, reject) => {
      this.waiter = (x) => (x instanceof Error ? reject(x) : resolve(x));
    });
  }

  async expect(code: number, what: string): Promise<Reply> {
    const r = await this.read();
    if (r.code !== code) throw new Error(`${what}: expected ${code}, got ${r.text.slice(0, 200)}`);
    return r;
  }

  async cmd(line: string, code: number): Promise<Reply> {
    this.sock.write(line + '\r\n');
    return this.expect(code, line.split(' ')[0]!);
  }

  async starttls(session?: Buffer, onSession?: (s: Buffer) => void): Promise<void> {
    await this.cmd('STARTTLS', 220);
    const raw = this.sock as net.Socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    this.buf = '';
    const t = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ ...TLS_CLIENT, socket: raw, ...(session ? { session } : {}) }, () => resolve(s));
      if (onSession) s.on('session', onSession);
      s.once('error', reject);
    });
    this.resumed = t.isSessionReused();
    this.sock = t;
    this.attach(t);
  }

  destroy() {
    this.sock.destroy();
  }
}

/** A session up to its (second, after STARTTLS) EHLO; the certificate is not checked (loopback bench peers). */
export async function connect(host: string, port: number, mode: 'plain' | 'starttls' | 'implicit', localAddress?: string, session?: Buffer, onSession?: (s: Buffer) => void): Promise<Client> {
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    const base = { host, port, ...(localAddress ? { localAddress } : {}) };
    const s =
      mode === 'implicit'
        ? tls.connect({ ...base, ...TLS_CLIENT, ...(session ? { session } : {}) }, () => resolve(s))
        : net.connect(base, () => resolve(s));
    if (mode === 'implicit' && onSession) s.on('session', onSession);
    s.once('error', reject);
  });
  const c = new Client(sock);
  if (mode === 'implicit') c.resumed = (sock as tls.TLSSocket).isSessionReused();
  await c.expect(220, 'greeting');
  const ehlo = await c.cmd('EHLO loadgen.bench.example', 250);
  if (mode === 'starttls') {
    await c.starttls(session, onSession);
    const again = await c.cmd('EHLO loadgen.bench.example', 250);
    c.pipelining = /PIPELINING/i.test(again.text);
  } else c.pipelining = /PIPELINING/i.test(ehlo.text);
  return c;
}

async function runSend(o: SendOptions): Promise<WorkerResult> {
  const msg = messageBytes(o.size);
  const envelope = Buffer.from(`MAIL FROM:<${FROM}>\r\nRCPT TO:<${TO}>\r\nDATA\r\n`);
  const authLine = o.auth ? `AUTH PLAIN ${Buffer.from(`\0${o.auth.user}\0${o.auth.pass}`).toString('base64')}` : '';
  const res: WorkerResult = { ok: 0, acked: 0, failed: 0, errors: [], latencies: [], cpuSeconds: 0, windowSeconds: 0, tlsHandshakes: 0, tlsResumed: 0 };
  const t0 = performance.now();
  const winStart = t0 + o.warmupMs;
  const winEnd = winStart + o.durationMs;
  let cpu0 = process.cpuUsage();
  const startTimer = setTimeout(() => (cpu0 = process.cpuUsage()), o.warmupMs);
  let cpuEnd: NodeJS.CpuUsage | undefined;
  const endTimer = setTimeout(() => (cpuEnd = process.cpuUsage(cpu0)), o.warmupMs + o.durationMs);
  const interval = o.rate ? (o.connections * 1000) / o.rate : 0;
  const maxPer = o.maxPerConnection ?? 1_000_000;
  const note = (e: unknown) => {
    res.failed++;
    if (res.errors.length < 5) res.errors.push(e instanceof Error ? e.message : String(e));
  };

  const open = async (slot: number, session?: Buffer, onSession?: (s: Buffer) => void) => {
    const local = o.localAddresses?.length ? o.localAddresses[slot % o.localAddresses.length] : undefined;
    const c = await connect(o.host, o.port, o.tls, local, session, onSession);
    if (o.tls !== 'plain' && performance.now() >= winStart && performance.now() < winEnd) {
      res.tlsHandshakes++;
      if (c.resumed) res.tlsResumed++;
    }
    if (o.auth) await c.cmd(authLine, 235);
    return c;
  };

  const sendOne = async (c: Client): Promise<void> => {
    if (c.pipelining) {
      c.sock.write(envelope);
      await c.expect(250, 'MAIL');
      await c.expect(250, 'RCPT');
      await c.expect(354, 'DATA');
    } else {
      await c.cmd(`MAIL FROM:<${FROM}>`, 250);
      await c.cmd(`RCPT TO:<${TO}>`, 250);
      await c.cmd('DATA', 354);
    }
    c.sock.write(msg);
    const s = performance.now();
    const r = await c.read();
    const e = performance.now();
    if (r.code !== 250) throw new Error(`end of DATA: ${r.text.slice(0, 200)}`);
    res.acked++;
    if (s >= winStart && e <= winEnd) {
      res.ok++;
      res.latencies.push(e - s);
    }
  };

  await Promise.all(
    Array.from({ length: o.connections }, async (_, slot) => {
      let ticket: Buffer | undefined;
      const onSession = (s: Buffer) => (ticket = s);
      let c: Client | undefined;
      let next = performance.now() + (interval * slot) / o.connections;
      for (let n = 0; n < maxPer && performance.now() < winEnd; n++) {
        if (interval) {
          // Open-loop pacing without catch-up bursts: a sender that fell behind (connection
          // set-up, a slow reply) starts a new schedule instead of firing the missed sends at once.
          const wait = next - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          else if (wait < -interval) next = performance.now();
          next += interval;
          if (performance.now() >= winEnd) break;
        }
        try {
          c ??= await open(slot, ticket, onSession);
          await sendOne(c);
          if (!o.pooled) {
            c.sock.write('QUIT\r\n');
            await c.read().catch(() => undefined);
            c.destroy();
            c = undefined;
          }
        } catch (e) {
          note(e);
          c?.destroy();
          c = undefined;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      if (c) {
        c.sock.write('QUIT\r\n');
        await Promise.race([c.read().catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
        c.destroy();
      }
    }),
  );
  clearTimeout(startTimer);
  clearTimeout(endTimer);
  const used = cpuEnd ?? process.cpuUsage(cpu0);
  res.cpuSeconds = (used.user + used.system) / 1e6;
  res.windowSeconds = o.durationMs / 1000;
  return res;
}

/** Opens and keeps idle sessions (STARTTLS + EHLO); resolves when all are open. */
const heldClients: Client[] = [];
async function runHold(o: HoldOptions): Promise<WorkerResult> {
  const res: WorkerResult = { ok: 0, acked: 0, failed: 0, errors: [], latencies: [], cpuSeconds: 0, windowSeconds: 0, tlsHandshakes: 0, tlsResumed: 0 };
  const deadline = Date.now() + o.timeoutMs;
  let next = 0;
  await Promise.all(
    Array.from({ length: o.parallel }, async () => {
      while (next < o.connections && Date.now() < deadline) {
        const i = next++;
        try {
          heldClients.push(await connect(o.host, o.port, o.tls ?? 'starttls', o.localAddresses[i % o.localAddresses.length]));
          res.ok++;
        } catch (e) {
          res.failed++;
          if (res.errors.length < 5) res.errors.push(e instanceof Error ? e.message : String(e));
        }
      }
    }),
  );
  res.held = heldClients.length;
  return res;
}

/**
 * Full TLS handshakes (no session reuse) on an implicit-TLS port: connect, handshake
 * (the client offers X25519 only, so the key exchange is the one `openssl speed` measures),
 * close. The server's work (key share, signature, key schedule) is done when the client
 * sees the handshake complete.
 */
async function runHandshake(o: HandshakeOptions): Promise<WorkerResult> {
  const res: WorkerResult = { ok: 0, acked: 0, failed: 0, errors: [], latencies: [], cpuSeconds: 0, windowSeconds: 0, tlsHandshakes: 0, tlsResumed: 0 };
  const t0 = performance.now();
  const winStart = t0 + o.warmupMs;
  const winEnd = winStart + o.durationMs;
  let cpu0 = process.cpuUsage();
  const startTimer = setTimeout(() => (cpu0 = process.cpuUsage()), o.warmupMs);
  await Promise.all(
    Array.from({ length: o.connections }, async () => {
      while (performance.now() < winEnd) {
        try {
          const s = performance.now();
          const sock = await new Promise<tls.TLSSocket>((resolve, reject) => {
            const t = tls.connect({ host: o.host, port: o.port, ...TLS_CLIENT, ecdhCurve: 'X25519' }, () => resolve(t));
            t.once('error', reject);
          });
          const e = performance.now();
          if (s >= winStart && e <= winEnd) {
            res.ok++;
            res.tlsHandshakes++;
            if (sock.isSessionReused()) res.tlsResumed++;
            if (res.errors.length === 0) {
              const k = sock.getEphemeralKeyInfo();
              res.errors.push(`${sock.getProtocol()} ${k && 'name' in k ? String(k.name) : '?'}`);
            }
          }
          sock.on('error', () => undefined);
          sock.destroy();
        } catch (e) {
          res.failed++;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }),
  );
  clearTimeout(startTimer);
  const used = process.cpuUsage(cpu0);
  res.cpuSeconds = (used.user + used.system) / 1e6;
  res.windowSeconds = o.durationMs / 1000;
  return res;
}

// --- the parent side ---

const SELF = fileURLToPath(import.meta.url);

export interface LoadResult {
  ok: number;
  /** Every message acknowledged with 250, warm-up and ramp-down included. */
  acked: number;
  failed: number;
  errors: string[];
  msgsPerSec: number;
  latencies: number[];
  /** CPU the generator used, as a share of the whole machine (all cores), 0..1. */
  cpuShare: number;
  /** CPU seconds the generator used in the measured window (all its processes). */
  cpuSeconds: number;
  tlsHandshakes: number;
  tlsResumed: number;
}

export interface Worker {
  child: ChildProcess;
  result: Promise<WorkerResult>;
}

function startWorker(opts: WorkerOptions): Worker {
  const child = fork(SELF, ['--worker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  const result = new Promise<WorkerResult>((resolve, reject) => {
    child.once('message', (m) => resolve(m as WorkerResult));
    child.once('exit', (code) => reject(new Error(`load generator worker exited with ${code}`)));
  });
  child.send(opts);
  return { child, result };
}

/** Splits `connections` over `processes` workers and adds up what they report. */
export async function runLoad(opts: SendOptions | HandshakeOptions, processes: number, cores: number): Promise<LoadResult> {
  const n = Math.min(processes, opts.connections);
  const workers = Array.from({ length: n }, (_, i) => {
    const conns = Math.floor(opts.connections / n) + (i < opts.connections % n ? 1 : 0);
    const rate = opts.mode === 'send' && opts.rate ? (opts.rate * conns) / opts.connections : undefined;
    return startWorker({ ...opts, connections: conns, ...(rate ? { rate } : {}) });
  });
  try {
    const results = await Promise.all(workers.map((w) => w.result));
    const sum = (f: (r: WorkerResult) => number) => results.reduce((a, r) => a + f(r), 0);
    const window = results[0]!.windowSeconds;
    return {
      ok: sum((r) => r.ok),
      acked: sum((r) => r.acked),
      failed: sum((r) => r.failed),
      errors: results.flatMap((r) => r.errors).slice(0, 5),
      msgsPerSec: sum((r) => r.ok) / window,
      latencies: results.flatMap((r) => r.latencies),
      cpuShare: sum((r) => r.cpuSeconds) / (window * cores),
      cpuSeconds: sum((r) => r.cpuSeconds),
      tlsHandshakes: sum((r) => r.tlsHandshakes),
      tlsResumed: sum((r) => r.tlsResumed),
    };
  } finally {
    for (const w of workers) w.child.kill();
  }
}

/** Opens idle sessions in worker processes; `close()` ends them. */
export async function holdConnections(opts: HoldOptions, processes: number): Promise<{ held: number; failed: number; errors: string[]; pids: number[]; close: () => void }> {
  const workers = Array.from({ length: processes }, (_, i) => {
    const conns = Math.floor(opts.connections / processes) + (i < opts.connections % processes ? 1 : 0);
    return startWorker({ ...opts, connections: conns });
  });
  const results = await Promise.all(workers.map((w) => w.result));
  return {
    held: results.reduce((a, r) => a + (r.held ?? 0), 0),
    failed: results.reduce((a, r) => a + r.failed, 0),
    errors: results.flatMap((r) => r.errors).slice(0, 5),
    pids: workers.map((w) => w.child.pid!),
    close: () => workers.forEach((w) => w.child.kill('SIGKILL')),
  };
}

if (process.argv[2] === '--worker') {
  process.once('message', (o: WorkerOptions) => {
    const run = o.mode === 'send' ? runSend(o) : o.mode === 'hold' ? runHold(o) : runHandshake(o);
    run.then(
      (r) => {
        // 'hold' keeps its sockets until the parent kills it.
        process.send!(r, undefined, {}, () => {
          if (o.mode !== 'hold') process.disconnect();
        });
      },
      (e: unknown) => {
        console.error(e);
        process.exit(1);
      },
    );
  });
  process.on('disconnect', () => {
    if (heldClients.length) process.exit(0);
  });
}
