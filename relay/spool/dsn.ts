// Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report): sent to the
// envelope sender, from the null sender, for recipients refused permanently or expired
// ("failed"), for messages still queued after a while ("delayed"), and for recipients
// handed to an upstream that does not take DSN requests when they asked NOTIFY=SUCCESS
// ("relayed", RFC 3461 4.2). RET, ENVID and ORCPT (RFC 3461) shape the report.
// Pure: inputs to bytes.
import { isAscii } from 'node:buffer';
import { randomBytes } from 'node:crypto';

export interface DsnRecipient {
  address: string;
  /** The last reply or error, e.g. "550 5.1.1 Upstream refused recipient(s) <x>". */
  diagnostic: string;
  /** RFC 3463 status, e.g. "5.1.1"; taken from the diagnostic when absent. */
  status?: string;
  lastAttempt?: number;
  /** ORCPT as given ("rfc822;x@example.net"): the Original-Recipient field. */
  orcpt?: string;
}

export interface DsnInput {
  kind: 'failed' | 'delayed' | 'relayed';
  /** The relay's host name: Reporting-MTA and the From domain. */
  hostname: string;
  /** The original envelope sender, the report's recipient. Must not be ''. */
  to: string;
  /** The original spool id and arrival time. */
  queueId: string;
  arrival: number;
  now: number;
  recipients: DsnRecipient[];
  /** The original message: its header section, or all of it in a failure report with RET=FULL. */
  original: Buffer;
  /** RET of the original MAIL: FULL returns the whole message in a failure report. */
  ret?: 'FULL' | 'HDRS';
  /** ENVID of the original MAIL: the Original-Envelope-Id field. */
  envid?: string;
  /** For the 'delayed' text: when the relay gives up. */
  expires?: number;
}

/** At most this much of the original header section goes into the report. */
export const MAX_HEADER_BYTES = 64 * 1024;

/**
 * RET=FULL returns the whole message up to this size; a larger one is returned as its
 * header section (the report says so). The report travels through the same upstream,
 * whose size limit a big message plus the report could pass.
 */
export const MAX_RETURNED_BYTES = 10 * 1024 * 1024;

/** The header section of a message (up to and including the blank line), bounded. */
export function headerSection(message: Buffer): Buffer {
  const end = message.indexOf('\r\n\r\n');
  let head = end < 0 ? message : message.subarray(0, end + 2);
  if (head.length > MAX_HEADER_BYTES) {
    const cut = head.lastIndexOf('\r\n', MAX_HEADER_BYTES);
    head = head.subarray(0, cut < 0 ? 0 : cut + 2);
  }
  return head;
}

/** An RFC 3463 status code found in a reply text, or the fallback. */
export function statusOf(text: string, fallback: string): string {
  const m = /\b([245])\.(\d{1,3})\.(\d{1,3})\b/.exec(text);
  return m ? `${m[1]}.${m[2]}.${m[3]}` : fallback;
}

/** Printable ASCII on one line (header and report fields must be). */
function field(s: string, max = 900): string {
  const t = s.replace(/[\r\n\t]+/g, ' ').replace(/[^\x20-\x7e]/g, '?').trim();
  return t.length > max ? t.slice(0, max - 3) + '...' : t;
}

function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace('GMT', '+0000');
}

export function buildDsn(d: DsnInput): Buffer {
  if (!d.to) throw new Error('no report for a message from the null sender');
  const boundary = `dsn-${randomBytes(12).toString('hex')}`;
  const failed = d.kind === 'failed';
  // RFC 3461 4.3: the whole message only in a failure report, and only when asked for.
  const full = failed && d.ret === 'FULL' && d.original.length <= MAX_RETURNED_BYTES;
  const cutShort = failed && d.ret === 'FULL' && !full;
  const subject = failed ? 'Undelivered Mail Returned to Sender' : d.kind === 'delayed' ? 'Delayed Mail (still being retried)' : 'Relayed Mail (delivery status notification)';
  const list = d.recipients.map((r) => `  <${field(r.address, 300)}>: ${field(r.diagnostic, 500)}`).join('\r\n');
  const intro = `This is the mail system at host ${d.hostname}.\r\n\r\n`;
  const text = failed
    ? `${intro}Your message could not be delivered to the following recipient(s).\r\nIt will not be tried again.\r\n\r\n${list}\r\n` +
      (cutShort ? `\r\nThe message was larger than ${MAX_RETURNED_BYTES} bytes: only its header section is returned.\r\n` : '')
    : d.kind === 'delayed'
      ? `${intro}Your message has not been delivered yet to the following recipient(s).\r\n` +
        `The relay keeps trying${d.expires ? ` until ${rfc5322Date(d.expires)}` : ''}; you do not need to send it again.\r\n\r\n${list}\r\n`
      : `${intro}Your message was relayed for the following recipient(s) to a mail system that\r\n` +
        `does not offer delivery status notifications: no further notice of its delivery will come.\r\n\r\n${list}\r\n`;
  const perRecipient = d.recipients
    .map((r) => {
      const status = r.status ?? statusOf(r.diagnostic, failed ? '5.0.0' : d.kind === 'delayed' ? '4.0.0' : '2.0.0');
      const lines = [];
      // RFC 3464 2.3.1: "addr-type;address" as the client gave it in ORCPT
      if (r.orcpt) lines.push(`Original-Recipient: ${field(r.orcpt.replace(/;\s*/, '; '), 550)}`);
      lines.push(
        `Final-Recipient: rfc822; ${field(r.address, 300)}`,
        `Action: ${d.kind}`,
        `Status: ${status}`,
        `Diagnostic-Code: smtp; ${field(r.diagnostic)}`,
      );
      if (r.lastAttempt) lines.push(`Last-Attempt-Date: ${rfc5322Date(r.lastAttempt)}`);
      if (!failed && d.expires) lines.push(`Will-Retry-Until: ${rfc5322Date(d.expires)}`);
      return lines.join('\r\n') + '\r\n';
    })
    .join('\r\n');
  const head = [
    `From: Mail Delivery System <MAILER-DAEMON@${d.hostname}>`,
    `To: <${field(d.to, 300)}>`,
    `Subject: ${subject}`,
    `Date: ${rfc5322Date(d.now)}`,
    `Message-ID: <${d.queueId}.${d.kind}.${randomBytes(4).toString('hex')}@${d.hostname}>`,
    // RFC 3834: automatic replies must not be answered automatically.
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    '',
    'This is a MIME-encapsulated delivery status notification.',
  ].join('\r\n');
  const parts = [
    head + '\r\n',
    `--${boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Description: Notification\r\n\r\n${text}\r\n`,
    `--${boundary}\r\nContent-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n` +
      `${d.envid ? `Original-Envelope-Id: ${field(d.envid, 100)}\r\n` : ''}` +
      `Reporting-MTA: dns; ${d.hostname}\r\nX-Queue-ID: ${d.queueId}\r\nArrival-Date: ${rfc5322Date(d.arrival)}\r\n\r\n${perRecipient}\r\n`,
    full
      ? `--${boundary}\r\nContent-Type: message/rfc822\r\nContent-Description: Undelivered message\r\n${isAscii(d.original) ? '' : 'Content-Transfer-Encoding: 8bit\r\n'}\r\n`
      : `--${boundary}\r\nContent-Type: text/rfc822-headers\r\nContent-Description: ${failed ? 'Undelivered message headers' : 'Message headers'}\r\n\r\n`,
  ];
  const original = full ? d.original : headerSection(d.original);
  const tail = Buffer.from(`${original.length && !original.subarray(-2).equals(Buffer.from('\r\n')) ? '\r\n' : ''}\r\n--${boundary}--\r\n`);
  return Buffer.concat([Buffer.from(parts.join('')), original, tail]);
}
