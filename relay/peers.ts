// The sibling channel: HTTPS between the replicas of one SmtpRelay (config `peers`,
// docs/relay-config.md "Across replicas"). It carries queue hand-off on drain
// (relay/handoff.ts) and the lockout gossip (relay/limits-gossip.ts).
//
// Trust: every replica mounts the same certificate Secret and the same peer token.
//   - The server presents the relay's own certificate (tls.certFile/keyFile, reloaded
//     when they change).
//   - The client accepts a sibling only if its certificate carries the public key of
//     this relay's current certificate or of the one before it (cert-manager's rotation
//     reaches the pods a little apart, so for a while siblings hold different pairs). No
//     CA and no host name are checked: the key is the identity.
//   - The client sends `Authorization: Bearer <peers.tokenFile>`; the server answers 401
//     to any request without it (compared in constant time, never logged), before a
//     route sees it.
// Siblings: `peers.addresses` plus the A/AAAA records of `peers.service` (re-resolved
// every refreshInterval, port = peers.port), less this relay's own addresses.
// In a multi-worker relay the primary runs the channel (it owns limits and spool).

import crypto from 'node:crypto';
import dns from 'node:dns';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import tls from 'node:tls';
import type pino from 'pino';
import prom from 'prom-client';
import { loadCertificate, SECURE_OPTIONS, type TlsPolicy } from './certificate.js';
import { joinHostPort, splitHostPort, type PeersSettings } from './config.js';
import { watchFiles, type FileWatch } from './watch.js';

/** What the channel needs of the relay's certificate, read at each new connection. */
export interface PeerCertificate {
  cert: Buffer;
  key: Buffer;
  /** DER SubjectPublicKeyInfo of the keys a sibling may present: the current certificate's, then the previous one's. */
  publicKeys: Buffer[];
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void | Promise<void>;

export interface PeerResponse {
  status: number;
  body: Buffer;
}

/** A request with no `timeoutMs` gives up after this long (connect, TLS, answer). */
export const DEFAULT_TIMEOUT_MS = 5_000;
/** Bodies above this are refused (413) by readBody and by the client. */
export const MAX_BODY_BYTES = 16 * 1024 * 1024;

/** The DER SubjectPublicKeyInfo of a PEM certificate. */
export function publicKeyOf(certPem: Buffer | string): Buffer {
  return new crypto.X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
}

/**
 * The relay's certificate for the channel, reloaded when its files change; remembers the
 * public key of the pair before, for the siblings that have not seen the rotation yet.
 */
export class PeerIdentity {
  private current: PeerCertificate;
  private watch?: FileWatch;

  constructor(
    private readonly certFile: string,
    private readonly keyFile: string,
    private readonly policy: TlsPolicy,
    private readonly logger?: pino.Logger,
  ) {
    const c = loadCertificate(certFile, keyFile, policy);
    this.current = { cert: c.cert, key: c.key, publicKeys: [publicKeyOf(c.cert)] };
  }

  get(): PeerCertificate {
    return this.current;
  }

  /** Re-reads the files; a broken pair is refused and the current one kept (returns false). */
  reload(): boolean {
    let c;
    try {
      c = loadCertificate(this.certFile, this.keyFile, this.policy);
    } catch (err) {
      this.logger?.error({ event: 'reload_failed', kind: 'peer_certificate', err: (err as Error).message }, 'new certificate refused for the peer channel, keeping the current one');
      return false;
    }
    const key = publicKeyOf(c.cert);
    const [now] = this.current.publicKeys;
    // the same key in a renewed certificate: nothing to remember
    const publicKeys = now!.equals(key) ? this.current.publicKeys : [key, now!];
    this.current = { cert: c.cert, key: c.key, publicKeys };
    return true;
  }

  /** Reloads when the files change (relay/watch.ts). */
  watchFiles(): this {
    this.watch ??= watchFiles([this.certFile, this.keyFile], () => this.reload());
    return this;
  }

  close(): void {
    this.watch?.close();
  }
}

/** This host's own addresses (every interface), to leave out of the sibling list. */
export function ownAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) out.add(normalize(a.address));
  return out;
}

function normalize(address: string): string {
  const a = address.replace(/%.*$/, '').toLowerCase();
  // IPv4-mapped: the same host
  return a.startsWith('::ffff:') && net.isIPv4(a.slice(7)) ? a.slice(7) : a;
}

export type Lookup = (name: string) => Promise<string[]>;

/** A and AAAA of `name` through the system resolver (getaddrinfo: DNS and /etc/hosts). */
const systemLookup: Lookup = async (name) => (await dns.promises.lookup(name, { all: true, verbatim: true })).map((a) => a.address);

export interface PeerChannelOptions {
  certificate: () => PeerCertificate;
  logger: pino.Logger;
  registry: prom.Registry;
  /** Tests: resolves peers.service instead of the system resolver. */
  lookup?: Lookup;
  /** Tests: this host's addresses instead of os.networkInterfaces(). */
  own?: () => Set<string>;
  /** The relay's TLS version floor and TLS 1.2 cipher list (tls.minVersion, tls.ciphers); default TLS 1.2 and Node's list. */
  tls?: TlsPolicy;
}

/** Open connections the peer listener holds at most (siblings keep a few each). */
export const MAX_PEER_CONNECTIONS = 256;

function sameToken(expected: Buffer, given: string | undefined): boolean {
  const m = /^Bearer (.+)$/.exec(given ?? '');
  // hashed first, so the comparison takes the same time whatever the lengths
  const a = crypto.createHash('sha256').update(expected).digest();
  const b = crypto.createHash('sha256').update(m ? m[1]! : '\0').digest();
  return crypto.timingSafeEqual(a, b) && m !== null;
}

function readToken(file: string): Buffer {
  return Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'utf8');
}

/**
 * Reads a request body up to `max` bytes. Beyond it: undefined, with the request paused and
 * the rest left unread, so that the caller can answer before it closes the connection.
 */
export function collectBody(req: http.IncomingMessage, max: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.pause();
        req.removeAllListeners('data');
        resolve(undefined);
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Reads a request body up to `max` bytes; beyond it answers 413, closes the connection once that is sent, and rejects. */
export async function readBody(req: http.IncomingMessage, res: http.ServerResponse, max = MAX_BODY_BYTES): Promise<Buffer> {
  const body = await collectBody(req, max);
  if (body) return body;
  res.once('finish', () => req.destroy());
  res.writeHead(413, { Connection: 'close' }).end();
  throw new Error(`request body over ${max} bytes`);
}

/**
 * A keep-alive agent whose connections are TLS to a sibling whose certificate carries a
 * pinned key; the request (and its token) is written only after that check.
 */
class PinnedAgent extends http.Agent {
  /** Connections still in their TCP or TLS handshake. */
  private readonly connecting = new Set<tls.TLSSocket>();

  constructor(private readonly certificate: () => PeerCertificate) {
    super({ keepAlive: true, maxSockets: 4, keepAliveMsecs: 10_000, timeout: 10_000 });
  }

  override createConnection(options: http.ClientRequestArgs, callback?: (err: Error | null, socket: net.Socket) => void): net.Socket | undefined {
    const pins = this.certificate().publicKeys;
    const socket = tls.connect({
      host: options.host ?? undefined,
      port: Number(options.port),
      // the pin is the check: the sibling's certificate is the relay's own, issued for the service name
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      secureOptions: SECURE_OPTIONS,
      ALPNProtocols: ['http/1.1'],
    });
    this.connecting.add(socket);
    let done = false;
    // the request's own deadline does not reach a socket not handed to it yet
    const timer = setTimeout(
      () => finish(Object.assign(new Error(`no TLS connection within ${String(options.timeout)} ms`), { code: 'PEER_TIMEOUT' })),
      Number(options.timeout ?? DEFAULT_TIMEOUT_MS),
    );
    const finish = (err: Error | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      this.connecting.delete(socket);
      socket.off('error', finish);
      if (err) {
        socket.destroy();
        callback?.(err, socket);
      } else callback?.(null, socket);
    };
    socket.once('error', finish);
    socket.once('secureConnect', () => {
      const peer = socket.getPeerX509Certificate();
      const key = peer?.publicKey.export({ type: 'spki', format: 'der' });
      if (!key || !pins.some((p) => p.equals(key))) {
        finish(Object.assign(new Error(`${joinHostPort(String(options.host), Number(options.port))} presented a certificate whose key is not this relay's (fingerprint ${peer?.fingerprint256 ?? 'none'})`), { code: 'PEER_KEY_MISMATCH' }));
        return;
      }
      finish(null);
    });
    return undefined;
  }

  override destroy(): void {
    for (const s of this.connecting) s.destroy();
    this.connecting.clear();
    super.destroy();
  }
}

export class PeerChannel {
  private readonly routes = new Map<string, Handler>();
  private readonly staticPeers = new Set<string>();
  private dnsPeers: string[] = [];
  private own: Set<string>;
  private refreshTimer?: NodeJS.Timeout;
  private tokenWatch?: FileWatch;
  private token: Buffer;
  private readonly agent: PinnedAgent;
  private readonly gauge: prom.Gauge;
  private readonly requests: prom.Counter<'path' | 'result'>;
  private servedCert?: PeerCertificate;
  private closed = false;
  private readonly listeners = new Set<(peers: string[]) => void>();

  private constructor(
    private settings: PeersSettings,
    private readonly server: https.Server,
    private readonly opts: PeerChannelOptions,
  ) {
    this.token = readToken(settings.tokenFile);
    this.own = (opts.own ?? ownAddresses)();
    this.agent = new PinnedAgent(opts.certificate);
    this.gauge = registered(opts.registry, 'smtp_relay_peers', () => new prom.Gauge({ name: 'smtp_relay_peers', help: 'Sibling replicas known now (peers.addresses and peers.service, own addresses left out).', registers: [opts.registry] }));
    this.requests = registered(opts.registry, 'smtp_relay_peer_requests_total', () =>
      new prom.Counter({
        name: 'smtp_relay_peer_requests_total',
        help: 'Requests this relay sent to its siblings, by path and result (ok: 2xx; status_<code>; error: connect, TLS, or a sibling whose key is not this relay\'s; timeout).',
        labelNames: ['path', 'result'] as const,
        registers: [opts.registry],
      }),
    );
    this.setStatic(settings.addresses);
  }

  /** Binds the HTTPS listener on peers.address:port and starts discovery. */
  static async start(settings: PeersSettings, opts: PeerChannelOptions): Promise<PeerChannel> {
    const first = opts.certificate();
    const server = https.createServer({
      cert: first.cert,
      key: first.key,
      ...serverTls(opts.tls),
      ALPNProtocols: ['http/1.1'],
    });
    server.maxConnections = MAX_PEER_CONNECTIONS;
    server.headersTimeout = 5_000;
    server.requestTimeout = 30_000;
    server.keepAliveTimeout = 15_000;
    const channel = new PeerChannel(settings, server, opts);
    channel.servedCert = first;
    // before the TLS socket is made (tls.Server's own 'connection' listener): the current pair
    server.prependListener('connection', () => channel.refreshServedCertificate());
    server.on('request', (req, res) => channel.serve(req, res));
    server.on('tlsClientError', () => undefined);
    const bind = (address: string) =>
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(settings.port, address, () => {
          server.off('error', reject);
          resolve();
        });
      });
    // "::" on a host without IPv6: all IPv4 addresses (as the metrics server does)
    await bind(settings.address).catch((err: NodeJS.ErrnoException) => {
      if (settings.address === '::' && (err.code === 'EAFNOSUPPORT' || err.code === 'EADDRNOTAVAIL')) return bind('0.0.0.0');
      throw err;
    });
    channel.tokenWatch = watchFiles([settings.tokenFile], () => {
      try {
        channel.token = readToken(settings.tokenFile);
        opts.logger.info({ event: 'reload', kind: 'peer_token' }, 'peer token reloaded');
      } catch (err) {
        opts.logger.error({ event: 'reload_failed', kind: 'peer_token', err: (err as NodeJS.ErrnoException).code ?? 'unreadable' }, 'peer token file unreadable, keeping the current token');
      }
    });
    await channel.refresh();
    channel.scheduleRefresh();
    opts.logger.info({ event: 'peers_listening', address: settings.address, port: channel.port, peers: channel.peers() }, 'peer channel listening');
    return channel;
  }

  /** The bound port (peers.port, or the one the OS chose for port 0 in tests). */
  get port(): number {
    const a = this.server.address();
    return a && typeof a === 'object' ? a.port : this.settings.port;
  }

  private refreshServedCertificate(): void {
    const c = this.opts.certificate();
    if (c === this.servedCert) return;
    try {
      this.server.setSecureContext({ cert: c.cert, key: c.key, ...serverTls(this.opts.tls) });
      this.servedCert = c;
    } catch (err) {
      this.opts.logger.error({ event: 'peer_certificate_failed', err: (err as Error).message }, 'peer channel keeps its previous certificate');
      this.servedCert = c;
    }
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (!sameToken(this.token, req.headers.authorization)) {
      // no detail, and the header is never logged
      res.writeHead(401, { 'WWW-Authenticate': 'Bearer', 'Content-Type': 'text/plain' }).end('unauthorized\n');
      return;
    }
    const path = (req.url ?? '/').split('?')[0]!;
    const handler = this.routes.get(path);
    if (!handler) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('no such path\n');
      return;
    }
    const fail = (err: unknown) => {
      this.opts.logger.error({ event: 'peer_handler_failed', path, err: (err as Error)?.message ?? String(err) }, 'peer request failed');
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain' }).end('internal error\n');
      else res.destroy();
    };
    try {
      const r = handler(req, res);
      if (r instanceof Promise) r.catch(fail);
    } catch (err) {
      fail(err);
    }
  }

  /** `handler` answers authenticated requests for `path` (e.g. "/v1/lockout"). */
  route(path: string, handler: Handler): void {
    this.routes.set(path, handler);
  }

  /** Siblings now, "host:port", own addresses left out. */
  peers(): string[] {
    const all = new Set<string>([...this.staticPeers, ...this.dnsPeers]);
    return [...all].filter((p) => !this.isSelf(p)).sort();
  }

  /** Told whenever the sibling list changes (after a DNS refresh or a settings update). */
  onPeersChanged(listener: (peers: string[]) => void): void {
    this.listeners.add(listener);
  }

  private isSelf(peer: string): boolean {
    const hp = splitHostPort(peer);
    if (!hp) return true;
    return hp.port === this.port && this.own.has(normalize(hp.host));
  }

  private setStatic(addresses: string[]): void {
    this.staticPeers.clear();
    for (const a of addresses) {
      const hp = splitHostPort(a);
      if (hp) this.staticPeers.add(joinHostPort(normalize(hp.host), hp.port));
    }
  }

  /** Applies reloaded settings: the static list, the service and its refresh interval (the listener keeps its address, port and token file). */
  update(settings: PeersSettings): void {
    const before = this.peers().join(',');
    this.settings = { ...settings, address: this.settings.address, port: this.settings.port, tokenFile: this.settings.tokenFile };
    this.setStatic(settings.addresses);
    if (!settings.service) this.dnsPeers = [];
    this.scheduleRefresh();
    void this.refresh();
    this.announce(before);
  }

  private announce(before: string): void {
    const now = this.peers();
    this.gauge.set(now.length);
    if (now.join(',') === before) return;
    this.opts.logger.info({ event: 'peers_changed', peers: now }, 'sibling list changed');
    for (const l of this.listeners) l(now);
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    if (this.closed || !this.settings.service) return;
    this.refreshTimer = setTimeout(() => void this.refresh().finally(() => this.scheduleRefresh()), this.settings.refreshIntervalMs);
    this.refreshTimer.unref();
  }

  /** Re-resolves peers.service (and re-reads own addresses: a pod's IP is fixed, a test host's may not be). */
  async refresh(): Promise<void> {
    const before = this.peers().join(',');
    this.own = (this.opts.own ?? ownAddresses)();
    const name = this.settings.service;
    if (name) {
      try {
        const addresses = await (this.opts.lookup ?? systemLookup)(name);
        this.dnsPeers = [...new Set(addresses.map((a) => joinHostPort(normalize(a), this.port)))];
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // no records (no ready sibling yet, or none at all): none; a failing resolver: keep the last list
        if (code === 'ENOTFOUND' || code === 'ENODATA') this.dnsPeers = [];
        this.opts.logger.warn({ event: 'peers_dns_failed', service: name, err: code ?? (err as Error).message }, 'cannot resolve the peer service');
      }
    }
    this.announce(before);
  }

  /** POSTs `body` to `path` on `peer`; rejects on a network or TLS error, a sibling whose key is not pinned, or the timeout. */
  request(peer: string, path: string, body: Buffer, opts: { timeoutMs?: number } = {}): Promise<PeerResponse> {
    const hp = splitHostPort(peer);
    if (!hp) return Promise.reject(new Error(`${JSON.stringify(peer)} is not host:port`));
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const count = (result: string) => this.requests.inc({ path, result });
    return new Promise<PeerResponse>((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | null, r?: PeerResponse) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          count((err as NodeJS.ErrnoException).code === 'PEER_TIMEOUT' ? 'timeout' : 'error');
          reject(err);
        } else {
          count(r!.status >= 200 && r!.status < 300 ? 'ok' : `status_${r!.status}`);
          resolve(r!);
        }
      };
      const req = http.request({
        host: hp.host,
        port: hp.port,
        method: 'POST',
        path,
        agent: this.agent,
        timeout: timeoutMs,
        headers: {
          Authorization: `Bearer ${this.token.toString('utf8')}`,
          'Content-Type': 'application/octet-stream',
          'Content-Length': body.length,
        },
      });
      // one deadline for connect, TLS, the request and the whole answer
      const timer = setTimeout(() => {
        const err = Object.assign(new Error(`${peer}${path}: no answer within ${timeoutMs} ms`), { code: 'PEER_TIMEOUT' });
        req.destroy(err);
        settle(err);
      }, timeoutMs);
      req.on('error', (err) => settle(err));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) {
            req.destroy(new Error(`${peer}${path}: answer over ${MAX_BODY_BYTES} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => settle(null, { status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', (err) => settle(err));
      });
      req.end(body);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.refreshTimer);
    this.tokenWatch?.close();
    this.agent.destroy();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

function serverTls(policy?: TlsPolicy): tls.SecureContextOptions {
  return {
    minVersion: policy?.minVersion ?? 'TLSv1.2',
    ...(policy ? { ciphers: policy.ciphers, honorCipherOrder: true } : {}),
    secureOptions: SECURE_OPTIONS,
  };
}

/** A metric of this name in `registry`, made once (a relay may start a channel again in tests). */
function registered<T extends prom.Metric>(registry: prom.Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

/**
 * The channel of `settings.peers` with the relay's certificate (watched for rotation),
 * or undefined when the config has no `peers`.
 */
export async function startPeers(
  settings: { peers?: PeersSettings; tls: { certFile: string; keyFile: string } & TlsPolicy },
  logger: pino.Logger,
  registry: prom.Registry,
): Promise<{ channel: PeerChannel; identity: PeerIdentity } | undefined> {
  if (!settings.peers) return undefined;
  const identity = new PeerIdentity(settings.tls.certFile, settings.tls.keyFile, settings.tls, logger).watchFiles();
  const channel = await PeerChannel.start(settings.peers, { certificate: () => identity.get(), logger, registry, tls: settings.tls });
  return { channel, identity };
}
