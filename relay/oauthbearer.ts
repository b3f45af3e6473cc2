// SASL OAUTHBEARER (RFC 7628) on the wire, both ways: the message the relay sends when it logs
// in upstream (relay/upstream-oauth2.ts), and the reading of a client's message on the relay's
// own listeners, where an app logs in with its ServiceAccount token (relay/internals.ts adds
// the mechanism to smtp-server, which has PLAIN, LOGIN, XOAUTH2 and CRAM-MD5 only).

/** SASL OAUTHBEARER's key/value separator, ^A. */
const KVSEP = '\x01';

/** RFC 5801 saslname: ',' and '=' of the authorization identity escaped. */
function saslname(user: string): string {
  return user.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/**
 * The client's initial response of RFC 7628 section 3.1 (before base64):
 * `n,a=<user>,^Ahost=<host>^Aport=<port>^Aauth=Bearer <token>^A^A`. `n`: no channel
 * binding; `a=`: the mailbox to act as. Host and port are the upstream's as configured.
 */
export function oauthBearerMessage(user: string, host: string, port: number, token: string): string {
  if (/[\x00-\x1f\x7f]/.test(user + host + token)) throw new Error('OAUTHBEARER: control characters in the user, host or token');
  return `n,a=${saslname(user)},${KVSEP}host=${host}${KVSEP}port=${port}${KVSEP}auth=Bearer ${token}${KVSEP}${KVSEP}`;
}

/** The client's answer to the server's error challenge: a lone ^A (RFC 7628 section 3.2.3), base64. */
export const OAUTHBEARER_ERROR_ACK = Buffer.from(KVSEP).toString('base64');

/**
 * The server's error challenge (RFC 7628 section 3.2.2), base64, sent in a 334 after a refused
 * token; the client answers with a lone ^A and then gets the 535. "invalid_token": the token was
 * refused (the relay says no more; why is in its log).
 */
export const OAUTHBEARER_ERROR_CHALLENGE = Buffer.from(JSON.stringify({ status: 'invalid_token', schemes: 'bearer', scope: '' })).toString('base64');

/** A client's OAUTHBEARER message, read: the authorization identity (the login name here) and the bearer token. */
export interface BearerLogin {
  user: string;
  token: string;
}

/**
 * Pure: a client's initial response (base64) → the user and token, or why it is malformed (a
 * text for a 501 reply, never the token). The relay needs `a=` (the login name, as
 * XOAUTH2's `user=`): a token alone does not say which user entry to check it against.
 * Channel binding (`p=`) is refused: the relay offers none (RFC 7628 section 3.1).
 */
export function parseOAuthBearer(b64: string): BearerLogin | string {
  const text = Buffer.from(b64.trim(), 'base64').toString('utf8');
  const sep = text.indexOf(KVSEP);
  if (sep < 0 || !text.endsWith(KVSEP + KVSEP)) return 'not an OAUTHBEARER message (RFC 7628: gs2-header ^A key=value ^A ... ^A^A)';
  const gs2 = text.slice(0, sep).split(',');
  if (gs2.length !== 3 || gs2[2] !== '') return 'malformed GS2 header';
  if (gs2[0]!.startsWith('p=')) return 'channel binding is not supported';
  if (gs2[0] !== 'n' && gs2[0] !== 'y') return 'malformed GS2 header';
  if (!gs2[1]!.startsWith('a=') || gs2[1]!.length === 2) return 'the authorization identity (a=<login name>) is required';
  const rawUser = gs2[1]!.slice(2);
  if (/=(?!2C|3D)/.test(rawUser)) return 'malformed authorization identity';
  const user = rawUser.replace(/=2C/g, ',').replace(/=3D/g, '=');
  let token: string | undefined;
  for (const kv of text.slice(sep + 1, -2).split(KVSEP)) {
    const eq = kv.indexOf('=');
    if (eq <= 0) return 'malformed key=value pair';
    if (kv.slice(0, eq) === 'auth') {
      const m = /^Bearer +([\x21-\x7e]+)$/i.exec(kv.slice(eq + 1));
      if (!m) return 'auth= must be "Bearer <token>"';
      token = m[1]!;
    }
  }
  if (token === undefined) return 'no auth=Bearer <token>';
  if (/[\x00-\x1f\x7f]/.test(user)) return 'control characters in the authorization identity';
  return { user, token };
}
