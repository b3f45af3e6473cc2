// What the relay reads from and adds to a message: the From: header addresses
// (fields split and unfolded in linear time, addresses parsed with nodemailer's
// address parser) and the Received: trace header (RFC 5321 section 4.4).

import { Headers } from 'mailsplit';
import addressparser from 'nodemailer/lib/addressparser';
import { fromFieldValues } from './dkim.js';

/** Text shaped like local@domain, for the display-name and comment check of From:. */
const ADDRESS_LIKE = /[^\s<>"'(),;:[\]\\]+@[^\s<>"'(),;:[\]\\]+/g;

/** Longest From: content (all From fields, unfolded) the relay reads; real ones are far shorter. */
export const MAX_FROM_LENGTH = 16 * 1024;

/** libmime's RFC 2047 decoder, from the instance mailsplit carries. */
const mime = new Headers(Buffer.alloc(0)).libmime;

/** The header block: everything up to and including the first empty line. */
export function headerBlock(message: Buffer): Buffer {
  const end = message.indexOf('\r\n\r\n');
  return end === -1 ? message : message.subarray(0, end + 2);
}

/**
 * All addresses in all From: headers, lower-cased. Each header is parsed twice, as
 * sent and with RFC 2047 encoded-words decoded, and the addresses of both readings
 * are returned: an encoded-word that decodes to quotes or brackets must not be able
 * to hide an address from the check that a mail reader would still show. Returns
 * null when the header is missing, longer than MAX_FROM_LENGTH, or a reading holds
 * no usable mailbox.
 *
 * The fields are split with dkim.ts's linear unfolding, not mailsplit's Headers: that
 * one joins continuation lines in quadratic time (a 300 KB header block of short folded
 * lines blocked the event loop for seconds) and drops a first line "From ..." as mbox.
 */
export function fromAddresses(message: Buffer): string[] | null {
  const block = headerBlock(message);
  // a first line "From ..." or "POST ...": an mbox or HTTP line, not a message
  if (/^(from|post)[ \t]/i.test(block.subarray(0, 5).toString('latin1'))) return null;
  const raw = fromFieldValues(block);
  if (raw.length === 0) return null;
  if (raw.reduce((n, v) => n + v.length, 0) > MAX_FROM_LENGTH) return null;
  const decoded = raw.map((v) => {
    try {
      return mime.decodeWords(v);
    } catch {
      return v;
    }
  });
  const out = new Set<string>();
  for (const value of [...raw, ...decoded]) {
    const parsed = addressparser(value, { flatten: true });
    const list = Array.isArray(parsed) ? parsed : [parsed];
    if (list.length === 0) return null;
    for (const a of list) {
      const addr = (a.address ?? '').trim();
      if (!addr || !addr.includes('@')) return null;
      out.add(addr.toLowerCase());
    }
    // Anything else in the field that looks like an address (a display name or comment
    // such as "ceo@bank.example" <alice@...>, or text that another parser reads as a
    // second mailbox: <alice@...> ceo@bank.example) is checked too: readers show it.
    for (const m of value.matchAll(ADDRESS_LIKE)) out.add(m[0].replace(/\.+$/, '').toLowerCase());
  }
  return [...out];
}

export interface TraceInfo {
  helo: string;
  clientIp: string;
  hostname: string;
  protocol: string; // ESMTPSA
  tlsVersion?: string;
  cipher?: string;
  sessionId: string;
  recipients: string[];
  date?: Date;
}

/** Printable ASCII without spaces and angle brackets: safe inside "for <...>". */
const TRACE_ADDRESS = /^[\x21-\x3b\x3d\x3f-\x7e]+$/;

/**
 * A Received: header, folded, ending in CRLF, printable ASCII only (it is written as
 * latin1, which keeps only the low byte of each character: U+010A would become LF).
 * The client's HELO name is sanitized; a recipient that is not plain ASCII (SMTPUTF8)
 * is left out of the optional "for" clause.
 */
export function receivedHeader(t: TraceInfo): string {
  const helo = t.helo.slice(0, 255).replace(/[^A-Za-z0-9.:[\]_-]/g, '') || 'unknown';
  const ip = t.clientIp.includes(':') ? `IPv6:${t.clientIp}` : t.clientIp;
  const tls = t.tlsVersion ? ` (${t.tlsVersion}, cipher=${t.cipher ?? 'unknown'})` : '';
  const lines = [
    `Received: from ${helo} ([${ip}])`,
    `\tby ${t.hostname} with ${t.protocol}${tls}`,
    `\tid ${t.sessionId}`,
  ];
  if (t.recipients.length === 1 && TRACE_ADDRESS.test(t.recipients[0]!)) lines.push(`\tfor <${t.recipients[0]}>`);
  lines[lines.length - 1] += ';';
  lines.push(`\t${rfc5322Date(t.date ?? new Date())}`);
  // defence in depth: nothing but printable ASCII and tabs inside the lines
  return lines.map((l) => l.replace(/[^\x20-\x7e\t]/g, '?')).join('\r\n') + '\r\n';
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}
