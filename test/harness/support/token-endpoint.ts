// An OAuth2 token endpoint played by the test, over HTTPS on loopback, faithful to what
// Microsoft Entra ID and Google answer on the wire: a form-encoded POST in, JSON
// {access_token, expires_in, token_type} out, or {error, error_description} with 400/401/5xx.
//
//   /<tenant>/oauth2/v2.0/token  client credentials (Microsoft): client_id, client_secret,
//                                scope https://outlook.office365.com/.default
//   /generic/token               client credentials with an optional scope
//   /google/token                JWT bearer grant: the assertion is verified with the
//                                service account's public key (iss, sub, scope, aud, iat, exp)
//
// Access tokens are JWTs the endpoint signs (ES256), so an upstream can verify signature,
// audience and expiry (verifyAccessToken). Every token issued is kept in `issued` so a
// test can check none of them leaks into a log.
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { SignJWT, jwtVerify } from 'jose';
import type { Pki } from './pki.js';

export const MICROSOFT_AUDIENCE = 'https://outlook.office365.com';
export const GOOGLE_AUDIENCE = 'https://mail.google.com/';

export interface TokenEndpointBehaviour {
  /** 'ok'; 'unavailable': 503 temporarily_unavailable; 'invalid_client': 401; 'reset': the connection is dropped. */
  mode: 'ok' | 'unavailable' | 'invalid_client' | 'reset';
  /** expires_in of the tokens issued, seconds. */
  lifetimeS: number;
}

export interface TokenEndpoint {
  url: string;
  /** e.g. `${url}/contoso/oauth2/v2.0/token`. */
  microsoftUrl(tenant: string): string;
  googleUrl: string;
  genericUrl: string;
  behaviour: TokenEndpointBehaviour;
  /** Requests answered, by route, successful or not. */
  requests: { microsoft: number; google: number; generic: number };
  /** Every access token issued. */
  issued: string[];
  /** Why requests were refused (test diagnostics). */
  refusals: string[];
  /** Verifies an access token as an upstream would; the claims, or throws. */
  verifyAccessToken(token: string, audience: string): Promise<{ sub?: string; upn?: string }>;
  stop(): Promise<void>;
}

export interface TokenEndpointOptions {
  pki: Pki;
  /** Microsoft and generic: the registered application. */
  client: { id: string; secret: string };
  /** Google: the service account's e-mail and public key. */
  serviceAccount?: { email: string; publicKey: KeyObject };
  /** Microsoft: the mailbox the app's service principal may send as (Add-MailboxPermission). */
  mailbox?: string;
  behaviour?: Partial<TokenEndpointBehaviour>;
}

export async function startTokenEndpoint(opts: TokenEndpointOptions): Promise<TokenEndpoint> {
  const cert = await opts.pki.issue({ name: `token-endpoint-${Date.now()}` });
  const signing = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const behaviour: TokenEndpointBehaviour = { mode: 'ok', lifetimeS: 3599, ...opts.behaviour };
  const requests = { microsoft: 0, google: 0, generic: 0 };
  const issued: string[] = [];
  const refusals: string[] = [];
  let url = '';

  const issue = async (claims: Record<string, unknown>, audience: string) => {
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT' })
      .setIssuer(url)
      .setAudience(audience)
      .setIssuedAt(now)
      .setNotBefore(now - 1)
      .setExpirationTime(now + behaviour.lifetimeS)
      .sign(signing.privateKey);
    issued.push(token);
    return token;
  };

  const server = https.createServer({ key: cert.keyPem, cert: cert.chainPem, minVersion: 'TLSv1.2' }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const answer = (status: number, body: Record<string, unknown>) => {
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
        res.end(JSON.stringify(body));
      };
      const refuse = (status: number, error: string, description: string) => {
        refusals.push(`${error}: ${description}`);
        answer(status, { error, error_description: description });
      };
      const path = new URL(req.url ?? '/', url).pathname;
      const route = /^\/[^/]+\/oauth2\/v2\.0\/token$/.test(path) ? 'microsoft' : path === '/google/token' ? 'google' : path === '/generic/token' ? 'generic' : undefined;
      if (!route || req.method !== 'POST') return answer(404, { error: 'not_found' });
      requests[route]++;
      if (behaviour.mode === 'reset') return req.socket.destroy();
      if (behaviour.mode === 'unavailable') return refuse(503, 'temporarily_unavailable', 'The service is temporarily unavailable.');
      if (!/^application\/x-www-form-urlencoded/.test(req.headers['content-type'] ?? '')) return refuse(400, 'invalid_request', 'form-encoded body required');
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      void (async () => {
        if (route === 'google') {
          if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') return refuse(400, 'unsupported_grant_type', 'Invalid grant_type');
          const sa = opts.serviceAccount;
          if (!sa) return refuse(400, 'invalid_grant', 'no service account');
          try {
            const { payload } = await jwtVerify(form.get('assertion') ?? '', sa.publicKey, { issuer: sa.email, audience: `${url}/google/token`, algorithms: ['RS256'], maxTokenAge: '1h' });
            if (payload.scope !== GOOGLE_AUDIENCE) return refuse(400, 'invalid_scope', `scope ${String(payload.scope)}`);
            if (typeof payload.exp !== 'number' || typeof payload.iat !== 'number' || payload.exp - payload.iat > 3600) return refuse(400, 'invalid_grant', 'Invalid JWT: exp too far');
            if (!payload.sub) return refuse(400, 'invalid_grant', 'no subject');
            if (behaviour.mode === 'invalid_client') return refuse(401, 'unauthorized_client', 'Client is unauthorized to retrieve access tokens using this method.');
            return answer(200, { access_token: await issue({ sub: payload.sub, azp: sa.email, scope: GOOGLE_AUDIENCE }, GOOGLE_AUDIENCE), expires_in: behaviour.lifetimeS, token_type: 'Bearer' });
          } catch (err) {
            return refuse(400, 'invalid_grant', `Invalid JWT Signature or claims (${(err as Error).message})`);
          }
        }
        if (form.get('grant_type') !== 'client_credentials') return refuse(400, 'unsupported_grant_type', 'grant_type must be client_credentials');
        if (form.get('client_id') !== opts.client.id || form.get('client_secret') !== opts.client.secret || behaviour.mode === 'invalid_client') {
          return refuse(401, 'invalid_client', 'AADSTS7000215: Invalid client secret provided.');
        }
        if (route === 'microsoft') {
          if (form.get('scope') !== `${MICROSOFT_AUDIENCE}/.default`) return refuse(400, 'invalid_scope', `AADSTS70011: scope ${form.get('scope')} is not valid`);
          const token = await issue({ appid: opts.client.id, roles: ['SMTP.SendAsApp'], ...(opts.mailbox ? { upn: opts.mailbox } : {}) }, MICROSOFT_AUDIENCE);
          return answer(200, { token_type: 'Bearer', expires_in: behaviour.lifetimeS, ext_expires_in: behaviour.lifetimeS, access_token: token });
        }
        return answer(200, { access_token: await issue({ client_id: opts.client.id, scope: form.get('scope') ?? '' }, form.get('scope') ?? 'generic'), expires_in: behaviour.lifetimeS, token_type: 'bearer' });
      })();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    microsoftUrl: (tenant) => `${url}/${tenant}/oauth2/v2.0/token`,
    googleUrl: `${url}/google/token`,
    genericUrl: `${url}/generic/token`,
    behaviour,
    requests,
    issued,
    refusals,
    async verifyAccessToken(token, audience) {
      const { payload } = await jwtVerify(token, signing.publicKey, { issuer: url, audience, algorithms: ['ES256'] });
      return payload as { sub?: string; upn?: string };
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
