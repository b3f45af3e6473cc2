// The relay's listeners: one smtp-server per listener, wired to the session phases
// (relay/session.ts), the connection table (relay/connections.ts), live reload of
// settings, users and certificate, and the drain on shutdown. A 250 after DATA only
// when the upstream accepted (relay/session.ts, data phase).

import type net from 'node:net';
import type pino from 'pino';
import { SMTPServer } from 'smtp-server';
import { loadCertificate, tlsServerOptions, type LoadedCertificate } from './certificate.js';
import { keepRestartFields, type ListenerSettings, type RelaySettings } from './config.js';
import { ConnectionTable, socketKey, type ShedReason } from './connections.js';
import { LocalLimits, type SharedLimits } from './limits.js';
import {
  checkInternals,
  checkServerInternals,
  destroyPending,
  filterCommands,
  gateAcceptedSockets,
  holdCommands,
  installDataScan,
  installOAuthBearer,
  openConnections,
  setServerCertificate,
  setServerLimits,
  trustProxyHeaders,
  tuneConnections,
  type ServerConnection,
} from './internals.js';
import { Logins } from './login.js';
import { readProxyHeader } from './proxy-header.js';
import type { Metrics } from './metrics.js';
import { CidrSet, canonicalIp } from './policy/access.js';
import { SHUTTING_DOWN, SmtpError, oneLine } from './replies.js';
import { POST_TLS_DISABLED, PRE_TLS_DISABLED, SessionPolicy, type Deliverer, type Queue, type RelayState } from './session.js';
import type { UserTable } from './users.js';
import type { TokenVerifier } from './sa-token.js';
export type { Deliverer, Queue } from './session.js';
export type { DeliveryOutcome, Envelope } from './upstream.js';

/** The replies of a shed connection, by reason. */
const SHED_REPLIES: Record<ShedReason, string> = {
  pre_auth_timeout: '4.4.2 Timeout: TLS and AUTH not completed in time, closing connection',
  unauthenticated_cap: '4.7.0 Too many unauthenticated connections, closing the oldest',
  relay_full: '4.7.0 Too many connections, closing the oldest unauthenticated one',
};

/** A new connection, between its creation and its connect phase. */
interface Adopted {
  countedAtAccept: boolean;
  /** Its key in the connection table (relay/connections.ts socketKey). */
  key: string;
  ip: string;
  shed(reason: ShedReason): void;
  /** False once its socket closed (a shared-limits answer may come later). */
  alive(): boolean;
  conn: ServerConnection;
}

/** smtp-server's maxClients: above maxConnections, which the connect phase enforces. */
function backstop(maxConnections: number): number {
  return maxConnections * 2;
}

export class Relay implements RelayState {
  settings: RelaySettings;
  allowed: CidrSet;
  listening = false;
  /** SIGTERM: the listeners are closing. */
  private stopping = false;
  /** The operator's drain (relay/control.ts): listeners stay open, every new connection and MAIL gets 421. */
  private drainOrdered = false;
  private trustedProxies: CidrSet;
  /** Connection counts, lockout and rate limits: this process's own, or the primary's (relay/limits.ts). */
  private readonly limits: SharedLimits;
  /** Set when the limits are this process's own (a single-process relay): it sweeps and reloads them. */
  private readonly localLimits?: LocalLimits;
  private readonly logins: Logins;
  private readonly table = new ConnectionTable();
  private readonly session: SessionPolicy;
  private readonly servers: { listener: ListenerSettings; server: SMTPServer }[] = [];
  /** What the connect phase needs to know of each new connection, by connection id. */
  private readonly adopted = new Map<string, Adopted>();
  /** Sockets of trusted peers whose PROXY header is being read (closed on shutdown). */
  private readonly readingHeader = new Set<net.Socket>();
  /** Sockets handed to smtp-server with a PROXY v1 line to read (the peer's own, or one made from v2). */
  private readonly proxied = new WeakSet<net.Socket>();
  private sweep?: NodeJS.Timeout;
  /** Queue mode: DSN (RFC 3461) is advertised, since the spool honours it. */
  private readonly queueMode: boolean;

  constructor(
    settings: RelaySettings,
    users: UserTable,
    private certificate: LoadedCertificate,
    upstream: Deliverer,
    private readonly logger: pino.Logger,
    private readonly metrics: Metrics,
    queue?: Queue,
    tokens?: TokenVerifier,
    /** A worker's limits (relay/limits.ts IpcLimits); absent = this process's own. */
    shared?: SharedLimits,
  ) {
    checkInternals();
    // DATA is scanned for its end with Buffer.indexOf, not a loop over every byte (relay/internals.ts)
    installDataScan();
    // AUTH OAUTHBEARER for ServiceAccount tokens (offered only where those are accepted)
    installOAuthBearer();
    this.settings = settings;
    this.queueMode = queue !== undefined;
    this.allowed = new CidrSet(settings.access.allowedCidrs);
    this.trustedProxies = new CidrSet(settings.access.trustedProxyCidrs);
    if (shared) this.limits = shared;
    else this.limits = this.localLimits = new LocalLimits({ limits: settings.limits, lockout: settings.auth.lockout }, (listener, reason) => this.countShed(listener, reason));
    this.logins = new Logins(users, metrics, tokens);
    this.session = new SessionPolicy(this, this.table, this.logins, this.limits, upstream, logger, metrics, queue);
    this.metrics.certificateExpiry.set(Math.floor(certificate.notAfter.getTime() / 1000));
  }

  /** Starts every listener; resolves with the bound ports by listener name. */
  async listen(): Promise<Record<string, number>> {
    const ports: Record<string, number> = {};
    for (const listener of this.settings.listeners) {
      const server = this.createServer(listener);
      this.servers.push({ listener, server });
      const bind = (address: string) =>
        new Promise<void>((resolve, reject) => {
          const onError = (err: NodeJS.ErrnoException) => reject(err);
          server.server.once('error', onError);
          server.listen(listener.port, address, () => {
            server.server.off('error', onError);
            resolve();
          });
        });
      try {
        await bind(listener.address).catch((err: NodeJS.ErrnoException) => {
          // "::" on a host without IPv6 (some pod networks): fall back to all IPv4 addresses
          if (listener.address === '::' && (err.code === 'EAFNOSUPPORT' || err.code === 'EADDRNOTAVAIL')) return bind('0.0.0.0');
          throw err;
        });
      } catch (err) {
        throw new Error(`listener ${listener.name} (${listener.address}:${listener.port}): ${(err as Error).message}`);
      }
      const addr = server.server.address() as net.AddressInfo;
      ports[listener.name] = addr.port;
      this.logger.info({ event: 'listening', listener: listener.name, address: addr.address, port: addr.port, mode: listener.mode }, 'listening');
    }
    // Connections that have not authenticated within preAuthTimeout are closed (checked each
    // second), by whoever holds the limits (a worker's primary sweeps them for every worker).
    const local = this.localLimits;
    if (local) {
      this.sweep = setInterval(() => {
        local.sweep();
        this.metrics.unauthenticatedConnections.set(local.unauthenticatedCount);
      }, 1000).unref();
    }
    this.listening = true;
    return ports;
  }

  private createServer(listener: ListenerSettings): SMTPServer {
    const s = this.settings;
    const implicit = listener.mode === 'implicit';
    const phases = this.session;
    const server = new SMTPServer({
      name: s.hostname,
      secure: implicit,
      key: this.certificate.key,
      cert: this.certificate.cert,
      ...tlsServerOptions(s.tls),
      disableReverseLookup: true,
      logger: false,
      size: s.limits.maxMessageSize,
      rejectOversized: true,
      // XOAUTH2 and OAUTHBEARER only where ServiceAccount tokens are accepted (the token is their access token)
      authMethods: s.auth.serviceAccountTokens ? ['PLAIN', 'LOGIN', 'XOAUTH2', 'OAUTHBEARER'] : ['PLAIN', 'LOGIN'],
      // DSN only where it is honoured (the spool); inline mode refuses its parameters (555).
      hideDSN: !this.queueMode,
      allowInsecureAuth: false,
      disabledCommands: implicit ? POST_TLS_DISABLED : PRE_TLS_DISABLED,
      // smtp-server's own limit, a backstop: the connect phase enforces maxConnections and
      // sheds unauthenticated connections, whose close lags a tick behind the newcomer.
      maxClients: backstop(s.limits.maxConnections),
      socketTimeout: s.limits.idleTimeoutMs,
      closeTimeout: s.shutdownGracePeriodMs,
      authRequiredMessage: '5.7.0 Authentication required',
      onConnect: (session, cb) => {
        const adopted = this.adopted.get(session.id);
        this.adopted.delete(session.id);
        const refused = phases.connect(listener, session, adopted ?? { countedAtAccept: false, key: session.id, shed: () => undefined, alive: () => true });
        if (!(refused instanceof Promise)) return cb(refused);
        // A worker waits for the primary's answer: what the client sent early (e.g. EHLO in
        // the same packet as a PROXY header) is answered after the greeting, as in one process.
        const release = adopted ? holdCommands(adopted.conn) : undefined;
        const answer = (r: Error | null) => {
          cb(r);
          release?.();
        };
        refused.then(answer, answer);
      },
      onSecure: (socket, session, cb) => {
        phases.tls(listener, socket, session);
        cb();
      },
      onAuth: (auth, session, cb) => {
        phases.auth(auth, session).then(
          (user) => cb(null, { user }),
          (err: Error) => (err instanceof SmtpError && err.responseCode === 535 ? cb(null, { message: err.message, responseCode: 535 }) : cb(err)),
        );
      },
      onMailFrom: (address, session, cb) => {
        const refused = phases.mailFrom(address, session);
        if (refused instanceof Promise) refused.then(cb, cb);
        else cb(refused);
      },
      onRcptTo: (address, session, cb) => cb(phases.rcptTo(address, session)),
      onData: (stream, session, cb) =>
        phases.data(stream, session, cb, () => {
          // the transaction is over: a draining relay tells this client now, not at its next command
          if (this.draining) setImmediate(() => this.sayGoodbye(session.id));
        }),
      onClose: (session) => phases.close(session),
    });
    checkServerInternals(server);
    // PROXY protocol only from trusted peers, matched by CIDR. The header is read before
    // TLS and before the connect phase, so the allow-list, limits and lockout all see the
    // client's address. smtp-server reads a v1 line only from the sockets whose header the
    // gate let through (decided once per socket, so a reload in between changes nothing).
    trustProxyHeaders(server, (socket) => this.proxied.has(socket));
    gateAcceptedSockets(server, (socket, proceed) => {
      if (this.trustedProxies.has(socket.remoteAddress)) return this.readProxyHeader(listener, socket, proceed);
      return implicit ? this.admitBeforeHandshake(listener, server, socket) : 'accept';
    });
    // Every listener of the relay requires TLS and AUTH (there is no port-25/MX mode), so
    // none keeps smtp-server's early-talker pause (relay/internals.ts initWithoutPause).
    tuneConnections(server, (conn) => this.adopt(listener, conn));
    server.on('error', (err: Error & { code?: string; meta?: { stage?: string } }) => {
      // smtp-server reports failed or abandoned handshakes here (err.meta from its TLS
      // error normalizer); without this listener such a client would crash the process.
      if (err.meta) this.metrics.tlsFailures.inc({ listener: listener.name });
      this.logger.debug({ event: 'connection_error', listener: listener.name, code: err.code, err: oneLine(err.message) }, 'connection error');
    });
    return server;
  }

  /**
   * A new smtp-server connection: whether accept counted it, how to shed it (a 421) once
   * its session is admitted, and the plaintext command limit on STARTTLS listeners.
   */
  private adopt(listener: ListenerSettings, conn: ServerConnection): void {
    const key = socketKey(conn._socket);
    const countedAtAccept = this.table.takeAccepted(conn._socket);
    const socket = conn._socket;
    this.adopted.set(conn.id, {
      countedAtAccept,
      key,
      ip: canonicalIp(conn.remoteAddress),
      shed: (reason) => conn.send(421, SHED_REPLIES[reason]),
      alive: () => !socket.destroyed,
      conn,
    });
    // STARTTLS removes this listener (smtp-server's upgrade clears the plaintext socket's):
    // the session's close (relay/session.ts close) releases the limits then.
    socket.once('close', () => {
      this.adopted.delete(conn.id);
      this.limits.closed(key);
    });
    if (listener.mode === 'starttls') {
      let count = 0;
      filterCommands(conn, (c) => this.session.plaintextCommand(c, ++count));
    }
  }

  private countShed(listener: string, reason: ShedReason): void {
    this.metrics.connectionsShed.inc({ listener, reason });
    this.logger.info({ event: 'connection_shed', listener, reason }, 'unauthenticated connection closed');
  }

  /**
   * On an implicit-TLS listener smtp-server runs the connect phase only after the TLS
   * handshake, so a client outside the allow-list could make the relay pay for a
   * handshake (and hold a pending-handshake slot) before being told 554. Such a client is
   * dropped as soon as TCP is accepted instead, unless it is a trusted PROXY peer (then
   * the address that counts is in the header, and the connect phase checks it). The
   * per-IP limit applies here too, to connections still in their handshake: else one
   * allowed address could fill every pending-handshake slot (maxClients).
   */
  private admitBeforeHandshake(listener: ListenerSettings, server: SMTPServer, socket: net.Socket): 'accept' | 'refuse' {
    const peer = socket.remoteAddress;
    const ip = canonicalIp(peer ?? '');
    const refuse = (reason: string, level: 'info' | 'warn', text: string) => {
      socket.on('error', () => undefined);
      socket.destroy();
      this.session.refuseConnection(listener.name, reason, reason === 'ip_not_allowed' ? 554 : 421, '');
      this.logger[level]({ event: 'connection_refused', listener: listener.name, clientIp: ip, reason }, text);
      return 'refuse' as const;
    };
    if (!this.allowed.has(peer)) return refuse('ip_not_allowed', 'info', 'client address not allowed (dropped before the TLS handshake)');
    const key = socketKey(socket);
    // no reply is possible before the handshake: shedding drops the connection
    const admitted = this.limits.accept({ key, ip, listener: listener.name }, () => destroyPending(server, socket));
    socket.once('close', () => this.limits.closed(key));
    if (!(admitted instanceof Promise)) {
      if (admitted !== 'ok') return refuse('too_many_connections_per_ip', 'warn', 'per-IP connection limit reached (before the TLS handshake)');
      this.table.countSocket(socket, ip);
      return 'accept';
    }
    // A worker (the primary decides): smtp-server takes the socket now, as in one process,
    // and a refusal closes it the way a shed does. Holding the socket back until the answer
    // came let a client's half ClientHello and FIN be read into it first, and the TLS
    // socket later built over that crashed Node 24 (SIGSEGV, test/relay/abuse.test.ts
    // "clients dropping during the TLS handshake" with RELAY_TEST_WORKERS=2). The answer
    // comes in about 0.05 ms, before any handshake can have ended.
    this.table.countSocket(socket, ip);
    const drop = (reason: string) => {
      if (socket.destroyed) return;
      destroyPending(server, socket);
      this.session.refuseConnection(listener.name, reason, 421, '');
      this.logger.warn({ event: 'connection_refused', listener: listener.name, clientIp: ip, reason }, 'per-IP connection limit reached (at the TLS handshake)');
    };
    admitted.then(
      (a) => {
        if (a !== 'ok') drop('too_many_connections_per_ip');
      },
      () => drop('limits_unavailable'),
    );
    return 'accept';
  }

  /**
   * A trusted peer's connection: its PROXY header is read here first (relay/proxy-header.ts),
   * within preAuthTimeout. v1 goes on to smtp-server as its checked canonical line, v2 as
   * the equivalent v1 line; either way smtp-server reads that line next, and the connect phase sees the
   * client's address. Anything else is refused, counted and logged (no reply: the peer is a
   * balancer, and on an implicit-TLS listener the client expects a TLS handshake). As for
   * v1 before, such a connection is counted at its connect phase, not at accept.
   */
  private readProxyHeader(listener: ListenerSettings, socket: net.Socket, proceed: () => void): 'later' {
    const proxyIp = canonicalIp(socket.remoteAddress ?? '');
    this.readingHeader.add(socket);
    readProxyHeader(socket, this.settings.limits.preAuthTimeoutMs, (outcome) => {
      this.readingHeader.delete(socket);
      if (outcome.result === 'v1' || outcome.result === 'v2') {
        this.proxied.add(socket);
        if (outcome.result === 'v2') {
          const h = outcome.header;
          this.logger.debug({ event: 'proxy_header', listener: listener.name, version: 2, command: h.command, proxyIp, clientIp: h.client, tlvs: h.tlvs }, 'PROXY v2 header');
        } else {
          this.logger.debug({ event: 'proxy_header', listener: listener.name, version: 1, proxyIp, clientIp: outcome.header.client }, 'PROXY v1 header');
        }
        // A tick later, once Readable has processed the removal of this reader's 'readable'
        // listener (it updates readableListening on nextTick): smtp-server's listener is
        // then registered afresh and is told of the bytes put back.
        setImmediate(proceed);
        return;
      }
      socket.destroy();
      if (outcome.result === 'closed' && outcome.bytes === 0) return; // a plain TCP check of the balancer: nothing to refuse
      const reason = outcome.result === 'timeout' ? 'proxy_header_timeout' : 'proxy_header_invalid';
      const detail = outcome.result === 'invalid' ? outcome.detail : outcome.result === 'closed' ? `closed after ${outcome.bytes} bytes of a header` : 'no complete header in time';
      this.session.refuseConnection(listener.name, reason, 421, '');
      this.logger.warn({ event: 'connection_refused', listener: listener.name, proxyIp, reason, detail }, 'PROXY header refused');
    });
    return 'later';
  }

  // --- live updates ---

  /** Applies the parts of a new config that can change for new sessions. */
  applySettings(next: RelaySettings): void {
    this.settings = keepRestartFields(this.settings, next);
    this.allowed = new CidrSet(next.access.allowedCidrs);
    this.trustedProxies = new CidrSet(next.access.trustedProxyCidrs);
    this.localLimits?.update({ limits: next.limits, lockout: next.auth.lockout });
    for (const { server } of this.servers) {
      setServerLimits(server, {
        size: next.limits.maxMessageSize,
        maxClients: backstop(next.limits.maxConnections),
        socketTimeout: next.limits.idleTimeoutMs,
        closeTimeout: next.shutdownGracePeriodMs,
      });
    }
  }

  setUsers(users: UserTable): void {
    this.logins.setUsers(users);
  }

  /** New ServiceAccount issuer keys (the JWKS file changed). */
  setTokenVerifier(tokens: TokenVerifier | undefined): void {
    this.logins.setTokenVerifier(tokens);
  }

  /** Builds the new pair first; throws (keeping the old one) when it is unusable. */
  reloadCertificate(): LoadedCertificate {
    const next = loadCertificate(this.settings.tls.certFile, this.settings.tls.keyFile, this.settings.tls);
    this.certificate = next;
    for (const { server } of this.servers) setServerCertificate(server, next.context, next.key, next.cert);
    this.metrics.certificateExpiry.set(Math.floor(next.notAfter.getTime() / 1000));
    return next;
  }

  /** This process's own limits (a single-process relay), for the lockout gossip; undefined in a worker. */
  get ownLimits(): LocalLimits | undefined {
    return this.localLimits;
  }

  get ready(): boolean {
    return this.listening && !this.draining;
  }

  /** Refusing new mail: shutting down (SIGTERM) or drained by the operator. */
  get draining(): boolean {
    return this.stopping || this.drainOrdered;
  }

  /**
   * The operator's drain (POST/DELETE /drain, relay/control.ts): on = not ready, new
   * connections and new MAIL commands get 421 4.3.2, sessions in a transaction finish
   * (and are told 421 after it); off = ready and taking mail again.
   */
  setDrain(on: boolean): void {
    if (this.drainOrdered === on) return;
    this.drainOrdered = on;
    if (!on) return;
    // idle sessions are told now; a session in DATA hears it when its transaction ends
    for (const c of this.connections()) {
      const s = this.table.get(c.session?.id ?? c.id);
      if (!s?.inFlight && !s?.inData) c.send(421, SHUTTING_DOWN);
    }
  }

  // --- drain and shutdown ---

  private connections(): ServerConnection[] {
    return this.servers.flatMap(({ server }) => [...openConnections(server)]);
  }

  private sayGoodbye(id: string): void {
    for (const c of this.connections()) if (c.id === id || c.session?.id === id) c.send(421, SHUTTING_DOWN);
  }

  /**
   * Stops accepting, lets messages in flight (DATA received, upstream pending) finish
   * up to the grace period, and says 421 to every other session.
   */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.listening = false;
    clearInterval(this.sweep);
    for (const socket of this.readingHeader) socket.destroy();
    const closed = Promise.all(this.servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const c of this.connections()) {
      if (!this.table.get(c.session?.id ?? c.id)?.inFlight) c.send(421, SHUTTING_DOWN);
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.settings.shutdownGracePeriodMs);
    });
    await Promise.race([this.table.idle(), deadline]);
    clearTimeout(timer);
    for (const c of this.connections()) c.send(421, SHUTTING_DOWN);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
  }
}
