import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bindingSecretName, buildBindingSecret } from '../../../../operator/builders/binding.js';
import { buildRelayConfig } from '../../../../operator/builders/relay-config.js';
import { buildChildren } from '../../../../operator/builders/children.js';
import { buildUsersFile, buildUsersSecret, renderUsersFile } from '../../../../operator/builders/users.js';
import { JWKS_FILE, JWKS_KEY, tokenAudience } from '../../../../operator/api/v1alpha1.js';
import YAML from 'yaml';
import { validateUsers } from '../../../../relay/users.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import { assertGolden, assertValidAgainstSchema } from '../../../harness/smtprelay/testkit.js';

const CA = '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n';
const decode = (data: Record<string, string>) => Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));

const withTokenUser = relayFixture(undefined, (r) => {
  r.spec.auth.users.push({ name: 'reports', serviceAccount: { namespace: 'apps', name: 'reports' }, allowedSenders: ['reports@example.com'] });
});

test('a password user\'s binding Secret holds the servicebinding.io keys, its password and the CA (golden)', () => {
  const user = withTokenUser.spec.auth.users[0]!;
  const secret = buildBindingSecret(withTokenUser, user, { password: 'p4ssw0rd-from-the-user-secret', caCrt: CA });
  assertGolden('binding-password-user', secret);
  assertValidAgainstSchema(secret);
  assert.deepEqual(decode(secret.data), {
    'ca.crt': CA,
    host: 'outbound.mail.svc',
    password: 'p4ssw0rd-from-the-user-secret',
    port: '587',
    provider: 'smtp-relay-operator',
    tls: 'starttls',
    type: 'smtp',
    username: user.name,
  });
});

test('a ServiceAccount user\'s binding Secret has no password but the token audience (golden)', () => {
  const user = withTokenUser.spec.auth.users[1]!;
  const secret = buildBindingSecret(withTokenUser, user, { caCrt: CA });
  assertGolden('binding-serviceaccount-user', secret);
  const data = decode(secret.data);
  assert.equal(data.password, undefined);
  assert.equal(data.audience, 'smtprelay.dev/mail/outbound');
  assert.equal(data.username, 'reports');
});

test('only implicit TLS enabled: the binding names port 465 and tls implicit; no CA known: no ca.crt', () => {
  const relay = relayFixture(undefined, (r) => {
    r.spec.listeners.submission.enabled = false;
    r.spec.listeners.submissions.enabled = true;
  });
  const data = decode(buildBindingSecret(relay, relay.spec.auth.users[0]!, { password: 'x' }).data);
  assert.equal(data.port, '465');
  assert.equal(data.tls, 'implicit');
  assert.equal(data['ca.crt'], undefined);
});

test('binding Secret names: a DNS-label user name as is, others with a hash suffix so two users never share one', () => {
  const r = relayFixture();
  const mk = (name: string) => bindingSecretName(r, { name, allowedSenders: ['a@example.com'] });
  assert.equal(mk('billing'), 'outbound-binding-billing');
  assert.notEqual(mk('app.one'), mk('app-one'));
  assert.match(mk('app.one'), /^outbound-binding-app-one-[0-9a-f]{8}$/);
});

test('a ServiceAccount user goes into the users file without a password, and the JWKS beside it', async () => {
  const hasher = { hash: async () => 'scrypt$1024$8$1$c2FsdA==$aGFzaA==', verify: async () => false };
  const file = await buildUsersFile(withTokenUser, new Map([[withTokenUser.spec.auth.users[0]!.name, { password: 'x'.repeat(32), generated: true }]]), undefined, hasher);
  assert.deepEqual(file.users[1], { name: 'reports', serviceAccount: { namespace: 'apps', name: 'reports' }, allowedSenders: ['reports@example.com'] });
  assert.doesNotMatch(renderUsersFile(file), /reports[\s\S]*passwordHash/);
  const jwks = { keys: [{ kty: 'RSA', kid: 'k1', n: 'AQAB', e: 'AQAB', alg: 'RS256', use: 'sig' }] };
  const secret = buildUsersSecret(withTokenUser, file, jwks);
  assert.deepEqual(JSON.parse(Buffer.from(secret.data[JWKS_KEY]!, 'base64').toString('utf8')), jwks);
  const without = await buildUsersFile(withTokenUser, new Map(), undefined, hasher, undefined, new Map());
  assert.deepEqual(without.users, [], 'issuer keys unknown or the ServiceAccount missing: the token user is left out');
  const uid = '3f1c2a9e-6b7d-4c8e-9f10-1a2b3c4d5e6f';
  const bound = await buildUsersFile(withTokenUser, new Map(), undefined, hasher, undefined, new Map([['reports', uid]]));
  assert.deepEqual(bound.users, [{ name: 'reports', serviceAccount: { namespace: 'apps', name: 'reports', uid }, allowedSenders: ['reports@example.com'] }], "the account's uid goes beside its name");
  assert.equal(validateUsers(YAML.parse(renderUsersFile(bound)), 'users.yaml').get('reports')?.serviceAccount?.uid, uid, 'and the relay reads it');
});

test('the relay config verifies tokens only with ServiceAccount users and a known issuer; the pods then mount the JWKS', () => {
  const plain = buildRelayConfig(relayFixture(), { serviceAccountIssuer: 'https://kubernetes.default.svc' });
  assert.equal(plain.auth.serviceAccountTokens, undefined);
  assert.equal(buildRelayConfig(withTokenUser).auth.serviceAccountTokens, undefined);
  const config = buildRelayConfig(withTokenUser, { serviceAccountIssuer: 'https://kubernetes.default.svc' });
  assert.deepEqual(config.auth.serviceAccountTokens, { issuer: 'https://kubernetes.default.svc', audience: tokenAudience(withTokenUser), jwksFile: JWKS_FILE });
  const podSpec = (c: typeof config) =>
    JSON.stringify(buildChildren(withTokenUser, c, { image: 'i' }).find((x) => x.kind === 'Deployment'));
  assert.match(podSpec(config), /"key":"jwks.json"/);
  assert.doesNotMatch(podSpec(buildRelayConfig(withTokenUser)), /jwks/);
});
