// What readiness needs from the TLS Secret: facts about it, never its key.

import { X509Certificate } from 'node:crypto';
import { rfc3339 } from '../../status/conditions.js';
import type { TlsSecretSummary } from '../../status/decisions.js';
import { checkTlsSecret } from '../../status/secret-checks.js';
import type { SecretObject } from '../secrets.js';

/** notAfter (RFC 3339) of the first certificate in a PEM chain, or undefined when unreadable. */
export function certificateNotAfter(pem: string): string | undefined {
  try {
    return rfc3339(new Date(new X509Certificate(pem).validTo));
  } catch {
    return undefined;
  }
}

export function summarizeTlsSecret(secret: SecretObject | undefined, name: string): TlsSecretSummary {
  const crt = secret?.data?.['tls.crt'];
  const pem = typeof crt === 'string' ? Buffer.from(crt, 'base64').toString('utf8') : undefined;
  const notAfter = pem ? certificateNotAfter(pem) : undefined;
  const problem = checkTlsSecret(secret, name);
  return { hasCertificate: !!pem, ...(notAfter ? { notAfter } : {}), ...(problem ? { problem } : {}) };
}
