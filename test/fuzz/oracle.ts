// The fuzz target's oracles, written apart from the relay's own code (relay/policy/) so
// that a bug there cannot hide itself here:
//   replyErrors   every byte the relay sends is a well-formed SMTP reply (RFC 5321 4.2)
//   mustRefuse    a message the policy must refuse, from the bytes the relay read in DATA
//   deliveredErrors  what reached the upstream is a message the policy allows
// The policy checks are deliberately conservative: they say "must refuse" only for
// unambiguous cases (a bare CR/LF or NUL, a literal foreign address in an originator
// field, no From: field at all, far over the size limit), never "must accept".

import { FOREIGN_ADDRESSES } from './generators.js';

export interface ParsedReply {
  code: number;
  lines: string[];
}

/** Reply line: 3-digit code 2xx-5xx, space or hyphen (or nothing), text of TAB and printable ASCII. */
const REPLY_LINE = /^([2-5][0-9][0-9])([ -]?)([\t\x20-\x7e]*)$/;

/**
 * Parses everything received on one layer (plaintext or TLS) of a connection. `complete`:
 * the peer closed, so a trailing line without CRLF is an error; otherwise it is in flight.
 */
export function parseReplies(data: string, complete: boolean): { replies: ParsedReply[]; errors: string[] } {
  const replies: ParsedReply[] = [];
  const errors: string[] = [];
  let lines: string[] = [];
  let code = 0;
  let start = 0;
  for (;;) {
    const i = data.indexOf('\r\n', start);
    if (i < 0) break;
    const line = data.slice(start, i);
    start = i + 2;
    const m = REPLY_LINE.exec(line);
    if (!m) {
      errors.push(`not an SMTP reply line: ${JSON.stringify(line.slice(0, 200))}`);
      continue;
    }
    const c = Number(m[1]);
    if (lines.length && c !== code) errors.push(`multi-line reply changes its code from ${code} to ${c}: ${JSON.stringify(line.slice(0, 200))}`);
    if (m[2] === '' && m[3] !== '') errors.push(`no space or hyphen after the code: ${JSON.stringify(line.slice(0, 200))}`);
    code = c;
    lines.push(line);
    if (m[2] !== '-') {
      replies.push({ code, lines });
      lines = [];
    }
  }
  const rest = data.slice(start);
  if (rest.includes('\n') || rest.includes('\r\r')) errors.push(`bare CR or LF in a reply: ${JSON.stringify(rest.slice(0, 200))}`);
  else if (complete && rest.length) errors.push(`reply line without CRLF before close: ${JSON.stringify(rest.slice(0, 200))}`);
  if (complete && lines.length) errors.push(`multi-line reply not finished before close: ${JSON.stringify(lines.join('|').slice(0, 200))}`);
  for (const r of replies) for (const l of r.lines) if (/\r|\n/.test(l)) errors.push(`bare CR or LF inside a reply line: ${JSON.stringify(l.slice(0, 200))}`);
  return { replies, errors };
}

/**
 * The message smtp-server hands the relay for `sent` (the bytes after 354): up to the first
 * CRLF.CRLF (a first line "." ends at once), with "." removed from a line starting "..".
 */
export function messageRead(sent: string): string {
  if (sent.startsWith('.\r\n')) return '';
  const end = ('\r\n' + sent).indexOf('\r\n.\r\n');
  const raw = end < 0 ? sent : sent.slice(0, end);
  return (raw.startsWith('..') ? raw.slice(1) : raw).replace(/\n\.\./g, '\n.');
}

/** The header block (RFC 5322): up to the first empty line; none when the message starts with one. */
function headerFields(message: string): string[] {
  if (message.startsWith('\r\n')) return [];
  const end = message.indexOf('\r\n\r\n');
  const block = end < 0 ? message : message.slice(0, end);
  return block.replace(/\r\n(?=[ \t])/g, '').split('\r\n');
}

const ORIGINATOR = /^(from|sender|resent-from|resent-sender)[ \t]*:(.*)$/is;

/** Why the policy must refuse this message (as the relay read it), or null when it may accept. */
export function mustRefuse(message: string, maxSize: number, allowedSender: string): string | null {
  if (message.length > maxSize + 1024) return 'too_large';
  if (message.includes('\0')) return 'nul_byte';
  if (/(^|[^\r])\n/.test(message)) return 'bare_lf';
  if (/\r(?!\n)/.test(message)) return 'bare_cr';
  const fields = headerFields(message).map((f) => ORIGINATOR.exec(f)).filter((m) => m !== null);
  if (!fields.some((m) => m[1]!.toLowerCase() === 'from')) return 'no_from_field';
  for (const m of fields) {
    const value = m[2]!.toLowerCase();
    for (const f of FOREIGN_ADDRESSES) if (value.includes(f) && f !== allowedSender) return `foreign_${m[1]!.toLowerCase()}`;
  }
  return null;
}

/** A MAIL FROM address the policy must refuse (literal foreign address). */
export function foreignSender(address: string): boolean {
  return FOREIGN_ADDRESSES.includes(address.toLowerCase());
}

/**
 * What the upstream received: envelope sender allowed, From: present, no literal foreign
 * originator (the relay prepends one Received field; bare line endings are gone by now,
 * nodemailer having turned them into CRLF, so those are checked at the client side).
 */
export function deliveredErrors(m: { mailFrom: string; raw: Buffer }, allowedSenders: string[]): string[] {
  const errors: string[] = [];
  if (!allowedSenders.includes(m.mailFrom.toLowerCase())) errors.push(`envelope sender ${JSON.stringify(m.mailFrom)} reached the upstream`);
  const why = mustRefuse(m.raw.toString('latin1'), Infinity, allowedSenders[0]!);
  if (why && why !== 'bare_lf' && why !== 'bare_cr' && why !== 'nul_byte') errors.push(`a message the policy must refuse (${why}) reached the upstream`);
  return errors;
}
