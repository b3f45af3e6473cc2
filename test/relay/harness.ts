// Runs the real relay process (node dist/relay/main.js serve) on loopback with
// files laid out the way the kubelet mounts Secrets (a `..data` symlink), and
// gives tests a raw SMTP client for the adversarial cases.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import nodemailer from 'nodemailer';
import { hashPassword } from '../../relay/password.js';
import assert from 'node:assert/strict';
import type { CertFiles, Pki } from '../harness/support/pki.js';
import type { Sink } from '../harness/support/sink.js';

export const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../relay/main.js');
export const NODE = process.execPath;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface TestUser {
  name: string;
  password: string;
  allowedSenders: string[];
  rateLimit?: { messages: number; per: string };
  /** Hash with the production parameters (scrypt N=32768) instead of the cheap test ones. */
  strongHash?: boolean;
}

/** Cheap scrypt parameters for test users (the relay honours what the hash says). */
const TEST_HASH = { N: 1024, r: 8, p: 1 };

export async function usersYaml(users: TestUser[]): Promise<string> {
  const lines = ['users:'];
  for (const u of users) {
    lines.push(`  - name: ${JSON.stringify(u.name)}`);
    lines.push(`    passwordHash: ${JSON.stringify(await (u.strongHash ? hashPassword(u.password) : hashPassword(u.password, TEST_HASH)))}`);
    lines.push(`    allowedSenders: ${JSON.stringify(u.allowedSenders)}`);
    if (u.rateLimit) lines.push(`    rateLimit: {messages: ${u.rateLimit.messages}, per: ${JSON.stringify(u.rateLimit.per)}}`);
  }
  return lines.join('\n') + '\n';
}

/**
 * A directory laid out like a kubelet Secret volume: files are symlinks through
 * `..data`, which points at a timestamped directory; an update writes a new
 * directory and renames a new `..data` symlink over the old one.
 */
export class SecretDir {
  private n = 0;
  constructor(readonly dir: string) {}

  static async create(parent: string, name: string, files: Record<string, string | Buffer>): Promise<SecretDir> {
    const d = new SecretDir(path.join(parent, name));
    await fs.mkdir(d.dir, { recursive: true });
    await d.update(files);
    for (const f of Object.keys(files)) await fs.symlink(path.join('..data', f), path.join(d.dir, f));
    return d;
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  async update(files: Record<string, string | Buffer>): Promise<void> {
    const ts = `..2026_11_27_00_00_${String(this.n++).padStart(2, '0')}.${process.pid}`;
    await fs.mkdir(path.join(this.dir, ts));
    for (const [f, content] of Object.entries(files)) await fs.writeFile(path.join(this.dir, ts, f), content, { mode: 0o600 });
    await fs.symlink(ts, path.join(this.dir, '..data_tmp'));
    await fs.rename(path.join(this.dir, '..data_tmp'), path.join(this.dir, '..data'));
  }
}

export interface RelayOptions {
  dir: string;
  cert: CertFiles;
  users: TestUser[];
  upstream: { host: string; port: number; caFile: string; tls?: 'starttls' | 'implicit' };
  /** More YAML lines under `upstream:`, indented by two spaces (e.g. an `oauth2:` block). */
  upstreamExtra?: string;
  /** Extra YAML merged in as text blocks (access, limits, auth.lockout ...). */
  access?: string;
  limits?: string;
  lockout?: string;
  tlsExtra?: string;
  grace?: string;
  dkim?: string;
  /** A `queue:` section (queue mode), e.g. `{directory: /tmp/x/spool}`. */
  queue?: string;
  /** More fields of the `metrics:` map, e.g. `controlTokenFile: /x/token`. */
  metricsExtra?: string;
  /** The value of a `peers:` section (relay/peers.ts), e.g. `{port: 9091, tokenFile: /x/token, addresses: [...]}`. */
  peers?: string;
  /** The `workers:` setting (absent: RELAY_TEST_WORKERS from the environment, else 1: one process, so that a test sees the same relay on any machine; the relay's own default is `auto`). */
  workers?: number | 'auto';
  env?: Record<string, string>;
  /** ServiceAccount-token logins: users naming a ServiceAccount, and the issuer the test plays (jwks.json beside users.yaml). */
  tokens?: { issuer: string; audience: string; jwks: object; users: { name: string; serviceAccount: { namespace: string; name: string }; allowedSenders: string[] }[] };
}

export interface LogLine {
  level: number;
  event?: string;
  msg?: string;
  [k: string]: unknown;
}

export class RelayProcess {
  readonly logs: LogLine[] = [];
  stderr = '';
  exitCode: number | null = null;
  readonly exited: Promise<number | null>;
  private waiters: { pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];

  constructor(
    readonly child: ChildProcess,
    readonly configFile: string,
    readonly ports: { submission: number; submissions: number; v6: number; metrics: number },
    readonly tlsDir: SecretDir,
    readonly usersDir: SecretDir,
  ) {
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const l = JSON.parse(line) as LogLine;
          this.logs.push(l);
          this.waiters = this.waiters.filter((w) => (w.pred(l) ? (w.resolve(l), false) : true));
        } catch {
          this.stderr += `[stdout] ${line}\n`;
        }
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) =>
      child.on('exit', (code, signal) => {
        if (signal) this.stderr += `[killed by ${signal}]\n`;
        resolve((this.exitCode = code));
      }),
    );
  }

  waitForLog(pred: (l: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    const found = this.logs.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no matching log line within ${timeoutMs} ms; stderr: ${this.stderr}`)), timeoutMs);
      this.waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(t);
          resolve(l);
        },
      });
    });
  }

  async metricsText(): Promise<string> {
    const res = await fetch(`http://127.0.0.1:${this.ports.metrics}/metrics`);
    return res.text();
  }

  /** Value of one sample, e.g. metric('smtp_relay_rejections_total', {reason: 'bare_lf'}); 0 when absent. */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const text = await this.metricsText();
    let sum = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const m = /^([a-z_:]+)(\{(.*)\})? (\S+)$/.exec(line);
      if (!m || m[1] !== name) continue;
      const got: Record<string, string> = {};
      for (const p of (m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) got[p[1]!] = p[2]!;
      if (Object.entries(labels).every(([k, v]) => got[k] === v)) sum += Number(m[4]);
    }
    return sum;
  }

  /** The relay's resident memory now, in KiB (/proc/<pid>/status VmRSS). */
  rssKiB(): number {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${this.child.pid}/status`, 'utf8'));
    return Number(m?.[1] ?? 0);
  }

  async stop(): Promise<number | null> {
    if (this.exitCode === null) this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

/** Teardown for a test file's relay, sink and PKI: stops all three, then asserts the relay exited 0. */
export async function stopAll(relay: RelayProcess | undefined, sink: Sink | undefined, pki: Pki | undefined): Promise<void> {
  const code = await relay?.stop();
  await sink?.stop();
  await pki?.cleanup();
  assert.equal(code, 0, `relay exit code; stderr: ${relay?.stderr}`);
}

export async function startRelay(o: RelayOptions): Promise<RelayProcess> {
  const tlsDir = await SecretDir.create(o.dir, `tls-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`, {
    'tls.crt': await fs.readFile(o.cert.chainFile),
    'tls.key': await fs.readFile(o.cert.keyFile),
  });
  let usersText = await usersYaml(o.users);
  for (const u of o.tokens?.users ?? []) {
    usersText += `  - name: ${JSON.stringify(u.name)}\n    serviceAccount: ${JSON.stringify(u.serviceAccount)}\n    allowedSenders: ${JSON.stringify(u.allowedSenders)}\n`;
  }
  const usersDir = await SecretDir.create(o.dir, `users-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`, {
    'users.yaml': usersText,
    ...(o.tokens ? { 'jwks.json': JSON.stringify(o.tokens.jwks) } : {}),
  });
  const ports = { submission: await freePort(), submissions: await freePort(), v6: await freePort(), metrics: await freePort() };
  const config = `# written by test/relay/harness.ts
version: 1
hostname: relay.test.example
listeners:
  - {name: submission, address: 127.0.0.1, port: ${ports.submission}, mode: starttls}
  - {name: submissions, address: 127.0.0.1, port: ${ports.submissions}, mode: implicit}
  - {name: v6, address: "::1", port: ${ports.v6}, mode: starttls}
tls:
  certFile: ${tlsDir.file('tls.crt')}
  keyFile: ${tlsDir.file('tls.key')}
${o.tlsExtra ?? ''}
auth:
  usersFile: ${usersDir.file('users.yaml')}
  lockout: ${o.lockout ?? '{maxFailures: 50, window: 10m, duration: 15m}'}
${o.tokens ? `  serviceAccountTokens: {issuer: ${JSON.stringify(o.tokens.issuer)}, audience: ${JSON.stringify(o.tokens.audience)}, jwksFile: ${usersDir.file('jwks.json')}}` : ''}
access:
${o.access ?? '  allowedCidrs: ["127.0.0.0/8", "::1/128"]'}
limits: ${o.limits ?? '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 200, maxConnectionsPerIp: 50, idleTimeout: 30s}'}
upstream:
  host: ${o.upstream.host}
  port: ${o.upstream.port}
  tls: ${o.upstream.tls ?? 'starttls'}
  caFile: ${o.upstream.caFile}
  timeout: 10s
${o.upstreamExtra ?? ''}
${o.dkim ?? ''}
metrics: {address: 127.0.0.1, port: ${ports.metrics}${o.metricsExtra ? `, ${o.metricsExtra}` : ''}}
shutdownGracePeriod: ${o.grace ?? '5s'}
${o.queue ? `queue: ${o.queue}` : ''}
${o.peers ? `peers: ${o.peers}` : ''}
workers: ${o.workers ?? process.env.RELAY_TEST_WORKERS ?? 1}
`;
  const configFile = path.join(o.dir, `relay-${Date.now()}-${Math.random().toString(36).slice(2, 6)}.yaml`);
  await fs.writeFile(configFile, config);
  return spawnRelay(configFile, ports, tlsDir, usersDir, o.env);
}

async function spawnRelay(configFile: string, ports: RelayProcess['ports'], tlsDir: SecretDir, usersDir: SecretDir, env?: Record<string, string>): Promise<RelayProcess> {
  const child = spawn(NODE, [MAIN, 'serve', '--config', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const relay = new RelayProcess(child, configFile, ports, tlsDir, usersDir);
  await Promise.race([
    relay.waitForLog((l) => l.event === 'ready', 20_000),
    relay.exited.then((code) => {
      throw new Error(`relay exited with ${code} before it was ready: ${relay.stderr}`);
    }),
  ]);
  return relay;
}

/** Starts the relay again with the same config, ports and files (after it exited or was killed). */
export function restartRelay(prev: RelayProcess): Promise<RelayProcess> {
  return spawnRelay(prev.configFile, prev.ports, prev.tlsDir, prev.usersDir);
}

/** Folders made by tempDir in this test process: removed when it exits (KEEP_TEST_DIRS=1 keeps them to look into). */
const tempDirs: string[] = [];
process.once('exit', () => {
  if (process.env['KEEP_TEST_DIRS'] === '1') return;
  for (const d of tempDirs) {
    try {
      rmSync(d, { recursive: true, force: true });
    } catch {
      /* a mount still inside it: left for the next look */
    }
  }
});

export async function tempDir(prefix: string): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  tempDirs.push(d);
  return d;
}

// --- a raw SMTP client for adversarial tests ---

export interface Reply {
  code: number;
  lines: string[];
  text: string;
}

export class RawSmtp {
  private buf = '';
  private pending: ((r: Reply | null) => void)[] = [];
  private replies: Reply[] = [];
  closed = false;
  readonly closedP: Promise<void>;
  private onClosed!: () => void;

  private constructor(public socket: net.Socket | tls.TLSSocket) {
    this.closedP = new Promise((r) => (this.onClosed = r));
    this.attach(socket);
  }

  private attach(socket: net.Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => this.feed(d));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (socket !== this.socket) return;
      this.closed = true;
      for (const p of this.pending.splice(0)) p(null);
      this.onClosed();
    });
  }

  private feed(d: string) {
    this.buf += d;
    let lines: string[] = [];
    for (;;) {
      const i = this.buf.indexOf('\r\n');
      if (i < 0) break;
      const line = this.buf.slice(0, i);
      this.buf = this.buf.slice(i + 2);
      lines.push(line);
      if (/^\d{3}( |$)/.test(line)) {
        const reply = { code: Number(line.slice(0, 3)), lines, text: lines.join('\n') };
        lines = [];
        const p = this.pending.shift();
        if (p) p(reply);
        else this.replies.push(reply);
      }
    }
    if (lines.length) this.buf = lines.map((l) => l + '\r\n').join('') + this.buf;
  }

  static async connect(port: number, opts: { implicitTls?: boolean; localAddress?: string; host?: string; greeting?: boolean } = {}): Promise<RawSmtp> {
    const host = opts.host ?? '127.0.0.1';
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = opts.implicitTls
        ? tls.connect({ host, port, rejectUnauthorized: false, servername: 'localhost', ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) }, () => resolve(s))
        : net.connect({ host, port, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) }, () => resolve(s));
      s.once('error', reject);
    });
    const c = new RawSmtp(socket);
    if (opts.greeting !== false) {
      const g = await c.read();
      if (!g) throw new Error('connection closed before the greeting');
      c.greeting = g;
    }
    return c;
  }

  greeting?: Reply;

  read(timeoutMs = 10_000): Promise<Reply | null> {
    const r = this.replies.shift();
    if (r) return Promise.resolve(r);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no SMTP reply within ${timeoutMs} ms`)), timeoutMs);
      this.pending.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  async cmd(line: string): Promise<Reply | null> {
    this.write(line + '\r\n');
    return this.read();
  }

  async starttls(): Promise<tls.TLSSocket> {
    const r = await this.cmd('STARTTLS');
    if (!r || r.code !== 220) throw new Error(`STARTTLS refused: ${r?.text}`);
    const raw = this.socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    const s = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = tls.connect({ socket: raw as net.Socket, rejectUnauthorized: false, servername: 'localhost' }, () => resolve(t));
      t.once('error', reject);
    });
    this.socket = s;
    this.buf = '';
    this.attach(s);
    return s;
  }

  async login(user: string, pass: string): Promise<Reply | null> {
    return this.cmd(`AUTH PLAIN ${Buffer.from(`\0${user}\0${pass}`).toString('base64')}`);
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A minimal valid message with CRLF line endings. */
export function message(from: string, to: string, subject = 'test', body = 'Hello.'): string {
  return [`From: ${from}`, `To: ${to}`, `Subject: ${subject}`, `Message-ID: <${Math.random().toString(36).slice(2)}@test.example>`, `Date: ${new Date().toUTCString()}`, '', body, ''].join('\r\n');
}

/**
 * Sends `n` messages at once over one pooled STARTTLS + AUTH nodemailer client from `from`
 * to rcpt<i>@example.net, subject "<tag> <i>"; the reply of each (the error text if refused).
 */
export async function sendPooled(
  relay: RelayProcess,
  o: { ca: string; user: { name: string; password: string }; from: string; n: number; tag: string; maxConnections?: number },
): Promise<string[]> {
  const t = nodemailer.createTransport({
    pool: true,
    maxConnections: o.maxConnections ?? 4,
    host: '127.0.0.1',
    port: relay.ports.submission,
    requireTLS: true,
    auth: { user: o.user.name, pass: o.user.password },
    tls: { ca: o.ca, servername: 'localhost' },
  });
  try {
    return await Promise.all(
      Array.from({ length: o.n }, (_, i) =>
        t
          .sendMail({ envelope: { from: o.from, to: [`rcpt${i}@example.net`] }, raw: message(o.from, `rcpt${i}@example.net`, `${o.tag} ${i}`) })
          .then((info) => info.response, (err: Error & { response?: string }) => err.response ?? err.message),
      ),
    );
  } finally {
    t.close();
  }
}
