// DKIM signing of relayed messages: key loading and validation, choosing the
// key for a message's From: domain, and signing with nodemailer's DKIM signer
// (rsa-sha256, c=relaxed/relaxed). The signed message is the original bytes
// with one DKIM-Signature header field prepended; nothing else changes.
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { domainToASCII } from 'node:url';
import addressparser from 'nodemailer/lib/addressparser';
import DKIM from 'nodemailer/lib/dkim';
import type { DkimKeyConfig } from './config-types.js';

export interface DkimKey {
  /** Lower-case ASCII (punycode) domain, the d= tag. */
  domain: string;
  selector: string;
  keyFile: string;
  privateKey: KeyObject;
}

/** Smallest RSA modulus accepted; RFC 8301 requires verifiers to refuse < 1024. */
export const MIN_RSA_BITS = 1024;

/**
 * Parses and checks one DKIM private key (PEM text). Throws an Error naming the
 * file. Only RSA: nodemailer's signer produces rsa-sha256 signatures only, and
 * with any other key type it would silently emit no signature at all.
 */
export function parseDkimKey(cfg: DkimKeyConfig, pem: string | Buffer): DkimKey {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new Error(`dkim key ${cfg.keyFile} (domain ${cfg.domain}): not a PEM private key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'rsa') {
    throw new Error(
      `dkim key ${cfg.keyFile} (domain ${cfg.domain}): key type ${key.asymmetricKeyType ?? 'unknown'} is not supported; use an RSA key (2048 bits recommended)`,
    );
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) {
    throw new Error(`dkim key ${cfg.keyFile} (domain ${cfg.domain}): RSA key has ${bits} bits, at least ${MIN_RSA_BITS} needed (2048 recommended)`);
  }
  const domain = normalizeDomain(cfg.domain);
  if (!domain) throw new Error(`dkim key ${cfg.keyFile}: domain ${JSON.stringify(cfg.domain)} is not a domain name`);
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/.test(cfg.selector)) {
    throw new Error(`dkim key ${cfg.keyFile} (domain ${cfg.domain}): selector ${JSON.stringify(cfg.selector)} is not a valid DKIM selector`);
  }
  return { domain, selector: cfg.selector, keyFile: cfg.keyFile, privateKey: key };
}

/** Lower-case ASCII form of a domain (IDN to punycode); '' when invalid. */
export function normalizeDomain(domain: string): string {
  const d = domain.trim().replace(/\.$/, '');
  if (!d || /[\s@]/.test(d)) return '';
  return domainToASCII(d.toLowerCase());
}

/**
 * The header block of a message: the bytes before the first empty line
 * (CRLF CRLF); the whole message when there is no body.
 */
export function headerBlock(message: Buffer): string {
  const end = message.indexOf('\r\n\r\n');
  // latin1 keeps every byte as one char; addresses are ASCII or UTF-8 (decoded below).
  return message.subarray(0, end < 0 ? message.length : end + 2).toString('latin1');
}

/** Values of every From: header field, unfolded, decoded as UTF-8. */
export function fromFieldValues(message: Buffer): string[] {
  const head = headerBlock(message);
  const values: string[] = [];
  // Unfold (RFC 5322 §2.2.3) and split into fields.
  const unfolded = head.replace(/\r\n(?=[ \t])/g, '');
  for (const line of unfolded.split('\r\n')) {
    const m = /^from[ \t]*:(.*)$/is.exec(line);
    if (m) values.push(Buffer.from(m[1]!, 'latin1').toString('utf8'));
  }
  return values;
}

/** Domains of all addresses in the From: header field(s), normalized, in order. */
export function fromDomains(message: Buffer): string[] {
  const domains: string[] = [];
  for (const value of fromFieldValues(message)) {
    for (const a of addressparser(value, { flatten: true })) {
      const address = a.address ?? '';
      const at = address.lastIndexOf('@');
      if (at < 0) continue;
      const d = normalizeDomain(address.slice(at + 1));
      if (d && !domains.includes(d)) domains.push(d);
    }
  }
  return domains;
}

/**
 * The key to sign with: for the first From: domain that has one, the key of
 * exactly that domain, else of its closest parent domain (a d= of a parent
 * domain still aligns under DMARC's relaxed alignment). The first key listed
 * wins when a domain has several. undefined: do not sign.
 */
export function selectDkimKey<K extends { domain: string }>(keys: readonly K[], domains: readonly string[]): K | undefined {
  for (const domain of domains) {
    const labels = domain.split('.');
    for (let i = 0; i < labels.length - 1; i++) {
      const candidate = labels.slice(i).join('.');
      const key = keys.find((k) => k.domain === candidate);
      if (key) return key;
    }
  }
  return undefined;
}

/**
 * Signs `message` with `key`. Returns the DKIM-Signature header field
 * followed by the unchanged original bytes; throws if the signer produced
 * anything else (so a message is never sent altered, nor silently unsigned).
 */
export async function signMessage(key: DkimKey, message: Buffer): Promise<Buffer> {
  const signer = new DKIM({
    keys: [{ domainName: key.domain, keySelector: key.selector, privateKey: key.privateKey }],
    hashAlgo: 'sha256',
  });
  const chunks: Buffer[] = [];
  const out = signer.sign(message);
  for await (const c of out) chunks.push(c as Buffer);
  const signed = Buffer.concat(chunks);
  const prefixLen = signed.length - message.length;
  if (
    prefixLen <= 0 ||
    !signed.subarray(0, 15).toString('latin1').startsWith('DKIM-Signature:') ||
    !signed.subarray(prefixLen).equals(message)
  ) {
    throw new Error(`DKIM signing for ${key.domain} did not produce a signature over the unchanged message`);
  }
  return signed;
}
