// ServiceAccount-token logins: verifies a projected Kubernetes ServiceAccount
// token offline, against the cluster issuer's public keys (a JWKS the operator
// fetched from the API server's discovery endpoints and mounted beside the
// users file). No API call per login, and relay pods need no API access.
//
// Checked: the signature (asymmetric algorithms only, so "none" and HS256 with
// a public key as the secret are refused), iss, aud, exp (required) and nbf with
// a small clock skew, and the kubernetes.io claims (and sub) naming exactly the
// ServiceAccount of the user entry (and its uid, when the users file gives it). jose does the JOSE work (not hand-rolled).

import fs from 'node:fs';
import { createLocalJWKSet, errors as joseErrors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import { ValidationError } from './validate.js';

/**
 * What the API server signs with (RSA or ECDSA keys, --service-account-signing-key-file);
 * PS* for external signers. Never "none" or an HMAC.
 */
export const TOKEN_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512'];
/** Clock skew allowed on exp and nbf: nodes and the API server are NTP-synced, but not to the millisecond. */
export const CLOCK_SKEW_SECONDS = 30;
/** Longer than any JWT a client should send (a ServiceAccount token is ~1 KiB); parsing stops there. */
export const MAX_TOKEN_LENGTH = 16 * 1024;

export interface ServiceAccountRef {
  namespace: string;
  name: string;
  /**
   * The ServiceAccount's metadata.uid, when the operator knows it: a token must name this
   * uid, so the tokens of a deleted ServiceAccount stay refused when one of the same name is
   * created again (the API server makes the same check online; this relay checks offline).
   */
  uid?: string;
}

export interface TokenIssuer {
  issuer: string;
  audience: string;
  jwks: JSONWebKeySet;
}

export type TokenCheck = { ok: true; pod?: string } | { ok: false; reason: string };

/** The "kubernetes.io" claim of a bound ServiceAccount token. */
interface KubernetesClaims {
  namespace?: unknown;
  serviceaccount?: { name?: unknown; uid?: unknown };
  pod?: { name?: unknown; uid?: unknown };
}

export class TokenVerifier {
  private readonly keys: ReturnType<typeof createLocalJWKSet>;

  constructor(
    readonly issuer: TokenIssuer,
    private readonly now: () => number = Date.now,
  ) {
    this.keys = createLocalJWKSet(issuer.jwks);
  }

  /** Whether `token` is a valid token of exactly `account` for this relay; the reason when not (for the log, never the token). */
  async verify(token: string, account: ServiceAccountRef): Promise<TokenCheck> {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) return { ok: false, reason: 'not a token' };
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.keys, {
        issuer: this.issuer.issuer,
        audience: this.issuer.audience,
        algorithms: TOKEN_ALGORITHMS,
        clockTolerance: CLOCK_SKEW_SECONDS,
        requiredClaims: ['exp'],
        currentDate: new Date(this.now()),
      }));
    } catch (err) {
      return { ok: false, reason: describeJoseError(err) };
    }
    const k8s = payload['kubernetes.io'] as KubernetesClaims | undefined;
    const sub = `system:serviceaccount:${account.namespace}:${account.name}`;
    if (!k8s || typeof k8s !== 'object' || k8s.namespace !== account.namespace || k8s.serviceaccount?.name !== account.name || payload.sub !== sub) {
      return { ok: false, reason: `token of another ServiceAccount (sub ${String(payload.sub).slice(0, 200)})` };
    }
    if (account.uid !== undefined && k8s.serviceaccount?.uid !== account.uid) {
      return { ok: false, reason: 'token of a deleted ServiceAccount of that name (its uid is not the current one)' };
    }
    const pod = typeof k8s.pod?.name === 'string' ? k8s.pod.name : undefined;
    return pod ? { ok: true, pod } : { ok: true };
  }
}

function describeJoseError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return 'token expired';
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `claim ${err.claim} invalid: ${err.reason}`;
  if (err instanceof joseErrors.JWKSNoMatchingKey) return 'signed by a key the issuer does not publish';
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature invalid';
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return 'signing algorithm not allowed';
  if (err instanceof joseErrors.JOSEError) return err.code.toLowerCase().replace(/^err_/, '').replace(/_/g, ' ');
  return 'not a token';
}

/** The issuer's JWKS file (JSON, {"keys": [...]}), validated. */
export function loadJwks(file: string): JSONWebKeySet {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ValidationError(file, [`cannot read the JWKS file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ValidationError(file, [`not JSON: ${(err as Error).message}`]);
  }
  const keys = (doc as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new ValidationError(file, ['must be a JSON Web Key Set: {"keys": [...]}']);
  const problems: string[] = [];
  keys.forEach((k: unknown, i) => {
    const kty = (k as { kty?: unknown } | null)?.kty;
    if (kty !== 'RSA' && kty !== 'EC' && kty !== 'OKP') problems.push(`keys[${i}]: kty must be RSA, EC or OKP (public keys only)`);
    else if ((k as { d?: unknown }).d !== undefined) problems.push(`keys[${i}]: a private key; the JWKS must hold public keys only`);
  });
  if (problems.length) throw new ValidationError(file, problems);
  return { keys: keys as JSONWebKeySet['keys'] };
}
