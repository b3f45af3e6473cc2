// The one reader of a message's originator header fields (From:, Sender:, Resent-From:,
// Resent-Sender:): fields split and unfolded in linear time, RFC 2047 encoded-words
// decoded, addresses parsed with nodemailer's address parser. The sender check (relay/
// session.ts, DATA phase) and the choice of DKIM key (relay/dkim.ts) both read it, so
// they cannot read the same message differently.

import { domainToASCII } from 'node:url';
import addressparser from 'nodemailer/lib/addressparser';
import { decodeEncodedWords } from '../internals.js';

/** Text shaped like local@domain, for the display-name and comment check of From:. */
const ADDRESS_LIKE = /[^\s<>"'(),;:[\]\\]+@[^\s<>"'(),;:[\]\\]+/g;

/** Longest From: content (all From fields, unfolded) the relay reads; real ones are far shorter. */
export const MAX_FROM_LENGTH = 16 * 1024;

/** The header block: everything up to and including the first empty line. */
export function headerBlock(message: Buffer): Buffer {
  // a message that starts with an empty line has no header at all: what follows is body
  if (message[0] === 0x0d && message[1] === 0x0a) return message.subarray(0, 0);
  const end = message.indexOf('\r\n\r\n');
  return end === -1 ? message : message.subarray(0, end + 2);
}

/** Longest content of the checked fields (all of one kind, unfolded) the relay reads. */
const MAX_FIELDS_LENGTH = MAX_FROM_LENGTH;

/**
 * Values of every header field named in `names` (lower case), unfolded, decoded as
 * UTF-8, in linear time: not mailsplit's Headers, which joins continuation lines in
 * quadratic time (a 300 KB header block of short folded lines blocked the event loop
 * for seconds) and drops a first line "From ..." as mbox. "From :" (obsolete syntax,
 * space before the colon) counts as a From field, as other parsers read it.
 */
function fieldValues(block: Buffer, names: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (const line of block.toString('latin1').replace(/\r\n(?=[ \t])/g, '').split('\r\n')) {
    const m = /^([^:\s]+)[ \t]*:(.*)$/s.exec(line);
    if (m && names.has(m[1]!.toLowerCase())) out.push(Buffer.from(m[2]!, 'latin1').toString('utf8'));
  }
  return out;
}

/**
 * The addresses in field values, lower-cased. Each value is parsed twice, as sent and
 * with RFC 2047 encoded-words decoded, and the addresses of both readings are returned:
 * an encoded-word that decodes to quotes or brackets must not be able to hide an address
 * that a mail reader would still show. Null when the values are too long or a reading
 * holds no usable mailbox.
 */
function addressesIn(raw: string[]): string[] | null {
  if (raw.reduce((n, v) => n + v.length, 0) > MAX_FIELDS_LENGTH) return null;
  // A reading identical to the one as sent gives the same addresses and the same verdict:
  // it is parsed once (the common case, a From: without encoded-words, costs half).
  const decoded = raw.map(decodedReading).filter((d, i) => d !== raw[i]);
  const out = new Set<string>();
  for (const value of [...raw, ...decoded]) {
    const addresses = valueAddresses(value);
    if (!addresses) return null;
    for (const a of addresses) out.add(a);
  }
  return [...out];
}

/**
 * One reading of a field value: its mailboxes (lower-cased, in order), then anything
 * else in it that looks like an address; null when it holds no usable mailbox.
 */
function parseValue(value: string): readonly string[] | null {
  const parsed = addressparser(value, { flatten: true });
  const list = Array.isArray(parsed) ? parsed : [parsed];
  if (list.length === 0) return null;
  const out: string[] = [];
  for (const a of list) {
    const addr = (a.address ?? '').trim();
    if (!addr || !addr.includes('@')) return null;
    out.push(addr.toLowerCase());
  }
  // Anything else in the field that looks like an address (a display name or comment
  // such as "ceo@bank.example" <alice@...>, or text that another parser reads as a
  // second mailbox: <alice@...> ceo@bank.example) is checked too: readers show it.
  for (const m of value.matchAll(ADDRESS_LIKE)) out.push(m[0].replace(/\.+$/, '').toLowerCase());
  return Object.freeze(out);
}

/** Values parsed lately, by their exact text (parseValue is a pure function of it). */
const parsedValues = new Map<string, readonly string[] | null>();
/** Values up to this long are remembered ... */
const PARSED_VALUE_MAX = 512;
/** ... this many at most (then the map starts afresh): at most ~0.5 MiB. */
const PARSED_VALUES_MAX = 512;

/**
 * parseValue, remembered: an application's mail mostly carries the same few From:
 * values, and nodemailer's address parser costs ~9 µs for "Name <a@b.example>"
 * (docs/benchmarks.md, "CPU per message"). The result depends on the value alone, so a
 * remembered one is exactly what parsing again would give; the caller checks it
 * against the user's allowed senders each time.
 */
export function valueAddresses(value: string): readonly string[] | null {
  const known = parsedValues.get(value);
  if (known !== undefined) return known;
  const parsed = parseValue(value);
  if (value.length <= PARSED_VALUE_MAX) {
    if (parsedValues.size >= PARSED_VALUES_MAX) parsedValues.clear();
    parsedValues.set(value, parsed);
  }
  return parsed;
}

/**
 * The value with its RFC 2047 encoded-words decoded (as sent when one is malformed).
 * Without "=?" no encoded-word can match, and without a NUL libmime's join marker
 * ("__\0JOIN\0__") cannot occur, so such a value decodes to itself: it is not run
 * through libmime's six regular expressions (test/unit/relay/headers.test.ts).
 */
export function decodedReading(value: string): string {
  if (!value.includes('=?') && !value.includes('\0')) return value;
  try {
    return decodeEncodedWords(value);
  } catch {
    return value;
  }
}

const FROM = new Set(['from']);
/** Other originator fields (RFC 5322 3.6.2, 3.6.6) that readers show as who sent the message. */
const OTHER_ORIGINATORS = new Set(['sender', 'resent-from', 'resent-sender']);

/**
 * All addresses in all From: fields (see addressesIn). Null when there is no From:
 * field, its content is longer than MAX_FROM_LENGTH, a reading holds no usable mailbox,
 * or the message starts with a line "From ..." or "POST ..." (mbox/HTTP, not a header).
 */
export function fromAddresses(message: Buffer): string[] | null {
  const block = headerBlock(message);
  if (/^(from|post)[ \t]/i.test(block.subarray(0, 5).toString('latin1'))) return null;
  const raw = fieldValues(block, FROM);
  return raw.length === 0 ? null : addressesIn(raw);
}

/**
 * All addresses in Sender:, Resent-From: and Resent-Sender: fields ([] when there are
 * none; null when one holds no usable mailbox or they are too long). Outlook shows
 * "<Sender> on behalf of <From>", so these are held to the same allowed senders.
 */
export function otherOriginatorAddresses(message: Buffer): string[] | null {
  const raw = fieldValues(headerBlock(message), OTHER_ORIGINATORS);
  return raw.length === 0 ? [] : addressesIn(raw);
}

/** Lower-case ASCII form of a domain (IDN to punycode); '' when invalid. */
export function normalizeDomain(domain: string): string {
  const d = domain.trim().replace(/\.$/, '');
  if (!d || /[\s@]/.test(d)) return '';
  return domainToASCII(d.toLowerCase());
}

/**
 * Domains of the From: addresses (fromAddresses: the mailboxes first, in order, then
 * whatever else in the field looks like an address), normalized, without repeats. []
 * when fromAddresses finds no usable From: field.
 */
export function fromDomains(message: Buffer): string[] {
  const domains: string[] = [];
  for (const address of fromAddresses(message) ?? []) {
    const d = normalizeDomain(address.slice(address.lastIndexOf('@') + 1));
    if (d && !domains.includes(d)) domains.push(d);
  }
  return domains;
}
