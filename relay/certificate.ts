// The server certificate: loaded from the mounted files, checked, and built into
// a SecureContext before it replaces the one in use, so a broken or mismatched
// pair never leaves the relay without a certificate.

import crypto from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import type { TlsVersion } from './config-types.js';

export interface TlsPolicy {
  minVersion: TlsVersion;
  ciphers: string;
}

/** OpenSSL options: no compression (CRIME), no renegotiation, server cipher order. */
export const SECURE_OPTIONS =
  crypto.constants.SSL_OP_NO_COMPRESSION |
  crypto.constants.SSL_OP_NO_RENEGOTIATION |
  crypto.constants.SSL_OP_CIPHER_SERVER_PREFERENCE;

/**
 * Session-ticket keys every TLS context of this process uses; undefined = OpenSSL's own
 * (random per context). The workers of one relay share the primary's (relay/workers.ts),
 * so a client resumes its TLS session whichever worker its next connection reaches.
 */
let ticketKeys: Buffer | undefined;

export function useTicketKeys(keys: Buffer): void {
  if (keys.length !== 48) throw new Error(`TLS ticket keys must be 48 bytes, got ${keys.length}`);
  ticketKeys = keys;
}

export function tlsServerOptions(policy: TlsPolicy): tls.SecureContextOptions {
  return {
    minVersion: policy.minVersion,
    maxVersion: 'TLSv1.3',
    ciphers: policy.ciphers,
    honorCipherOrder: true,
    secureOptions: SECURE_OPTIONS,
    ...(ticketKeys ? { ticketKeys } : {}),
  };
}

export interface LoadedCertificate {
  key: Buffer;
  cert: Buffer;
  context: tls.SecureContext;
  notAfter: Date;
  subject: string;
  fingerprint256: string;
}

/** Reads and checks a cert/key pair; throws with a message that says what is wrong. */
export function loadCertificate(certFile: string, keyFile: string, policy: TlsPolicy): LoadedCertificate {
  const cert = fs.readFileSync(certFile);
  const key = fs.readFileSync(keyFile);
  let x509: crypto.X509Certificate;
  try {
    x509 = new crypto.X509Certificate(cert);
  } catch (err) {
    throw new Error(`${certFile}: not a PEM certificate (${(err as Error).message})`);
  }
  let privateKey: crypto.KeyObject;
  try {
    privateKey = crypto.createPrivateKey(key);
  } catch (err) {
    throw new Error(`${keyFile}: not a PEM private key (${(err as Error).message})`);
  }
  if (!x509.checkPrivateKey(privateKey)) throw new Error(`${keyFile} does not match the certificate in ${certFile}`);
  const notAfter = new Date(x509.validTo);
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({ ...tlsServerOptions(policy), key, cert });
  } catch (err) {
    throw new Error(`${certFile}/${keyFile}: TLS rejected the pair (${(err as Error).message})`);
  }
  // cert-manager leaves the subject empty when a Certificate has no commonName (x509.subject undefined).
  const subject = (x509.subject ?? '').replace(/\n/g, ', ') || `(empty subject) ${x509.subjectAltName ?? ''}`.trim();
  return { key, cert, context, notAfter, subject, fingerprint256: x509.fingerprint256 };
}
