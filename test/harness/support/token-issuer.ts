// The test playing the Kubernetes API server's ServiceAccount token issuer:
// its own signing key, a JWKS of it, and tokens with the claims the API server
// puts in a bound (projected) token. jose signs; nothing hand-rolled.

import { createPrivateKey, createPublicKey } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JSONWebKeySet, type JWK } from 'jose';

export const TEST_ISSUER = 'https://kubernetes.default.svc.cluster.local';

export const TEST_ACCOUNT_UID = '0b1c7a4e-1111-4222-8333-444455556666';

export interface TokenClaims {
  namespace: string;
  serviceAccount: string;
  audience: string | string[];
  pod?: string;
  /** Seconds from now; negative = already expired. Default 600. */
  expiresIn?: number;
  /** Seconds from now the token becomes valid; default 0 (now). */
  notBefore?: number;
  issuer?: string;
  /** The ServiceAccount's uid (kubernetes.io.serviceaccount.uid); default a fixed one. */
  uid?: string;
}

export class TestTokenIssuer {
  private constructor(
    private readonly privateKey: CryptoKey,
    readonly publicJwk: JWK,
    readonly alg: string,
  ) {}

  static async create(kid = 'test-key-1', alg: 'RS256' | 'ES256' = 'RS256'): Promise<TestTokenIssuer> {
    const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
    return new TestTokenIssuer(privateKey, jwk, alg);
  }

  /**
   * An issuer with an existing RSA signing key (PKCS#8 or PKCS#1 PEM), e.g. the test cluster's
   * own --service-account-signing-key-file, with the kid the API server gives that key.
   */
  static fromPrivateKeyPem(pem: string, kid: string): TestTokenIssuer {
    const key = createPrivateKey(pem);
    const jwk = { ...(createPublicKey(key).export({ format: 'jwk' }) as JWK), kid, alg: 'RS256', use: 'sig' };
    return new TestTokenIssuer(key as unknown as CryptoKey, jwk, 'RS256');
  }

  get jwks(): JSONWebKeySet {
    return { keys: [this.publicJwk] };
  }

  async token(c: TokenClaims): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    const podName = c.pod ?? `${c.serviceAccount}-7d9f8b6c5-x2x4z`;
    return new SignJWT({
      'kubernetes.io': {
        namespace: c.namespace,
        serviceaccount: { name: c.serviceAccount, uid: c.uid ?? TEST_ACCOUNT_UID },
        pod: { name: podName, uid: '9a8b7c6d-1111-4222-8333-444455556666' },
      },
    })
      .setProtectedHeader({ alg: this.alg, kid: this.publicJwk.kid! })
      .setIssuer(c.issuer ?? TEST_ISSUER)
      .setSubject(`system:serviceaccount:${c.namespace}:${c.serviceAccount}`)
      .setAudience(c.audience)
      .setIssuedAt(now + Math.min(0, c.notBefore ?? 0))
      .setNotBefore(now + (c.notBefore ?? 0))
      .setExpirationTime(now + (c.expiresIn ?? 600))
      .sign(this.privateKey);
  }
}
