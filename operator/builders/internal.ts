// The relay's internal Secret "<relay>-internal": the token the operator sends to the
// relay's control endpoints (GET /queue, POST/DELETE /drain on the metrics port) and
// the token sibling relays present to one another on the peer channel. Generated once
// (crypto.randomBytes), owned by the SmtpRelay, never logged or shown in status.

import { randomBytes } from 'node:crypto';
import { CONTROL_TOKEN_KEY, PEER_TOKEN_KEY, type SmtpRelay } from '../api/v1alpha1.js';
import { childMetadata, childNames } from './meta.js';
import type { Secret } from './users.js';

/** 32 random bytes, base64url: 256 bits, safe in an HTTP header and a file. */
export function generateToken(random: (n: number) => Buffer = randomBytes): string {
  return random(32).toString('base64url');
}

/** The Secret with freshly generated tokens; the caller creates it only when absent. */
export function buildInternalSecret(relay: SmtpRelay, random: (n: number) => Buffer = randomBytes): Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: childMetadata(relay, childNames(relay).internalSecret),
    type: 'Opaque',
    data: {
      [CONTROL_TOKEN_KEY]: Buffer.from(generateToken(random), 'utf8').toString('base64'),
      [PEER_TOKEN_KEY]: Buffer.from(generateToken(random), 'utf8').toString('base64'),
    },
  };
}

/** The control token from the Secret as read (base64 `data`), or undefined when missing or empty. */
export function controlToken(secret: { data?: Record<string, string> | undefined } | undefined): string | undefined {
  const b64 = secret?.data?.[CONTROL_TOKEN_KEY];
  if (!b64) return undefined;
  const token = Buffer.from(b64, 'base64').toString('utf8').trim();
  return token.length > 0 ? token : undefined;
}
