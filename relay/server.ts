// The relay: one smtp-server per listener, and the policy every session goes
// through (allow-list, connection limits, TLS before anything, AUTH with
// lockout, sender enforcement, smuggling defence, size/recipient/rate limits),
// then hand-off to the upstream. A 250 after DATA only when the upstream accepted.

import type net from 'node:net';
import type tls from 'node:tls';
import type pino from 'pino';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPServer, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import { CidrSet, canonicalIp } from './policy/access.js';
import { loadCertificate, tlsServerOptions, type LoadedCertificate } from './certificate.js';
import { keepRestartFields, type ListenerSettings, type RelaySettings } from './config.js';
import { Lockout, RateLimiter, userLockoutKey } from './policy/lockout.js';
import { fromAddresses, otherOriginatorAddresses } from './policy/headers.js';
import { receivedHeader } from './trace.js';
import type { Metrics } from './metrics.js';
import { VerificationMemo, dummyHash, formatHash, verifyPassword, type ParsedHash } from './password.js';
import { senderAllowed } from './policy/senders.js';
import { LineEndingCheck } from './policy/smuggling.js';
import type { User, UserTable } from './users.js';
import type { DeliveryOutcome, Envelope } from './upstream.js';
export type { DeliveryOutcome, Envelope } from './upstream.js';

/** What the relay needs from the upstream (relay/upstream.ts implements it). */
export interface Deliverer {
  deliver(envelope: Envelope, message: Buffer): Promise<DeliveryOutcome>;
}

/** Commands never offered: information leaks, proxy overrides, sendmail jokes. */
const ALWAYS_DISABLED = ['VRFY', 'EXPN', 'HELP', 'XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL', 'LHLO', 'BDAT', 'ETRN', 'TURN'];
/**
 * Before TLS on a STARTTLS listener AUTH is neither advertised nor accepted. Disabling
 * AUTH also drops smtp-server's own "authentication required" check, so onMailFrom and
 * onRcptTo refuse without TLS and without a user themselves (never an open relay).
 */
const PRE_TLS_DISABLED = [...ALWAYS_DISABLED, 'AUTH'];
const POST_TLS_DISABLED = [...ALWAYS_DISABLED, 'STARTTLS'];

interface SessionState {
  listener: string;
  ip: string;
  tlsVersion?: string;
  cipher?: string;
  user?: string;
  messages: number;
  lastResult?: string;
  inFlight: boolean;
}

/** The dummy hash for unknown users has the cost parameters of the first real user. */
function dummyFor(users: UserTable): ParsedHash {
  const first = users.values().next().value;
  return dummyHash(first ? first.hash : undefined);
}

class SmtpError extends Error {
  constructor(
    readonly responseCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** Keeps client-supplied or upstream text safe for a reply or a log line. */
function oneLine(text: string, max = 300): string {
  return text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, max);
}

interface Connection {
  id: string;
  session: SMTPServerSession;
  send(code: number, message: string): void;
}

const MAX_PLAINTEXT_COMMANDS = 10;

/** The parts of smtp-server's SMTPConnection that tuneConnections relies on. */
interface ConnectionHook {
  name: string;
  secure: boolean;
  _socket: net.Socket;
  _server: { options: { maxClients?: number }; connections: Set<unknown> };
  init(): void;
  connectionReady(): void;
  _setListeners(callback: () => void): void;
  send(code: number, message: unknown, context?: unknown): void;
  /** smtp-server's per-connection command dispatch (wrapped to count plaintext commands) */
  _onCommand(command: Buffer, callback: () => void): unknown;
  _upgrading: boolean;
}

/**
 * smtp-server's SMTPConnection.init() waits a fixed 100 ms before the greeting of every
 * connection, to catch "early talkers" (spam software that sends before the greeting,
 * answered "421 You talk too soon"). On a listener where TLS and AUTH come before any
 * mail, talking early gains a client nothing, while a client that connects per message
 * loses 100 ms each time. So the relay's connections start with this init(): the same
 * steps (socket listeners, the maxClients check, then connectionReady(): onConnect,
 * onSecure and the greeting) without the pause. The relay's onConnect/onSecure answer
 * synchronously, so the greeting is written before the socket is first read: whatever
 * an early talker sent is read after it, exactly like commands pipelined after the
 * greeting, through the same checks (no AUTH before TLS, plaintext command limit,
 * STARTTLS discarding whatever followed it in plaintext; test/relay/greeting.test.ts).
 */
function initWithoutPause(this: ConnectionHook): void {
  this._setListeners(() => {
    const options = this._server.options;
    if (options.maxClients && this._server.connections.size > options.maxClients) {
      this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
      return;
    }
    this.connectionReady();
  });
}

function uncork(socket: net.Socket): void {
  socket.uncork();
}

/**
 * smtp-server writes every reply with its own socket.write: inside TLS its own record
 * and its own syscall (on loopback the sender's syscall also runs the receiver's TCP
 * input). A client that pipelines (MAIL, RCPT and DATA in one packet) gets three replies
 * in the same tick; corking the TLS socket until the end of the tick sends them in one
 * write. A lone reply goes out at the end of the same tick, before any I/O, so nothing
 * waits longer. Not on the plaintext socket of a STARTTLS session: that one is handed
 * to TLS right after its last reply (close() ends the socket, which flushes it).
 */
function sendCorked(this: ConnectionHook, code: number, data: unknown, context?: unknown): void {
  const socket = this._socket;
  if (this.secure && socket.writableCorked === 0 && !socket.destroyed) {
    socket.cork();
    process.nextTick(uncork, socket);
  }
  (SMTPConnection.prototype.send as (this: ConnectionHook, code: number, data: unknown, context?: unknown) => void).call(this, code, data, context);
}

/**
 * Gives every connection this server adds initWithoutPause and sendCorked, and passes it
 * to `each` (smtp-server adds it to `server.connections` right before calling init()).
 * Fails at start, not per connection, when this smtp-server version no longer has the
 * parts it replaces.
 */
function tuneConnections(server: SMTPServer, each?: (conn: ConnectionHook) => void): void {
  const proto = SMTPConnection.prototype as unknown as Partial<ConnectionHook>;
  const init = typeof proto.init === 'function' ? String(proto.init) : '';
  const conns = (server as unknown as { connections?: Set<ConnectionHook> }).connections;
  if (
    !(conns instanceof Set) ||
    typeof proto.connectionReady !== 'function' ||
    typeof proto._setListeners !== 'function' ||
    typeof proto.send !== 'function' ||
    typeof proto._onCommand !== 'function' ||
    !/_setListeners\(/.test(init) ||
    !/setTimeout\([^]*connectionReady\(\)/.test(init)
  ) {
    // test/relay/greeting.test.ts proves the hook; fail loudly if an upgrade changed it
    throw new Error('this smtp-server version changed SMTPConnection.init (the 100 ms greeting pause): review relay/server.ts tuneConnections');
  }
  const add = conns.add.bind(conns);
  conns.add = (conn: ConnectionHook) => {
    conn.init = initWithoutPause;
    conn.send = sendCorked;
    each?.(conn);
    return add(conn);
  };
}

export class Relay {
  private settings: RelaySettings;
  private users: UserTable;
  private dummy: ParsedHash;
  private allowed: CidrSet;
  private trustedProxies: CidrSet;
  private readonly lockout: Lockout;
  private readonly rate = new RateLimiter();
  /** Successful logins (HMAC under a per-process key, one per user): see checkPassword. */
  private readonly verified = new VerificationMemo();
  private certificate: LoadedCertificate;
  private readonly servers: { listener: ListenerSettings; server: SMTPServer }[] = [];
  private readonly perIp = new Map<string, number>();
  /** TCP connections per client address on implicit-TLS listeners, handshakes included. */
  private readonly tcpPerIp = new Map<string, number>();
  private total = 0;
  private readonly sessions = new Map<string, SessionState>();
  private draining = false;
  private inFlight = 0;
  private readonly idleWaiters: (() => void)[] = [];
  listening = false;

  constructor(
    settings: RelaySettings,
    users: UserTable,
    certificate: LoadedCertificate,
    private readonly upstream: Deliverer,
    private readonly logger: pino.Logger,
    private readonly metrics: Metrics,
  ) {
    this.settings = settings;
    this.users = users;
    this.dummy = dummyFor(users);
    this.allowed = new CidrSet(settings.access.allowedCidrs);
    this.trustedProxies = new CidrSet(settings.access.trustedProxyCidrs);
    this.lockout = new Lockout(settings.auth.lockout);
    this.certificate = certificate;
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
    this.listening = true;
    return ports;
  }

  private createServer(listener: ListenerSettings): SMTPServer {
    const s = this.settings;
    const implicit = listener.mode === 'implicit';
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
      authMethods: ['PLAIN', 'LOGIN'],
      allowInsecureAuth: false,
      disabledCommands: implicit ? POST_TLS_DISABLED : PRE_TLS_DISABLED,
      maxClients: s.limits.maxConnections,
      socketTimeout: s.limits.idleTimeoutMs,
      closeTimeout: s.shutdownGracePeriodMs,
      authRequiredMessage: '5.7.0 Authentication required',
      onConnect: (session, cb) => this.onConnect(listener, session, cb),
      onSecure: (socket, session, cb) => this.onSecure(listener, socket, session, cb),
      onAuth: (auth, session, cb) => {
        this.onAuth(auth, session).then(
          (user) => cb(null, { user }),
          (err: Error) => (err instanceof SmtpError && err.responseCode === 535 ? cb(null, { message: err.message, responseCode: 535 }) : cb(err)),
        );
      },
      onMailFrom: (address, session, cb) => cb(this.onMailFrom(address, session)),
      onRcptTo: (address, session, cb) => cb(this.onRcptTo(address, session)),
      onData: (stream, session, cb) => this.onData(stream, session, cb),
      onClose: (session) => this.onClose(session),
    });
    // PROXY protocol only from trusted peers, matched by CIDR (smtp-server's useProxy
    // takes exact addresses only). The header is read before TLS and before onConnect,
    // so the allow-list, limits and lockout all see the client's address.
    const proxyHook = server as unknown as { _expectsProxyHeader?: (socket: net.Socket) => boolean };
    if (typeof proxyHook._expectsProxyHeader !== 'function') {
      // test/relay/abuse.test.ts proves the hook; fail loudly if an upgrade removed it
      throw new Error('this smtp-server version has no _expectsProxyHeader hook: PROXY protocol trust by CIDR is unavailable');
    }
    proxyHook._expectsProxyHeader = (socket) => this.trustedProxies.size > 0 && this.trustedProxies.has(socket.remoteAddress);
    if (implicit) this.refuseBeforeHandshake(listener, server);
    // Every listener of the relay requires TLS and AUTH (there is no port-25/MX mode), so
    // none keeps smtp-server's early-talker pause (see initWithoutPause).
    tuneConnections(server, listener.mode === 'starttls' ? (conn) => this.limitPlaintextCommands(conn) : undefined);
    server.on('error', (err: Error & { code?: string; meta?: { stage?: string } }) => {
      // smtp-server reports failed or abandoned handshakes here (err.meta from its TLS
      // error normalizer); without this listener such a client would crash the process.
      if (err.meta) this.metrics.tlsFailures.inc({ listener: listener.name });
      this.logger.debug({ event: 'connection_error', listener: listener.name, code: err.code, err: oneLine(err.message) }, 'connection error');
    });
    return server;
  }

  /**
   * On an implicit-TLS listener smtp-server calls onConnect only after the TLS handshake,
   * so a client outside the allow-list could make the relay pay for a handshake (and hold
   * a pending-handshake slot) before being told 554. Such a client is dropped as soon as
   * TCP is accepted instead, unless it is a trusted PROXY peer (then the address that
   * counts is in the header, and onConnect checks it). For the same reason the per-IP
   * connection limit is applied here too, to TCP connections still in their handshake:
   * else one allowed address could fill every pending-handshake slot (maxClients).
   */
  private refuseBeforeHandshake(listener: ListenerSettings, server: SMTPServer): void {
    const tcp = server.server;
    const accept = tcp.listeners('connection') as ((socket: net.Socket) => void)[];
    if (accept.length === 0) throw new Error('this smtp-server version has no connection listener to wrap');
    tcp.removeAllListeners('connection');
    tcp.on('connection', (socket: net.Socket) => {
      const peer = socket.remoteAddress;
      if (!this.trustedProxies.has(peer) && !this.allowed.has(peer)) {
        socket.on('error', () => undefined);
        socket.destroy();
        this.refuse(listener.name, 'ip_not_allowed', 554, '');
        this.logger.info(
          { event: 'connection_refused', listener: listener.name, clientIp: canonicalIp(peer ?? ''), reason: 'ip_not_allowed' },
          'client address not allowed (dropped before the TLS handshake)',
        );
        return;
      }
      if (!this.trustedProxies.has(peer)) {
        const ip = canonicalIp(peer ?? '');
        const n = this.tcpPerIp.get(ip) ?? 0;
        if (n >= this.settings.limits.maxConnectionsPerIp) {
          socket.on('error', () => undefined);
          socket.destroy();
          this.refuse(listener.name, 'too_many_connections_per_ip', 421, '');
          this.logger.warn({ event: 'connection_refused', listener: listener.name, clientIp: ip, reason: 'too_many_connections_per_ip' }, 'per-IP connection limit reached (before the TLS handshake)');
          return;
        }
        this.tcpPerIp.set(ip, n + 1);
        socket.once('close', () => {
          const left = (this.tcpPerIp.get(ip) ?? 1) - 1;
          if (left <= 0) this.tcpPerIp.delete(ip);
          else this.tcpPerIp.set(ip, left);
        });
      }
      for (const handler of accept) handler.call(tcp, socket);
    });
  }

  private refuse(listener: string, reason: string, code: number, message: string): SmtpError {
    this.metrics.connections.inc({ listener, result: 'rejected', reason });
    this.metrics.rejections.inc({ reason });
    return new SmtpError(code, message);
  }

  private onConnect(listener: ListenerSettings, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const ip = canonicalIp(session.remoteAddress);
    const log = { event: 'connection_refused', session: session.id, listener: listener.name, clientIp: ip };
    if (this.draining) return cb(this.refuse(listener.name, 'shutting_down', 421, '4.3.2 Server shutting down, try again later'));
    if (!this.allowed.has(ip)) {
      this.logger.info({ ...log, reason: 'ip_not_allowed' }, 'client address not allowed');
      return cb(this.refuse(listener.name, 'ip_not_allowed', 554, '5.7.1 Access denied: your address is not allowed to use this relay'));
    }
    if (this.total >= this.settings.limits.maxConnections) {
      this.logger.warn({ ...log, reason: 'too_many_connections' }, 'connection limit reached');
      return cb(this.refuse(listener.name, 'too_many_connections', 421, '4.7.0 Too many connections, try again later'));
    }
    const n = this.perIp.get(ip) ?? 0;
    if (n >= this.settings.limits.maxConnectionsPerIp) {
      this.logger.warn({ ...log, reason: 'too_many_connections_per_ip' }, 'per-IP connection limit reached');
      return cb(this.refuse(listener.name, 'too_many_connections_per_ip', 421, '4.7.0 Too many connections from your address, try again later'));
    }
    this.perIp.set(ip, n + 1);
    this.total++;
    this.sessions.set(session.id, { listener: listener.name, ip, messages: 0, inFlight: false });
    this.metrics.connections.inc({ listener: listener.name, result: 'accepted', reason: '' });
    this.metrics.activeConnections.inc({ listener: listener.name });
    if (listener.mode === 'starttls') {
      session.disabledCommands = PRE_TLS_DISABLED;
    }
    cb();
  }

  /**
   * A client may send only a few commands before STARTTLS (a real one needs EHLO and
   * STARTTLS); smtp-server's own abuse counters do not cover NOOP/RSET/EHLO loops there.
   */
  private limitPlaintextCommands(conn: ConnectionHook): void {
    const dispatch = conn._onCommand;
    let count = 0;
    conn._onCommand = (command: Buffer, callback: () => void) => {
      if (!conn.secure && !conn._upgrading && ++count > MAX_PLAINTEXT_COMMANDS) {
        this.metrics.rejections.inc({ reason: 'too_many_plaintext_commands' });
        conn.send(421, '4.7.0 Too many commands before STARTTLS');
        return;
      }
      return dispatch.call(conn, command, callback);
    };
  }


  private onSecure(listener: ListenerSettings, socket: net.Socket | tls.TLSSocket, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const tlsSocket = socket as tls.TLSSocket;
    const version = tlsSocket.getProtocol?.() ?? 'unknown';
    const cipher = tlsSocket.getCipher?.()?.standardName ?? 'unknown';
    this.metrics.tlsHandshakes.inc({ listener: listener.name, version, cipher });
    const state = this.sessions.get(session.id);
    if (state) {
      state.tlsVersion = version;
      state.cipher = cipher;
    }
    session.disabledCommands = POST_TLS_DISABLED;
    cb();
  }

  private async onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<string> {
    const mechanism = auth.method;
    const state = this.sessions.get(session.id);
    if (!session.secure || !state) {
      this.metrics.rejections.inc({ reason: 'tls_required' });
      throw new SmtpError(538, '5.7.11 Encryption required for requested authentication mechanism');
    }
    const username = auth.username ?? '';
    // RFC 4616: a PLAIN authorization identity other than the login name asks to act as
    // another user, which nobody may here. (An empty authcid with the name in authzid is
    // a common client quirk: smtp-server then makes authzid the username, which is fine.)
    if (auth.authzid && auth.authcid && auth.authzid !== auth.authcid) {
      this.metrics.authAttempts.inc({ mechanism, result: 'failure' });
      this.logger.info({ event: 'auth_failure', session: session.id, clientIp: state.ip, user: '(authzid differs)', mechanism }, 'authentication failed');
      throw new SmtpError(535, '5.7.8 Authentication credentials invalid (authorization identity must be empty or the login name)');
    }
    const ipKey = `ip:${state.ip}`;
    const userKey = userLockoutKey(username);
    const known = this.users.get(username);
    const logUser = known ? username : '(unknown user)';
    const locked = Math.max(this.lockout.lockedFor(ipKey), this.lockout.lockedFor(userKey));
    if (locked > 0) {
      this.metrics.authAttempts.inc({ mechanism, result: 'locked' });
      this.metrics.rejections.inc({ reason: 'locked_out' });
      this.logger.warn({ event: 'auth_locked', session: session.id, clientIp: state.ip, user: logUser, retryAfterSeconds: Math.ceil(locked / 1000) }, 'AUTH refused: locked out');
      throw new SmtpError(421, `4.7.0 Too many failed logins, try again in ${Math.ceil(locked / 1000)} seconds`);
    }
    const ok = await this.checkPassword(username, auth.password ?? '', known);
    if (ok) {
      // Only the username's failures are forgiven. Clearing the IP's as well would let a
      // client with one valid account reset the per-IP count between guesses at others.
      this.lockout.succeed(userKey);
      this.metrics.authAttempts.inc({ mechanism, result: 'success' });
      state.user = username;
      this.logger.info({ event: 'auth_success', session: session.id, clientIp: state.ip, user: username, mechanism }, 'authenticated');
      return username;
    }
    this.metrics.authAttempts.inc({ mechanism, result: 'failure' });
    const ipLocked = this.lockout.fail(ipKey);
    const userLocked = this.lockout.fail(userKey);
    this.logger.info({ event: 'auth_failure', session: session.id, clientIp: state.ip, user: logUser, mechanism }, 'authentication failed');
    if (ipLocked || userLocked) {
      if (ipLocked) this.metrics.lockouts.inc({ scope: 'ip' });
      if (userLocked) this.metrics.lockouts.inc({ scope: 'user' });
      this.metrics.rejections.inc({ reason: 'locked_out' });
      const minutes = Math.ceil(this.settings.auth.lockout.durationMs / 60_000);
      this.logger.warn(
        { event: 'lockout', session: session.id, clientIp: state.ip, user: logUser, scope: [ipLocked && 'ip', userLocked && 'user'].filter(Boolean), minutes },
        'brute-force lockout started',
      );
      throw new SmtpError(421, `4.7.0 Too many failed logins, locked out for ${minutes} minutes`);
    }
    throw new SmtpError(535, '5.7.8 Authentication credentials invalid');
  }

  /**
   * A password this user already logged in with (same stored hash) is accepted from the
   * memo without scrypt, so a client that connects per message does not pay a full key
   * derivation each time. Anything else (unknown user, other password, changed hash) gets
   * the full check, so guessing stays as slow as before; lockout counting is the caller's.
   */
  private async checkPassword(username: string, password: string, known: User | undefined): Promise<boolean> {
    if (!known) {
      // An unknown user is verified against a dummy hash so that both cost the same.
      this.metrics.passwordChecks.inc({ check: 'scrypt' });
      await verifyPassword(password, this.dummy);
      return false;
    }
    const { ok, how } = await this.verified.verify(username, password, formatHash(known.hash), () => {
      this.metrics.passwordChecks.inc({ check: 'scrypt' });
      return verifyPassword(password, known.hash);
    });
    if (how !== 'checked') this.metrics.passwordChecks.inc({ check: how });
    // the users file changed meanwhile: keep no entry for a removed user
    if (how === 'checked' && !this.users.has(username)) this.verified.forget(username);
    return ok;
  }

  private reject(reason: string, code: number, message: string): SmtpError {
    this.metrics.rejections.inc({ reason });
    return new SmtpError(code, message);
  }

  private onMailFrom(address: SMTPServerAddress, session: SMTPServerSession): Error | null {
    const state = this.sessions.get(session.id);
    if (!session.secure) return this.reject('tls_required', 530, '5.7.0 Must issue a STARTTLS command first');
    if (!session.user || !state?.user) return this.reject('auth_required', 530, '5.7.0 Authentication required');
    if (this.draining) return new SmtpError(421, '4.3.2 Server shutting down, try again later');
    const user = this.users.get(state.user);
    if (!user) return this.reject('auth_required', 530, '5.7.0 Authentication required (account removed)');
    if (!address.address || !senderAllowed(address.address, user.allowedSenders)) {
      this.logger.info({ event: 'sender_refused', session: session.id, user: user.name, mailFrom: oneLine(address.address, 200) }, 'MAIL FROM not allowed');
      return this.reject('sender_not_allowed', 553, `5.7.1 Sender address not allowed for user ${user.name}`);
    }
    if (user.rateLimit) {
      const waitMs = this.rate.check(user.name, user.rateLimit);
      if (waitMs > 0) {
        const s = Math.ceil(waitMs / 1000);
        this.logger.info({ event: 'rate_limited', session: session.id, user: user.name, retryAfterSeconds: s }, 'message rate limit reached');
        return this.reject('rate_limited', 451, `4.7.1 Message rate limit reached for ${user.name}, try again in ${s} seconds`);
      }
    }
    return null;
  }

  private onRcptTo(_address: SMTPServerAddress, session: SMTPServerSession): Error | null {
    if (!session.secure) return this.reject('tls_required', 530, '5.7.0 Must issue a STARTTLS command first');
    if (!session.user) return this.reject('auth_required', 530, '5.7.0 Authentication required');
    if (session.envelope.rcptTo.length >= this.settings.limits.maxRecipients) {
      return this.reject('too_many_recipients', 452, `4.5.3 Too many recipients (at most ${this.settings.limits.maxRecipients} per message)`);
    }
    return null;
  }

  private onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const state = this.sessions.get(session.id);
    const limit = this.settings.limits.maxMessageSize;
    const lineEndings = new LineEndingCheck();
    const chunks: Buffer[] = [];
    let size = 0;
    // Read at wire speed: smtp-server's idle timer keeps running while DATA streams.
    stream.on('data', (chunk: Buffer) => {
      lineEndings.push(chunk);
      size += chunk.length;
      if (!lineEndings.found && size <= limit) chunks.push(chunk);
    });
    stream.on('end', () => {
      if (state) state.inFlight = true;
      this.inFlight++;
      this.finishMessage(session, state, chunks, size, lineEndings.end(), stream.sizeExceeded).then(
        (reply) => this.done(session, state, () => cb(null, reply)),
        (err: Error) => this.done(session, state, () => cb(err)),
      );
    });
  }

  private done(session: SMTPServerSession, state: SessionState | undefined, reply: () => void): void {
    if (state) state.inFlight = false;
    this.inFlight--;
    reply();
    if (this.draining) {
      // the transaction is over: tell this client now instead of waiting for its next command
      setImmediate(() => this.sayGoodbye(session.id));
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private async finishMessage(
    session: SMTPServerSession,
    state: SessionState | undefined,
    chunks: Buffer[],
    size: number,
    bare: 'bare_lf' | 'bare_cr' | 'nul_byte' | undefined,
    oversized: boolean,
  ): Promise<string> {
    const envelope: Envelope = {
      mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
      rcptTo: session.envelope.rcptTo.map((r) => r.address),
    };
    const log = {
      event: 'message',
      session: session.id,
      listener: state?.listener,
      clientIp: state?.ip,
      tlsVersion: state?.tlsVersion,
      cipher: state?.cipher,
      user: state?.user,
      mailFrom: oneLine(envelope.mailFrom, 200),
      recipients: envelope.rcptTo.length,
      size,
    };
    const finish = (result: 'accepted' | 'rejected' | 'deferred', extra: Record<string, unknown>) => {
      this.metrics.messages.inc({ result });
      this.metrics.messageBytes.inc({ result }, size);
      if (state) {
        state.messages++;
        state.lastResult = result;
      }
      this.logger.info({ ...log, result, ...extra }, `message ${result}`);
    };
    const refuse = (reason: string, code: number, message: string): never => {
      this.metrics.rejections.inc({ reason });
      finish(code >= 500 ? 'rejected' : 'deferred', { reason, reply: `${code} ${message}` });
      throw new SmtpError(code, message);
    };

    if (!state?.user || !session.user || !session.secure) refuse('auth_required', 530, '5.7.0 Authentication required');
    if (oversized || size > this.settings.limits.maxMessageSize) {
      refuse('too_large', 552, `5.3.4 Message too big (the limit is ${this.settings.limits.maxMessageSize} bytes)`);
    }
    if (bare) {
      const what = bare === 'nul_byte' ? 'NUL byte' : bare === 'bare_lf' ? 'bare LF' : 'bare CR';
      refuse(bare, 550, `5.6.0 Message refused: ${what} in message data (line endings must be CRLF, no NUL bytes)`);
    }
    const user = this.users.get(state!.user!);
    if (!user) refuse('auth_required', 530, '5.7.0 Authentication required (account removed)');
    const body = Buffer.concat(chunks, size);
    const from = fromAddresses(body);
    if (!from) refuse('bad_from_header', 550, '5.6.0 Message refused: no valid From: header');
    const bad = from!.find((a) => !senderAllowed(a, user!.allowedSenders));
    if (bad !== undefined) {
      refuse('sender_not_allowed', 550, `5.7.1 From: address not allowed for user ${user!.name}`);
    }
    const others = otherOriginatorAddresses(body);
    if (!others) refuse('bad_from_header', 550, '5.6.0 Message refused: Sender:/Resent-From:/Resent-Sender: header without a valid address');
    if (others!.some((a) => !senderAllowed(a, user!.allowedSenders))) {
      refuse('sender_not_allowed', 550, `5.7.1 Sender:/Resent-From:/Resent-Sender: address not allowed for user ${user!.name}`);
    }
    if (user!.rateLimit) {
      // MAIL FROM checked the limit, but parallel sessions all pass that check before any
      // of them is recorded: check again now, and record in the same synchronous step.
      const waitMs = this.rate.check(user!.name, user!.rateLimit);
      if (waitMs > 0) {
        refuse('rate_limited', 451, `4.7.1 Message rate limit reached for ${user!.name}, try again in ${Math.ceil(waitMs / 1000)} seconds`);
      }
      this.rate.record(user!.name);
    }

    const trace = receivedHeader({
      helo: session.hostNameAppearsAs || 'unknown',
      clientIp: state!.ip,
      hostname: this.settings.hostname,
      protocol: session.openingCommand === 'HELO' ? 'SMTPSA' : 'ESMTPSA', // RFC 3848
      tlsVersion: state!.tlsVersion,
      cipher: state!.cipher,
      sessionId: session.id,
      recipients: envelope.rcptTo,
    });
    const message = Buffer.concat([Buffer.from(trace, 'latin1'), body]);
    let outcome: DeliveryOutcome;
    try {
      outcome = await this.upstream.deliver(envelope, message);
    } catch (err) {
      outcome = { kind: 'temporary', code: 451, message: (err as Error).message, refused: [] };
    }
    if (outcome.kind === 'accepted') {
      const upstreamReply = oneLine(outcome.response, 200);
      finish('accepted', { upstreamReply });
      return `2.0.0 Ok: relayed, id ${session.id} (upstream: ${upstreamReply})`;
    }
    const upstreamReply = oneLine(outcome.message, 200);
    const refused = outcome.refused.length ? ` (refused: ${outcome.refused.map((r) => oneLine(r, 100)).join(', ')})` : '';
    if (outcome.kind === 'temporary') {
      this.metrics.rejections.inc({ reason: 'upstream_temporary' });
      finish('deferred', { upstreamReply, refused: outcome.refused.length, reply: '451' });
      throw new SmtpError(451, withEnhancedCode('4.4.0', `Upstream temporarily refused the message, try again later: ${upstreamReply}${refused}`, upstreamReply));
    }
    // Keep the upstream's own 55x code (e.g. 552 too large, 553 bad address); anything else becomes 554.
    const code = outcome.code >= 550 && outcome.code <= 559 ? outcome.code : 554;
    this.metrics.rejections.inc({ reason: 'upstream_permanent' });
    finish('rejected', { upstreamReply, refused: outcome.refused.length, reply: String(code) });
    throw new SmtpError(code, withEnhancedCode('5.0.0', `Upstream refused the message: ${upstreamReply}${refused}`, upstreamReply));
  }

  private onClose(session: SMTPServerSession): void {
    const state = this.sessions.get(session.id);
    if (!state) return;
    this.sessions.delete(session.id);
    this.total--;
    const n = (this.perIp.get(state.ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(state.ip);
    else this.perIp.set(state.ip, n);
    this.metrics.activeConnections.dec({ listener: state.listener });
    this.logger.info(
      {
        event: 'session',
        session: session.id,
        listener: state.listener,
        clientIp: state.ip,
        tlsVersion: state.tlsVersion,
        cipher: state.cipher,
        user: state.user,
        messages: state.messages,
        result: state.lastResult ?? (state.user ? 'no_message' : 'no_auth'),
      },
      'session closed',
    );
  }

  // --- live updates ---

  /** Applies the parts of a new config that can change for new sessions. */
  applySettings(next: RelaySettings): void {
    this.settings = keepRestartFields(this.settings, next);
    this.allowed = new CidrSet(next.access.allowedCidrs);
    this.trustedProxies = new CidrSet(next.access.trustedProxyCidrs);
    this.lockout.update(next.auth.lockout);
    for (const { server } of this.servers) {
      const o = server.options as { size?: number; maxClients?: number; socketTimeout?: number; closeTimeout?: number };
      o.size = next.limits.maxMessageSize;
      o.maxClients = next.limits.maxConnections;
      o.socketTimeout = next.limits.idleTimeoutMs;
      o.closeTimeout = next.shutdownGracePeriodMs;
    }
  }

  setUsers(users: UserTable): void {
    this.users = users;
    this.dummy = dummyFor(users);
    // a changed hash never matches its old entry anyway; removed users go now
    this.verified.retain((name) => users.has(name));
  }

  /** Builds the new pair first; throws (keeping the old one) when it is unusable. */
  reloadCertificate(): LoadedCertificate {
    const next = loadCertificate(this.settings.tls.certFile, this.settings.tls.keyFile, this.settings.tls);
    this.certificate = next;
    for (const { server } of this.servers) {
      // Not server.updateSecureContext(): it empties its map before rebuilding, so a
      // failure would leave no context. New handshakes read the '*' entry.
      server.secureContext.set('*', next.context);
      Object.assign(server.options, { key: next.key, cert: next.cert });
    }
    this.metrics.certificateExpiry.set(Math.floor(next.notAfter.getTime() / 1000));
    return next;
  }

  get ready(): boolean {
    return this.listening && !this.draining;
  }

  // --- shutdown ---

  private connections(): Connection[] {
    const out: Connection[] = [];
    for (const { server } of this.servers) {
      for (const c of (server as unknown as { connections: Set<Connection> }).connections) out.push(c);
    }
    return out;
  }

  private sayGoodbye(id: string): void {
    for (const c of this.connections()) {
      if (c.id === id || c.session?.id === id) c.send(421, '4.3.2 Server shutting down, try again later');
    }
  }

  /**
   * Stops accepting, lets messages in flight (DATA received, upstream pending) finish
   * up to the grace period, and says 421 to every other session.
   */
  async shutdown(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.listening = false;
    const closed = Promise.all(this.servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const c of this.connections()) {
      const state = this.sessions.get(c.session?.id ?? c.id);
      if (!state?.inFlight) c.send(421, '4.3.2 Server shutting down, try again later');
    }
    const grace = this.settings.shutdownGracePeriodMs;
    const drained = this.inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, grace);
    });
    await Promise.race([drained, deadline]);
    clearTimeout(timer);
    for (const c of this.connections()) c.send(421, '4.3.2 Server shutting down, try again later');
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
  }
}

const ENHANCED_CODE = /^([245]\.\d{1,3}\.\d{1,3}) /;

/** One enhanced status code per reply: the upstream's own when its text starts with one, else the fallback. */
function withEnhancedCode(fallback: string, text: string, upstreamReply: string): string {
  const own = ENHANCED_CODE.exec(upstreamReply)?.[1];
  // The class digit must agree with the reply code we send (4xx vs 5xx).
  return `${own && own[0] === fallback[0] ? own : fallback} ${text}`;
}
