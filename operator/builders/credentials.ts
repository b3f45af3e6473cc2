// Per-user credential Secrets and the checks on referenced Secrets: small pure
// decisions, each answering nothing (fine) or a Problem (reason + a message
// that says what to fix). Messages never contain secret values.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  BASIC_AUTH_PASSWORD_KEY,
  BASIC_AUTH_USERNAME_KEY,
  ANNOTATION_GENERATED_FOR_USER,
  ANNOTATION_GENERATED_PASSWORD_SHA256,
  Reason,
  type PasswordPolicySpec,
  type SecretKeyReference,
  type SmtpRelay,
  type UserSpec,
} from '../api/v1alpha1.js';
import { childMetadata, userSecretName } from './meta.js';
import type { Secret } from './users.js';

export interface Problem {
  reason: string;
  message: string;
}

/** A Secret as read from the API server (values base64 in `data`). */
export interface SecretLike {
  metadata?: { name?: string; annotations?: Record<string, string> | undefined } | undefined;
  type?: string | undefined;
  data?: Record<string, string> | undefined;
}

/** Longest password accepted; AUTH lines have a length limit and scrypt input need not be unbounded. */
export const MAX_PASSWORD_LENGTH = 512;
/** Generated passwords are at least this long (≈190 bits from 62 symbols), or the policy minimum if longer. */
export const GENERATED_PASSWORD_LENGTH = 32;

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

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/**
 * A random password of `length` letters and digits (no symbols: it survives
 * every config format and shell it is pasted into). Rejection sampling keeps
 * the distribution uniform. `random` is injected for tests.
 */
export function generatePassword(length: number, random: (n: number) => Buffer = randomBytes): string {
  const limit = 256 - (256 % ALPHABET.length); // 248: bytes at or above are discarded
  let out = '';
  while (out.length < length) {
    for (const b of random(length * 2)) {
      if (b < limit && out.length < length) out += ALPHABET[b % ALPHABET.length];
    }
  }
  return out;
}

export function generatedPasswordLength(policy: PasswordPolicySpec): number {
  return Math.max(policy.minLength, GENERATED_PASSWORD_LENGTH);
}

/** The kubernetes.io/basic-auth Secret the operator generates, and owns, for a user whose Secret does not exist. */
export function buildGeneratedUserSecret(relay: SmtpRelay, user: UserSpec, password: string): Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: childMetadata(relay, userSecretName(relay, user), {
      annotations: { [ANNOTATION_GENERATED_FOR_USER]: user.name, [ANNOTATION_GENERATED_PASSWORD_SHA256]: passwordDigest(password) },
    }),
    type: 'kubernetes.io/basic-auth',
    data: {
      [BASIC_AUTH_PASSWORD_KEY]: Buffer.from(password, 'utf8').toString('base64'),
      [BASIC_AUTH_USERNAME_KEY]: Buffer.from(user.name, 'utf8').toString('base64'),
    },
  };
}

/** SHA-256 (hex) of a password, the marker a generated Secret carries (see ANNOTATION_GENERATED_PASSWORD_SHA256). */
export function passwordDigest(password: string): string {
  return createHash('sha256').update(password, 'utf8').digest('hex');
}

/**
 * Whether `password` (read from `secret`) is still the one the operator
 * generated into it: the Secret carries the generated-password digest and the
 * password matches it. An explicit record, not a guess from the password's look:
 * a user-supplied Secret has no marker, and a generated Secret whose password
 * the user has changed no longer matches its marker. Either way the password
 * is then treated as user-chosen (full scrypt cost).
 */
export function isGeneratedPassword(secret: SecretLike, password: string): boolean {
  const marker = secret.metadata?.annotations?.[ANNOTATION_GENERATED_PASSWORD_SHA256];
  if (typeof marker !== 'string' || !/^[0-9a-f]{64}$/.test(marker)) return false;
  return timingSafeEqual(Buffer.from(marker, 'hex'), Buffer.from(passwordDigest(password), 'hex'));
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
