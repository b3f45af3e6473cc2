// The DSN parameters of RFC 3461 on MAIL (RET, ENVID) and RCPT (NOTIFY, ORCPT), read
// strictly. smtp-server has already xtext-decoded the values and refused control
// characters; what is checked here is the grammar and the lengths of RFC 3461 §4.
// Pure: the mailFrom and rcptTo phases (relay/session.ts) call these, and the queue
// phase reads the same arguments again to store them with the message.

export type NotifyCondition = 'SUCCESS' | 'FAILURE' | 'DELAY';

/** Per recipient (RCPT): what to report, and the address as the client first knew it. */
export interface RecipientDsn {
  /** ['NEVER'], or some of SUCCESS/FAILURE/DELAY; absent = not given (RFC 3461 §4.1 default). */
  notify?: ('NEVER' | NotifyCondition)[];
  /** ORCPT, decoded: "addr-type;address", e.g. "rfc822;x@example.net". */
  orcpt?: string;
}

/** Per message (MAIL). */
export interface MessageDsn {
  ret?: 'FULL' | 'HDRS';
  envid?: string;
}

export const MAIL_DSN_PARAMS = ['RET', 'ENVID'] as const;
export const RCPT_DSN_PARAMS = ['NOTIFY', 'ORCPT'] as const;

type Args = Record<string, string | boolean> | false | undefined;
type Parsed<T> = { ok: T } | { error: string };

/** Length of `value` once xtext-encoded (RFC 3461 §4: "+", "=" and non-graphic bytes as +XX). */
function xtextLength(value: string): number {
  let n = 0;
  for (const ch of value) n += ch === '+' || ch === '=' || ch < '!' || ch > '~' ? 3 : 1;
  return n;
}

const GRAPHIC = /^[\x21-\x7e]+$/;
/** An RFC 5322 atom: the addr-type of ORCPT (rfc822, utf-8, x400 ...). */
const ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$/;

/** The DSN parameters present in `args`, by name (upper case). */
export function dsnParamsIn(args: Args, names: readonly string[]): string[] {
  if (!args) return [];
  return Object.keys(args).filter((k) => names.includes(k.toUpperCase()));
}

/** RET and ENVID of a MAIL command; the error is the text of a 501 reply. */
export function parseMailDsn(args: Args): Parsed<MessageDsn> {
  const out: MessageDsn = {};
  if (!args) return { ok: out };
  const ret = args.RET;
  if (ret !== undefined) {
    const v = typeof ret === 'string' ? ret.toUpperCase() : '';
    if (v !== 'FULL' && v !== 'HDRS') return { error: '5.5.4 Invalid RET parameter: it must be RET=FULL or RET=HDRS' };
    out.ret = v;
  }
  const envid = args.ENVID;
  if (envid !== undefined) {
    if (typeof envid !== 'string' || !GRAPHIC.test(envid)) return { error: '5.5.4 Invalid ENVID parameter: it must be printable US-ASCII without spaces (xtext)' };
    if (xtextLength(envid) > 100) return { error: '5.5.4 Invalid ENVID parameter: longer than 100 characters (RFC 3461 4.4)' };
    out.envid = envid;
  }
  return { ok: out };
}

/** NOTIFY and ORCPT of a RCPT command; the error is the text of a 501 reply. */
export function parseRcptDsn(args: Args): Parsed<RecipientDsn> {
  const out: RecipientDsn = {};
  if (!args) return { ok: out };
  const notify = args.NOTIFY;
  if (notify !== undefined) {
    const items = typeof notify === 'string' ? notify.toUpperCase().split(',') : [''];
    const known = ['NEVER', 'SUCCESS', 'FAILURE', 'DELAY'];
    if (items.some((i) => !known.includes(i))) return { error: '5.5.4 Invalid NOTIFY parameter: it must be NEVER or a comma list of SUCCESS, FAILURE, DELAY' };
    if (new Set(items).size !== items.length) return { error: '5.5.4 Invalid NOTIFY parameter: a value is repeated' };
    if (items.includes('NEVER') && items.length > 1) return { error: '5.5.4 Invalid NOTIFY parameter: NEVER cannot be combined with other values' };
    out.notify = items as RecipientDsn['notify'];
  }
  const orcpt = args.ORCPT;
  if (orcpt !== undefined) {
    const v = typeof orcpt === 'string' ? orcpt : '';
    const semi = v.indexOf(';');
    const type = v.slice(0, semi);
    const address = v.slice(semi + 1);
    if (semi <= 0 || !ATOM.test(type) || !address || !GRAPHIC.test(address)) {
      return { error: '5.5.4 Invalid ORCPT parameter: it must be addr-type;address, e.g. ORCPT=rfc822;user@example.com' };
    }
    if (xtextLength(type) + 1 + xtextLength(address) > 500) return { error: '5.5.4 Invalid ORCPT parameter: longer than 500 characters (RFC 3461 4.2)' };
    out.orcpt = `${type};${address}`;
  }
  return { ok: out };
}

/**
 * Whether a recipient asked for a notification of this kind. Without NOTIFY, RFC 3461
 * §4.1 leaves it to the MTA: failures are reported, delays as configured, success never.
 */
export function wantsNotice(req: RecipientDsn | undefined, kind: 'failed' | 'delayed' | 'relayed'): boolean {
  if (!req?.notify) return kind !== 'relayed';
  return req.notify.includes(kind === 'failed' ? 'FAILURE' : kind === 'delayed' ? 'DELAY' : 'SUCCESS');
}

/** xtext (RFC 3461 §4): "+", "=" and bytes outside "!".."~" as +XX (upper-case hex, UTF-8 bytes). */
export function encodeXText(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    out += byte === 0x2b || byte === 0x3d || byte < 0x21 || byte > 0x7e ? '+' + byte.toString(16).toUpperCase().padStart(2, '0') : String.fromCharCode(byte);
  }
  return out;
}

/**
 * The RCPT parameters that hand `req` on to an upstream that takes DSN, as they go on the
 * wire: " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@example.net", or '' when there is none.
 * The values as the client gave them (NOTIFY upper-cased, ORCPT's address xtext-encoded
 * again); nothing is added: no NOTIFY where the client gave none (RFC 3461 §4.1 leaves the
 * default to the next MTA), no ORCPT where it gave none (§4.2 allows, does not ask for, one).
 */
export function rcptDsnArgs(req: RecipientDsn | undefined): string {
  if (!req) return '';
  let out = '';
  if (req.notify?.length) out += ` NOTIFY=${req.notify.join(',')}`;
  if (req.orcpt) {
    const semi = req.orcpt.indexOf(';');
    out += ` ORCPT=${req.orcpt.slice(0, semi)};${encodeXText(req.orcpt.slice(semi + 1))}`;
  }
  return out;
}
