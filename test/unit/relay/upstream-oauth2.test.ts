import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { createLocalJWKSet, exportJWK, jwtVerify, decodeProtectedHeader } from 'jose';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../../relay/config.js';
import { ValidationError } from '../../../relay/validate.js';
import { authRefusalHint, buildSettings, classifyError } from '../../../relay/upstream.js';
import {
  FAILURE_BACKOFF_MS,
  GOOGLE_SCOPE,
  GOOGLE_TOKEN_URI,
  JWT_BEARER_GRANT,
  MICROSOFT_SCOPE,
  TokenError,
  TokenSource,
  buildGrant,
  readBearerChallenge,
  readTokenAnswer,
  type Grant,
  type TokenAnswer,
  type TokenRequester,
} from '../../../relay/upstream-oauth2.js';
import { OAUTHBEARER_ERROR_ACK, oauthBearerMessage } from '../../../relay/oauthbearer.js';

const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const SA_EMAIL = 'relay-sender@project-1.iam.gserviceaccount.com';
const serviceAccount = (over: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: 'service_account',
    project_id: 'project-1',
    private_key_id: 'key-1',
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    client_email: SA_EMAIL,
    token_uri: GOOGLE_TOKEN_URI,
    ...over,
  });

/** A fake clock and a token endpoint that answers from a script and counts its requests. */
function harness(answers: Array<TokenAnswer | Error | (() => Promise<TokenAnswer>)>) {
  let now = 1_700_000_000_000;
  const forms: URLSearchParams[] = [];
  const results: string[] = [];
  const request: TokenRequester = async (_url, form) => {
    forms.push(form);
    const next = answers.shift();
    if (!next) throw new TokenError('script exhausted', 'unreachable');
    if (next instanceof Error) throw next;
    return typeof next === 'function' ? next() : next;
  };
  const grant: Grant = {
    provider: 'generic',
    user: 'sender@example.com',
    tokenUrl: 'https://login.example.net/token',
    form: async () => new URLSearchParams({ grant_type: 'client_credentials' }),
  };
  const source = new TokenSource(grant, { tls: {}, timeoutMs: 1000, now: () => now, request, onRequest: (r) => results.push(r) });
  return {
    source,
    forms,
    results,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

describe('upstream OAuth2 token cache', () => {
  test('a token is fetched once and reused until 80% of its lifetime, then refreshed', async () => {
    const h = harness([
      { accessToken: 'tok-1', expiresIn: 3600 },
      { accessToken: 'tok-2', expiresIn: 3600 },
    ]);
    assert.equal(await h.source.get(), 'tok-1');
    h.advance(2879_000);
    assert.equal(await h.source.get(), 'tok-1', 'at 79.97% of the lifetime the cached token serves');
    assert.equal(h.forms.length, 1);
    h.advance(2_000);
    assert.equal(await h.source.get(), 'tok-2', 'past 80% it is refreshed');
    assert.equal(h.forms.length, 2);
    assert.deepEqual(h.results, ['success', 'success']);
  });

  test('many callers at refresh time share one request (single flight)', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const h = harness([
      { accessToken: 'tok-1', expiresIn: 100 },
      async () => {
        await gate;
        return { accessToken: 'tok-2', expiresIn: 100 };
      },
    ]);
    await h.source.get();
    h.advance(85_000);
    // Still usable until 90 s: every caller during the refresh waits for the one request.
    const all = Array.from({ length: 50 }, () => h.source.get());
    release();
    assert.deepEqual(new Set(await Promise.all(all)), new Set(['tok-2']));
    assert.equal(h.forms.length, 2, 'one refresh for 50 concurrent callers');
  });

  test('a failed refresh keeps serving the token in hand until it expires, with backoff', async () => {
    const h = harness([{ accessToken: 'tok-1', expiresIn: 100 }, new TokenError('token endpoint answered HTTP 503: temporarily_unavailable', 'refused')]);
    await h.source.get();
    h.advance(81_000);
    assert.equal(await h.source.get(), 'tok-1', 'refresh failed, the old token is still valid');
    assert.equal(h.forms.length, 2);
    assert.equal(await h.source.get(), 'tok-1');
    assert.equal(h.forms.length, 2, 'within the backoff no new request');
    h.advance(10_000);
    await assert.rejects(h.source.get(), (err: TokenError) => err.code === 'ETOKEN' && /script exhausted/.test(err.message), 'expired: the failure surfaces');
  });

  test('with no token and the endpoint down, callers fail fast during the backoff and retry after it', async () => {
    const down = new TokenError('token endpoint example unreachable: ECONNREFUSED', 'unreachable');
    const h = harness([down, { accessToken: 'tok-1', expiresIn: 100 }]);
    await assert.rejects(h.source.get(), /ECONNREFUSED/);
    await assert.rejects(h.source.get(), /ECONNREFUSED/);
    assert.equal(h.forms.length, 1, 'the second caller got the remembered error without a request');
    h.advance(FAILURE_BACKOFF_MS.first);
    assert.equal(await h.source.get(), 'tok-1');
    assert.deepEqual(h.results, ['unreachable', 'success']);
  });

  test('renew (the upstream refused the token) refetches only a token older than a minute', async () => {
    const h = harness([
      { accessToken: 'tok-1', expiresIn: 3600 },
      { accessToken: 'tok-2', expiresIn: 3600 },
    ]);
    await h.source.get();
    h.advance(10_000);
    assert.equal(await h.source.get({ renew: true }), 'tok-1', 'a fresh token refused: the grant is the problem, not its age');
    h.advance(60_000);
    assert.equal(await h.source.get({ renew: true }), 'tok-2');
  });

  test('the token text is in no error', async () => {
    const h = harness([{ accessToken: 'SECRET-TOKEN', expiresIn: 100 }, new TokenError('token endpoint answered HTTP 400: invalid_grant', 'refused')]);
    await h.source.get();
    h.advance(200_000);
    await assert.rejects(h.source.get(), (err: Error) => !err.message.includes('SECRET-TOKEN'));
  });
});

describe('token endpoint answers', () => {
  test('a Bearer token with its lifetime', () => {
    assert.deepEqual(readTokenAnswer(200, JSON.stringify({ access_token: 'a', expires_in: 3599, token_type: 'Bearer', ext_expires_in: 3599 })), { accessToken: 'a', expiresIn: 3599 });
  });
  test('an error answer names the OAuth2 error and description, never the request', () => {
    assert.throws(
      () => readTokenAnswer(401, JSON.stringify({ error: 'invalid_client', error_description: 'AADSTS7000215: Invalid client secret provided.' })),
      (err: TokenError) => err.result === 'refused' && err.message === 'token endpoint answered HTTP 401: invalid_client (AADSTS7000215: Invalid client secret provided.)',
    );
    assert.throws(() => readTokenAnswer(502, '<html>bad gateway</html>'), /HTTP 502: no OAuth2 error in the body/);
  });
  test('malformed answers are refused', () => {
    assert.throws(() => readTokenAnswer(200, '{}'), (e: TokenError) => e.result === 'invalid_response');
    assert.throws(() => readTokenAnswer(200, JSON.stringify({ access_token: 'a', token_type: 'mac' })), /not a Bearer/);
    assert.throws(() => readTokenAnswer(200, JSON.stringify({ access_token: 'a', expires_in: -5 })), /expires_in/);
  });
  test('a token with characters outside printable ASCII is refused (it would break the SASL framing), and the error does not quote it', () => {
    for (const token of ['abc\x01auth=Bearer x', 'abc\r\nQUIT', 'tökén']) {
      assert.throws(
        () => readTokenAnswer(200, JSON.stringify({ access_token: token, expires_in: 60 })),
        (e: TokenError) => e.result === 'invalid_response' && /printable ASCII/.test(e.message) && !e.message.includes('abc') && !e.message.includes('t\u00f6'),
      );
    }
  });
});

describe('OAUTHBEARER (RFC 7628)', () => {
  test('the initial client response is byte for byte the form of RFC 7628 section 4.1', () => {
    // RFC 7628 4.1 (IMAP example): n,a=user@example.com,^Ahost=server.example.com^Aport=143^Aauth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==^A^A
    const msg = oauthBearerMessage('user@example.com', 'server.example.com', 143, 'vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==');
    assert.equal(msg, 'n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01');
    // the RFC's base64 of the same message (section 4.1, "C: ... AUTHENTICATE OAUTHBEARER ...")
    assert.equal(
      Buffer.from(msg).toString('base64'),
      'bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB',
    );
  });
  test("the authorization identity is a saslname: ',' and '=' escaped (RFC 5801)", () => {
    assert.ok(oauthBearerMessage('a,b=c@example.com', 'h', 25, 't').startsWith('n,a=a=2Cb=3Dc@example.com,\x01'));
  });
  test('control characters in the user, host or token are refused before anything is sent', () => {
    assert.throws(() => oauthBearerMessage('a@b', 'h', 25, 'secr\x01et'), (e: Error) => /control characters/.test(e.message) && !e.message.includes('secr'));
    assert.throws(() => oauthBearerMessage('a\r\n@b', 'h', 25, 't'), /control characters/);
  });
  test("the server's error challenge is read for the log (status, scope, schemes only); anything else is no challenge", () => {
    const json = { status: 'invalid_token', scope: 'https://mail.google.com/', schemes: 'Bearer', 'openid-configuration': 'https://accounts.google.com/.well-known/openid-configuration' };
    assert.deepEqual(readBearerChallenge(Buffer.from(JSON.stringify(json)).toString('base64')), { status: 'invalid_token', scope: 'https://mail.google.com/', schemes: 'Bearer' });
    assert.equal(readBearerChallenge('not base64 json'), undefined);
    assert.equal(readBearerChallenge(''), undefined);
    assert.deepEqual(readBearerChallenge(Buffer.from('{"status":"a\\nb"}').toString('base64')), { status: 'a b' });
  });
  test('the answer to the error challenge is a lone ^A', () => {
    assert.equal(OAUTHBEARER_ERROR_ACK, 'AQ==');
    assert.deepEqual([...Buffer.from(OAUTHBEARER_ERROR_ACK, 'base64')], [1]);
  });
});

describe('grants', () => {
  test('microsoft: client credentials at the tenant endpoint with the Exchange Online scope', async () => {
    const g = buildGrant({ user: 'sender@contoso.com', microsoft: { tenantId: 'contoso.onmicrosoft.com', clientId: 'app-1', clientSecretFile: '/s' } }, { '/s': 'sekret\n' });
    assert.equal(g.tokenUrl, 'https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token');
    assert.deepEqual(Object.fromEntries(await g.form(0)), { grant_type: 'client_credentials', client_id: 'app-1', client_secret: 'sekret', scope: MICROSOFT_SCOPE });
    const us = buildGrant({ user: 'u@x', microsoft: { tenantId: 't', clientId: 'c', clientSecretFile: '/s', tokenUrl: 'https://login.microsoftonline.us/t/oauth2/v2.0/token' } }, { '/s': 'x' });
    assert.equal(us.tokenUrl, 'https://login.microsoftonline.us/t/oauth2/v2.0/token', 'sovereign cloud override');
  });

  test('generic: client credentials with an optional scope; http:// refused', async () => {
    const g = buildGrant({ user: 'u@x', generic: { tokenUrl: 'https://idp.example/token', clientId: 'c', clientSecretFile: '/s', scope: 'smtp' } }, { '/s': 'x' });
    assert.equal((await g.form(0)).get('scope'), 'smtp');
    assert.throws(() => buildGrant({ user: 'u@x', generic: { tokenUrl: 'http://idp.example/token', clientId: 'c', clientSecretFile: '/s' } }, { '/s': 'x' }), /https:\/\//);
    assert.throws(() => buildGrant({ user: 'u@x', generic: { tokenUrl: 'https://idp/t', clientId: 'c', clientSecretFile: '/s' } }, { '/s': '\n' }), /clientSecretFile \/s: empty/);
  });

  test('google: the assertion verifies with the service account public key and carries iss/sub/scope/aud/iat/exp', async () => {
    const g = buildGrant({ user: 'billing@example.com', google: { serviceAccountFile: '/sa.json' } }, { '/sa.json': serviceAccount() });
    assert.equal(g.tokenUrl, GOOGLE_TOKEN_URI);
    const now = Date.UTC(2026, 11, 2, 12, 0, 0);
    const form = await g.form(now);
    assert.equal(form.get('grant_type'), JWT_BEARER_GRANT);
    const assertion = form.get('assertion')!;
    assert.deepEqual(decodeProtectedHeader(assertion), { alg: 'RS256', typ: 'JWT', kid: 'key-1' });
    const jwks = createLocalJWKSet({ keys: [{ ...(await exportJWK(publicKey)), kid: 'key-1', alg: 'RS256' }] });
    const { payload } = await jwtVerify(assertion, jwks, { issuer: SA_EMAIL, subject: 'billing@example.com', audience: GOOGLE_TOKEN_URI, currentDate: new Date(now + 1000) });
    assert.deepEqual(payload, { scope: GOOGLE_SCOPE, iss: SA_EMAIL, sub: 'billing@example.com', aud: GOOGLE_TOKEN_URI, iat: now / 1000, exp: now / 1000 + 3600 });
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
    await assert.rejects(jwtVerify(assertion, other, { currentDate: new Date(now) }), /signature/);
  });

  test('google: a bad key file is refused naming the file', () => {
    const bad = (text: string) => () => buildGrant({ user: 'u@x', google: { serviceAccountFile: '/sa.json' } }, { '/sa.json': text });
    assert.throws(bad('nope'), /sa\.json: not JSON/);
    assert.throws(bad(serviceAccount({ type: 'authorized_user' })), /not "service_account"/);
    assert.throws(bad(serviceAccount({ private_key: 'x' })), /not a PEM private key/);
    assert.throws(bad(serviceAccount({ client_email: undefined })), /client_email/);
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    assert.throws(bad(serviceAccount({ private_key: ec })), /RSA/);
  });
});

describe('upstream settings and outcomes with OAuth2', () => {
  const base = { host: 'smtp.office365.com', port: 587, tls: 'starttls' as const };
  test('oauth2 and a password exclude each other', () => {
    assert.throws(
      () =>
        buildSettings(
          { ...base, usernameFile: '/u', passwordFile: '/p', oauth2: { user: 'a@b', generic: { tokenUrl: 'https://i/t', clientId: 'c', clientSecretFile: '/s' } } },
          [],
          { '/u': 'u', '/p': 'p', '/s': 's' },
          'relay',
          1,
        ),
      /exclude each other/,
    );
  });
  test('the mechanism is carried (default auto) and is not part of the token cache key', () => {
    const oauth2 = { user: 'a@b', generic: { tokenUrl: 'https://i/t', clientId: 'c', clientSecretFile: '/s' } };
    const build = (o: typeof oauth2 & { mechanism?: 'auto' | 'XOAUTH2' | 'OAUTHBEARER' }) => buildSettings({ ...base, oauth2: o }, [], { '/s': 's' }, 'relay', 1).oauth2!;
    const auto = build(oauth2);
    assert.equal(auto.mechanism, 'auto');
    assert.equal(build({ ...oauth2, mechanism: 'OAUTHBEARER' }).mechanism, 'OAUTHBEARER');
    assert.equal(build({ ...oauth2, mechanism: 'XOAUTH2' }).key, auto.key, 'switching the mechanism keeps the cached token');
    assert.notEqual(build({ ...oauth2, user: 'c@d' }).key, auto.key);
  });
  test('a token failure is a temporary outcome of kind token that names no secret', () => {
    const { kind, outcome } = classifyError(new TokenError('token endpoint answered HTTP 503: temporarily_unavailable', 'refused'), ['a@b']);
    assert.equal(kind, 'token');
    assert.deepEqual(outcome, { kind: 'temporary', code: 451, message: '4.7.0 Upstream login token unavailable, try again later', refused: [] });
  });
  test('Microsoft refusals get a hint', () => {
    assert.match(authRefusalHint('535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.', true) ?? '', /Set-CASMailbox/);
    assert.match(authRefusalHint('535 5.7.3 Authentication unsuccessful', true) ?? '', /SMTP.SendAsApp/);
    assert.equal(authRefusalHint('535 5.7.8 bad password', false), undefined);
    assert.match(authRefusalHint('504 5.7.4 Unrecognized authentication type', true) ?? '', /mechanism at auto/);
  });
});

describe('relay config: upstream.oauth2', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-oauth2-config-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const f of ['tls.crt', 'tls.key', 'users.yaml', 'secret', 'sa.json']) fs.writeFileSync(path.join(dir, f), 'x');
  const BASE = {
    version: 1,
    hostname: 'relay.example.com',
    listeners: [{ name: 'submission', port: 587, mode: 'starttls' }],
    tls: { certFile: 'tls.crt', keyFile: 'tls.key' },
    auth: { usersFile: 'users.yaml' },
    access: { allowedCidrs: ['10.0.0.0/8'] },
    upstream: { host: 'smtp.office365.com', port: 587, tls: 'starttls' },
  };
  let n = 0;
  const load = (oauth2: unknown, extra: Record<string, unknown> = {}) => {
    const f = path.join(dir, `c${n++}.yaml`);
    fs.writeFileSync(f, stringify({ ...BASE, upstream: { ...BASE.upstream, ...extra, oauth2 } }));
    return loadConfig(f);
  };
  const problems = (oauth2: unknown, extra: Record<string, unknown> = {}) => {
    try {
      load(oauth2, extra);
      return [];
    } catch (err) {
      assert.ok(err instanceof ValidationError, String(err));
      return err.problems;
    }
  };

  test('each provider form is read, file paths resolved', () => {
    const m = load({ user: 'sender@contoso.com', microsoft: { tenantId: '72f988bf-86f1-41af-91ab-2d7cd011db47', clientId: 'app', clientSecretFile: 'secret' } });
    assert.deepEqual(m.upstream.oauth2, {
      user: 'sender@contoso.com',
      microsoft: { tenantId: '72f988bf-86f1-41af-91ab-2d7cd011db47', clientId: 'app', clientSecretFile: path.join(dir, 'secret') },
    });
    assert.deepEqual(load({ user: 'a@b', google: { serviceAccountFile: 'sa.json' } }).upstream.oauth2?.google, { serviceAccountFile: path.join(dir, 'sa.json') });
    assert.deepEqual(load({ user: 'a@b', generic: { tokenUrl: 'https://idp/t', clientId: 'c', clientSecretFile: 'secret', scope: 's' } }).upstream.oauth2?.generic, {
      tokenUrl: 'https://idp/t',
      clientId: 'c',
      clientSecretFile: path.join(dir, 'secret'),
      scope: 's',
    });
  });

  test('mistakes are named', () => {
    assert.deepEqual(problems({ user: 'a@b' }), ['upstream.oauth2: give exactly one of microsoft, google, generic']);
    assert.deepEqual(problems({ user: 'a@b', google: { serviceAccountFile: 'sa.json' }, generic: { tokenUrl: 'https://i/t', clientId: 'c', clientSecretFile: 'secret' } }), [
      'upstream.oauth2: give exactly one of microsoft, google, generic (found google, generic)',
    ]);
    assert.deepEqual(problems({ user: 'a@b', generic: { tokenUrl: 'http://idp/t', clientId: 'c', clientSecretFile: 'secret' } }), [
      'upstream.oauth2.generic.tokenUrl: "http://idp/t" must be an https:// URL (the relay sends its client secret there)',
    ]);
    assert.match(problems({ user: 'a@b', google: { serviceAccountFile: 'missing.json' } })[0] ?? '', /^upstream\.oauth2\.google\.serviceAccountFile: cannot read .*ENOENT/);
    assert.deepEqual(problems({ user: 'a@b', microsoft: { tenantId: 't', clientId: 'c', clientSecretFile: 'secret', scope: 'x' } }), [
      'upstream.oauth2.microsoft.scope: unknown field (allowed: tenantId, clientId, clientSecretFile, tokenUrl)',
    ]);
    assert.deepEqual(problems({ user: 'a@b', google: { serviceAccountFile: 'sa.json' } }, { usernameFile: 'secret', passwordFile: 'secret' }), [
      'upstream.oauth2: oauth2 and usernameFile/passwordFile exclude each other: the relay logs in one way',
    ]);
    assert.deepEqual(problems({ microsoft: { tenantId: 't', clientId: 'c', clientSecretFile: 'secret' } }), ['upstream.oauth2.user: required field is missing']);
    assert.deepEqual(problems({ user: 'a@b', mechanism: 'xoauth', google: { serviceAccountFile: 'sa.json' } }), [
      'upstream.oauth2.mechanism: "xoauth" is not one of auto, XOAUTH2, OAUTHBEARER',
    ]);
  });

  test('mechanism: absent (auto), or one of auto, XOAUTH2, OAUTHBEARER', () => {
    assert.equal(load({ user: 'a@b', google: { serviceAccountFile: 'sa.json' } }).upstream.oauth2?.mechanism, undefined);
    for (const mechanism of ['auto', 'XOAUTH2', 'OAUTHBEARER']) {
      assert.equal(load({ user: 'a@b', mechanism, google: { serviceAccountFile: 'sa.json' } }).upstream.oauth2?.mechanism, mechanism);
    }
  });

  test('the document round-trips through YAML unchanged (operator-rendered form)', () => {
    const doc = parse(stringify({ user: 'a@b', google: { serviceAccountFile: 'sa.json' } }));
    assert.equal(load(doc).upstream.oauth2?.user, 'a@b');
  });
});
