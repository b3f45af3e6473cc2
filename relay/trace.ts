// The Received: trace header the relay adds to each message (RFC 5321 section 4.4).

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
