// Delivery to the smarthost: a small pool of nodemailer SMTPConnections with
// TLS required and verified, upstream AUTH from mounted files, DKIM signing,
// bounded concurrency, and all-or-nothing recipient semantics.
//
// Why not nodemailer's pooled transport (createTransport({pool: true}))?
// It continues with DATA as soon as ONE recipient is accepted and reports the
// refused ones afterwards (sendMail resolves). The message is then delivered
// to some recipients, and whatever the relay answers its client is wrong:
// 250 loses the refused recipients, 4xx makes the client resend to everyone
// (duplicates), 5xx tells it nobody got the message. So we drive
// SMTPConnection ourselves and, when any RCPT is refused, abort the
// transaction before a single byte of the message is sent: the connection is
// closed after the 354; only the end-of-data indication "<CRLF>.<CRLF>" makes
// a server process a transaction (RFC 5321 §4.1.1.4), so it is discarded
// (proved against smtp-server in test/relay/upstream-delivery.test.ts). The relay then
// refuses the whole message (5xx if any refusal was permanent, else 4xx) and
// names the refused recipients: no recipient got it, nothing is duplicated,
// nothing is lost silently. The pool queue of nodemailer is also unbounded;
// here concurrency is bounded and overload answers 4xx at once.
//
// Semantics of deliver():
//   accepted   the upstream accepted the message for every recipient (its 250 reply).
//   temporary  nothing is known to be delivered, or the outcome is unknown (timeout or
//              connection lost after the final dot): the client should retry. A retry
//              after an unknown outcome may duplicate (RFC 1047); it never loses.
//   permanent  the upstream refused (5xx); nothing was delivered.
import { isAscii } from 'node:buffer';
import { X509Certificate, createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import tls from 'node:tls';
import type pino from 'pino';
import type * as prom from 'prom-client';
import { Counter, Gauge, Histogram } from 'prom-client';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import XOAuth2 from 'nodemailer/lib/xoauth2';
import type { DkimKeyConfig, OAuth2Mechanism, UpstreamConfig } from './config-types.js';
import { parseDkimKey, selectDkimKey, signMessage, type DkimKey } from './dkim.js';
import { checkInternals, clientAuthMethod, hookEnvelope, sendPreparedPayload, setRecipientParams, upstreamAuthMechanisms, upstreamOffersDsn } from './internals.js';
import { rcptDsnArgs, type MessageDsn, type RecipientDsn } from './policy/dsn-params.js';
import { fromDomains } from './policy/headers.js';
import { LineEndingCheck } from './policy/smuggling.js';
import { parseDuration } from './units.js';
import { LoginState, refusalChallenge, refusalWords, sanitizeReply, type LoginRecord } from './upstream-login.js';
import { BearerRefused, bearerLogin, buildGrant, oauth2Files, oauthBearerHandler, TokenSource, type Grant, type TokenError } from './upstream-oauth2.js';

const SIGNING_FAILED = '4.3.0 Could not sign the message, try again later';

/** DKIM signing failed (logged and counted); the message must not go out unsigned. */
export class SigningFailed extends Error {
  readonly responseCode = 451;
  constructor() {
    super(SIGNING_FAILED);
  }
}

export interface Envelope {
  mailFrom: string;
  rcptTo: string[];
  /**
   * The client's DSN request (RFC 3461; queue mode only): RET and ENVID for MAIL, NOTIFY
   * and ORCPT per recipient in the order of rcptTo. Handed on only to an upstream whose
   * EHLO advertises DSN (see `dsnPassed`).
   */
  dsn?: MessageDsn & { recipients: RecipientDsn[] };
}

export type DeliveryOutcome =
  /** `dsnPassed`: the upstream advertised DSN, so it was given the request and reports on its own. */
  | { kind: 'accepted'; response: string; dsnPassed?: boolean }
  | { kind: 'temporary' | 'permanent'; code: number; message: string; refused: string[] };

export interface UpstreamOptions {
  hostname: string;
  dkim: DkimKeyConfig[];
  logger: pino.Logger;
  registry: prom.Registry;
}

/** Deliveries allowed in flight (connected or waiting for a connection) per pooled connection. */
export const QUEUE_FACTOR = 4;
/** An idle pooled connection is closed after this long. */
export const IDLE_CLOSE_MS = 30_000;
/** A pooled connection is replaced after this many messages. */
export const MAX_MESSAGES_PER_CONNECTION = 100;
const DEFAULT_MAX_CONNECTIONS = 5;
const DEFAULT_TIMEOUT_MS = 60_000;

/** Values of the `kind` label of smtp_relay_upstream_errors_total. */
export type UpstreamErrorKind =
  | 'connection'
  | 'tls'
  | 'auth'
  | 'token'
  | 'timeout'
  | 'overloaded'
  | 'recipient_refused'
  | 'sender_refused'
  | 'message_refused'
  | 'protocol'
  | 'dkim'
  | 'shutdown';

interface Settings {
  host: string;
  port: number;
  implicitTls: boolean;
  tls: tls.ConnectionOptions;
  auth?: { user: string; pass: string };
  /**
   * OAUTHBEARER or XOAUTH2 (`mechanism`) with a token from `grant`; `key` identifies the
   * grant's inputs (a changed one drops the cached token; the mechanism is not one).
   */
  oauth2?: { grant: Grant; key: string; mechanism: OAuth2Mechanism };
  maxConnections: number;
  timeoutMs: number;
  ehloName: string;
  dkimKeys: DkimKey[];
  generation: number;
}

interface Pooled {
  conn: SMTPConnection;
  generation: number;
  messages: number;
  idleTimer?: NodeJS.Timeout;
  dead: boolean;
}

type NodemailerError = Error & {
  code?: string;
  originalCode?: string;
  responseCode?: number;
  response?: string;
  command?: string;
  rejected?: string[];
  rejectedErrors?: NodemailerError[];
  recipient?: string;
};

/** Thrown (internally) by the RCPT check to abort before DATA content is sent. */
class RecipientsRefused extends Error {
  constructor(
    readonly rejected: string[],
    readonly rejectedErrors: NodemailerError[],
  ) {
    super('upstream refused recipient(s): ' + rejected.join(', '));
  }
}

class DeliveryTimeout extends Error {
  constructor(
    ms: number,
    readonly afterData: boolean,
  ) {
    super(`no complete upstream reply within ${ms} ms`);
  }
}

// sanitizeReply (relay/upstream-login.ts): the one rule for upstream words the relay repeats
export { sanitizeReply };

/** Strip the line break that editors and `echo` add at the end of a credential file. */
function credential(text: string): string {
  return text.replace(/\r?\n$/, '');
}

function readCa(file: string, pem: string): string {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (!blocks.length) throw new Error(`upstream.caFile ${file}: no PEM certificate found`);
  for (const b of blocks) {
    try {
      new X509Certificate(b);
    } catch (err) {
      throw new Error(`upstream.caFile ${file}: bad certificate (${(err as Error).message})`);
    }
  }
  return blocks.join('\n') + '\n';
}

interface Files {
  [path: string]: string;
}

function filesNeeded(cfg: UpstreamConfig, dkim: DkimKeyConfig[]): string[] {
  const f: string[] = [];
  if (cfg.caFile) f.push(cfg.caFile);
  if (cfg.usernameFile) f.push(cfg.usernameFile);
  if (cfg.passwordFile) f.push(cfg.passwordFile);
  if (cfg.oauth2) f.push(...oauth2Files(cfg.oauth2));
  for (const k of dkim) f.push(k.keyFile);
  return f;
}

function readFilesSync(paths: string[]): Files {
  const out: Files = {};
  for (const p of paths) out[p] = fs.readFileSync(p, 'utf8');
  return out;
}

async function readFiles(paths: string[]): Promise<Files> {
  const out: Files = {};
  for (const p of paths) out[p] = await fsp.readFile(p, 'utf8');
  return out;
}

/** Pure: config + file contents → settings. Throws with a message naming the field/file. */
export function buildSettings(cfg: UpstreamConfig, dkim: DkimKeyConfig[], files: Files, hostname: string, generation: number): Settings {
  const timeoutMs = cfg.timeout === undefined ? DEFAULT_TIMEOUT_MS : parseDuration(cfg.timeout);
  if (timeoutMs === undefined || timeoutMs <= 0) throw new Error(`upstream.timeout: ${JSON.stringify(cfg.timeout)} is not a duration`);
  const maxConnections = cfg.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  if (!Number.isInteger(maxConnections) || maxConnections < 1) throw new Error(`upstream.maxConnections: must be a positive integer`);
  if (Boolean(cfg.usernameFile) !== Boolean(cfg.passwordFile)) {
    throw new Error('upstream: usernameFile and passwordFile must be given together');
  }
  const tlsOpts: tls.ConnectionOptions = {
    // Verification is never optional; there is deliberately no setting to turn it off.
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
  };
  if (cfg.caFile) {
    // Node's `ca` option replaces the default trust store, so add the configured CA to
    // the defaults (Node's bundled Mozilla roots, plus the system store when Node runs
    // with --use-system-ca) instead of trusting only the configured CA.
    // Built once per settings generation: a `ca` list on every tls.connect would parse the
    // ~150 default roots again for each new upstream connection (bench/: 18% of relay CPU).
    // (`ca` stays for inspection; tls.connect ignores it when secureContext is given.)
    tlsOpts.ca = [...tls.getCACertificates('default'), readCa(cfg.caFile, files[cfg.caFile]!)];
    tlsOpts.secureContext = tls.createSecureContext({ ca: tlsOpts.ca, minVersion: 'TLSv1.2' });
  }
  let auth: Settings['auth'];
  if (cfg.usernameFile && cfg.passwordFile) {
    const user = credential(files[cfg.usernameFile]!);
    const pass = credential(files[cfg.passwordFile]!);
    if (!user) throw new Error(`upstream.usernameFile ${cfg.usernameFile}: empty`);
    if (!pass) throw new Error(`upstream.passwordFile ${cfg.passwordFile}: empty`);
    auth = { user, pass };
  }
  let oauth2: Settings['oauth2'];
  if (cfg.oauth2) {
    if (auth) throw new Error('upstream: oauth2 and usernameFile/passwordFile exclude each other');
    // The CA and timeout are part of how the token endpoint is reached.
    const { mechanism = 'auto', ...grantCfg } = cfg.oauth2;
    const inputs = JSON.stringify([grantCfg, oauth2Files(cfg.oauth2).map((f) => files[f]), cfg.caFile && files[cfg.caFile], timeoutMs]);
    oauth2 = { grant: buildGrant(cfg.oauth2, files), key: createHash('sha256').update(inputs).digest('hex'), mechanism };
  }
  const dkimKeys = dkim.map((k) => parseDkimKey(k, files[k.keyFile]!));
  return {
    host: cfg.host,
    port: cfg.port,
    implicitTls: cfg.tls === 'implicit',
    tls: tlsOpts,
    ...(auth ? { auth } : {}),
    ...(oauth2 ? { oauth2 } : {}),
    maxConnections,
    timeoutMs,
    ehloName: cfg.ehloName || hostname,
    dkimKeys,
    generation,
  };
}

/** Classify an upstream failure into an outcome and an error kind. Pure. */
export function classifyError(err: unknown, rcptTo: string[]): { outcome: DeliveryOutcome; kind: UpstreamErrorKind } {
  const e = err as NodemailerError;
  const upstreamSaid = (r: string | undefined) => (r ? ` (upstream said: ${sanitizeReply(r)})` : '');
  if (err instanceof RecipientsRefused) {
    const permanent = err.rejectedErrors.some((r) => (r.responseCode ?? 0) >= 500);
    const first = err.rejectedErrors.find((r) => ((r.responseCode ?? 0) >= 500) === permanent);
    const list = err.rejected.map((r) => `<${r}>`).join(', ');
    const all = err.rejected.length === rcptTo.length;
    const tail = all ? '' : '; not sent to any recipient, send again without them';
    return {
      kind: 'recipient_refused',
      outcome: {
        kind: permanent ? 'permanent' : 'temporary',
        code: permanent ? permanentCode(first?.responseCode) : 451,
        message: `${permanent ? '5.1.1' : '4.2.0'} Upstream refused recipient(s) ${list}${upstreamSaid(first?.response)}${tail}`,
        refused: [...err.rejected],
      },
    };
  }
  if (err instanceof DeliveryTimeout) {
    return {
      kind: 'timeout',
      outcome: temporary(
        err.afterData
          ? '4.4.2 Upstream did not confirm the message in time, try again later'
          : '4.4.1 Upstream did not answer in time, try again later',
      ),
    };
  }
  const code = e?.code ?? '';
  const rc = e?.responseCode;
  if (code === 'ESHUTDOWN') return { kind: 'shutdown', outcome: temporary('4.3.2 Relay is shutting down, try again later') };
  if (code === 'ETOKEN') return { kind: 'token', outcome: temporary('4.7.0 Upstream login token unavailable, try again later') };
  // a refused login's words by the one rule for them (relay/upstream-login.ts): no 334 challenge, no encoded credential
  if (code === 'EAUTH') return { kind: 'auth', outcome: temporary(`4.7.0 Upstream authentication failed, try again later${e.response ? ` (upstream said: ${refusalWords(e.response)})` : ''}`) };
  if (code === 'ETIMEDOUT') return { kind: 'timeout', outcome: temporary('4.4.1 Upstream connection timed out, try again later') };
  if (code === 'ETLS' || isCertError(e)) {
    return { kind: 'tls', outcome: temporary('4.7.5 Upstream TLS failed (certificate not trusted or handshake failed), try again later') };
  }
  if (code === 'EENVELOPE' && e.command === 'MAIL FROM' && rc) {
    return rc >= 500
      ? { kind: 'sender_refused', outcome: permanentOutcome(rc, `5.1.0 Upstream refused the sender${upstreamSaid(e.response)}`) }
      : { kind: 'sender_refused', outcome: temporary(`4.1.0 Upstream deferred the sender${upstreamSaid(e.response)}`) };
  }
  if (code === 'EMESSAGE' && e.command === 'MAIL FROM' && !rc) {
    // nodemailer's own check against the SIZE the upstream advertised: it will never take it.
    return { kind: 'message_refused', outcome: permanentOutcome(552, '5.3.4 Message too big for the upstream') };
  }
  if (code === 'EENVELOPE' && e.rejected?.length) {
    return classifyError(new RecipientsRefused(e.rejected, e.rejectedErrors ?? []), rcptTo);
  }
  if ((code === 'EMESSAGE' || code === 'EENVELOPE') && rc) {
    // EMESSAGE: the reply to the final dot. EENVELOPE: e.g. the reply to DATA.
    return rc >= 500
      ? { kind: 'message_refused', outcome: permanentOutcome(rc, `5.3.0 Upstream refused the message${upstreamSaid(e.response)}`) }
      : { kind: 'message_refused', outcome: temporary(`4.3.0 Upstream deferred the message${upstreamSaid(e.response)}`) };
  }
  if (code === 'ECONNECTION' || code === 'EDNS' || code === 'ESOCKET' || /^E(CONNREFUSED|CONNRESET|HOSTUNREACH|NETUNREACH|PIPE|NOTFOUND|AI_AGAIN)$/.test(e?.originalCode ?? code)) {
    return { kind: 'connection', outcome: temporary('4.4.1 Upstream unreachable, try again later') };
  }
  return { kind: 'protocol', outcome: temporary(`4.4.2 Upstream delivery failed, try again later${upstreamSaid(e?.response)}`) };
}

/** Advice for the log when the upstream refuses the relay's login; the codes Microsoft 365 and Google answer. */
export function authRefusalHint(reply: string, oauth2: boolean): string | undefined {
  if (/5\.7\.139|SmtpClientAuthentication is disabled/i.test(reply)) {
    return 'SMTP AUTH is turned off for the tenant or mailbox: Set-CASMailbox -SmtpClientAuthenticationDisabled $false (Exchange Online)';
  }
  if (/5\.7\.30/.test(reply)) return 'basic authentication is turned off at the upstream: use upstream.oauth2';
  if (!oauth2) return undefined;
  if (/^504\b|5\.7\.4\b|unrecognized authentication/i.test(reply)) {
    return 'the upstream does not take this SASL mechanism: leave upstream.oauth2.mechanism at auto (OAUTHBEARER where advertised, else XOAUTH2)';
  }
  if (/5\.7\.3\b|5\.7\.8\b|535/.test(reply)) {
    return 'the token was refused: check the app permission (SMTP.SendAsApp, admin consent), the Exchange service principal and its mailbox permission, or the Google domain-wide delegation for https://mail.google.com/';
  }
  return undefined;
}

function isCertError(e: NodemailerError | undefined): boolean {
  const c = e?.originalCode ?? e?.code ?? '';
  return /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS|ERR_SSL|EPROTO/.test(c);
}

function shutdownError(): Error {
  return Object.assign(new Error('upstream closed'), { code: 'ESHUTDOWN' });
}

function temporary(message: string, refused: string[] = []): DeliveryOutcome {
  return { kind: 'temporary', code: 451, message, refused };
}

function permanentCode(rc: number | undefined): number {
  return rc !== undefined && rc >= 550 && rc <= 559 ? rc : 554;
}

function permanentOutcome(rc: number, message: string): DeliveryOutcome {
  return { kind: 'permanent', code: permanentCode(rc), message, refused: [] };
}

/** Runs one SMTPConnection step; fails on the step's error, an 'error' event or the connection ending. */
function step<T>(conn: SMTPConnection, run: (cb: (err: Error | null | undefined, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let done = false;
    const finish = (err: Error | null | undefined, value?: T) => {
      if (done) return;
      done = true;
      conn.off('error', onError);
      conn.off('end', onEnd);
      if (err) reject(err);
      else resolve(value as T);
    };
    const onError = (err: Error) => finish(err);
    const onEnd = () => finish(Object.assign(new Error('Upstream connection closed'), { code: 'ECONNECTION' }));
    conn.on('error', onError);
    conn.once('end', onEnd);
    run(finish);
  });
}

const DOT = Buffer.from('.');
const CRLF_DOT = Buffer.from('\r\n.');
const END_AFTER_CRLF = Buffer.from('.\r\n');
const CRLF_END = Buffer.from('\r\n.\r\n');

/**
 * What goes on the wire after DATA's 354, in one buffer: the message with every line
 * that starts with a dot dot-stuffed (RFC 5321 section 4.5.2) and the end-of-data line
 * appended. Byte for byte what nodemailer's DataStream sends for a message whose line
 * endings are all CRLF (test/unit/relay/upstream.test.ts compares them), found with native
 * Buffer.indexOf instead of a JavaScript loop over every byte, and written with one
 * socket write (one TLS record) instead of two. Undefined when the message holds a bare
 * CR or LF (or a NUL byte): that goes through nodemailer's DataStream, which repairs
 * line endings. (The relay refuses such messages from clients; DKIM output is CRLF.)
 */
export function dataPayload(message: Buffer): Buffer | undefined {
  const check = new LineEndingCheck();
  check.push(message);
  if (check.end()) return undefined;
  const parts: Buffer[] = [];
  let start = 0;
  if (message[0] === 0x2e) parts.push(DOT);
  for (let i = message.indexOf(CRLF_DOT); i !== -1; i = message.indexOf(CRLF_DOT, i + 3)) {
    parts.push(message.subarray(start, i + 2), DOT);
    start = i + 2;
  }
  parts.push(start === 0 ? message : message.subarray(start));
  const n = message.length;
  parts.push(n >= 2 && message[n - 2] === 0x0d && message[n - 1] === 0x0a ? END_AFTER_CRLF : CRLF_END);
  return Buffer.concat(parts);
}

/**
 * Sends one message on `conn`, all or nothing. Hooks SMTPConnection's envelope step
 * (relay/internals.ts hookEnvelope): it ends once every MAIL/RCPT reply is in and the
 * server answered DATA with 354, before any message byte is written. A refused recipient
 * there aborts the transaction.
 */
function sendAllOrNothing(
  conn: SMTPConnection,
  envelope: Envelope,
  message: Buffer,
  onDataStart: () => void,
): Promise<{ response: string; dsnPassed: boolean }> {
  hookEnvelope(conn, (err, info, callback) => {
    if (!err && info && info.rejected.length) {
      // The server waits for data after its 354. Hand the error to send() first (it writes
      // nothing on error), then drop the connection: the transaction is never completed.
      callback(new RecipientsRefused([...info.rejected], (info.rejectedErrors ?? []) as NodemailerError[]));
      conn.close();
      return;
    }
    if (!err) onDataStart();
    callback(err, info);
  });
  // The prepared payload (dataPayload) passes through nodemailer's DataStream as it is.
  sendPreparedPayload(conn, message.length, dataPayload(message));
  const eightBit = !isAscii(message);
  // RFC 3461 §4.2 (relaying to an MTA that supports DSN): the request goes on as it came,
  // RET/ENVID on MAIL (nodemailer's envelope.dsn), NOTIFY/ORCPT per RCPT (relay/internals.ts).
  // An upstream without DSN gets none of it; the caller then sends the "relayed" notices.
  const dsnPassed = upstreamOffersDsn(conn);
  const request = dsnPassed ? envelope.dsn : undefined;
  const byRecipient = new Map<string, RecipientDsn>();
  if (request) request.recipients.forEach((r, i) => byRecipient.set(envelope.rcptTo[i]!, r));
  setRecipientParams(conn, byRecipient.size ? (rcpt) => rcptDsnArgs(byRecipient.get(rcpt)) : undefined);
  const mailDsn = request && (request.ret || request.envid) ? { dsn: { ...(request.ret ? { ret: request.ret } : {}), ...(request.envid ? { envid: request.envid } : {}) } } : {};
  return step<{ response: string; dsnPassed: boolean }>(conn, (cb) =>
    conn.send(
      { from: envelope.mailFrom, to: envelope.rcptTo, size: message.length, use8BitMime: eightBit, ...mailDsn } as SMTPConnection.Envelope,
      message,
      (err, info) => {
        if (err) return cb(err);
        // Defence in depth: should the hook ever not run, never report a partial delivery as accepted.
        if (info.rejected?.length) return cb(new RecipientsRefused([...info.rejected], (info.rejectedErrors ?? []) as NodemailerError[]));
        cb(null, { response: String(info.response ?? ''), dsnPassed });
      },
    ),
  );
}

export class Upstream {
  private settings: Settings;
  private readonly hostname: string;
  private readonly log: pino.Logger;
  private idle: Pooled[] = [];
  /** Connections checked out (connecting or sending). */
  private busy = 0;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private inFlight = 0;
  private closed = false;
  private drained: (() => void)[] = [];
  private readonly checkedOut = new Set<Pooled>();

  private readonly duration: Histogram<'result'>;
  private readonly errors: Counter<'kind'>;
  private readonly signatures: Counter<'domain'>;
  private readonly inFlightGauge: Gauge;
  private readonly tokenRequests: Counter<'result'>;
  private readonly tokenExpiry: Gauge;
  private readonly authRefused: Gauge;
  /** The OAuth2 token cache, kept across reloads while the grant's inputs stay the same. */
  private tokens?: { source: TokenSource; key: string };
  /** The SASL mechanism of the latest OAuth2 login (logged when it changes). */
  private lastMechanism?: string;
  /** The upstream's verdict on the latest login, for GET /upstream (relay/upstream-login.ts). */
  private readonly logins = new LoginState();

  constructor(cfg: UpstreamConfig, opts: UpstreamOptions) {
    checkInternals();
    this.hostname = opts.hostname;
    this.log = opts.logger.child({ component: 'upstream' });
    // Read synchronously once at start; a failure here is a startup error.
    this.settings = buildSettings(cfg, opts.dkim, readFilesSync(filesNeeded(cfg, opts.dkim)), opts.hostname, 1);
    const registers = [opts.registry];
    this.duration = new Histogram({
      name: 'smtp_relay_upstream_duration_seconds',
      help: 'Time to hand a message to the upstream smarthost, by result (accepted, temporary, permanent).',
      labelNames: ['result'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    });
    this.errors = new Counter({
      name: 'smtp_relay_upstream_errors_total',
      help: 'Upstream delivery failures by kind (connection, tls, auth, timeout, overloaded, recipient_refused, sender_refused, message_refused, protocol, dkim, shutdown).',
      labelNames: ['kind'],
      registers,
    });
    this.signatures = new Counter({
      name: 'smtp_relay_dkim_signatures_total',
      help: 'DKIM signatures added to relayed messages, by signing domain.',
      labelNames: ['domain'],
      registers,
    });
    this.inFlightGauge = new Gauge({
      name: 'smtp_relay_upstream_in_flight',
      help: 'Messages being handed to the upstream or waiting for an upstream connection.',
      registers,
    });
    this.tokenRequests = new Counter({
      name: 'smtp_relay_upstream_token_requests_total',
      help: 'Requests to the upstream OAuth2 token endpoint, by result (success, refused, unreachable, invalid_response).',
      labelNames: ['result'],
      registers,
    });
    this.tokenExpiry = new Gauge({
      name: 'smtp_relay_upstream_token_expiry_timestamp_seconds',
      help: 'When the cached upstream OAuth2 access token stops being used (Unix time); 0 before the first token.',
      // several workers: each holds its own token
      aggregator: 'max',
      registers,
    });
    this.authRefused = new Gauge({
      name: 'smtp_relay_upstream_auth_refused',
      help: '1 while the upstream refused the latest AUTH (password or OAuth2 token), 0 after a successful one.',
      // several workers: 1 while any of them is refused
      aggregator: 'max',
      registers,
    });
    this.syncTokens(this.settings);
  }

  /** Maximum deliveries in flight before deliver() answers "busy" (4xx). */
  get maxInFlight(): number {
    return this.settings.maxConnections * QUEUE_FACTOR;
  }

  /**
   * The message with a DKIM-Signature for its From: domain (relay/policy/headers.ts), or
   * unchanged when no key fits. Throws SigningFailed. Queue mode signs before the message
   * is stored, so the spool holds exactly the bytes that go upstream.
   */
  async sign(message: Buffer): Promise<Buffer> {
    const keys = this.settings.dkimKeys;
    const key = keys.length ? selectDkimKey(keys, fromDomains(message)) : undefined;
    if (!key) return message;
    try {
      const signed = await signMessage(key, message);
      this.signatures.inc({ domain: key.domain });
      return signed;
    } catch (err) {
      this.errors.inc({ kind: 'dkim' });
      this.log.error({ err: (err as Error).message, domain: key.domain }, 'DKIM signing failed');
      throw new SigningFailed();
    }
  }

  /** Delivers `message` (signed first unless `signed`). */
  async deliver(envelope: Envelope, message: Buffer, opts: { signed?: boolean } = {}): Promise<DeliveryOutcome> {
    const start = performance.now();
    let outcome: DeliveryOutcome;
    if (this.closed) {
      this.errors.inc({ kind: 'shutdown' });
      outcome = temporary('4.3.2 Relay is shutting down, try again later');
    } else if (this.inFlight >= this.maxInFlight) {
      // Backpressure: a bounded number of deliveries wait for a connection; the rest retry later.
      this.errors.inc({ kind: 'overloaded' });
      this.log.warn({ inFlight: this.inFlight }, 'upstream busy, deferring message');
      outcome = temporary('4.3.2 Upstream busy, try again later');
    } else {
      this.inFlight++;
      this.inFlightGauge.set(this.inFlight);
      try {
        outcome = await this.deliverNow(envelope, message, opts.signed ?? false);
      } finally {
        this.inFlight--;
        this.inFlightGauge.set(this.inFlight);
        if (this.inFlight === 0) for (const d of this.drained.splice(0)) d();
      }
    }
    this.duration.observe({ result: outcome.kind }, (performance.now() - start) / 1000);
    return outcome;
  }

  private async deliverNow(envelope: Envelope, message: Buffer, signed: boolean): Promise<DeliveryOutcome> {
    const s = this.settings;
    let payload = message;
    if (!signed) {
      try {
        payload = await this.sign(message);
      } catch {
        return temporary(SIGNING_FAILED);
      }
    }

    let dataStarted = false;
    let current: Pooled | undefined;
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        reject(new DeliveryTimeout(s.timeoutMs, dataStarted));
        if (current) this.discard(current);
      }, s.timeoutMs);
    });
    deadline.catch(() => undefined);

    const attempt = async (): Promise<{ response: string; dsnPassed: boolean }> => {
      // One retry, on a fresh connection, only when a reused pooled connection failed
      // before any message data was sent (typically: the server closed it while idle).
      for (let i = 0; ; i++) {
        const { pooled, reused } = await this.acquire(s);
        if (timedOut || this.closed) {
          this.release(pooled, false);
          throw timedOut ? new DeliveryTimeout(s.timeoutMs, false) : shutdownError();
        }
        current = pooled;
        try {
          const sent = await sendAllOrNothing(pooled.conn, envelope, payload, () => {
            dataStarted = true;
          });
          current = undefined;
          pooled.messages++;
          this.release(pooled, true);
          return sent;
        } catch (err) {
          current = undefined;
          this.release(pooled, false);
          const code = (err as NodemailerError).code;
          if (i === 0 && reused && !dataStarted && !timedOut && (code === 'ECONNECTION' || code === 'ESOCKET')) {
            this.log.debug({ err: (err as Error).message }, 'pooled upstream connection failed, retrying on a new one');
            continue;
          }
          throw err;
        }
      }
    };

    try {
      const { response, dsnPassed } = await Promise.race([attempt(), deadline]);
      return { kind: 'accepted', response: sanitizeReply(response, 500), ...(envelope.dsn ? { dsnPassed } : {}) };
    } catch (err) {
      const { outcome, kind } = classifyError(err, envelope.rcptTo);
      this.errors.inc({ kind });
      const e = err as NodemailerError;
      this.log.warn(
        {
          kind,
          code: e.code,
          responseCode: e.responseCode,
          upstreamReply: sanitizeReply(e.response),
          error: sanitizeReply(e.message, 300),
          refused: outcome.kind === 'accepted' ? [] : outcome.refused,
          outcomeUnknown: dataStarted && (kind === 'timeout' || kind === 'connection'),
        },
        'upstream delivery failed',
      );
      return outcome;
    } finally {
      clearTimeout(timer);
    }
  }

  /** A connection slot, then an idle pooled connection or a new one (connected, authenticated). */
  private async acquire(s: Settings): Promise<{ pooled: Pooled; reused: boolean }> {
    if (this.busy >= s.maxConnections) {
      await new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    } else {
      this.busy++;
    }
    // From here we hold a slot; give it back on any failure.
    try {
      while (this.idle.length) {
        const p = this.idle.pop()!;
        clearTimeout(p.idleTimer);
        if (!p.dead && p.generation === s.generation && !p.conn.destroyed) {
          this.checkedOut.add(p);
          return { pooled: p, reused: true };
        }
        this.discard(p);
      }
      const pooled = await this.connect(s);
      this.checkedOut.add(pooled);
      return { pooled, reused: false };
    } catch (err) {
      this.freeSlot();
      throw err;
    }
  }

  private async connect(s: Settings): Promise<Pooled> {
    const conn = new SMTPConnection({
      host: s.host,
      port: s.port,
      secure: s.implicitTls,
      requireTLS: !s.implicitTls,
      ignoreTLS: false,
      opportunisticTLS: false,
      tls: s.tls,
      name: s.ehloName,
      connectionTimeout: s.timeoutMs,
      greetingTimeout: s.timeoutMs,
      socketTimeout: s.timeoutMs,
      socketCloseTimeout: 1000,
      dnsTimeout: Math.min(s.timeoutMs, 10_000),
      allowInternalNetworkInterfaces: true,
      logger: false,
      debug: false,
      // RFC 7628 through nodemailer's own hook for mechanisms it does not implement.
      ...(s.oauth2 ? { customAuth: { OAUTHBEARER: oauthBearerHandler } } : {}),
    });
    const pooled: Pooled = { conn, generation: s.generation, messages: 0, dead: false };
    // Without a listener an 'error' event would crash the process.
    conn.on('error', (err: NodemailerError) => {
      pooled.dead = true;
      this.log.debug({ code: err.code, error: sanitizeReply(err.message, 300) }, 'upstream connection error');
    });
    conn.once('end', () => {
      pooled.dead = true;
      this.removeIdle(pooled);
    });
    try {
      await step<void>(conn, (cb) => conn.connect((err?: Error | null) => cb(err)));
      if (!conn.secure) {
        throw Object.assign(new Error('upstream connection is not encrypted'), { code: 'ETLS' });
      }
      if (s.auth) {
        const auth = s.auth;
        await this.login(s, 'password', conn, [auth.pass], () => step<void>(conn, (cb) => conn.login({ user: auth.user, pass: auth.pass }, (err) => cb(err))));
      } else if (s.oauth2 && this.tokens) {
        const tokens = this.tokens.source;
        const token = await tokens.get();
        const mechanism = this.oauth2Mechanism(s.oauth2.mechanism, conn);
        if (mechanism === 'OAUTHBEARER') {
          const login = bearerLogin(tokens, s, token);
          await this.login(s, mechanism, conn, [token], () => step<void>(conn, (cb) => conn.login({ method: 'OAUTHBEARER', user: login.user, options: login }, (err) => cb(err))));
        } else {
          // nodemailer's own XOAUTH2 client (AUTH XOAUTH2 user=...^Aauth=Bearer ...). After a
          // refusal it asks once more with renew=true (after the 334 error challenge Google sends).
          const xoauth2 = new XOAuth2(
            {
              user: s.oauth2.grant.user,
              provisionCallback: (_user, renew, cb) => {
                if (!renew) return cb(null, token, 0);
                tokens.get({ renew: true }).then(
                  (t) => cb(null, t, 0),
                  (err: Error) => cb(err, '', 0),
                );
              },
            },
          );
          // What nodemailer's own transports hand to login(); @types/nodemailer types `oauth2`
          // as the XOAuth2 options rather than the instance.
          const auth = { oauth2: xoauth2 } as unknown as SMTPConnection.AuthenticationOAuth2;
          await this.login(s, mechanism, conn, [token], () => step<void>(conn, (cb) => conn.login(auth, (err) => cb(err))));
        }
      }
    } catch (err) {
      this.discard(pooled);
      throw err;
    }
    return pooled;
  }

  /**
   * The SASL mechanism for an OAuth2 login on `conn`: the configured one, or for `auto`
   * OAUTHBEARER when the upstream's EHLO advertised it, else XOAUTH2. Logged when it changes.
   */
  private oauth2Mechanism(configured: OAuth2Mechanism, conn: SMTPConnection): 'XOAUTH2' | 'OAUTHBEARER' {
    const offered = upstreamAuthMechanisms(conn);
    const chosen = configured !== 'auto' ? configured : offered.includes('OAUTHBEARER') ? 'OAUTHBEARER' : 'XOAUTH2';
    if (chosen !== this.lastMechanism) {
      this.lastMechanism = chosen;
      this.log.info({ event: 'upstream_auth_mechanism', method: chosen, configured, offered }, 'upstream OAuth2 login mechanism');
    }
    return chosen;
  }

  /**
   * Runs an AUTH; a refusal is logged at error level with the upstream's words, shown by
   * smtp_relay_upstream_auth_refused and kept for GET /upstream until a login succeeds.
   * `secrets` (the password or token sent) are cut out of the words should the upstream echo them.
   */
  private async login(s: Settings, method: 'password' | 'XOAUTH2' | 'OAUTHBEARER', conn: SMTPConnection, secrets: string[], run: () => Promise<void>): Promise<void> {
    // a password login's SASL mechanism is nodemailer's choice (PLAIN or LOGIN), known once it ran
    const mechanism = () => (method === 'password' ? (clientAuthMethod(conn) ?? 'PLAIN') : method);
    try {
      await run();
      this.authRefused.set(0);
      this.logins.succeeded(mechanism());
    } catch (err) {
      const e = err as NodemailerError;
      if (e.code === 'EAUTH' && e.response) {
        this.authRefused.set(1);
        // OAUTHBEARER: the JSON error the upstream sent before its refusal, e.g. {"status":"invalid_token"}
        const challenge = refusalChallenge(err instanceof BearerRefused ? err.challenge : undefined);
        const words = refusalWords(e.response, secrets);
        this.logins.refused(mechanism(), words, challenge);
        this.log.error(
          {
            event: 'upstream_auth_refused',
            method,
            mechanism: mechanism(),
            ...(s.oauth2 ? { provider: s.oauth2.grant.provider, user: s.oauth2.grant.user } : {}),
            upstreamReply: words,
            ...(challenge ? { upstreamChallenge: challenge } : {}),
            hint: authRefusalHint(e.response, Boolean(s.oauth2)),
          },
          'upstream refused the relay\'s login',
        );
      }
      throw err;
    }
  }

  /** This process's login record (GET /upstream; a worker's travels to its primary over IPC). */
  get loginRecord(): LoginRecord {
    return this.logins.record;
  }

  /** A TokenSource for the settings' grant: the same one while the grant's inputs are unchanged. */
  private syncTokens(s: Settings): void {
    if (!s.oauth2) {
      this.tokens = undefined;
      return;
    }
    if (this.tokens?.key === s.oauth2.key) return;
    const provider = s.oauth2.grant.provider;
    const source = new TokenSource(s.oauth2.grant, {
      tls: s.tls,
      timeoutMs: Math.min(s.timeoutMs, 30_000),
      onRequest: (result, err?: TokenError) => {
        this.tokenRequests.inc({ result });
        if (err) this.log.warn({ event: 'upstream_token_failed', provider, result, error: err.message }, 'upstream OAuth2 token request failed');
        else this.log.info({ event: 'upstream_token', provider }, 'upstream OAuth2 token obtained');
      },
      onToken: (usableUntil) => this.tokenExpiry.set(usableUntil / 1000),
    });
    this.tokens = { source, key: s.oauth2.key };
  }

  private freeSlot(): void {
    this.busy--;
    // Hand free slots to waiters in order; after a reload that lowered maxConnections
    // this waits until the pool is back under the new limit.
    while (this.waiters.length && this.busy < this.settings.maxConnections) {
      this.busy++;
      this.waiters.shift()!.resolve();
    }
  }

  private release(p: Pooled, reusable: boolean): void {
    this.checkedOut.delete(p);
    const healthy = reusable && !this.closed && !p.dead && !p.conn.destroyed && p.generation === this.settings.generation;
    if (healthy && p.messages < MAX_MESSAGES_PER_CONNECTION) {
      this.parkIdle(p);
      this.freeSlot();
    } else {
      this.discard(p);
      this.freeSlot();
      // A connection retired after its message limit is replaced in the background, so the
      // next message finds a connected one instead of waiting for TCP + TLS + EHLO (+ AUTH):
      // that wait, once every MAX_MESSAGES_PER_CONNECTION messages per connection, was a
      // visible share of the relay's p99 latency (docs/benchmarks.md).
      if (healthy) this.replenish(this.settings);
    }
  }

  private parkIdle(p: Pooled): void {
    p.idleTimer = setTimeout(() => {
      this.removeIdle(p);
      this.discard(p);
    }, IDLE_CLOSE_MS);
    p.idleTimer.unref();
    this.idle.push(p);
  }

  /** Opens one connection in the background (it holds a slot while connecting) and parks it idle. */
  private replenish(s: Settings): void {
    if (this.closed || this.busy >= s.maxConnections) return;
    this.busy++;
    this.connect(s).then(
      (p) => {
        if (this.closed || p.generation !== this.settings.generation) this.discard(p);
        else this.parkIdle(p);
        this.freeSlot();
      },
      (err: NodemailerError) => {
        this.log.debug({ code: err.code, error: sanitizeReply(err.message, 300) }, 'replacement upstream connection failed');
        this.freeSlot();
      },
    );
  }

  private removeIdle(p: Pooled): void {
    const i = this.idle.indexOf(p);
    if (i >= 0) this.idle.splice(i, 1);
    clearTimeout(p.idleTimer);
  }

  private discard(p: Pooled): void {
    p.dead = true;
    clearTimeout(p.idleTimer);
    try {
      p.conn.close();
    } catch {
      /* already gone */
    }
  }

  /**
   * Re-reads the CA, credential and DKIM key files and applies a new upstream
   * config. On any error it throws and the previous settings stay in force.
   * Pooled connections made with the old settings are closed once idle.
   */
  async reload(cfg: UpstreamConfig, dkim: DkimKeyConfig[]): Promise<void> {
    const files = await readFiles(filesNeeded(cfg, dkim));
    const next = buildSettings(cfg, dkim, files, this.hostname, this.settings.generation + 1);
    this.settings = next;
    this.syncTokens(next);
    for (const p of this.idle.splice(0)) this.discard(p);
    this.log.info({ host: next.host, port: next.port, dkimDomains: next.dkimKeys.map((k) => k.domain) }, 'upstream settings reloaded');
  }

  /**
   * Shuts the upstream side down at once: new deliveries get a 4xx, and
   * deliveries still in flight are cut off and resolve as temporary (their
   * outcome may be unknown if the data was already sent; the client retries,
   * which may duplicate but never loses). Meant to run after the server's own
   * drain (grace period); resolves once every delivery has settled and every
   * connection is closed.
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(shutdownError());
    for (const p of this.idle.splice(0)) this.discard(p);
    for (const p of this.checkedOut) this.discard(p);
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
  }
}
