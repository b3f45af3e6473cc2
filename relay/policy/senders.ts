// Allowed sender patterns: "user@domain" (exact address) or "*@domain" (any
// local part at exactly that domain). Matching is case-insensitive.

export interface SenderPattern {
  local: string | null; // null = any local part
  domain: string;
}

const LOCAL_RE = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/;
const DOMAIN_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/i;

export function parseSenderPattern(text: string): SenderPattern | string {
  const at = text.lastIndexOf('@');
  if (at <= 0 || at === text.length - 1) return 'must be "user@domain" or "*@domain"';
  const local = text.slice(0, at);
  const domain = text.slice(at + 1).toLowerCase();
  if (!DOMAIN_RE.test(domain)) return `"${domain}" is not a domain name`;
  if (local === '*') return { local: null, domain };
  if (local.includes('*')) return 'a wildcard may only be the whole local part ("*@domain")';
  if (!LOCAL_RE.test(local)) return `"${local}" is not a valid local part`;
  return { local: local.toLowerCase(), domain };
}

/** True when `address` (a bare addr-spec) matches any pattern. */
export function senderAllowed(address: string, patterns: SenderPattern[]): boolean {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return false;
  const local = address.slice(0, at).toLowerCase();
  const domain = address.slice(at + 1).toLowerCase();
  return patterns.some((p) => p.domain === domain && (p.local === null || p.local === local));
}

/** The local part that marks a user's own mail system as a sender of notifications. */
export const MAILER_DAEMON = 'mailer-daemon';

/**
 * Whether the user may send with the null sender <> (delivery status notifications
 * from an app host's own MTA): only when a MAILER-DAEMON@domain address is listed in its
 * allowed senders. Listed, not implied by *@domain: an opt-in, so no existing user
 * changes on upgrade. The headers are still checked (From: of such a notice is
 * MAILER-DAEMON@host), and nothing bounces to <>.
 */
export function nullSenderAllowed(patterns: SenderPattern[]): boolean {
  return patterns.some((p) => p.local === MAILER_DAEMON);
}
