import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TokenVerifier, loadJwks } from '../../../relay/sa-token.js';
import { validateUsers } from '../../../relay/users.js';
import { TEST_ACCOUNT_UID, TEST_ISSUER, TestTokenIssuer } from '../../harness/support/token-issuer.js';

// The test plays the API server's token issuer (its own key, JWKS and claims).
const AUDIENCE = 'smtprelay.dev/mail/outbound';
const ACCOUNT = { namespace: 'apps', name: 'reports' };
const issuer = await TestTokenIssuer.create();
const verifier = new TokenVerifier({ issuer: TEST_ISSUER, audience: AUDIENCE, jwks: issuer.jwks });
const good = { namespace: 'apps', serviceAccount: 'reports', audience: AUDIENCE };

const b64url = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

test('a token from the issuer (the test playing the API server) for this audience and ServiceAccount is accepted, with its pod', async () => {
  assert.deepEqual(await verifier.verify(await issuer.token({ ...good, pod: 'reports-abc' }), ACCOUNT), { ok: true, pod: 'reports-abc' });
});

test('a token among several audiences, one of them this relay\'s, is accepted', async () => {
  assert.equal((await verifier.verify(await issuer.token({ ...good, audience: ['https://kubernetes.default.svc', AUDIENCE] }), ACCOUNT)).ok, true);
});

test('a token for another audience (e.g. the API server\'s own) is refused', async () => {
  const r = await verifier.verify(await issuer.token({ ...good, audience: 'https://kubernetes.default.svc' }), ACCOUNT);
  assert.deepEqual(r, { ok: false, reason: 'claim aud invalid: check_failed' });
});

test('an expired token is refused; one expired within the clock skew (30 s) is still accepted', async () => {
  assert.deepEqual(await verifier.verify(await issuer.token({ ...good, expiresIn: -120 }), ACCOUNT), { ok: false, reason: 'token expired' });
  assert.equal((await verifier.verify(await issuer.token({ ...good, expiresIn: -10 }), ACCOUNT)).ok, true);
});

test('a token not yet valid (nbf in the future beyond the skew) is refused', async () => {
  const r = await verifier.verify(await issuer.token({ ...good, notBefore: 300 }), ACCOUNT);
  assert.equal(r.ok, false);
  assert.match((r as { reason: string }).reason, /nbf/);
});

test('a token of another ServiceAccount, or of the same name in another namespace, is refused', async () => {
  const other = await verifier.verify(await issuer.token({ ...good, serviceAccount: 'billing' }), ACCOUNT);
  assert.equal(other.ok, false);
  assert.match((other as { reason: string }).reason, /another ServiceAccount/);
  assert.equal((await verifier.verify(await issuer.token({ ...good, namespace: 'other' }), ACCOUNT)).ok, false);
});

test('with the account uid in the users file, a token must carry it: a deleted and re-created account\'s old tokens are refused', async () => {
  const bound = { ...ACCOUNT, uid: TEST_ACCOUNT_UID };
  assert.deepEqual(await verifier.verify(await issuer.token(good), bound), { ok: true, pod: 'reports-7d9f8b6c5-x2x4z' });
  const old = await issuer.token({ ...good, uid: 'aaaaaaaa-1111-4222-8333-444455556666' });
  assert.deepEqual(await verifier.verify(old, bound), { ok: false, reason: 'token of a deleted ServiceAccount of that name (its uid is not the current one)' });
  assert.equal((await verifier.verify(old, ACCOUNT)).ok, true, 'without a uid in the users file, the name is what counts');
  assert.throws(() => validateUsers({ users: [{ name: 'r', serviceAccount: { ...ACCOUNT, uid: 'not-a-uid' }, allowedSenders: ['r@example.com'] }] }, 'users.yaml'), /serviceAccount.uid.*not a Kubernetes uid/);
});

test('a token from another issuer URL is refused', async () => {
  assert.deepEqual(await verifier.verify(await issuer.token({ ...good, issuer: 'https://evil.example' }), ACCOUNT), { ok: false, reason: 'claim iss invalid: check_failed' });
});

test('a token signed by another key (same kid, or an unknown kid) is refused', async () => {
  const impostor = await TestTokenIssuer.create('test-key-1');
  assert.deepEqual(await verifier.verify(await impostor.token(good), ACCOUNT), { ok: false, reason: 'signature invalid' });
  const unknown = await TestTokenIssuer.create('another-kid');
  assert.deepEqual(await verifier.verify(await unknown.token(good), ACCOUNT), { ok: false, reason: 'signed by a key the issuer does not publish' });
});

test('alg "none" and HS256 (keyed with the public key) are refused', async () => {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: TEST_ISSUER,
    aud: AUDIENCE,
    sub: 'system:serviceaccount:apps:reports',
    exp: now + 600,
    'kubernetes.io': { namespace: 'apps', serviceaccount: { name: 'reports' } },
  };
  const none = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url(claims)}.`;
  assert.equal((await verifier.verify(none, ACCOUNT)).ok, false);
  const head = `${b64url({ alg: 'HS256', kid: 'test-key-1' })}.${b64url(claims)}`;
  const hs = `${head}.${createHmac('sha256', JSON.stringify(issuer.publicJwk)).update(head).digest('base64url')}`;
  assert.equal((await verifier.verify(hs, ACCOUNT)).ok, false);
  assert.deepEqual(await verifier.verify('not-a-jwt', ACCOUNT), { ok: false, reason: 'jws invalid' });
  assert.deepEqual(await verifier.verify('', ACCOUNT), { ok: false, reason: 'not a token' });
});

test('an ES256 issuer key works too', async () => {
  const ec = await TestTokenIssuer.create('ec-1', 'ES256');
  const v = new TokenVerifier({ issuer: TEST_ISSUER, audience: AUDIENCE, jwks: { keys: [issuer.publicJwk, ec.publicJwk] } });
  assert.equal((await v.verify(await ec.token(good), ACCOUNT)).ok, true);
});

test('the JWKS file: public keys load; a private key or a non-set is refused with what is wrong', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'jwks-'));
  const f = path.join(dir, 'jwks.json');
  fs.writeFileSync(f, JSON.stringify(issuer.jwks));
  assert.equal(loadJwks(f).keys.length, 1);
  fs.writeFileSync(f, JSON.stringify({ keys: [{ ...issuer.publicJwk, d: 'secret' }] }));
  assert.throws(() => loadJwks(f), /private key/);
  fs.writeFileSync(f, '[]');
  assert.throws(() => loadJwks(f), /JSON Web Key Set/);
  fs.rmSync(dir, { recursive: true });
});

test('users file: a ServiceAccount user has no passwordHash; both or neither is refused', () => {
  const users = validateUsers({ users: [{ name: 'reports', serviceAccount: ACCOUNT, allowedSenders: ['r@example.com'] }] }, 'users.yaml');
  assert.deepEqual(users.get('reports')?.serviceAccount, ACCOUNT);
  assert.throws(
    () => validateUsers({ users: [{ name: 'r', serviceAccount: ACCOUNT, passwordHash: 'scrypt$1024$8$1$c2FsdA==$aGFzaA==', allowedSenders: ['r@example.com'] }] }, 'users.yaml'),
    /has both passwordHash and serviceAccount/,
  );
  assert.throws(() => validateUsers({ users: [{ name: 'r', allowedSenders: ['r@example.com'] }] }, 'users.yaml'), /needs passwordHash .* or serviceAccount/);
  assert.throws(() => validateUsers({ users: [{ name: 'r', serviceAccount: { namespace: 'Apps!', name: 'x' }, allowedSenders: ['r@example.com'] }] }, 'users.yaml'), /not a namespace name/);
});
