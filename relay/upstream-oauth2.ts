// Upstream OAuth2: where the relay's access token comes from, and the OAUTHBEARER login.
//
//   grant        pure: config + secret file contents → how to ask the token endpoint
//                (client credentials for Microsoft and generic providers; the service
//                account JWT bearer grant, signed with `jose`, for Google).
//   requestToken one form-encoded POST over HTTPS; the JSON answer checked.
//   TokenSource  the cache: one token shared by every upstream connection, refreshed
//                at 80% of its lifetime, one request at a time however many connections
//                ask (single flight), with backoff after a failure so that an outage of
//                the token endpoint is not hammered by every delivery.
//   OAUTHBEARER  the SASL mechanism of RFC 7628, run as a nodemailer customAuth handler
//                (XOAUTH2 is nodemailer's own XOAuth2 client, relay/upstream.ts).
//
// Access tokens, client secrets and assertions never reach a log line or an error
// message: errors carry the endpoint's status and its `error`/`error_description` only.
import { createPrivateKey, type KeyObject } from 'node:crypto';
import https from 'node:https';
import type tls from 'node:tls';
import { SignJWT } from 'jose';
import type SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { OAuth2Config } from './config-types.js';
import { OAUTHBEARER_ERROR_ACK, oauthBearerMessage } from './oauthbearer.js';

export const MICROSOFT_SCOPE = 'https://outlook.office365.com/.default';
export const GOOGLE_SCOPE = 'https://mail.google.com/';
export const GOOGLE_TOKEN_URI = 'https://oauth2.googleapis.com/token';
export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

export function microsoftTokenUrl(tenantId: string): string {
  return `https://login.microsoftonline.com/${encodeURIComponent(tenantId)}/oauth2/v2.0/token`;
}

/** Lifetime of the Google assertion: Google accepts at most one hour. */
const ASSERTION_LIFETIME_S = 3600;
/** Refresh once this share of a token's lifetime has passed. */
export const REFRESH_AT = 0.8;
/** A token endpoint that sends no expires_in (it is only RECOMMENDED, RFC 6749 §5.1): assume this. */
export const DEFAULT_LIFETIME_S = 600;
/** A token refused upstream is fetched anew (nodemailer's one retry) only when it is at least this old. */
export const MIN_RENEW_AGE_MS = 60_000;
/** Backoff after a failed token request: doubles from the first to the last. */
export const FAILURE_BACKOFF_MS = { first: 1000, max: 30_000 };
/** The largest token endpoint answer read. */
const MAX_RESPONSE_BYTES = 64 * 1024;

export type Provider = 'microsoft' | 'google' | 'generic';

/** How to ask for a token: where, and the form to post (built per request: an assertion has a time). */
export interface Grant {
  provider: Provider;
  user: string;
  tokenUrl: string;
  form(nowMs: number): Promise<URLSearchParams>;
}

/** Values of the `result` label of smtp_relay_upstream_token_requests_total. */
export type TokenResult = 'success' | 'refused' | 'unreachable' | 'invalid_response';

/** A token could not be had. `code` ETOKEN makes the delivery temporary (relay/upstream.ts classifyError). */
export class TokenError extends Error {
  readonly code = 'ETOKEN';
  constructor(
    message: string,
    readonly result: Exclude<TokenResult, 'success'>,
  ) {
    super(message);
  }
}

function secretText(text: string): string {
  return text.replace(/\r?\n$/, '');
}

function httpsUrl(field: string, url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`${field}: ${JSON.stringify(url)} is not a URL`);
  }
  if (u.protocol !== 'https:') throw new Error(`${field}: ${JSON.stringify(url)} must be an https:// URL (the client secret is sent to it)`);
  return u.toString();
}

interface ServiceAccount {
  clientEmail: string;
  privateKey: KeyObject;
  keyId?: string;
  tokenUri: string;
}

/** The fields of a Google service account JSON key the grant needs. Throws naming the file. */
export function parseServiceAccount(file: string, text: string): ServiceAccount {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new Error(`upstream.oauth2.google.serviceAccountFile ${file}: not JSON; use the key file downloaded for the service account`);
  }
  if (doc.type !== undefined && doc.type !== 'service_account') {
    throw new Error(`upstream.oauth2.google.serviceAccountFile ${file}: "type" is ${JSON.stringify(doc.type)}, not "service_account"`);
  }
  const email = doc.client_email;
  const pem = doc.private_key;
  if (typeof email !== 'string' || !email.includes('@')) throw new Error(`upstream.oauth2.google.serviceAccountFile ${file}: no "client_email"`);
  if (typeof pem !== 'string') throw new Error(`upstream.oauth2.google.serviceAccountFile ${file}: no "private_key"`);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch {
    throw new Error(`upstream.oauth2.google.serviceAccountFile ${file}: "private_key" is not a PEM private key`);
  }
  if (privateKey.asymmetricKeyType !== 'rsa') throw new Error(`upstream.oauth2.google.serviceAccountFile ${file}: "private_key" must be an RSA key (RS256)`);
  const tokenUri = typeof doc.token_uri === 'string' ? httpsUrl(`upstream.oauth2.google.serviceAccountFile ${file}: token_uri`, doc.token_uri) : GOOGLE_TOKEN_URI;
  return { clientEmail: email, privateKey, ...(typeof doc.private_key_id === 'string' ? { keyId: doc.private_key_id } : {}), tokenUri };
}

/** The signed assertion of Google's JWT bearer grant (RFC 7523), domain-wide delegation to `user`. */
export async function googleAssertion(sa: ServiceAccount, user: string, nowMs: number): Promise<string> {
  const iat = Math.floor(nowMs / 1000);
  return new SignJWT({ scope: GOOGLE_SCOPE })
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', ...(sa.keyId ? { kid: sa.keyId } : {}) })
    .setIssuer(sa.clientEmail)
    .setSubject(user)
    .setAudience(sa.tokenUri)
    .setIssuedAt(iat)
    .setExpirationTime(iat + ASSERTION_LIFETIME_S)
    .sign(sa.privateKey);
}

/** Files the oauth2 section reads (mounted Secret keys). */
export function oauth2Files(cfg: OAuth2Config): string[] {
  if (cfg.microsoft) return [cfg.microsoft.clientSecretFile];
  if (cfg.google) return [cfg.google.serviceAccountFile];
  if (cfg.generic) return [cfg.generic.clientSecretFile];
  return [];
}

/** Pure: the oauth2 section and its files' contents → the grant. Throws naming the field. */
export function buildGrant(cfg: OAuth2Config, files: Record<string, string>): Grant {
  const user = cfg.user;
  if (!user) throw new Error('upstream.oauth2.user: empty');
  const providers = (['microsoft', 'google', 'generic'] as const).filter((p) => cfg[p] !== undefined);
  if (providers.length !== 1) throw new Error(`upstream.oauth2: give exactly one of microsoft, google, generic (found ${providers.join(', ') || 'none'})`);
  const clientSecret = (field: string, file: string) => {
    const s = secretText(files[file] ?? '');
    if (!s) throw new Error(`${field} ${file}: empty`);
    return s;
  };
  if (cfg.microsoft) {
    const m = cfg.microsoft;
    const secret = clientSecret('upstream.oauth2.microsoft.clientSecretFile', m.clientSecretFile);
    const tokenUrl = httpsUrl('upstream.oauth2.microsoft.tokenUrl', m.tokenUrl ?? microsoftTokenUrl(m.tenantId));
    return {
      provider: 'microsoft',
      user,
      tokenUrl,
      form: async () => new URLSearchParams({ grant_type: 'client_credentials', client_id: m.clientId, client_secret: secret, scope: MICROSOFT_SCOPE }),
    };
  }
  if (cfg.generic) {
    const g = cfg.generic;
    const secret = clientSecret('upstream.oauth2.generic.clientSecretFile', g.clientSecretFile);
    const tokenUrl = httpsUrl('upstream.oauth2.generic.tokenUrl', g.tokenUrl);
    return {
      provider: 'generic',
      user,
      tokenUrl,
      form: async () => new URLSearchParams({ grant_type: 'client_credentials', client_id: g.clientId, client_secret: secret, ...(g.scope ? { scope: g.scope } : {}) }),
    };
  }
  const file = cfg.google!.serviceAccountFile;
  const sa = parseServiceAccount(file, files[file] ?? '');
  return {
    provider: 'google',
    user,
    tokenUrl: sa.tokenUri,
    form: async (nowMs) => new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion: await googleAssertion(sa, user, nowMs) }),
  };
}

/** What a token endpoint granted. */
export interface TokenAnswer {
  accessToken: string;
  /** Seconds. */
  expiresIn: number;
}

export type TokenRequester = (url: string, form: URLSearchParams, opts: { tls: tls.ConnectionOptions; timeoutMs: number }) => Promise<TokenAnswer>;

/** One line, printable ASCII, bounded. */
function clean(text: unknown, max = 200): string {
  const s = String(text ?? '')
    .replace(/[\r\n\t]+/g, ' ')
    .replace(/[^\x20-\x7e]/g, '?')
    .trim();
  return s.length > max ? s.slice(0, max - 3) + '...' : s;
}

/** Pure: the token endpoint's status and body → the token, or a TokenError naming what it said. */
export function readTokenAnswer(status: number, body: string): TokenAnswer {
  let doc: Record<string, unknown> | undefined;
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed && typeof parsed === 'object') doc = parsed as Record<string, unknown>;
  } catch {
    /* not JSON */
  }
  if (status !== 200) {
    const said = doc?.error ? `${clean(doc.error, 60)}${doc.error_description ? ` (${clean(doc.error_description)})` : ''}` : 'no OAuth2 error in the body';
    throw new TokenError(`token endpoint answered HTTP ${status}: ${said}`, 'refused');
  }
  if (!doc || typeof doc.access_token !== 'string' || !doc.access_token) throw new TokenError('token endpoint answered 200 without an access_token', 'invalid_response');
  // RFC 6749 A.12: an access token is printable ASCII. Anything else (a ^A above all) would
  // break the framing of the SASL message it is sent in (XOAUTH2, OAUTHBEARER).
  if (!/^[\x20-\x7e]+$/.test(doc.access_token)) throw new TokenError('token endpoint answered an access_token with characters outside printable ASCII', 'invalid_response');
  if (typeof doc.token_type === 'string' && doc.token_type.toLowerCase() !== 'bearer') {
    throw new TokenError(`token endpoint issued a ${clean(doc.token_type, 40)} token, not a Bearer token`, 'invalid_response');
  }
  const expiresIn = Number(doc.expires_in ?? DEFAULT_LIFETIME_S);
  if (!Number.isFinite(expiresIn) || expiresIn <= 0) throw new TokenError('token endpoint answered a bad expires_in', 'invalid_response');
  return { accessToken: doc.access_token, expiresIn };
}

/** POSTs the form to the token endpoint over HTTPS (certificate verified, as for the upstream). */
export const requestToken: TokenRequester = (url, form, opts) =>
  new Promise<TokenAnswer>((resolve, reject) => {
    const body = Buffer.from(form.toString());
    const fail = (message: string) => reject(new TokenError(message, 'unreachable'));
    const req = https.request(
      url,
      {
        method: 'POST',
        ...opts.tls,
        rejectUnauthorized: true,
        timeout: opts.timeoutMs,
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', 'content-length': body.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy();
            reject(new TokenError(`token endpoint answer is over ${MAX_RESPONSE_BYTES} bytes`, 'invalid_response'));
          } else chunks.push(c);
        });
        res.on('end', () => {
          try {
            resolve(readTokenAnswer(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')));
          } catch (err) {
            reject(err as Error);
          }
        });
        res.on('error', (err) => fail(`token endpoint ${new URL(url).host}: ${clean(err.message)}`));
      },
    );
    req.on('timeout', () => req.destroy(Object.assign(new Error(`no answer within ${opts.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', (err: NodeJS.ErrnoException) => fail(`token endpoint ${new URL(url).host} unreachable: ${clean(err.code ?? err.message)}`));
    req.end(body);
  });

interface Cached {
  value: string;
  obtainedAt: number;
  refreshAt: number;
  /** Not used after this (a margin before the endpoint's expiry). */
  usableUntil: number;
}

export interface TokenSourceOptions {
  tls: tls.ConnectionOptions;
  timeoutMs: number;
  now?: () => number;
  request?: TokenRequester;
  /** Each token request's result and, on failure, the error (its message is safe to log). */
  onRequest?: (result: TokenResult, err?: TokenError) => void;
  /** A token was obtained: when it is no longer used (ms since the epoch). */
  onToken?: (usableUntil: number) => void;
}

/** One provider's access token, cached and refreshed for every upstream connection. */
export class TokenSource {
  private cached?: Cached;
  private inflight?: Promise<string>;
  private failures = 0;
  private retryAt = 0;
  private lastError?: TokenError;
  private readonly now: () => number;
  private readonly request: TokenRequester;

  constructor(
    readonly grant: Grant,
    private readonly opts: TokenSourceOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.request = opts.request ?? requestToken;
  }

  /**
   * A token to log in with. `renew`: the upstream refused the one it was given; a fresh one
   * is fetched unless the cached one is younger than MIN_RENEW_AGE_MS (then it is the grant,
   * not the token's age, that the upstream refuses, and asking again would only add load).
   */
  async get(opts: { renew?: boolean } = {}): Promise<string> {
    const now = this.now();
    const c = this.cached;
    if (c && now < c.usableUntil) {
      const renewNow = opts.renew && now - c.obtainedAt >= MIN_RENEW_AGE_MS;
      // In backoff after a failed refresh the token still in hand serves until it expires.
      if ((now < c.refreshAt && !renewNow) || (!this.inflight && now < this.retryAt)) return c.value;
    } else if (!this.inflight && now < this.retryAt && this.lastError) {
      throw this.lastError;
    }
    this.inflight ??= this.fetch().finally(() => {
      this.inflight = undefined;
    });
    try {
      return await this.inflight;
    } catch (err) {
      const still = this.cached;
      if (still && this.now() < still.usableUntil) return still.value;
      throw err;
    }
  }

  /** Forget the cached token (the grant's secret changed). */
  clear(): void {
    this.cached = undefined;
  }

  private async fetch(): Promise<string> {
    const started = this.now();
    try {
      let form: URLSearchParams;
      try {
        form = await this.grant.form(started);
      } catch (err) {
        throw new TokenError(`could not build the token request: ${clean((err as Error).message)}`, 'invalid_response');
      }
      const answer = await this.request(this.grant.tokenUrl, form, { tls: this.opts.tls, timeoutMs: this.opts.timeoutMs });
      const lifetime = answer.expiresIn * 1000;
      // Measured from the request's start: the endpoint's clock started no earlier.
      this.cached = {
        value: answer.accessToken,
        obtainedAt: started,
        refreshAt: started + lifetime * REFRESH_AT,
        usableUntil: started + lifetime - Math.min(60_000, lifetime * 0.1),
      };
      this.failures = 0;
      this.retryAt = 0;
      this.lastError = undefined;
      this.opts.onRequest?.('success');
      this.opts.onToken?.(this.cached.usableUntil);
      return answer.accessToken;
    } catch (err) {
      const e = err instanceof TokenError ? err : new TokenError(`token request failed: ${clean((err as Error).message)}`, 'unreachable');
      this.failures++;
      this.retryAt = this.now() + Math.min(FAILURE_BACKOFF_MS.max, FAILURE_BACKOFF_MS.first * 2 ** (this.failures - 1));
      this.lastError = e;
      this.opts.onRequest?.(e.result, e);
      throw e;
    }
  }
}

// --- OAUTHBEARER (RFC 7628) ----------------------------------------------------------

// The wire format (the message, the error acknowledgement) is in relay/oauthbearer.ts, shared
// with the relay's own listeners.

/** What the server's error challenge said (RFC 7628 section 3.2.2), safe to log: its `status`, `scope` and `schemes`. */
export interface BearerChallenge {
  status?: string;
  scope?: string;
  schemes?: string;
}

/** Pure: the base64 text of a 334 error challenge → its JSON fields, or undefined when it is not one. */
export function readBearerChallenge(text: string): BearerChallenge | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(text.trim(), 'base64').toString('utf8'));
  } catch {
    return undefined;
  }
  if (!doc || typeof doc !== 'object') return undefined;
  const d = doc as Record<string, unknown>;
  const out: BearerChallenge = {};
  for (const k of ['status', 'scope', 'schemes'] as const) if (d[k] !== undefined) out[k] = clean(d[k], 120);
  return out;
}

/** The inputs of one OAUTHBEARER login; handed to nodemailer's login() in the auth object's `options`. */
export interface BearerLogin {
  user: string;
  host: string;
  port: number;
  /** The token to try first. */
  token: string;
  /**
   * After a refusal: a renewed token to try once more, or undefined for none (the token
   * source did not replace it, or could not). Never throws.
   */
  renew(): Promise<string | undefined>;
}

/**
 * The inputs of an OAUTHBEARER login with a token from `tokens`: after a refusal the
 * source is asked to renew it (it replaces only a token older than MIN_RENEW_AGE_MS, the
 * same as nodemailer's XOAUTH2 retry gets).
 */
export function bearerLogin(tokens: TokenSource, to: { host: string; port: number }, token: string): BearerLogin {
  return {
    user: tokens.grant.user,
    host: to.host,
    port: to.port,
    token,
    renew: () => tokens.get({ renew: true }).catch(() => undefined),
  };
}

/** A refusal of OAUTHBEARER: nodemailer turns it into its EAUTH error with the upstream's last reply. */
export class BearerRefused extends Error {
  /** Set by nodemailer: EAUTH, and the upstream's last reply. */
  declare code?: string;
  declare response?: string;
  constructor(readonly challenge?: BearerChallenge) {
    super('Invalid login');
  }
}

/**
 * nodemailer's customAuth handler for OAUTHBEARER. `AUTH OAUTHBEARER <initial response>`;
 * 235 is success. A refused token gets the server's error challenge (334 with base64 JSON,
 * e.g. {"status":"invalid_token"}), which the client answers with a lone ^A, and the server
 * then sends its failure reply (535 ...). After a challenge the login is tried once more
 * when the token source hands out a different (renewed) token, as nodemailer does for
 * XOAUTH2; a reply other than 235 or 334 (e.g. Exchange's 5.7.139) ends it at once.
 */
export async function oauthBearerHandler(ctx: SMTPConnection.CustomAuthenticationContext): Promise<void> {
  const login = ctx.auth.options as BearerLogin | undefined;
  if (!login || typeof login.renew !== 'function') throw new Error('OAUTHBEARER: no token given');
  let token = login.token;
  for (let attempt = 0; attempt < 2; attempt++) {
    const message = Buffer.from(oauthBearerMessage(login.user, login.host, login.port, token), 'utf8').toString('base64');
    const first = await ctx.sendCommand(`AUTH OAUTHBEARER ${message}`);
    if (first.status === 235) return;
    if (first.status !== 334) throw new BearerRefused();
    const challenge = readBearerChallenge(first.text);
    const final = await ctx.sendCommand(OAUTHBEARER_ERROR_ACK);
    if (final.status === 334) {
      // Not RFC 7628: the exchange is cancelled (RFC 4954 "*"), its reply is the refusal.
      await ctx.sendCommand('*');
      throw new BearerRefused(challenge);
    }
    if (final.status === 235) return;
    const renewed = attempt === 0 ? await login.renew() : undefined;
    if (!renewed || renewed === token) throw new BearerRefused(challenge);
    token = renewed;
  }
  throw new BearerRefused();
}
