// Every reach into a dependency's internals, in one file: what smtp-server 3.21,
// nodemailer 10.x and mailsplit 5.4 do not offer publicly and the relay needs. On an
// upgrade, read this file. checkInternals() runs when the relay starts (the Relay and
// Upstream constructors call it) and names every part that has changed, so a changed
// dependency stops the relay at start instead of failing per connection or per message.
// The tests that prove each hook: test/relay/greeting.test.ts (greeting, corked replies,
// plaintext command limit), test/relay/abuse.test.ts (PROXY trust by CIDR, refusal before
// the TLS handshake), test/relay/proxy-v2.test.ts (PROXY v2 handed on as a v1 line on
// both listener kinds), test/relay/reload.test.ts (certificate and limit swaps),
// test/relay/upstream-delivery.test.ts (all-or-nothing recipients, prepared DATA payload),
// test/relay/upstream-delivery.test.ts and dsn.test.ts (per-recipient DSN parameters, DSN
// read from the upstream's EHLO), test/relay/oauth2-upstream.test.ts (OAUTHBEARER read from
// the upstream's EHLO), test/relay/sa-token.test.ts (OAUTHBEARER on the listeners), test/unit/relay/data-scan.test.ts (the DATA scan's copy
// acts exactly like smtp-server's own).

import type net from 'node:net';
import type tls from 'node:tls';
import { Headers } from 'mailsplit';
import SMTPClientConnection from 'nodemailer/lib/smtp-connection';
import { createHash } from 'node:crypto';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { SMTPServer } from 'smtp-server';
import SASL from 'smtp-server/lib/sasl.js';
import { OAUTHBEARER_ERROR_CHALLENGE, parseOAuthBearer } from './oauthbearer.js';

// --- smtp-server -------------------------------------------------------------------

/** The parts of smtp-server's SMTPConnection (one client connection) the relay uses. */
export interface ServerConnection {
  id: string;
  name: string;
  secure: boolean;
  remoteAddress: string;
  session?: { id: string };
  _socket: net.Socket | tls.TLSSocket;
  _server: { options: { maxClients?: number }; connections: Set<unknown> };
  _upgrading: boolean;
  init(): void;
  connectionReady(): void;
  _setListeners(callback: () => void): void;
  send(code: number, message: unknown, context?: unknown): void;
  /** Per-connection command dispatch. */
  _onCommand(command: Buffer, callback: () => void): unknown;
}

interface ServerInternals {
  /** Live connections; an SMTPConnection is added right before its init(). */
  connections: Set<ServerConnection>;
  /** Decides per socket whether a PROXY header is read (smtp-server: exact useProxy addresses). */
  _expectsProxyHeader(socket: net.Socket): boolean;
  /** Reads the PROXY v1 line (socket 'readable' + read()) of a socket _expectsProxyHeader accepted. */
  _handleProxy(socket: net.Socket, callback: (err: Error | null) => void): void;
  /** TLS contexts by server name; '*' is the default for new handshakes. */
  secureContext: Map<string, tls.SecureContext>;
  options: { size?: number; maxClients?: number; socketTimeout?: number; closeTimeout?: number; key?: unknown; cert?: unknown };
  server: net.Server;
  /** Sockets before their session (PROXY header or implicit TLS handshake pending): raw socket -> itself, or its TLS socket once the handshake started. */
  _pendingSockets: Map<net.Socket, net.Socket>;
}

const serverProto = SMTPConnection.prototype as unknown as Partial<ServerConnection>;
const smtpServerProto = SMTPServer.prototype as unknown as Partial<ServerInternals>;

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
function initWithoutPause(this: ServerConnection): void {
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
function sendCorked(this: ServerConnection, code: number, data: unknown, context?: unknown): void {
  const socket = this._socket;
  if (this.secure && socket.writableCorked === 0 && !socket.destroyed) {
    socket.cork();
    process.nextTick(uncork, socket);
  }
  (SMTPConnection.prototype.send as (this: ServerConnection, code: number, data: unknown, context?: unknown) => void).call(this, code, data, context);
}

/**
 * Gives every connection `server` adds initWithoutPause and sendCorked, and passes it to
 * `each` first (smtp-server adds it to `server.connections` right before calling init()).
 */
export function tuneConnections(server: SMTPServer, each: (conn: ServerConnection) => void): void {
  const conns = (server as unknown as ServerInternals).connections;
  const add = conns.add.bind(conns);
  conns.add = (conn: ServerConnection) => {
    conn.init = initWithoutPause;
    conn.send = sendCorked;
    each(conn);
    return add(conn);
  };
}

/** What a SASL mechanism of smtp-server (lib/sasl.js) runs with as `this`: the connection. */
interface SaslConnection {
  session: { user?: unknown; transmissionType?: string };
  _server: { onAuth(auth: { method: string; username: string; accessToken: string }, session: unknown, cb: (err: (Error & { responseCode?: number }) | null, response?: { user?: unknown; message?: string; responseCode?: number }) => void): void };
  /** The handler of the client's next line (a SASL continuation), cleared once called. */
  _nextHandler: ((line: Buffer | string, callback: () => void) => void) | false;
  _transmissionType(): string;
  send(code: number, message?: string): void;
}

type SaslMechanism = (this: SaslConnection, args: string[], callback: () => void) => void;
const saslTable = SASL as unknown as Record<string, SaslMechanism | undefined>;

/** After a successful login: what smtp-server's own mechanisms do (session user, ESMTPSA). */
function bearerLogin(this: SaslConnection, b64: string, callback: () => void): void {
  const login = parseOAuthBearer(b64);
  if (typeof login === 'string') {
    this.send(501, `5.5.2 Error: ${login}`);
    return callback();
  }
  // The same onAuth as XOAUTH2: the token is its access token (relay/session.ts).
  this._server.onAuth({ method: 'OAUTHBEARER', username: login.user, accessToken: login.token }, this.session, (err, response) => {
    if (err) {
      this.send(err.responseCode ?? 535, err.message);
      return callback();
    }
    if (!response?.user) {
      // RFC 7628 section 3.2.2: an error challenge, the client's ^A, then the failure
      const message = response?.message ?? '5.7.8 Authentication credentials invalid';
      const code = response?.responseCode ?? 535;
      this._nextHandler = (_line, cb) => {
        this.send(code, message);
        cb();
      };
      this.send(334, OAUTHBEARER_ERROR_CHALLENGE);
      return callback();
    }
    this.session.user = response.user;
    this.session.transmissionType = this._transmissionType();
    this.send(235, '2.7.0 Authentication successful');
    callback();
  });
}

/**
 * SASL OAUTHBEARER (RFC 7628) on the relay's listeners, for apps that log in with a
 * ServiceAccount token: smtp-server 3.x implements PLAIN, LOGIN, XOAUTH2 and CRAM-MD5,
 * and dispatches `AUTH <mechanism>` to the function `SASL_<mechanism>` of its lib/sasl.js
 * table (only when the mechanism is also in the server's authMethods). This adds
 * SASL_OAUTHBEARER to that table, written like its SASL_XOAUTH2: the initial response on
 * the AUTH line or after an empty 334, one onAuth call, a 334 error challenge on refusal.
 * test/relay/sa-token.test.ts logs in with it.
 */
export function installOAuthBearer(): void {
  if (saslTable['SASL_OAUTHBEARER']) return;
  saslTable['SASL_OAUTHBEARER'] = function (this: SaslConnection, args: string[], callback: () => void) {
    if (args.length > 1) {
      this.send(501, '5.5.4 Error: syntax: AUTH OAUTHBEARER [initial-response]');
      return callback();
    }
    if (args.length === 1) return bearerLogin.call(this, args[0]!, callback);
    this._nextHandler = (line, cb) => {
      const text = line.toString().trim();
      if (text === '*') {
        this.send(501, '5.0.0 Authentication aborted');
        return cb();
      }
      bearerLogin.call(this, text, cb);
    };
    this.send(334);
    callback();
  };
}

/** The parts of smtp-server's SMTPStream (a connection's command/DATA parser) its DATA scan uses. */
interface StreamInternals {
  _dataStream: (NodeJS.WritableStream & { writable: boolean; destroyed: boolean }) | null;
  _lastBytes: Buffer | false;
  _atDataStart: boolean;
  _countDataBytes(len: number): void;
  _endDataMode(chunk: Buffer | false, remainder: Buffer, done: (err?: Error) => void): void;
  _feedDataStream(chunk: Buffer, done: (err?: Error) => void): void;
}

const streamProto = SMTPStream.prototype as unknown as StreamInternals;
/** smtp-server 3.21.6's own _feedDataStream (kept for the equivalence test). */
export const originalFeedDataStream = streamProto._feedDataStream;
/** sha256 of its source: the copy below is of exactly this code. */
const FEED_DATA_STREAM_SHA256 = '9d8b903f9a3a63542d72e19a9e2f67009a3b1107a28d57e8e7369355454ff230';
const END_SEQUENCE = Buffer.from('\r\n.\r\n');
const DOT_CRLF = Buffer.from('.\r\n');
const LF_DOT = Buffer.from('\n.');

/**
 * smtp-server's SMTPStream._feedDataStream (DATA mode: end-of-data detection and dot
 * unstuffing), statement for statement, except that the dots that start a line are found
 * with a native Buffer.indexOf of "\n." instead of a JavaScript loop over every byte of
 * the message (the relay's hottest JavaScript function, ~1.6% of its CPU at 10 KB per
 * message: docs/benchmarks.md, "CPU per message"). The loop visited i = 2 .. len-3 and
 * acted where chunk[i] is "." and chunk[i-1] is LF; the search visits exactly those i in
 * the same order (test/unit/relay/data-scan.test.ts runs both on random input cut into
 * random chunks and compares every byte, every end of data and every command after it).
 */
function feedDataStream(this: StreamInternals, chunk: Buffer, done: (err?: Error) => void): void {
  const dataStream = this._dataStream!;
  let len: number;
  let buf: Buffer;
  if (this._lastBytes && this._lastBytes.length) {
    chunk = Buffer.concat([this._lastBytes, chunk], this._lastBytes.length + chunk.length);
    this._lastBytes = false;
  }
  len = chunk.length;
  // (smtp-server's comments, shortened) the data may start with the end terminator only
  // while _atDataStart: else segmentation could end DATA early and smuggle commands.
  if (this._atDataStart && len >= 3 && Buffer.compare(chunk.subarray(0, 3), DOT_CRLF) === 0) {
    this._endDataMode(false, chunk.subarray(3), done);
    return;
  }
  // an escape dot first: consumed, and the leading dot is content from now on
  if (this._atDataStart && len >= 2 && chunk[0] === 0x2e && chunk[1] === 0x2e) {
    chunk = chunk.subarray(1);
    len--;
    this._atDataStart = false;
  }
  // seek for the stream ending: each "." at i (2 <= i < len - 2) that follows a LF
  for (let lf = chunk.indexOf(LF_DOT, 1); lf !== -1 && lf + 1 < len - 2; lf = chunk.indexOf(LF_DOT, lf + 1)) {
    const i = lf + 1;
    if (Buffer.compare(chunk.subarray(i - 2, i + 3), END_SEQUENCE) === 0) {
      // everything before the terminator is content, including the CRLF ending the last line
      buf = chunk.subarray(0, i);
      this._countDataBytes(buf.length);
      this._endDataMode(buf, chunk.subarray(i + 3), done);
      return;
    }
    // an escape dot: emit what came before it and continue without the dot
    if (chunk[i + 1] === 0x2e) {
      buf = chunk.subarray(0, i);
      this._lastBytes = false;
      this._countDataBytes(buf.length);
      if (dataStream.writable) dataStream.write(buf);
      const rest = chunk.subarray(i + 1);
      setImmediate(() => this._feedDataStream(rest, done));
      return;
    }
  }
  // keep the last bytes
  this._lastBytes = chunk.length < 4 ? chunk : chunk.subarray(chunk.length - 4);
  // emit what is before them, and stop when the data stream needs to drain
  if (this._lastBytes.length < chunk.length) {
    buf = chunk.subarray(0, chunk.length - this._lastBytes.length);
    this._countDataBytes(buf.length);
    if (dataStream.writable) {
      const handled = dataStream.write(buf);
      if (!handled && !dataStream.destroyed) {
        // a stream that the application destroys never drains, it only closes
        const onDrain = () => {
          dataStream.removeListener('drain', onDrain);
          dataStream.removeListener('close', onDrain);
          done();
        };
        dataStream.once('drain', onDrain);
        dataStream.once('close', onDrain);
      } else {
        return done();
      }
    } else {
      return done();
    }
  } else {
    return done();
  }
}

/** Every connection's parser scans DATA with feedDataStream (checkInternals first proved the original is the one it copies). */
export function installDataScan(): void {
  checkInternals();
  streamProto._feedDataStream = feedDataStream;
}

/** The faster copy, for the equivalence test. */
export const fastFeedDataStream = feedDataStream;

/** The connections `server` holds now. */
export function openConnections(server: SMTPServer): Iterable<ServerConnection> {
  return (server as unknown as ServerInternals).connections;
}

/** Runs `allow` (true: pass on) before each command of `conn` is dispatched. */
export function filterCommands(conn: ServerConnection, allow: (conn: ServerConnection) => boolean): void {
  const dispatch = conn._onCommand;
  conn._onCommand = (command: Buffer, callback: () => void) => (allow(conn) ? dispatch.call(conn, command, callback) : undefined);
}

/**
 * Holds back the commands of `conn` until the returned release() runs, then dispatches
 * them in order (smtp-server's parser waits for each command's callback before the next).
 * For a connect phase that answers later (a worker asks its primary): commands the client
 * sent early would otherwise reach smtp-server before the greeting ("421 You talk too
 * soon"). Pausing the socket is not enough: smtp-server's PROXY reader removes its
 * 'readable' listener, and Node then resumes a stream that has a 'data' listener (the
 * pipe to the parser) on the next tick.
 */
export function holdCommands(conn: ServerConnection): () => void {
  const dispatch = conn._onCommand;
  let held: (() => void)[] | undefined = [];
  conn._onCommand = (command: Buffer, callback: () => void) => {
    if (!held) return dispatch.call(conn, command, callback);
    held.push(() => dispatch.call(conn, command, callback));
    return undefined;
  };
  return () => {
    const queued = held ?? [];
    held = undefined;
    for (const run of queued) run();
  };
}

/** PROXY protocol headers are read only from sockets `trusted` accepts (smtp-server's useProxy takes exact addresses only). */
export function trustProxyHeaders(server: SMTPServer, trusted: (socket: net.Socket) => boolean): void {
  (server as unknown as ServerInternals)._expectsProxyHeader = trusted;
}

/**
 * Runs `gate` on each accepted TCP socket before smtp-server sees it (on an implicit-TLS
 * listener: before the handshake). 'accept': smtp-server's own handling follows now;
 * 'refuse': the gate closed the socket; 'later': the gate calls the `proceed` it was given
 * once (or never, when it closes the socket instead), e.g. after reading a PROXY v2 header
 * (relay/proxy-header.ts). `proceed` skips a socket destroyed in the meantime: smtp-server
 * would wait for a 'close' that has already been emitted.
 */
export function gateAcceptedSockets(server: SMTPServer, gate: (socket: net.Socket, proceed: () => void) => 'accept' | 'refuse' | 'later'): void {
  const tcp = (server as unknown as ServerInternals).server;
  const accept = tcp.listeners('connection') as ((socket: net.Socket) => void)[];
  if (accept.length === 0) throw new Error('this smtp-server version has no connection listener to wrap: review relay/internals.ts');
  tcp.removeAllListeners('connection');
  const handOn = (socket: net.Socket) => {
    for (const handler of accept) handler.call(tcp, socket);
  };
  tcp.on('connection', (socket: net.Socket) => {
    let called = false;
    const proceed = () => {
      if (called || socket.destroyed) return;
      called = true;
      handOn(socket);
    };
    if (gate(socket, proceed) === 'accept') handOn(socket);
  });
}

/**
 * Closes a socket accepted on `server` whose session has not started. Once its TLS
 * handshake has begun that is the TLS socket: destroying the raw socket under a handshake
 * in progress frees the TLS state that smtp-server's error path then reads
 * (TLSWrap::GetProtocol, a segmentation fault in Node 24, seen under a connection flood).
 */
export function destroyPending(server: SMTPServer, socket: net.Socket): void {
  const pending = (server as unknown as ServerInternals)._pendingSockets.get(socket);
  (pending ?? socket).destroy();
}

/**
 * Swaps the default TLS context for new handshakes (implicit TLS and STARTTLS). Not
 * server.updateSecureContext(): it empties its map before rebuilding, so a failure would
 * leave no context.
 */
export function setServerCertificate(server: SMTPServer, context: tls.SecureContext, key: Buffer | string, cert: Buffer | string): void {
  const s = server as unknown as ServerInternals;
  s.secureContext.set('*', context);
  Object.assign(s.options, { key, cert });
}

/** Limits smtp-server reads from its options for each new connection and command. */
export function setServerLimits(server: SMTPServer, limits: { size: number; maxClients: number; socketTimeout: number; closeTimeout: number }): void {
  Object.assign((server as unknown as ServerInternals).options, limits);
}

// --- nodemailer (upstream side) -----------------------------------------------------

type RejectedError = Error & { recipient?: string; code?: string; response?: string; responseCode?: number };
export type SetEnvelope = (
  envelope: unknown,
  callback: (err: Error | null, info?: { accepted: string[]; rejected: string[]; rejectedErrors?: RejectedError[] }) => void,
) => void;

/** What send() uses of the stream _createSendStream returns: it writes the message, ends it, and reads the byte counts. */
interface SendStreamLike {
  inByteCount: number;
  outByteCount: number;
  write(message: Buffer): boolean;
  end(): void;
}
type SendCallback = (err: Error | null, str?: string) => void;
type CreateSendStream = (callback: SendCallback) => SendStreamLike;

interface ClientInternals {
  /** Sends MAIL FROM, every RCPT TO and DATA; its callback runs after the 354, before any message byte. */
  _setEnvelope: SetEnvelope;
  /** The DataStream that dot-stuffs the message onto the socket; queues _actionSMTPStream for the final reply. */
  _createSendStream: CreateSendStream;
  /** The final reply's handler: EMESSAGE (command DATA) unless 2xx, else the reply to callback. */
  _actionSMTPStream(str: string, callback: SendCallback): void;
  /** One handler per reply expected, in order; nodemailer's reader calls the first with each complete reply. */
  _responseActions: ((str: string) => void)[];
  _socket: net.Socket;
  close(): void;
  /** Writes one `RCPT TO:<recipient>` followed by what _getDsnRcptToArgs returns (pipelined or not). */
  _sendRcpt(recipient: string, callback: unknown): void;
  /** The DSN parameters of a RCPT command: one NOTIFY/ORCPT for every recipient of the envelope. */
  _getDsnRcptToArgs(): string;
  /** The extensions of the server's EHLO reply that nodemailer knows, e.g. 'DSN', 'PIPELINING' (an instance field). */
  _supportedExtensions: string[];
  /** The lines of the server's (last) EHLO reply without the code and the greeting line, e.g. 'AUTH LOGIN XOAUTH2' (an instance field). */
  _ehloLines?: string[];
  /** The SASL mechanism login() chose (an instance field), e.g. 'PLAIN', 'LOGIN', 'XOAUTH2'. */
  _authMethod?: string | false;
}

const clientProto = SMTPClientConnection.prototype as unknown as Partial<ClientInternals>;

/**
 * Runs `after` on the envelope step's result of the next send on `conn`: once every
 * MAIL/RCPT reply is in and the server answered DATA with 354, before any message byte
 * is written. `after` decides what send() sees.
 */
export function hookEnvelope(
  conn: SMTPClientConnection,
  after: (err: Error | null, info: Parameters<Parameters<SetEnvelope>[1]>[1], callback: Parameters<SetEnvelope>[1]) => void,
): void {
  // The prototype's method, not the instance property: that one holds the previous send's hook.
  const original = clientProto._setEnvelope!;
  (conn as unknown as ClientInternals)._setEnvelope = function (this: unknown, env, callback) {
    original.call(this, env, (err, info) => after(err, info, callback));
  };
}

/**
 * The SASL mechanism nodemailer's login() chose on `conn` (for a password: the first of
 * the upstream's advertised mechanisms it can run, else PLAIN); undefined before a login.
 */
export function clientAuthMethod(conn: SMTPClientConnection): string | undefined {
  const m = (conn as unknown as Partial<ClientInternals>)._authMethod;
  return typeof m === 'string' && m ? m.toUpperCase() : undefined;
}

/**
 * The next send on `conn` writes `payload` (already dot-stuffed, ending in CRLF.CRLF) to
 * the socket as it is, in one write, instead of through nodemailer's DataStream;
 * undefined restores the DataStream (which repairs bare line endings byte by byte).
 *
 * nodemailer's send() asks _createSendStream for a stream once the envelope is through
 * (after the 354), writes the message into it and ends it. The original builds a
 * DataStream (a Transform), pipes it into the socket and queues the reply handler for the
 * final reply (_actionSMTPStream). This one queues the same handler and returns a
 * stand-in whose write() puts the payload on the socket: no Transform, no pipe, no
 * listeners per message (docs/benchmarks.md, "What the CPU per message is made of").
 * send() reads inByteCount and outByteCount from it for its result. The relay never uses
 * LMTP, the one case where the original queues other handlers.
 */
export function sendPreparedPayload(conn: SMTPClientConnection, messageLength: number, payload: Buffer | undefined): void {
  const internal = conn as unknown as Partial<ClientInternals>;
  if (!payload) {
    delete internal._createSendStream;
    return;
  }
  internal._createSendStream = function (this: ClientInternals, callback) {
    this._responseActions.push((str: string) => this._actionSMTPStream(str, callback));
    let sent = false;
    return {
      inByteCount: messageLength,
      outByteCount: payload.length,
      write: () => {
        if (sent) return true;
        sent = true;
        // as nodemailer's _sendCommand: a socket already gone ends the connection
        if (this._socket.destroyed) this.close();
        else this._socket.write(payload);
        return true;
      },
      end: () => undefined,
    };
  };
}

/** Whether the server `conn` is connected to advertised DSN (RFC 3461) in its EHLO reply. */
export function upstreamOffersDsn(conn: SMTPClientConnection): boolean {
  const extensions = (conn as unknown as Partial<ClientInternals>)._supportedExtensions;
  return Array.isArray(extensions) && extensions.includes('DSN');
}

/**
 * The SASL mechanisms the server `conn` is connected to advertised in its EHLO reply (the
 * one after STARTTLS), upper-case, e.g. ['LOGIN', 'XOAUTH2'] from Exchange Online or
 * [..., 'XOAUTH2', 'OAUTHBEARER'] from Gmail. nodemailer keeps only the four mechanisms it
 * implements itself (PLAIN, LOGIN, CRAM-MD5, XOAUTH2) in its list, and OAUTHBEARER is
 * not one of them; so the EHLO lines are read here, split as nodemailer splits them.
 */
export function upstreamAuthMechanisms(conn: SMTPClientConnection): string[] {
  const lines = (conn as unknown as Partial<ClientInternals>)._ehloLines;
  const out = new Set<string>();
  for (const line of Array.isArray(lines) ? lines : []) {
    const m = /^AUTH[\s=](.*)/i.exec(String(line));
    if (m) for (const mech of m[1]!.split(/[\s=]+/)) if (mech) out.add(mech.toUpperCase());
  }
  return [...out];
}

/**
 * The next send on `conn` writes `params(recipient)` after each `RCPT TO:<recipient>`
 * (e.g. " NOTIFY=SUCCESS ORCPT=rfc822;x@example.net", or ''): nodemailer's public
 * envelope.dsn takes one NOTIFY and one ORCPT for all recipients, and RFC 3461 has them
 * per recipient. Undefined restores nodemailer's own (the envelope.dsn ones, which the
 * relay never sets). MAIL's RET and ENVID go through the public envelope.dsn.
 */
export function setRecipientParams(conn: SMTPClientConnection, params: ((recipient: string) => string) | undefined): void {
  const internal = conn as unknown as Partial<ClientInternals>;
  if (!params) {
    delete internal._sendRcpt;
    delete internal._getDsnRcptToArgs;
    return;
  }
  const sendRcpt = clientProto._sendRcpt!;
  let current = '';
  internal._sendRcpt = function (this: unknown, recipient: string, callback: unknown) {
    current = recipient;
    sendRcpt.call(this, recipient, callback);
  };
  internal._getDsnRcptToArgs = () => params(current);
}

// --- mailsplit ------------------------------------------------------------------------

/** libmime's RFC 2047 decoder, from the instance mailsplit's Headers carries. */
const libmime = (new Headers(Buffer.alloc(0)) as unknown as { libmime?: { decodeWords?: (s: string) => string } }).libmime;

/** Decodes RFC 2047 encoded-words in a header value (throws on a malformed one). */
export function decodeEncodedWords(value: string): string {
  return libmime!.decodeWords!(value);
}

// --- the start-up check ---------------------------------------------------------------

/** What each hook needs, checked by name; a message per part that changed. */
function problems(): string[] {
  const out: string[] = [];
  const need = (ok: boolean, what: string) => {
    if (!ok) out.push(what);
  };
  const init = typeof serverProto.init === 'function' ? String(serverProto.init) : '';
  need(
    typeof serverProto.connectionReady === 'function' &&
      typeof serverProto._setListeners === 'function' &&
      /_setListeners\(/.test(init) &&
      /setTimeout\([^]*connectionReady\(\)/.test(init),
    'smtp-server SMTPConnection.init (the 100 ms greeting pause) changed',
  );
  need(typeof serverProto.send === 'function', 'smtp-server SMTPConnection.send is gone');
  // installOAuthBearer: AUTH dispatches to SASL_<mechanism> of lib/sasl.js, continuations to _nextHandler
  const xoauth2 = String(saslTable['SASL_XOAUTH2'] ?? '');
  const handleAuth = String((serverProto as { handler_AUTH?: unknown }).handler_AUTH ?? '');
  need(
    /sasl\[['"]SASL_['"] \+ method\]/.test(handleAuth) && /this\._nextHandler\s*=/.test(xoauth2) && typeof (serverProto as { _transmissionType?: unknown })._transmissionType === 'function',
    'smtp-server SASL dispatch (lib/sasl.js SASL_<mechanism>, _nextHandler, _transmissionType) changed (OAUTHBEARER on the listeners)',
  );
  need(typeof serverProto._onCommand === 'function', 'smtp-server SMTPConnection._onCommand is gone');
  need(typeof smtpServerProto._expectsProxyHeader === 'function', 'smtp-server SMTPServer._expectsProxyHeader is gone (PROXY trust by CIDR)');
  // A v2 header is handed on as a v1 line put back on the socket (relay/proxy-header.ts):
  // smtp-server must read the v1 line from the socket's stream, as _handleProxy does.
  const handleProxy = typeof smtpServerProto._handleProxy === 'function' ? String(smtpServerProto._handleProxy) : '';
  need(/socket\.read\(\)/.test(handleProxy) && /'PROXY'/.test(handleProxy), 'smtp-server SMTPServer._handleProxy (reads the PROXY v1 line from the socket) changed');
  need(typeof clientProto._setEnvelope === 'function', 'nodemailer SMTPConnection._setEnvelope is gone (all-or-nothing recipients)');
  // sendPreparedPayload does what _createSendStream does but for the DataStream: queue
  // _actionSMTPStream for the final reply, which fails a non-2xx reply as EMESSAGE.
  const createSendStream = typeof clientProto._createSendStream === 'function' ? String(clientProto._createSendStream) : '';
  const smtpStream = typeof clientProto._actionSMTPStream === 'function' ? String(clientProto._actionSMTPStream) : '';
  const sendSource = String((SMTPClientConnection.prototype as { send?: unknown }).send ?? '');
  need(
    /this\._responseActions\.push\([^]*this\._actionSMTPStream\(str, callback\)/.test(createSendStream) &&
      /'EMESSAGE'/.test(smtpStream) &&
      /this\._createSendStream\(/.test(sendSource) &&
      /stream\.write\(message\);\s*stream\.end\(\);/.test(sendSource) &&
      /stream\.outByteCount/.test(sendSource),
    'nodemailer SMTPConnection send/_createSendStream/_actionSMTPStream changed (prepared DATA payload)',
  );
  // Per-recipient DSN parameters (setRecipientParams): every RCPT is written by _sendRcpt,
  // which asks _getDsnRcptToArgs for its parameters; DSN support is read from the EHLO reply.
  const sendRcpt = typeof clientProto._sendRcpt === 'function' ? String(clientProto._sendRcpt) : '';
  need(
    /'RCPT TO:<'/.test(sendRcpt) && /this\._getDsnRcptToArgs\(\)/.test(sendRcpt) && typeof clientProto._getDsnRcptToArgs === 'function',
    'nodemailer SMTPConnection._sendRcpt/_getDsnRcptToArgs changed (per-recipient DSN parameters)',
  );
  const ehlo = String((clientProto as { _parseEhloExtensions?: unknown })._parseEhloExtensions ?? '');
  need(/_supportedExtensions\.push\('DSN'\)/.test(ehlo) && Array.isArray((new SMTPClientConnection({ name: 'localhost' }) as unknown as Partial<ClientInternals>)._supportedExtensions), 'nodemailer SMTPConnection no longer records DSN in _supportedExtensions');
  // upstreamAuthMechanisms: the EHLO reply's lines are kept in _ehloLines.
  need(/this\._ehloLines\s*=/.test(ehlo), 'nodemailer SMTPConnection no longer keeps the EHLO lines in _ehloLines (OAUTHBEARER detection)');
  // clientAuthMethod: login() records the mechanism it runs in _authMethod.
  need(/this\._authMethod\s*=/.test(String((SMTPClientConnection.prototype as { login?: unknown }).login ?? '')), 'nodemailer SMTPConnection.login no longer records the mechanism in _authMethod (GET /upstream)');
  need(typeof libmime?.decodeWords === 'function', 'mailsplit Headers no longer carries libmime.decodeWords (RFC 2047 in From:)');
  need(
    typeof originalFeedDataStream === 'function' && createHash('sha256').update(String(originalFeedDataStream)).digest('hex') === FEED_DATA_STREAM_SHA256,
    "smtp-server SMTPStream._feedDataStream changed (the relay's copy of it, feedDataStream, must follow)",
  );
  return out;
}

let checked = false;

/** Throws, naming every changed part, when an upgrade changed what this file relies on. */
export function checkInternals(): void {
  if (checked) return;
  const found = problems();
  if (found.length) throw new Error(`a dependency's internals changed (${found.join('; ')}): review relay/internals.ts`);
  checked = true;
}

/** Per-instance parts, checked on the first server the relay creates. */
export function checkServerInternals(server: SMTPServer): void {
  const s = server as unknown as Partial<ServerInternals>;
  const missing = [
    !(s.connections instanceof Set) && 'SMTPServer.connections is not a Set',
    !(s.secureContext instanceof Map) && 'SMTPServer.secureContext is not a Map',
    typeof s.options !== 'object' && 'SMTPServer.options is gone',
    !(s._pendingSockets instanceof Map) && 'SMTPServer._pendingSockets is not a Map',
  ].filter(Boolean);
  if (missing.length) throw new Error(`a dependency's internals changed (smtp-server ${missing.join('; ')}): review relay/internals.ts`);
}
