// The upstream's verdict on the relay's own login (password, XOAUTH2 or OAUTHBEARER), for
// the operator: GET /upstream on the control endpoints (relay/control.ts) answers it, and
// the operator turns a refusal into UpstreamReady=False with the upstream's words
// (operator/upstream-logins.ts). Relay pods have no API access,
// so this is how a refusal that only the relay sees reaches the SmtpRelay's status.
//
// Each process that logs in keeps a LoginRecord (relay/upstream.ts): a multi-worker relay's
// primary asks its workers for theirs over the IPC channel it already asks for their
// metrics on (relay/workers.ts), and upstreamReport() combines them: the relay is refused
// when its latest login anywhere was refused. Credentials are the same in every process,
// so a later success in any of them clears it (as a success clears the gauge of one).
//
// The upstream's words are shown to whoever reads the SmtpRelay's status and events, so
// they go through refusalWords(): printable ASCII, one line, bounded; a 334 challenge is
// never echoed (OAUTHBEARER's is base64 JSON: only its status/scope/schemes are kept);
// the secrets of the login and anything that looks like an encoded credential are cut out.

import os from 'node:os';
import type { UpstreamConfig } from './config-types.js';
import { readBearerChallenge, type BearerChallenge } from './upstream-oauth2.js';

/** Longest reply text kept (the condition message names it once per refused pod). */
export const MAX_REFUSAL_WORDS = 200;

/**
 * A run of 40 or more base64/base64url characters: a token, a SASL message, a JWT part. No
 * upstream's refusal needs one (Exchange's and Gmail's longest words are ~36-character
 * session ids, which have dots or spaces around them); an echoed credential would be one.
 */
const ENCODED_RUN = /[A-Za-z0-9+/_=-]{40,}/g;
/** Secrets shorter than this are not searched for (a 3-letter "secret" would cut up the words). */
const MIN_SECRET_LENGTH = 6;

/** One line, printable ASCII, bounded: safe to put into an SMTP reply, a log or a status (every upstream reply the relay repeats goes through it). */
export function sanitizeReply(text: string | undefined, max = 200): string {
  if (!text) return '';
  // a multi-line reply's lines joined by one space (Gmail indents its continuation lines)
  const s = text.replace(/[\r\n\t]+/g, ' ').replace(/[^\x20-\x7e]/g, '?').replace(/ {2,}/g, ' ').trim();
  return s.length > max ? s.slice(0, max - 3) + '...' : s;
}

/**
 * The upstream's reply to a refused AUTH, safe to show anywhere: a 334 challenge is
 * decoded (OAUTHBEARER's JSON fields) or left out, never echoed; `secrets` (the password,
 * the token sent) and any long encoded run are replaced by "[redacted]".
 */
export function refusalWords(reply: string | undefined, secrets: readonly (string | undefined)[] = []): string {
  if (!reply) return '';
  const first = reply.trimStart();
  if (/^334(?:[ -]|$)/.test(first)) {
    const c = readBearerChallenge(first.slice(4).split(/\r?\n/)[0] ?? '');
    const fields = c ? Object.entries(refusalChallenge(c)!).map(([k, v]) => `${k}=${v}`) : [];
    return sanitizeReply(fields.length ? `334 error challenge: ${fields.join(' ')}` : '334 (challenge not shown)', MAX_REFUSAL_WORDS);
  }
  let text = reply;
  for (const s of secrets) if (s && s.length >= MIN_SECRET_LENGTH) text = text.split(s).join('[redacted]');
  return sanitizeReply(text.replace(ENCODED_RUN, '[redacted]'), MAX_REFUSAL_WORDS);
}

/** An OAUTHBEARER error challenge's fields (already printable and bounded) with any encoded run cut out. */
export function refusalChallenge(c: BearerChallenge | undefined): BearerChallenge | undefined {
  if (!c) return undefined;
  const out: BearerChallenge = {};
  for (const [k, v] of Object.entries(c) as [keyof BearerChallenge, string][]) out[k] = v.replace(ENCODED_RUN, '[redacted]');
  return out;
}

/** What one process saw of its upstream logins (times in ms since the epoch). Plain data: it travels over IPC. */
export interface LoginRecord {
  /** The SASL mechanism of the latest login (XOAUTH2, OAUTHBEARER, PLAIN, LOGIN, ...). */
  mechanism?: string;
  lastSuccess?: number;
  /** Set while the latest login was refused; cleared by a success. */
  refusal?: {
    /** The first refusal since the last success. */
    since: number;
    /** The latest one, whose words these are. */
    at: number;
    reply: string;
    mechanism: string;
    challenge?: BearerChallenge;
  };
}

/** The login record of one process (relay/upstream.ts Upstream keeps one). */
export class LoginState {
  private r: LoginRecord = {};

  succeeded(mechanism: string, now = Date.now()): void {
    this.r = { mechanism, lastSuccess: now };
  }

  refused(mechanism: string, reply: string, challenge: BearerChallenge | undefined, now = Date.now()): void {
    this.r = {
      mechanism,
      ...(this.r.lastSuccess !== undefined ? { lastSuccess: this.r.lastSuccess } : {}),
      refusal: { since: this.r.refusal?.since ?? now, at: now, reply, mechanism, ...(challenge ? { challenge } : {}) },
    };
  }

  get record(): LoginRecord {
    return structuredClone(this.r);
  }
}

/** GET /upstream's answer (docs/relay-config.md "Control endpoints"). */
export interface UpstreamReport {
  /** The pod (its hostname): the operator names it in the condition. */
  pod: string;
  host: string;
  port: number;
  /** How the relay logs in: oauth2, password, or none (no login, nothing to refuse). */
  authentication: 'oauth2' | 'password' | 'none';
  /** True while the relay's latest login was refused by the upstream. */
  authRefused: boolean;
  /** The mechanism of the latest login (refused or not); absent before the first. */
  mechanism?: string;
  /** While refused: when the refusals began (after the last success), RFC 3339. */
  since?: string;
  /** While refused: the latest refusal, RFC 3339. */
  lastRefusal?: string;
  /** While refused: the upstream's reply code and words (refusalWords). */
  reply?: string;
  /** While refused with an OAUTHBEARER error challenge: its fields. */
  challenge?: BearerChallenge;
  lastSuccess?: string;
}

const iso = (ms: number) => new Date(ms).toISOString();

/** Pure: the relay's report from the records of every process that logs in (none: no login yet). */
export function upstreamReport(cfg: Pick<UpstreamConfig, 'host' | 'port' | 'oauth2' | 'usernameFile'>, records: readonly LoginRecord[], pod = os.hostname()): UpstreamReport {
  const out: UpstreamReport = {
    pod,
    host: cfg.host,
    port: cfg.port,
    authentication: cfg.oauth2 ? 'oauth2' : cfg.usernameFile ? 'password' : 'none',
    authRefused: false,
  };
  const lastSuccess = Math.max(-Infinity, ...records.map((r) => r.lastSuccess ?? -Infinity));
  // the latest refusal that no success anywhere came after
  const refusals = records.flatMap((r) => (r.refusal && r.refusal.at > lastSuccess ? [r.refusal] : []));
  const latest = refusals.reduce<(typeof refusals)[number] | undefined>((a, b) => (!a || b.at > a.at ? b : a), undefined);
  if (latest) {
    out.authRefused = true;
    out.mechanism = latest.mechanism;
    // a process's streak may have begun before another's success: not before that success
    out.since = iso(Math.max(Math.min(...refusals.map((r) => r.since)), lastSuccess));
    out.lastRefusal = iso(latest.at);
    out.reply = latest.reply;
    if (latest.challenge) out.challenge = latest.challenge;
  } else {
    const newest = records.filter((r) => r.lastSuccess !== undefined).sort((a, b) => b.lastSuccess! - a.lastSuccess!)[0];
    if (newest?.mechanism) out.mechanism = newest.mechanism;
  }
  if (Number.isFinite(lastSuccess)) out.lastSuccess = iso(lastSuccess);
  return out;
}
