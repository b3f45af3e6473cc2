// Checks on the Secrets a relay references (users' passwords, upstream
// credentials and CA, the given TLS Secret): small pure decisions, each
// answering nothing (fine) or a Problem whose reason is a condition reason and
// whose message says what to fix (decisions.ts turns them into conditions).
// Messages never contain secret values.

import { createPrivateKey } from 'node:crypto';
import {
  BASIC_AUTH_PASSWORD_KEY,
  BASIC_AUTH_USERNAME_KEY,
  Reason,
  type PasswordPolicySpec,
  type SecretKeyReference,
} from '../api/v1alpha1.js';
import type { SecretLike } from '../builders/credentials.js';
import type { Problem } from './conditions.js';

/** Longest password accepted; AUTH lines have a length limit and scrypt input need not be unbounded. */
export const MAX_PASSWORD_LENGTH = 512;
export const PasswordRefusal = {
  TooShort: 'TooShort',
  TooLong: 'TooLong',
  ControlCharacter: 'ControlCharacter',
  SameAsUserName: 'SameAsUserName',
  SingleCharacter: 'SingleCharacter',
} as const;

/**
 * Why a password is refused, or undefined when it meets the policy. Length
 * counts characters (code points), not bytes.
 */
export function checkPassword(password: string, policy: PasswordPolicySpec, userName: string): Problem | undefined {
  const length = [...password].length;
  if (length < policy.minLength) {
    return {
      reason: PasswordRefusal.TooShort,
      message: `password has ${length} characters; the policy (spec.auth.passwordPolicy.minLength) requires at least ${policy.minLength}`,
    };
  }
  if (length > MAX_PASSWORD_LENGTH) {
    return { reason: PasswordRefusal.TooLong, message: `password has ${length} characters; at most ${MAX_PASSWORD_LENGTH} are accepted` };
  }
  // NUL separates the fields of AUTH PLAIN and CR/LF end an SMTP line: such a password cannot be sent.
  if (/[\u0000-\u001f\u007f]/.test(password)) {
    return { reason: PasswordRefusal.ControlCharacter, message: 'password contains a control character (NUL, CR, LF, tab...), which SMTP AUTH cannot carry' };
  }
  if (password.toLowerCase() === userName.toLowerCase()) {
    return { reason: PasswordRefusal.SameAsUserName, message: 'password is the user name' };
  }
  if (new Set(password).size === 1) {
    return { reason: PasswordRefusal.SingleCharacter, message: 'password repeats a single character' };
  }
  return undefined;
}

function decode(secret: SecretLike, key: string): string | undefined {
  const b64 = secret.data?.[key];
  return typeof b64 === 'string' ? Buffer.from(b64, 'base64').toString('utf8') : undefined;
}

const PASSWORD_SECRET_TYPES = new Set(['kubernetes.io/basic-auth', 'Opaque']);

/** A user's password from its Secret, or why the Secret cannot be used. */
export function readUserPassword(secret: SecretLike, secretName: string): { password: string } | Problem {
  if (secret.type !== undefined && !PASSWORD_SECRET_TYPES.has(secret.type)) {
    return { reason: Reason.UserSecretInvalid, message: `Secret ${secretName} has type ${secret.type}; use kubernetes.io/basic-auth with a "password" key` };
  }
  const password = decode(secret, BASIC_AUTH_PASSWORD_KEY);
  if (password === undefined || password === '') {
    return { reason: Reason.UserSecretInvalid, message: `Secret ${secretName} has no "password" key (kubernetes.io/basic-auth); add it` };
  }
  return { password };
}

/** The upstream credentials Secret must be basic-auth-shaped: non-empty username and password. */
export function checkUpstreamCredentialsSecret(secret: SecretLike | undefined, secretName: string): Problem | undefined {
  if (!secret) {
    return {
      reason: Reason.UpstreamCredentialsNotFound,
      message: `Secret ${secretName} (spec.upstream.credentialsSecretRef) does not exist; create a kubernetes.io/basic-auth Secret with "username" and "password"`,
    };
  }
  const missing = [BASIC_AUTH_USERNAME_KEY, BASIC_AUTH_PASSWORD_KEY].filter((k) => !decode(secret, k));
  if (missing.length > 0) {
    return {
      reason: Reason.UpstreamCredentialsInvalid,
      message: `Secret ${secretName} (spec.upstream.credentialsSecretRef) lacks ${missing.map((k) => `"${k}"`).join(' and ')}; it needs non-empty "username" and "password"`,
    };
  }
  const username = decode(secret, BASIC_AUTH_USERNAME_KEY) ?? '';
  const password = decode(secret, BASIC_AUTH_PASSWORD_KEY) ?? '';
  if (/[\r\n\u0000]/.test(username) || /[\r\n\u0000]/.test(password)) {
    return {
      reason: Reason.UpstreamCredentialsInvalid,
      message: `Secret ${secretName} (spec.upstream.credentialsSecretRef): "username" or "password" contains a line break or NUL (often a trailing newline from echo); remove it`,
    };
  }
  return undefined;
}

/**
 * The Secret key spec.upstream.oauth2 mounts: a client secret (one line) or, for Google, a
 * service account JSON key with client_email and an RSA private_key. Messages name the
 * field and key, never the content.
 */
export function checkUpstreamOAuth2Secret(secret: SecretLike | undefined, source: { ref: SecretKeyReference; field: string }, kind: 'client-secret' | 'service-account'): Problem | undefined {
  const { ref, field } = source;
  const what = kind === 'service-account' ? 'the service account JSON key' : 'the client secret';
  if (!secret) {
    return { reason: Reason.UpstreamOAuth2SecretNotFound, message: `Secret ${ref.name} (${field}) does not exist; create it with ${what} under "${ref.key}"` };
  }
  const value = decode(secret, ref.key)?.replace(/\r?\n$/, '');
  if (!value) return { reason: Reason.UpstreamOAuth2SecretInvalid, message: `Secret ${ref.name} (${field}) has no "${ref.key}"; put ${what} there` };
  if (kind === 'client-secret') {
    if (/[\u0000-\u001f\u007f]/.test(value)) {
      return { reason: Reason.UpstreamOAuth2SecretInvalid, message: `Secret ${ref.name} (${field}): "${ref.key}" contains a line break or control character; it must hold the client secret alone` };
    }
    return undefined;
  }
  const invalid = (why: string): Problem => ({ reason: Reason.UpstreamOAuth2SecretInvalid, message: `Secret ${ref.name} (${field}): "${ref.key}" ${why}; use the JSON key file downloaded for the service account` });
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(value) as Record<string, unknown>;
  } catch {
    return invalid('is not JSON');
  }
  if (doc.type !== undefined && doc.type !== 'service_account') return invalid(`has type ${JSON.stringify(doc.type)}, not "service_account"`);
  if (typeof doc.client_email !== 'string' || !doc.client_email.includes('@')) return invalid('has no client_email');
  try {
    if (typeof doc.private_key !== 'string' || createPrivateKey(doc.private_key).asymmetricKeyType !== 'rsa') return invalid('has no RSA private_key');
  } catch {
    return invalid('has a private_key that is not a PEM private key');
  }
  return undefined;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;

/** The upstream CA Secret must hold at least one PEM certificate under its key. */
export function checkUpstreamCaSecret(secret: SecretLike | undefined, ref: SecretKeyReference): Problem | undefined {
  if (!secret) {
    return { reason: Reason.UpstreamCaNotFound, message: `Secret ${ref.name} (spec.upstream.caSecretRef) does not exist; create it with a PEM CA bundle under "${ref.key}"` };
  }
  const pem = decode(secret, ref.key);
  if (!pem || !PEM_CERT.test(pem)) {
    return { reason: Reason.UpstreamCaInvalid, message: `Secret ${ref.name} (spec.upstream.caSecretRef) has no PEM certificate under "${ref.key}"` };
  }
  return undefined;
}

/** A TLS Secret given by spec.tls.secretName must exist with tls.crt and tls.key in PEM. */
export function checkTlsSecret(secret: SecretLike | undefined, secretName: string): Problem | undefined {
  if (!secret) {
    return { reason: Reason.TlsSecretNotFound, message: `Secret ${secretName} (spec.tls.secretName) does not exist; create a kubernetes.io/tls Secret with tls.crt and tls.key` };
  }
  const crt = decode(secret, 'tls.crt');
  const key = decode(secret, 'tls.key');
  if (!crt || !PEM_CERT.test(crt) || !key || !/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key)) {
    return { reason: Reason.TlsSecretInvalid, message: `Secret ${secretName} (spec.tls.secretName) needs a PEM certificate in tls.crt and a PEM private key in tls.key` };
  }
  return undefined;
}
