// ServiceAccount-token logins and binding Secrets on the real control plane.
// The real kube-apiserver issues the tokens (TokenRequest, as `kubectl create
// token --audience` does); the operator fetches the real issuer and keys from
// the API server's discovery endpoints into the relay's users Secret and config;
// the relay's own verification (relay/sa-token.ts), fed exactly what the operator
// rendered, accepts and refuses those tokens. No pod runs here (no kubelet in
// this harness): the proof with a pod is left to the one-node cluster.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import YAML from 'yaml';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { Kube } from '../../operator/runtime/kube.js';
import type { RunningOperator } from '../../operator/operator.js';
import { TokenVerifier } from '../../relay/sa-token.js';
import { validateUsers } from '../../relay/users.js';
import type { RelayConfig } from '../../relay/config-types.js';
import { b64, condition, createBasicAuthSecret, createNamespace, createRelay, eventually, get, getRelay, relayManifest, runOperator, unb64 } from './support.js';

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;
let pki: Pki;

before(async () => {
  cp = await startControlPlane();
  kube = new Kube(cp.kubeconfig);
  pki = await createPki();
  op = await runOperator(cp, 'operator-sa-token');
  await op.whenRunning();
});

after(async () => {
  await op?.stop();
  await pki?.cleanup();
  await cp?.stop();
});

async function tokenFor(namespace: string, name: string, audience: string): Promise<string> {
  const r = await kube.request<{ status: { token: string } }>('POST', `/api/v1/namespaces/${namespace}/serviceaccounts/${name}/token`, {
    body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [audience], expirationSeconds: 600 } },
  });
  return r.status.token;
}

test('the real API server issues the token, the operator publishes its keys, and the relay\'s verification accepts it; wrong audience and another ServiceAccount are refused', async () => {
  await createNamespace(kube, 'mail');
  await createNamespace(kube, 'apps');
  for (const sa of ['reports', 'other']) {
    await kube.request('POST', '/api/v1/namespaces/apps/serviceaccounts', { body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: sa, namespace: 'apps' } } });
  }
  const cert = await pki.issue({ name: 'tok' });
  await kube.request('POST', '/api/v1/namespaces/mail/secrets', {
    body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'tok-tls', namespace: 'mail' }, type: 'kubernetes.io/tls', data: { 'tls.crt': b64(cert.chainPem), 'tls.key': b64(cert.keyPem), 'ca.crt': b64(pki.ca.certPem) } },
  });
  await createBasicAuthSecret(kube, 'mail', 'app-smtp', 'app', 'first-password-0123456789');
  await createRelay(
    kube,
    relayManifest('mail', 'tok', {
      tls: { secretName: 'tok-tls' },
      auth: {
        users: [
          { name: 'reports', serviceAccount: { namespace: 'apps', name: 'reports' }, allowedSenders: ['reports@example.com'] },
          { name: 'app', secretRef: { name: 'app-smtp' }, allowedSenders: ['app@example.com'] },
        ],
      },
    }),
  );
  const relay = await eventually('bindings and CredentialsReady in status', async () => {
    const r = await getRelay(kube, 'mail', 'tok');
    return r?.status?.bindings?.length === 2 && condition(r, 'CredentialsReady')?.status === 'True' ? r : undefined;
  });
  assert.deepEqual(relay.status.bindings, [
    { user: 'reports', secretName: 'tok-binding-reports' },
    { user: 'app', secretName: 'tok-binding-app' },
  ]);

  // What the operator rendered: config (issuer, audience, keys file) and the users Secret (users.yaml + jwks.json)
  const cm = await get(kube, '/api/v1/namespaces/mail/configmaps/tok-config');
  const config = YAML.parse(cm.data['config.yaml']) as RelayConfig;
  const discovery = await kube.get<{ issuer: string }>('/.well-known/openid-configuration');
  assert.deepEqual(config.auth.serviceAccountTokens, { issuer: discovery.issuer, audience: 'smtprelay.dev/mail/tok', jwksFile: '/etc/smtp-relay/users/jwks.json' });
  const users = await get(kube, '/api/v1/namespaces/mail/secrets/tok-users');
  const jwks = JSON.parse(unb64(users.data['jwks.json'])) as { keys: Record<string, unknown>[] };
  assert.deepEqual(jwks, await kube.get('/openid/v1/jwks', { accept: 'application/jwk-set+json, application/json' }), 'the keys the API server serves');
  const table = validateUsers(YAML.parse(unb64(users.data['users.yaml'])), 'users.yaml');
  const reportsUid = (await get(kube, '/api/v1/namespaces/apps/serviceaccounts/reports')).metadata.uid as string;
  assert.deepEqual(table.get('reports')?.serviceAccount, { namespace: 'apps', name: 'reports', uid: reportsUid }, "the account's uid beside its name");
  assert.equal(table.get('reports')?.hash, undefined, 'no password hash for the ServiceAccount user');
  const deployment = await get(kube, '/apis/apps/v1/namespaces/mail/deployments/tok');
  assert.match(JSON.stringify(deployment.spec.template.spec.volumes), /"key":"jwks.json"/);

  const verifier = new TokenVerifier({ issuer: config.auth.serviceAccountTokens!.issuer, audience: config.auth.serviceAccountTokens!.audience, jwks: jwks as never });
  const account = table.get('reports')!.serviceAccount!;
  assert.deepEqual(await verifier.verify(await tokenFor('apps', 'reports', 'smtprelay.dev/mail/tok'), account), { ok: true });
  const wrongAudience = await verifier.verify(await tokenFor('apps', 'reports', 'smtprelay.dev/mail/another-relay'), account);
  assert.equal(wrongAudience.ok, false);
  const otherAccount = await verifier.verify(await tokenFor('apps', 'other', 'smtprelay.dev/mail/tok'), account);
  assert.deepEqual(otherAccount, { ok: false, reason: 'token of another ServiceAccount (sub system:serviceaccount:apps:other)' });

  // No password exists anywhere for the ServiceAccount user.
  assert.equal(await get(kube, '/api/v1/namespaces/mail/secrets/tok-user-reports'), undefined);
  const reportsBinding = await get(kube, '/api/v1/namespaces/mail/secrets/tok-binding-reports');
  const rb = Object.fromEntries(Object.entries(reportsBinding.data as Record<string, string>).map(([k, v]) => [k, unb64(v)]));
  assert.deepEqual(rb, { audience: 'smtprelay.dev/mail/tok', 'ca.crt': pki.ca.certPem, host: 'tok.mail.svc', port: '587', provider: 'smtp-relay-operator', tls: 'starttls', type: 'smtp', username: 'reports' });
  assert.equal(reportsBinding.type, 'servicebinding.io/smtp');
  assert.equal(reportsBinding.metadata.ownerReferences[0].uid, relay.metadata.uid);
});

test('a password change in the user\'s Secret reaches the binding Secret', async () => {
  const binding = () => get(kube, '/api/v1/namespaces/mail/secrets/tok-binding-app');
  assert.equal(unb64((await binding()).data.password), 'first-password-0123456789');
  await kube.request('PATCH', '/api/v1/namespaces/mail/secrets/app-smtp', {
    contentType: 'application/merge-patch+json',
    body: { data: { password: b64('second-password-0123456789') } },
  });
  await eventually('the new password in the binding', async () => unb64((await binding()).data.password) === 'second-password-0123456789');
});

test('a deleted ServiceAccount takes its user out at once (CredentialsReady=False, no binding); re-created, its old tokens stay refused and new ones work', async () => {
  const usersTable = async () => validateUsers(YAML.parse(unb64((await get(kube, '/api/v1/namespaces/mail/secrets/tok-users')).data['users.yaml'])), 'users.yaml');
  const cm = await get(kube, '/api/v1/namespaces/mail/configmaps/tok-config');
  const config = YAML.parse(cm.data['config.yaml']) as RelayConfig;
  const jwks = JSON.parse(unb64((await get(kube, '/api/v1/namespaces/mail/secrets/tok-users')).data['jwks.json']));
  const verifier = new TokenVerifier({ issuer: config.auth.serviceAccountTokens!.issuer, audience: 'smtprelay.dev/mail/tok', jwks });
  const oldToken = await tokenFor('apps', 'reports', 'smtprelay.dev/mail/tok');

  await kube.request('DELETE', '/api/v1/namespaces/apps/serviceaccounts/reports');
  const relay = await eventually('CredentialsReady=False for the deleted account', async () => {
    const r = await getRelay(kube, 'mail', 'tok');
    return condition(r, 'CredentialsReady')?.status === 'False' ? r : undefined;
  });
  const c = condition(relay, 'CredentialsReady')!;
  assert.equal(c.reason, 'ServiceAccountNotFound');
  assert.match(c.message, /reports: ServiceAccount apps\/reports does not exist; its tokens are refused/);
  // the users Secret and the status are written by the same reconcile; read until both show it
  await eventually('the user out of the users file (the relay then refuses every token for it)', async () => !(await usersTable()).has('reports'));
  assert.equal((await usersTable()).has('app'), true, 'the other users stay');
  await eventually('the binding Secret gone from status', async () => ((await getRelay(kube, 'mail', 'tok'))?.status?.bindings ?? []).every((b: { user: string }) => b.user !== 'reports'));
  await eventually('a Warning event that says why', async () => {
    const events = await kube.get<{ items: { reason: string; message: string }[] }>('/api/v1/namespaces/mail/events');
    return events.items.some((e) => e.reason === 'ServiceAccountNotFound' && /user reports left out/.test(e.message));
  });

  await kube.request('POST', '/api/v1/namespaces/apps/serviceaccounts', { body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'reports', namespace: 'apps' } } });
  const newUid = (await get(kube, '/api/v1/namespaces/apps/serviceaccounts/reports')).metadata.uid as string;
  const account = await eventually('the user back with the new uid', async () => {
    const a = (await usersTable()).get('reports')?.serviceAccount;
    return a?.uid === newUid ? a : undefined;
  });
  await eventually('CredentialsReady=True again', async () => condition(await getRelay(kube, 'mail', 'tok'), 'CredentialsReady')?.status === 'True');
  assert.deepEqual(await verifier.verify(oldToken, account), { ok: false, reason: 'token of a deleted ServiceAccount of that name (its uid is not the current one)' });
  assert.deepEqual(await verifier.verify(await tokenFor('apps', 'reports', 'smtprelay.dev/mail/tok'), account), { ok: true });
});
