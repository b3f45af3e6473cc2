// Per-user credential Secrets the operator generates, and how it recognises
// one whose password it still owns. The checks on Secrets users supply are in
// operator/status/secret-checks.ts.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  BASIC_AUTH_PASSWORD_KEY,
  BASIC_AUTH_USERNAME_KEY,
  ANNOTATION_GENERATED_FOR_USER,
  ANNOTATION_GENERATED_PASSWORD_SHA256,
  type PasswordPolicySpec,
  type SmtpRelay,
  type UserSpec,
} from '../api/v1alpha1.js';
import { childMetadata, userSecretName } from './meta.js';
import type { Secret } from './users.js';

/** A Secret as read from the API server (values base64 in `data`). */
export interface SecretLike {
  metadata?: { name?: string; annotations?: Record<string, string> | undefined } | undefined;
  type?: string | undefined;
  data?: Record<string, string> | undefined;
}

/** Generated passwords are at least this long (≈190 bits from 62 symbols), or the policy minimum if longer. */
export const GENERATED_PASSWORD_LENGTH = 32;

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
