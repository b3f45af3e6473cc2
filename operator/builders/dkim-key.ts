// DKIM: the TXT record to publish for a key, and the Secret a generated key
// lives in. Key generation itself is random and stays with the caller.

import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { ANNOTATION_DKIM_RECORD, DKIM_PRIVATE_KEY_KEY, Reason, type DkimSpec, type DnsRecord, type SmtpRelay } from '../api/v1alpha1.js';
import { dkimRecordName } from './relay-config.js';
import type { Problem } from '../status/conditions.js';
import type { SecretLike } from './credentials.js';
import { childMetadata, generatedDkimSecretName } from './meta.js';
import type { Secret } from './users.js';

/**
 * The DKIM TXT record (RFC 6376 §3.6.1, RFC 8463 for Ed25519) of a public key.
 * RSA: p= is the base64 DER SubjectPublicKeyInfo. Ed25519: p= is the raw
 * 32-byte key. DNS servers split long values into 255-byte strings themselves.
 */
export function dkimTxtRecord(entry: Pick<DkimSpec, 'domain' | 'selector'>, publicKey: KeyObject): DnsRecord {
  let k: string;
  let p: string;
  if (publicKey.asymmetricKeyType === 'rsa') {
    k = 'rsa';
    p = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
  } else if (publicKey.asymmetricKeyType === 'ed25519') {
    k = 'ed25519';
    // The SPKI DER of an Ed25519 key is a fixed 12-byte header followed by the raw key.
    p = publicKey.export({ type: 'spki', format: 'der' }).subarray(12).toString('base64');
  } else {
    throw new Error(`DKIM keys must be RSA or Ed25519, not ${publicKey.asymmetricKeyType}`);
  }
  return { type: 'TXT', name: dkimRecordName(entry), value: `v=DKIM1; k=${k}; p=${p}` };
}

/** The TXT record of the key in a DKIM Secret, or why the key cannot be used. */
export function dkimRecordFromSecret(
  entry: DkimSpec,
  secret: SecretLike | undefined,
  secretName: string,
): { record: DnsRecord } | Problem {
  const key = entry.secretRef?.key ?? DKIM_PRIVATE_KEY_KEY;
  if (!secret) {
    return { reason: Reason.DkimSecretNotFound, message: `Secret ${secretName} (DKIM key for ${entry.domain}, selector ${entry.selector}) does not exist; create it with a PEM private key under "${key}", or remove secretRef to have one generated` };
  }
  const b64 = secret.data?.[key];
  if (!b64) {
    return { reason: Reason.DkimKeyInvalid, message: `Secret ${secretName} has no "${key}" key holding the DKIM private key for ${entry.domain}` };
  }
  try {
    const priv = createPrivateKey(Buffer.from(b64, 'base64').toString('utf8'));
    const t = priv.asymmetricKeyType;
    if (t === 'rsa' && (priv.asymmetricKeyDetails?.modulusLength ?? 0) < 1024) {
      return { reason: Reason.DkimKeyInvalid, message: `Secret ${secretName}: the RSA DKIM key for ${entry.domain} has ${priv.asymmetricKeyDetails?.modulusLength} bits; use at least 1024 (2048 recommended)` };
    }
    return { record: dkimTxtRecord(entry, createPublicKey(priv)) };
  } catch (err) {
    return { reason: Reason.DkimKeyInvalid, message: `Secret ${secretName}: "${key}" is not a usable RSA or Ed25519 PEM private key for ${entry.domain} (${(err as Error).message})` };
  }
}

/** A new RSA 2048 DKIM private key, PKCS#8 PEM (random: for the controller, not for builders). */
export function generateDkimPrivateKey(): string {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** The Secret the operator generates, and owns, for a DKIM entry without secretRef. */
export function buildGeneratedDkimSecret(relay: SmtpRelay, entry: DkimSpec, privateKeyPem: string): Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: childMetadata(relay, generatedDkimSecretName(relay, entry), { annotations: { [ANNOTATION_DKIM_RECORD]: dkimRecordName(entry) } }),
    type: 'Opaque',
    data: { [DKIM_PRIVATE_KEY_KEY]: Buffer.from(privateKeyPem, 'utf8').toString('base64') },
  };
}
