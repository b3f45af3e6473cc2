// One SMTP session's policy, one method per phase (as Haraka names its hooks):
//   connect   allow-list, draining, connection limits (an unauthenticated session
//             makes room when full)                               (554 / 421)
//   ehlo      what is offered before and after TLS, and the plaintext command limit
//   tls       the negotiated protocol and cipher, recorded and counted
//   auth      TLS first, lockout, password check                 (538 / 421 / 535)
//   mailFrom  TLS and a user, DSN parameters, the user's allowed senders (the null
//             sender only with a MAILER-DAEMON address), the rate limit (530 / 555 / 501 / 553 / 451)
//   rcptTo    DSN parameters, recipient limit                    (555 / 501 / 452)
//   data      size, smuggling, From:/Sender: headers, rate, then the upstream (552 / 550 / 451)
//   close     the session's log line
// Every refusal is an explicit reply and a counted rejection. relay/server.ts wires these
// to smtp-server and owns the listeners; the connection table is handed in.

import type net from 'node:net';
import type tls from 'node:tls';
import type pino from 'pino';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { ListenerSettings, RelaySettings } from './config.js';
import type { ConnectionTable, SessionState } from './connections.js';
import type { ServerConnection } from './internals.js';
import type { Logins } from './login.js';
import type { Metrics } from './metrics.js';
import { canonicalIp, type CidrSet } from './policy/access.js';
import { fromAddresses, otherOriginatorAddresses } from './policy/headers.js';
import { userLockoutKey } from './policy/lockout.js';
import { after, type Admission, type Maybe, type SharedLimits } from './limits.js';
import type { ShedReason } from './connections.js';
import { MAIL_DSN_PARAMS, RCPT_DSN_PARAMS, dsnParamsIn, parseMailDsn, parseRcptDsn, type MessageDsn, type RecipientDsn } from './policy/dsn-params.js';
import { nullSenderAllowed, senderAllowed } from './policy/senders.js';
import { LineEndingCheck } from './policy/smuggling.js';
import { AUTH_REQUIRED, SHUTTING_DOWN, SmtpError, TLS_REQUIRED, oneLine, withEnhancedCode } from './replies.js';
import { receivedHeader } from './trace.js';
import type { DeliveryOutcome, Envelope } from './upstream.js';

/** What the relay needs from the upstream (relay/upstream.ts implements it). */
export interface Deliverer {
  deliver(envelope: Envelope, message: Buffer): Promise<DeliveryOutcome>;
  /** The message DKIM-signed (or unchanged when no key fits); throws with a responseCode when signing fails. */
  sign(message: Buffer): Promise<Buffer>;
}

/** Queue mode: the spool (relay/spool/store.ts) as the session uses it. */
export interface Queue {
  /** Whether a message of `size` bytes would fit now (an error with responseCode 452 when not). */
  checkSpace(size: number): Promise<(Error & { responseCode: number }) | undefined>;
  /** Resolves with the message's id once it is on stable storage; rejects with a responseCode (452 full, 451 write error). */
  enqueue(envelope: QueuedEnvelope, message: Buffer): Promise<string>;
}

/** What the session hands the spool: the envelope with its DSN parameters (RFC 3461). */
export interface QueuedEnvelope extends MessageDsn {
  mailFrom: string;
  rcptTo: string[];
  /** Per recipient, in order; absent when no recipient gave NOTIFY or ORCPT. */
  rcptDsn?: RecipientDsn[];
  user?: string;
  client?: string;
}

/** The relay's live state the phases read: replaced as a whole on reload. */
export interface RelayState {
  readonly settings: RelaySettings;
  readonly allowed: CidrSet;
  readonly draining: boolean;
}

/** Commands never offered: information leaks, proxy overrides, sendmail jokes. */
const ALWAYS_DISABLED = ['VRFY', 'EXPN', 'HELP', 'XCLIENT', 'XFORWARD', 'WIZ', 'SHELL', 'KILL', 'LHLO', 'BDAT', 'ETRN', 'TURN'];
/**
 * Before TLS on a STARTTLS listener AUTH is neither advertised nor accepted. Disabling
 * AUTH also drops smtp-server's own "authentication required" check, so mailFrom and
 * rcptTo refuse without TLS and without a user themselves (never an open relay).
 */
export const PRE_TLS_DISABLED = [...ALWAYS_DISABLED, 'AUTH'];
export const POST_TLS_DISABLED = [...ALWAYS_DISABLED, 'STARTTLS'];

/** A real client needs EHLO and STARTTLS before TLS; smtp-server's abuse counters miss NOOP/RSET/EHLO loops. */
const MAX_PLAINTEXT_COMMANDS = 10;

type Done = (err?: Error | null, message?: string) => void;

export class SessionPolicy {
  constructor(
    private readonly relay: RelayState,
    private readonly table: ConnectionTable,
    private readonly logins: Logins,
    /** Connection counts, lockout and rate limits, exact for the whole relay (relay/limits.ts). */
    private readonly limits: SharedLimits,
    private readonly upstream: Deliverer,
    private readonly logger: pino.Logger,
    private readonly metrics: Metrics,
    /** Queue mode when set: a 250 once the message is in the spool. */
    private readonly queue?: Queue,
  ) {}

  private reject(reason: string, code: number, message: string): SmtpError {
    this.metrics.rejections.inc({ reason });
    return new SmtpError(code, message);
  }

  /** A connection refused before or at connect: counted by listener and by reason. */
  refuseConnection(listener: string, reason: string, code: number, message: string): SmtpError {
    this.metrics.connections.inc({ listener, result: 'rejected', reason });
    return this.reject(reason, code, message);
  }

  // --- connect ---

  connect(
    listener: ListenerSettings,
    session: SMTPServerSession,
    conn: { countedAtAccept: boolean; key: string; shed(reason: ShedReason): void; alive(): boolean },
  ): Maybe<SmtpError | null> {
    const { countedAtAccept, key } = conn;
    const ip = canonicalIp(session.remoteAddress);
    const { allowed, draining } = this.relay;
    const log = { event: 'connection_refused', session: session.id, listener: listener.name, clientIp: ip };
    if (draining) return this.refuseConnection(listener.name, 'shutting_down', 421, SHUTTING_DOWN);
    if (!allowed.has(ip)) {
      this.logger.info({ ...log, reason: 'ip_not_allowed' }, 'client address not allowed');
      return this.refuseConnection(listener.name, 'ip_not_allowed', 554, '5.7.1 Access denied: your address is not allowed to use this relay');
    }
    // The limits count the connection and track it as unauthenticated; when full, an
    // unauthenticated connection makes room (never an authenticated one).
    const admitted = this.limits.connect({ key, ip, listener: listener.name, countedAtAccept }, (reason) => conn.shed(reason));
    return after(admitted, (a: Admission): SmtpError | null => {
      if (a === 'too_many_connections') {
        this.logger.warn({ ...log, reason: 'too_many_connections' }, 'connection limit reached');
        return this.refuseConnection(listener.name, 'too_many_connections', 421, '4.7.0 Too many connections, try again later');
      }
      if (a === 'too_many_connections_per_ip') {
        this.logger.warn({ ...log, reason: 'too_many_connections_per_ip' }, 'per-IP connection limit reached');
        return this.refuseConnection(listener.name, 'too_many_connections_per_ip', 421, '4.7.0 Too many connections from your address, try again later');
      }
      // closed while the (shared) limits answered: its close already released it there
      if (!conn.alive()) return new SmtpError(421, SHUTTING_DOWN);
      this.table.open(session.id, { listener: listener.name, ip, countedAtAccept, key });
      this.metrics.connections.inc({ listener: listener.name, result: 'accepted', reason: '' });
      this.metrics.activeConnections.inc({ listener: listener.name });
      if (listener.mode === 'starttls') session.disabledCommands = PRE_TLS_DISABLED;
      return null;
    });
  }

  // --- ehlo (the commands before TLS) ---

  /** Whether `conn` may send this command; before STARTTLS only a few are allowed. */
  plaintextCommand(conn: ServerConnection, count: number): boolean {
    if (conn.secure || conn._upgrading || count <= MAX_PLAINTEXT_COMMANDS) return true;
    this.metrics.rejections.inc({ reason: 'too_many_plaintext_commands' });
    conn.send(421, '4.7.0 Too many commands before STARTTLS');
    return false;
  }

  // --- tls ---

  tls(listener: ListenerSettings, socket: net.Socket | tls.TLSSocket, session: SMTPServerSession): void {
    const tlsSocket = socket as tls.TLSSocket;
    const version = tlsSocket.getProtocol?.() ?? 'unknown';
    const cipher = tlsSocket.getCipher?.()?.standardName ?? 'unknown';
    this.metrics.tlsHandshakes.inc({ listener: listener.name, version, cipher });
    const state = this.table.get(session.id);
    if (state) {
      state.tlsVersion = version;
      state.cipher = cipher;
    }
    session.disabledCommands = POST_TLS_DISABLED;
  }

  // --- auth ---

  async auth(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<string> {
    const mechanism = auth.method;
    const state = this.table.get(session.id);
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
    const logUser = this.logins.has(username) ? username : '(unknown user)';
    // at most maxFailures checks may fail per key: a login waits while as many are running (relay/limits.ts)
    const begun = this.limits.beginLogin([ipKey, userKey]);
    const start = begun instanceof Promise ? await begun : begun;
    if ('lockedMs' in start) {
      const locked = start.lockedMs;
      this.metrics.authAttempts.inc({ mechanism, result: 'locked' });
      this.metrics.rejections.inc({ reason: 'locked_out' });
      this.logger.warn({ event: 'auth_locked', session: session.id, clientIp: state.ip, user: logUser, retryAfterSeconds: Math.ceil(locked / 1000) }, 'AUTH refused: locked out');
      throw new SmtpError(421, `4.7.0 Too many failed logins, try again in ${Math.ceil(locked / 1000)} seconds`);
    }
    // XOAUTH2 carries the token as accessToken; PLAIN and LOGIN as the password
    let login: Awaited<ReturnType<Logins['check']>>;
    try {
      login = await this.logins.check(username, auth.password ?? auth.accessToken ?? '');
    } catch (err) {
      this.limits.endLogin(start.token, { ok: undefined });
      throw err;
    }
    const pod = login.pod ? { pod: login.pod } : {};
    if (login.ok) {
      // Only the username's failures are forgiven. Clearing the IP's as well would let a
      // client with one valid account reset the per-IP count between guesses at others.
      this.limits.endLogin(start.token, { ok: true, forgive: userKey });
      this.metrics.authAttempts.inc({ mechanism, result: 'success' });
      state.user = username;
      this.limits.authenticated(state.key);
      this.logger.info({ event: 'auth_success', session: session.id, clientIp: state.ip, user: username, mechanism, ...pod }, 'authenticated');
      return username;
    }
    this.metrics.authAttempts.inc({ mechanism, result: 'failure' });
    const failedNow = this.limits.endLogin(start.token, { ok: false });
    const [ipLocked, userLocked] = failedNow instanceof Promise ? await failedNow : failedNow;
    this.logger.info({ event: 'auth_failure', session: session.id, clientIp: state.ip, user: logUser, mechanism, ...(login.reason ? { reason: login.reason } : {}) }, 'authentication failed');
    if (ipLocked || userLocked) {
      if (ipLocked) this.metrics.lockouts.inc({ scope: 'ip' });
      if (userLocked) this.metrics.lockouts.inc({ scope: 'user' });
      this.metrics.rejections.inc({ reason: 'locked_out' });
      const minutes = Math.ceil(this.relay.settings.auth.lockout.durationMs / 60_000);
      this.logger.warn(
        { event: 'lockout', session: session.id, clientIp: state.ip, user: logUser, scope: [ipLocked && 'ip', userLocked && 'user'].filter(Boolean), minutes },
        'brute-force lockout started',
      );
      throw new SmtpError(421, `4.7.0 Too many failed logins, locked out for ${minutes} minutes`);
    }
    throw new SmtpError(535, '5.7.8 Authentication credentials invalid');
  }

  // --- mailFrom ---

  mailFrom(address: SMTPServerAddress, session: SMTPServerSession): Maybe<SmtpError | null> {
    const size = Number((address.args || {}).SIZE ?? 0);
    return after(this.mailFromPolicy(address, session), (refused) => {
      if (refused || !this.queue || !(size > 0)) return refused;
      // queue mode: a message the spool cannot take now is refused before its DATA is sent
      return this.queue.checkSpace(size).then((full) => (full ? this.reject('queue_full', full.responseCode, full.message) : null));
    });
  }

  private mailFromPolicy(address: SMTPServerAddress, session: SMTPServerSession): Maybe<SmtpError | null> {
    const state = this.table.get(session.id);
    if (!session.secure) return this.reject('tls_required', 530, TLS_REQUIRED);
    if (!session.user || !state?.user) return this.reject('auth_required', 530, AUTH_REQUIRED);
    if (this.relay.draining) return new SmtpError(421, SHUTTING_DOWN);
    const user = this.logins.user(state.user);
    if (!user) return this.reject('auth_required', 530, `${AUTH_REQUIRED} (account removed)`);
    const dsn = this.dsnParams('MAIL', address, MAIL_DSN_PARAMS, parseMailDsn);
    if (dsn) return dsn;
    if (!address.address) {
      // The null sender: notifications from the app host's own MTA (docs/relay-config.md).
      if (!nullSenderAllowed(user.allowedSenders)) {
        this.logger.info({ event: 'sender_refused', session: session.id, user: user.name, mailFrom: '<>' }, 'null sender not allowed');
        return this.reject(
          'sender_not_allowed',
          553,
          `5.7.1 Null sender <> not allowed for user ${user.name}: add a MAILER-DAEMON@<your domain> address to its allowedSenders to relay delivery notifications`,
        );
      }
    } else if (!senderAllowed(address.address, user.allowedSenders)) {
      this.logger.info({ event: 'sender_refused', session: session.id, user: user.name, mailFrom: oneLine(address.address, 200) }, 'MAIL FROM not allowed');
      return this.reject('sender_not_allowed', 553, `5.7.1 Sender address not allowed for user ${user.name}`);
    }
    if (!user.rateLimit) return null;
    return after(this.limits.rateWait(user.name, user.rateLimit), (waitMs) => {
      if (waitMs <= 0) return null;
      const s = Math.ceil(waitMs / 1000);
      this.logger.info({ event: 'rate_limited', session: session.id, user: user.name, retryAfterSeconds: s }, 'message rate limit reached');
      return this.reject('rate_limited', 451, `4.7.1 Message rate limit reached for ${user.name}, try again in ${s} seconds`);
    });
  }

  // --- rcptTo ---

  rcptTo(address: SMTPServerAddress, session: SMTPServerSession): SmtpError | null {
    if (!session.secure) return this.reject('tls_required', 530, TLS_REQUIRED);
    if (!session.user) return this.reject('auth_required', 530, AUTH_REQUIRED);
    const dsn = this.dsnParams('RCPT', address, RCPT_DSN_PARAMS, parseRcptDsn);
    if (dsn) return dsn;
    const max = this.relay.settings.limits.maxRecipients;
    if (session.envelope.rcptTo.length >= max) return this.reject('too_many_recipients', 452, `4.5.3 Too many recipients (at most ${max} per message)`);
    return null;
  }

  /**
   * DSN parameters (RFC 3461) are offered in queue mode only, where the spool honours
   * them. In inline mode they are refused as parameters of an extension that was not
   * advertised (RFC 5321 4.1.1.11: 555), not dropped: the client then knows no notice
   * will come. Malformed ones get 501 with the reason.
   */
  private dsnParams(command: 'MAIL' | 'RCPT', address: SMTPServerAddress, names: readonly string[], parse: (args: SMTPServerAddress['args']) => { error: string } | { ok: unknown }): SmtpError | null {
    const given = dsnParamsIn(address.args, names);
    if (!given.length) return null;
    if (!this.queue) {
      return this.reject('dsn_not_offered', 555, `5.5.4 ${given.join(', ')} not recognized: DSN is not offered by this relay (only in queue mode)`);
    }
    const parsed = parse(address.args);
    return 'error' in parsed ? this.reject('bad_dsn_parameter', 501, `${parsed.error} (${command})`) : null;
  }

  // --- data ---

  /**
   * Reads the message at wire speed (smtp-server's idle timer keeps running while DATA
   * streams), then checks and relays it; `done` runs after the reply is decided.
   */
  data(stream: SMTPServerDataStream, session: SMTPServerSession, reply: Done, done: () => void): void {
    const state = this.table.get(session.id);
    const limit = this.relay.settings.limits.maxMessageSize;
    const lineEndings = new LineEndingCheck();
    const chunks: Buffer[] = [];
    let size = 0;
    if (state) state.inData = true;
    stream.on('data', (chunk: Buffer) => {
      lineEndings.push(chunk);
      size += chunk.length;
      if (!lineEndings.found && size <= limit) chunks.push(chunk);
    });
    stream.on('end', () => {
      this.table.beginMessage(state);
      const message = new Message({ session, state, chunks, size, bare: lineEndings.end(), oversized: stream.sizeExceeded }, this.metrics, this.logger);
      const finish = (send: () => void) => {
        if (state) state.inData = false;
        this.table.endMessage(state);
        send();
        done();
      };
      this.relayMessage(message).then(
        (text) => finish(() => reply(null, text)),
        (err: Error) => finish(() => reply(err)),
      );
    });
  }

  /** The DATA-phase checks, in order; throws the refusal. Returns the authenticated user. */
  private checkMessage(m: Message) {
    const limits = this.relay.settings.limits;
    if (!m.state?.user || !m.session.user || !m.session.secure) throw m.refuse('auth_required', 530, AUTH_REQUIRED);
    if (m.oversized || m.size > limits.maxMessageSize) throw m.refuse('too_large', 552, `5.3.4 Message too big (the limit is ${limits.maxMessageSize} bytes)`);
    if (m.bare) {
      const what = m.bare === 'nul_byte' ? 'NUL byte' : m.bare === 'bare_lf' ? 'bare LF' : 'bare CR';
      throw m.refuse(m.bare, 550, `5.6.0 Message refused: ${what} in message data (line endings must be CRLF, no NUL bytes)`);
    }
    const user = this.logins.user(m.state.user);
    if (!user) throw m.refuse('auth_required', 530, `${AUTH_REQUIRED} (account removed)`);
    const body = m.body();
    const from = fromAddresses(body);
    if (!from) throw m.refuse('bad_from_header', 550, '5.6.0 Message refused: no valid From: header');
    if (from.some((a) => !senderAllowed(a, user.allowedSenders))) {
      throw m.refuse('sender_not_allowed', 550, `5.7.1 From: address not allowed for user ${user.name}`);
    }
    const others = otherOriginatorAddresses(body);
    if (!others) throw m.refuse('bad_from_header', 550, '5.6.0 Message refused: Sender:/Resent-From:/Resent-Sender: header without a valid address');
    if (others.some((a) => !senderAllowed(a, user.allowedSenders))) {
      throw m.refuse('sender_not_allowed', 550, `5.7.1 Sender:/Resent-From:/Resent-Sender: address not allowed for user ${user.name}`);
    }
    return { state: m.state, body, user };
  }

  /**
   * mailFrom checked the limit, but parallel sessions all pass that check before any of
   * them is recorded: check again now, and record in the same step (rateTake).
   */
  private takeRate(m: Message, user: { name: string; rateLimit?: { messages: number; perMs: number } }): Maybe<void> {
    if (!user.rateLimit) return;
    return after(this.limits.rateTake(user.name, user.rateLimit), (waitMs) => {
      if (waitMs > 0) throw m.refuse('rate_limited', 451, `4.7.1 Message rate limit reached for ${user.name}, try again in ${Math.ceil(waitMs / 1000)} seconds`);
    });
  }

  /** Checks, adds the trace header and hands the message to the upstream; the 250 text, or throws the refusal. */
  private async relayMessage(m: Message): Promise<string> {
    const { state, body, user } = this.checkMessage(m);
    const rate = this.takeRate(m, user);
    if (rate instanceof Promise) await rate;
    const session = m.session;
    const trace = receivedHeader({
      helo: session.hostNameAppearsAs || 'unknown',
      clientIp: state.ip,
      hostname: this.relay.settings.hostname,
      protocol: session.openingCommand === 'HELO' ? 'SMTPSA' : 'ESMTPSA', // RFC 3848
      tlsVersion: state.tlsVersion,
      cipher: state.cipher,
      sessionId: session.id,
      recipients: m.envelope.rcptTo,
    });
    const message = Buffer.concat([Buffer.from(trace, 'latin1'), body]);
    if (this.queue) return this.queueMessage(m, message);
    let outcome: DeliveryOutcome;
    try {
      outcome = await this.upstream.deliver(m.envelope, message);
    } catch (err) {
      outcome = { kind: 'temporary', code: 451, message: (err as Error).message, refused: [] };
    }
    if (outcome.kind === 'accepted') {
      const upstreamReply = oneLine(outcome.response, 200);
      m.finish('accepted', { upstreamReply });
      return `2.0.0 Ok: relayed, id ${session.id} (upstream: ${upstreamReply})`;
    }
    const upstreamReply = oneLine(outcome.message, 200);
    const refused = outcome.refused.length ? ` (refused: ${outcome.refused.map((r) => oneLine(r, 100)).join(', ')})` : '';
    if (outcome.kind === 'temporary') {
      this.metrics.rejections.inc({ reason: 'upstream_temporary' });
      m.finish('deferred', { upstreamReply, refused: outcome.refused.length, reply: '451' });
      throw new SmtpError(451, withEnhancedCode('4.4.0', `Upstream temporarily refused the message, try again later: ${upstreamReply}${refused}`, upstreamReply));
    }
    // Keep the upstream's own 55x code (e.g. 552 too large, 553 bad address); anything else becomes 554.
    const code = outcome.code >= 550 && outcome.code <= 559 ? outcome.code : 554;
    this.metrics.rejections.inc({ reason: 'upstream_permanent' });
    m.finish('rejected', { upstreamReply, refused: outcome.refused.length, reply: String(code) });
    throw new SmtpError(code, withEnhancedCode('5.0.0', `Upstream refused the message: ${upstreamReply}${refused}`, upstreamReply));
  }

  /**
   * Queue mode: signs, stores, and answers 250 once the spool has the message on stable
   * storage; a spool that is full or cannot write answers 452 / 451 and keeps nothing.
   */
  private async queueMessage(m: Message, message: Buffer): Promise<string> {
    const refuse = (reason: string, err: unknown): never => {
      const e = err as Error & { responseCode?: number };
      throw m.refuse(reason, e.responseCode ?? 451, e.message);
    };
    let signed: Buffer;
    try {
      signed = await this.upstream.sign(message);
    } catch (err) {
      return refuse('dkim_failed', err);
    }
    let id: string;
    try {
      id = await this.queue!.enqueue({ ...queuedDsn(m.session), mailFrom: m.envelope.mailFrom, rcptTo: m.envelope.rcptTo, user: m.state?.user, client: m.state?.ip }, signed);
    } catch (err) {
      return refuse((err as Error & { responseCode?: number }).responseCode === 452 ? 'queue_full' : 'queue_write_failed', err);
    }
    m.finish('accepted', { queued: id });
    return `2.0.0 Ok: queued as ${id}`;
  }

  // --- close ---

  close(session: SMTPServerSession): void {
    const state = this.table.close(session.id);
    if (!state) return;
    // (also when its socket closes, unless STARTTLS took that socket's listeners away)
    this.limits.closed(state.key);
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
}

/** The DSN parameters of the transaction (checked at MAIL and RCPT), as the spool stores them. */
function queuedDsn(session: SMTPServerSession): MessageDsn & { rcptDsn?: RecipientDsn[] } {
  const mail = session.envelope.mailFrom ? parseMailDsn(session.envelope.mailFrom.args) : { ok: {} };
  const out: MessageDsn & { rcptDsn?: RecipientDsn[] } = 'ok' in mail ? { ...mail.ok } : {};
  const rcpt = session.envelope.rcptTo.map((r) => {
    const p = parseRcptDsn(r.args);
    return 'ok' in p ? p.ok : {};
  });
  if (rcpt.some((r) => r.notify || r.orcpt)) out.rcptDsn = rcpt;
  return out;
}

type MessageResult = 'accepted' | 'rejected' | 'deferred';

/** One message at the end of DATA: its envelope, bytes, and its one log line and metrics. */
class Message {
  readonly envelope: Envelope;
  readonly session: SMTPServerSession;
  readonly state: SessionState | undefined;
  readonly size: number;
  readonly bare: 'bare_lf' | 'bare_cr' | 'nul_byte' | undefined;
  readonly oversized: boolean;
  private readonly chunks: Buffer[];

  constructor(
    read: {
      session: SMTPServerSession;
      state: SessionState | undefined;
      chunks: Buffer[];
      size: number;
      bare: 'bare_lf' | 'bare_cr' | 'nul_byte' | undefined;
      oversized: boolean;
    },
    private readonly metrics: Metrics,
    private readonly logger: pino.Logger,
  ) {
    ({ session: this.session, state: this.state, chunks: this.chunks, size: this.size, bare: this.bare, oversized: this.oversized } = read);
    this.envelope = {
      mailFrom: this.session.envelope.mailFrom ? this.session.envelope.mailFrom.address : '',
      rcptTo: this.session.envelope.rcptTo.map((r) => r.address),
    };
  }

  body(): Buffer {
    return Buffer.concat(this.chunks, this.size);
  }

  /** Counts the message, records the session's last result, and logs the message line. */
  finish(result: MessageResult, extra: Record<string, unknown>): void {
    this.metrics.messages.inc({ result });
    this.metrics.messageBytes.inc({ result }, this.size);
    if (this.state) {
      this.state.messages++;
      this.state.lastResult = result;
    }
    const s = this.state;
    this.logger.info(
      {
        event: 'message',
        session: this.session.id,
        listener: s?.listener,
        clientIp: s?.ip,
        tlsVersion: s?.tlsVersion,
        cipher: s?.cipher,
        user: s?.user,
        mailFrom: oneLine(this.envelope.mailFrom, 200),
        recipients: this.envelope.rcptTo.length,
        size: this.size,
        result,
        ...extra,
      },
      `message ${result}`,
    );
  }

  /** A policy refusal: counted and logged as the message's outcome (5xx rejected, 4xx deferred). */
  refuse(reason: string, code: number, message: string): SmtpError {
    this.metrics.rejections.inc({ reason });
    this.finish(code >= 500 ? 'rejected' : 'deferred', { reason, reply: `${code} ${message}` });
    return new SmtpError(code, message);
  }
}
