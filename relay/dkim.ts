// DKIM signing of relayed messages: key loading and validation, choosing the
// key for a message's From: domain (read by relay/policy/headers.ts, as the sender check
// reads it), and signing (c=relaxed/relaxed): RSA keys
// with nodemailer's DKIM signer (rsa-sha256), Ed25519 keys (ed25519-sha256,
// RFC 8463, which nodemailer's signer cannot do) with the small signer below.
// The signed message is the original bytes with one DKIM-Signature header
// field prepended; nothing else changes.
import { createHash, createPrivateKey, sign as cryptoSign, type KeyObject } from 'node:crypto';
import DKIM from 'nodemailer/lib/dkim';
import type { DkimKeyConfig } from './config-types.js';
import { normalizeDomain } from './policy/headers.js';
export { fromDomains, normalizeDomain } from './policy/headers.js';

export interface DkimKey {
  algorithm: 'rsa-sha256' | 'ed25519-sha256';
  /** Lower-case ASCII (punycode) domain, the d= tag. */
  domain: string;
  selector: string;
  keyFile: string;
  privateKey: KeyObject;
}

/** Smallest RSA modulus accepted; RFC 8301 requires verifiers to refuse < 1024. */
export const MIN_RSA_BITS = 1024;

/**
 * Parses and checks one DKIM private key (PEM text): RSA (at least 1024 bits)
 * or Ed25519. Throws an Error naming the file.
 */
export function parseDkimKey(cfg: DkimKeyConfig, pem: string | Buffer): DkimKey {
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new Error(`dkim key ${cfg.keyFile} (domain ${cfg.domain}): not a PEM private key (${(err as Error).message})`);
  }
  const type = key.asymmetricKeyType;
  if (type !== 'rsa' && type !== 'ed25519') {
    throw new Error(
      `dkim key ${cfg.keyFile} (domain ${cfg.domain}): key type ${type ?? 'unknown'} is not supported; use an RSA (2048 bits recommended) or Ed25519 key`,
    );
  }
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (type === 'rsa' && bits < MIN_RSA_BITS) {
    throw new Error(`dkim key ${cfg.keyFile} (domain ${cfg.domain}): RSA key has ${bits} bits, at least ${MIN_RSA_BITS} needed (2048 recommended)`);
  }
  const domain = normalizeDomain(cfg.domain);
  if (!domain) throw new Error(`dkim key ${cfg.keyFile}: domain ${JSON.stringify(cfg.domain)} is not a domain name`);
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/.test(cfg.selector)) {
    throw new Error(`dkim key ${cfg.keyFile} (domain ${cfg.domain}): selector ${JSON.stringify(cfg.selector)} is not a valid DKIM selector`);
  }
  return { algorithm: type === 'rsa' ? 'rsa-sha256' : 'ed25519-sha256', domain, selector: cfg.selector, keyFile: cfg.keyFile, privateKey: key };
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
  const signed = key.algorithm === 'ed25519-sha256' ? signEd25519(key, message) : await signRsa(key, message);
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

async function signRsa(key: DkimKey, message: Buffer): Promise<Buffer> {
  const signer = new DKIM({
    keys: [{ domainName: key.domain, keySelector: key.selector, privateKey: key.privateKey }],
    hashAlgo: 'sha256',
  });
  const chunks: Buffer[] = [];
  const out = signer.sign(message);
  for await (const c of out) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** The header fields signed (the same list nodemailer's signer uses), lower case. */
export const SIGNED_FIELDS = (
  'from:sender:reply-to:subject:date:message-id:to:cc:mime-version:content-type:content-transfer-encoding:' +
  'content-id:content-description:resent-date:resent-from:resent-sender:resent-to:resent-cc:resent-message-id:' +
  'in-reply-to:references:list-id:list-help:list-unsubscribe:list-unsubscribe-post:list-subscribe:list-post:' +
  'list-owner:list-archive'
).split(':');

/** Relaxed header canonicalization (RFC 6376 §3.4.2) of one field; SP and HTAB are the only whitespace. */
export function relaxedHeader(field: string): string {
  const colon = field.indexOf(':');
  const name = field.slice(0, colon).replace(/[ \t]+$/, '').toLowerCase();
  const value = field
    .slice(colon + 1)
    .replace(/\r\n/g, '')
    .replace(/[ \t]+/g, ' ')
    .replace(/^ | $/g, '');
  return `${name}:${value}`;
}

/** Relaxed body canonicalization (RFC 6376 §3.4.4). */
export function relaxedBody(body: Buffer): Buffer {
  const lines = body.toString('latin1').split('\r\n').map((l) => l.replace(/[ \t]+/g, ' ').replace(/ $/, ''));
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines.length ? Buffer.from(lines.join('\r\n') + '\r\n', 'latin1') : Buffer.alloc(0);
}

/** Joins DKIM tags with "; ", folding so that no line gets longer than 78 characters. */
function foldTags(start: string, tags: string[]): string {
  let out = start;
  let lineLen = start.length;
  tags.forEach((tag, i) => {
    const piece = tag + (i < tags.length - 1 ? ';' : '');
    if (lineLen + 1 + piece.length > 78) {
      out += '\r\n ' + piece;
      lineLen = 1 + piece.length;
    } else {
      out += ' ' + piece;
      lineLen += 1 + piece.length;
    }
  });
  return out;
}

/** ed25519-sha256 (RFC 8463): Ed25519 over the SHA-256 hash of the canonicalized header data. */
function signEd25519(key: DkimKey, message: Buffer): Buffer {
  const end = message.indexOf('\r\n\r\n');
  const head = message.subarray(0, end < 0 ? message.length : end + 2).toString('latin1');
  const body = end < 0 ? Buffer.alloc(0) : message.subarray(end + 4);
  const fields = head.split(/\r\n(?![ \t])/).filter((f) => f.includes(':'));
  // Sign the bottom-most instance of each listed field, as nodemailer's signer does.
  const chosen: { name: string; field: string }[] = [];
  for (const name of SIGNED_FIELDS) {
    for (let i = fields.length - 1; i >= 0; i--) {
      const f = fields[i]!;
      if (f.slice(0, f.indexOf(':')).replace(/[ \t]+$/, '').toLowerCase() === name) {
        chosen.push({ name, field: f });
        break;
      }
    }
  }
  const bh = createHash('sha256').update(relaxedBody(body)).digest('base64');
  const unsigned = foldTags('DKIM-Signature:', [
    'v=1',
    'a=ed25519-sha256',
    'c=relaxed/relaxed',
    `d=${key.domain}`,
    `s=${key.selector}`,
    `t=${Math.floor(Date.now() / 1000)}`,
    `bh=${bh}`,
    `h=${chosen.map((c) => c.name).join(':')}`,
  ]) + ';\r\n b=';
  const data = chosen.map((c) => relaxedHeader(c.field) + '\r\n').join('') + relaxedHeader(unsigned);
  const signature = cryptoSign(null, createHash('sha256').update(data, 'latin1').digest(), key.privateKey).toString('base64');
  return Buffer.concat([Buffer.from(unsigned + signature + '\r\n', 'latin1'), message]);
}
