// The operator against the real local control plane (etcd + kube-apiserver +
// kube-controller-manager, test/harness/controlplane/harness.ts), with the repo's CRD
// and cert-manager's real CRDs. The operator runs in-process; cert-manager is
// played by CertManagerStandIn (test/operator/support.ts).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseHash, verifyPassword } from '../../relay/password.js';
import { USERS_KEY } from '../../operator/api/v1alpha1.js';
import { Kube, resourcePath } from '../../operator/runtime/kube.js';
import { Certificates, SmtpRelays } from '../../operator/runtime/resources.js';
import type { RunningOperator } from '../../operator/operator.js';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import {
  CertManagerStandIn,
  b64,
  condition,
  createBasicAuthSecret,
  createIssuer,
  createNamespace,
  createRelay,
  eventually,
  get,
  getRelay,
  markRelayPodsReady,
  relayManifest,
  runOperator,
  sleep,
  templateHash,
  unb64,
} from './support.js';

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;
let certManager: CertManagerStandIn;

before(async () => {
  cp = await startControlPlane();
  kube = new Kube(cp.kubeconfig);
  certManager = await CertManagerStandIn.create(kube);
  op = await runOperator(cp, 'operator-a');
  await op.whenRunning();
});

after(async () => {
  await op?.stop();
  await certManager?.cleanup();
  await cp?.stop();
});

const childPaths = (ns: string, name: string) => ({
  serviceAccount: `/api/v1/namespaces/${ns}/serviceaccounts/${name}`,
  configMap: `/api/v1/namespaces/${ns}/configmaps/${name}-config`,
  usersSecret: `/api/v1/namespaces/${ns}/secrets/${name}-users`,
  deployment: `/apis/apps/v1/namespaces/${ns}/deployments/${name}`,
  service: `/api/v1/namespaces/${ns}/services/${name}`,
  metricsService: `/api/v1/namespaces/${ns}/services/${name}-metrics`,
  certificate: `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/${name}-tls`,
  networkPolicy: `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/${name}`,
  pdb: `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${name}`,
});

test('an SmtpRelay produces every child, owned by it, and a generated user Secret whose password never reaches the hashed Secret', async () => {
  const ns = 'produce';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  const relay = await createRelay(kube, relayManifest(ns, 'outbound'));
  const paths = childPaths(ns, 'outbound');
  for (const [what, path] of Object.entries(paths)) {
    const obj = await eventually(`${what} to exist`, () => get(kube, path));
    const ref = obj.metadata.ownerReferences?.[0];
    assert.equal(ref?.uid, relay.metadata?.uid, `${what} is owned by the SmtpRelay`);
    assert.equal(ref?.controller, true, `${what} has a controller ownerReference`);
    assert.equal(obj.metadata.labels['app.kubernetes.io/managed-by'], 'smtp-relay-operator');
  }
  const sa = await get(kube, paths.serviceAccount);
  assert.equal(sa.automountServiceAccountToken, false);

  const generated = await eventually('generated user Secret', () => get(kube, `/api/v1/namespaces/${ns}/secrets/outbound-user-app`));
  assert.equal(generated.type, 'kubernetes.io/basic-auth');
  assert.equal(generated.metadata.ownerReferences?.[0]?.uid, relay.metadata?.uid, 'a generated Secret is owned');
  const password = unb64(generated.data.password);
  assert.ok(password.length >= 16, 'generated password meets the default policy');

  const users = await eventually('users Secret with the user', async () => {
    const s = await get(kube, paths.usersSecret);
    const text = unb64(s?.data?.[USERS_KEY]);
    return text.includes('name: app') ? text : undefined;
  });
  assert.ok(!users.includes(password), 'the hashed users Secret never contains the plaintext');
  const hash = /passwordHash: (\S+)/.exec(users)?.[1] ?? '';
  const parsed = parseHash(hash.replace(/^"|"$/g, ''));
  assert.notEqual(typeof parsed, 'string', `a parseable scrypt hash: ${hash}`);
  assert.equal(await verifyPassword(password, parsed as Exclude<typeof parsed, string>), true);
  // The operator's own random password: the marker says so, and the hash has the low cost.
  assert.equal(generated.metadata.annotations?.['smtprelay.dev/generated-password-sha256'], createHash('sha256').update(password).digest('hex'));
  assert.match(hash, /^"?scrypt\$1024\$8\$1\$/, 'a generated password gets the low scrypt cost');

  // Secrets never reach the operator's log or Events.
  const logText = readFileSync(join(cp.dir, 'logs', 'operator-a.log'), 'utf8');
  assert.ok(logText.includes('produce/outbound'), 'the log names the relay');
  assert.ok(!logText.includes(password) && !logText.includes(generated.data.password), 'no password in the log');
  const events = await kube.get<any>(`/api/v1/namespaces/${ns}/events`);
  assert.ok(!JSON.stringify(events).includes(password), 'no password in Events');

  const status = await eventually('status with conditions', async () => {
    const r = await getRelay(kube, ns, 'outbound');
    return condition(r, 'Ready') ? r : undefined;
  });
  assert.equal(status.status.observedGeneration, status.metadata.generation);
  assert.equal(status.status.endpoint, 'outbound.produce.svc:587');
  assert.equal(condition(status, 'CredentialsReady')?.status, 'True');
  assert.equal(condition(status, 'CertificateReady')?.status, 'False');
  assert.equal(condition(status, 'CertificateReady')?.reason, 'Issuing');
  assert.equal(condition(status, 'Ready')?.status, 'False');

  // The user replaces the generated password (the marker stays but no longer matches): full cost.
  await kube.request('PATCH', `/api/v1/namespaces/${ns}/secrets/outbound-user-app`, {
    contentType: 'application/merge-patch+json',
    body: { data: { password: b64('a-password-the-user-chose-1') } },
  });
  const rehashed = await eventually('users Secret re-hashed at the full cost', async () => {
    const text = unb64((await get(kube, paths.usersSecret))?.data?.[USERS_KEY]);
    return /scrypt\$32768\$8\$1\$/.test(text) ? text : undefined;
  });
  const h2 = parseHash((/passwordHash: (\S+)/.exec(rehashed)?.[1] ?? '').replace(/^"|"$/g, ''));
  assert.equal(await verifyPassword('a-password-the-user-chose-1', h2 as Exclude<typeof h2, string>), true);
});

test('status conditions follow the certificate: Issuing → Issued (notAfter from the Secret) → Ready once pods are ready → not ready again', async () => {
  const ns = 'certs';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'tlsrelay'));
  await eventually('Certificate', () => get(kube, `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/tlsrelay-tls`));
  await eventually('CertificateReady=False/Issuing', async () => condition(await getRelay(kube, ns, 'tlsrelay'), 'CertificateReady')?.reason === 'Issuing');

  const { notAfter } = await certManager.issue(ns, 'tlsrelay-tls');
  const issued = await eventually('CertificateReady=True', async () => {
    const r = await getRelay(kube, ns, 'tlsrelay');
    return condition(r, 'CertificateReady')?.status === 'True' ? r : undefined;
  });
  assert.equal(condition(issued, 'CertificateReady')?.reason, 'Issued');
  assert.equal(issued.status.certificate?.notAfter, notAfter);
  assert.equal(issued.status.certificate?.secretName, 'tlsrelay-tls');
  // No kubelet runs pods here, so the Deployment is not available and Ready says so.
  assert.equal(condition(issued, 'Ready')?.status, 'False');
  assert.match(condition(issued, 'Ready')?.message ?? '', /Available/);

  // Play the kubelet: mark the relay pods Running and Ready, so the Deployment becomes available.
  await markRelayPodsReady(kube, ns, 'tlsrelay', 2);
  // Available (and so Ready) needs all but one pod; the deployment controller may count the
  // two pods in separate status updates, so Ready=True can come with "1/2" first: each later
  // readyReplicas change must still reach the status.
  const ready = await eventually('Ready=True with 2/2 pods ready', async () => {
    const r = await getRelay(kube, ns, 'tlsrelay');
    return condition(r, 'Ready')?.status === 'True' && r.status.replicasSummary === '2/2' ? r : undefined;
  });
  assert.equal(condition(ready, 'Available')?.status, 'True');

  await certManager.setReady(ns, 'tlsrelay-tls', 'False', 'Renewing', 'renewal in progress');
  const again = await eventually('CertificateReady=False again', async () => {
    const r = await getRelay(kube, ns, 'tlsrelay');
    return condition(r, 'CertificateReady')?.status === 'False' ? r : undefined;
  });
  assert.equal(condition(again, 'Ready')?.status, 'False');
  assert.match(condition(again, 'Ready')?.message ?? '', /CertificateReady/);
});

test('a missing issuer and a missing upstream credentials Secret are False conditions that say what to fix, with Warning Events', async () => {
  const ns = 'broken';
  await createNamespace(kube, ns);
  await createRelay(kube, relayManifest(ns, 'broken', { upstream: { host: 'smtp.example.net', credentialsSecretRef: { name: 'upstream-smtp' } } }));
  const r = await eventually('UpstreamReady=False', async () => {
    const r = await getRelay(kube, ns, 'broken');
    return condition(r, 'UpstreamReady')?.status === 'False' && condition(r, 'CertificateReady') ? r : undefined;
  });
  assert.equal(condition(r, 'UpstreamReady')?.reason, 'UpstreamCredentialsNotFound');
  assert.match(condition(r, 'UpstreamReady')?.message ?? '', /upstream-smtp.*does not exist; create/);
  assert.equal(condition(r, 'CertificateReady')?.reason, 'IssuerNotFound');
  assert.match(condition(r, 'CertificateReady')?.message ?? '', /ca-issuer/);
  const events = await eventually('Warning events', async () => {
    const list = await kube.get<any>(`/api/v1/namespaces/${ns}/events`);
    const reasons = new Set(list.items.filter((e: any) => e.type === 'Warning').map((e: any) => e.reason));
    return reasons.has('UpstreamCredentialsNotFound') && reasons.has('IssuerNotFound') ? list : undefined;
  });
  const ours = events.items.filter((e: any) => e.reportingComponent === 'smtp-relay-operator');
  assert.ok(ours.length >= 2);
  assert.ok(ours.every((e: any) => e.involvedObject.name === 'broken' && e.involvedObject.kind === 'SmtpRelay'));

  // Fixing it clears the condition.
  await createBasicAuthSecret(kube, ns, 'upstream-smtp', 'relay', 'upstream-password-123');
  await eventually('UpstreamReady=True after the Secret appears', async () => condition(await getRelay(kube, ns, 'broken'), 'UpstreamReady')?.status === 'True');
});

test('a password below the policy is refused: the user is left out, CredentialsReady names it, a Warning Event is recorded', async () => {
  const ns = 'policy';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createBasicAuthSecret(kube, ns, 'short-pw', 'weak', 'tooshort');
  await createBasicAuthSecret(kube, ns, 'good-pw', 'strong', 'a-long-enough-password-1');
  await createRelay(
    kube,
    relayManifest(ns, 'strict', {
      auth: {
        users: [
          { name: 'weak', secretRef: { name: 'short-pw' }, allowedSenders: ['a@example.com'] },
          { name: 'strong', secretRef: { name: 'good-pw' }, allowedSenders: ['b@example.com'] },
        ],
      },
    }),
  );
  const r = await eventually('CredentialsReady=False', async () => {
    const r = await getRelay(kube, ns, 'strict');
    return condition(r, 'CredentialsReady')?.status === 'False' ? r : undefined;
  });
  const c = condition(r, 'CredentialsReady')!;
  assert.equal(c.reason, 'PasswordRefused');
  assert.match(c.message, /weak/);
  assert.match(c.message, /at least 16/);
  assert.doesNotMatch(c.message, /tooshort/, 'the refused password itself is never shown');
  const users = unb64((await get(kube, `/api/v1/namespaces/${ns}/secrets/strict-users`)).data[USERS_KEY]);
  assert.match(users, /name: strong/);
  assert.doesNotMatch(users, /name: weak/);
  const ev = await eventually('PasswordRefused event', async () => {
    const list = await kube.get<any>(`/api/v1/namespaces/${ns}/events`);
    return list.items.find((e: any) => e.reason === 'PasswordRefused' && e.type === 'Warning');
  });
  assert.match(ev.message, /weak/);
  assert.doesNotMatch(ev.message, /tooshort/);
  // The user's own Secret is only read, never changed.
  const s = await get(kube, `/api/v1/namespaces/${ns}/secrets/short-pw`);
  assert.equal(unb64(s.data.password), 'tooshort');
  assert.equal(s.metadata.ownerReferences, undefined);
});

test('editing or deleting a child is repaired', async () => {
  const ns = 'repair';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'fixme'));
  const paths = childPaths(ns, 'fixme');
  const cm = await eventually('ConfigMap', () => get(kube, paths.configMap));
  const original = cm.data['config.yaml'];
  await kube.request('PATCH', paths.configMap, { contentType: 'application/merge-patch+json', body: { data: { 'config.yaml': 'tampered: true\n' } } });
  await eventually('ConfigMap repaired', async () => (await get(kube, paths.configMap))?.data?.['config.yaml'] === original);

  const np = await eventually('NetworkPolicy', () => get(kube, paths.networkPolicy));
  await kube.request('DELETE', paths.networkPolicy);
  const back = await eventually('NetworkPolicy recreated', async () => {
    const n = await get(kube, paths.networkPolicy);
    return n && n.metadata.uid !== np.metadata.uid ? n : undefined;
  });
  assert.deepEqual(back.spec, np.spec);

  const dep = await eventually('Deployment', () => get(kube, paths.deployment));
  await kube.request('PATCH', paths.deployment, { contentType: 'application/merge-patch+json', body: { spec: { replicas: 7 } } });
  await eventually('Deployment replicas repaired', async () => (await get(kube, paths.deployment))?.spec?.replicas === dep.spec.replicas);
});

test('changing a user Secret updates the hashed Secret without rolling the Deployment', async () => {
  const ns = 'rotate';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createBasicAuthSecret(kube, ns, 'billing-smtp', 'billing', 'first-password-0123456');
  await createRelay(kube, relayManifest(ns, 'rot', { auth: { users: [{ name: 'billing', secretRef: { name: 'billing-smtp' }, allowedSenders: ['billing@example.com'] }] } }));
  const paths = childPaths(ns, 'rot');
  const usersOf = async () => unb64((await get(kube, paths.usersSecret))?.data?.[USERS_KEY]);
  const before1 = await eventually('users Secret', async () => ((await usersOf()).includes('billing') ? usersOf() : undefined));
  const dep1 = await eventually('Deployment', () => get(kube, paths.deployment));
  const usersRv = (await get(kube, paths.usersSecret)).metadata.resourceVersion;

  // Unchanged password: reconciles do not rewrite the Secret (hash stability).
  await kube.request('PATCH', resourcePath(SmtpRelays, ns, 'rot'), { contentType: 'application/merge-patch+json', body: { metadata: { labels: { poke: '1' } } } });
  await sleep(1500);
  assert.equal((await get(kube, paths.usersSecret)).metadata.resourceVersion, usersRv, 'an unchanged password does not rewrite the hashed Secret');

  await kube.request('PATCH', `/api/v1/namespaces/${ns}/secrets/billing-smtp`, { contentType: 'application/merge-patch+json', body: { data: { password: b64('second-password-6543210') } } });
  const after1 = await eventually('users Secret updated', async () => {
    const u = await usersOf();
    return u !== before1 ? u : undefined;
  });
  const hash = (/passwordHash: (\S+)/.exec(after1)?.[1] ?? '').replace(/^"|"$/g, '');
  const parsed = parseHash(hash);
  assert.notEqual(typeof parsed, 'string');
  assert.equal(await verifyPassword('second-password-6543210', parsed as Exclude<typeof parsed, string>), true);
  assert.match(hash, /^scrypt\$32768\$8\$1\$/, 'a user-supplied password gets the production scrypt cost');
  await sleep(1000);
  const dep2 = await get(kube, paths.deployment);
  assert.equal(templateHash(dep2), templateHash(dep1), 'the pod template is unchanged: no rollout');
  assert.equal(dep2.metadata.generation, dep1.metadata.generation);
});

test('a settled relay is not reconciled again by its own status writes', async () => {
  const ns = 'quiet';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'calm'));
  await eventually('status', async () => condition(await getRelay(kube, ns, 'calm'), 'Ready'));
  // Let kube-controller-manager finish with the Deployment (ReplicaSet, pods, status) first.
  await eventually('Deployment status settled', async () => {
    const d = await get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/calm`);
    return d?.status?.observedGeneration === d?.metadata?.generation && d?.status?.replicas === d?.spec?.replicas && d?.status?.unavailableReplicas === d?.spec?.replicas;
  });
  await sleep(2000);
  const count = async () => {
    const m = await op.metrics.reconcileTotal.get();
    return m.values.filter((v) => v.labels.controller === 'smtprelay').reduce((n, v) => n + v.value, 0);
  };
  const n1 = await count();
  const rv1 = (await getRelay(kube, ns, 'calm')).metadata.resourceVersion;
  await sleep(3000);
  assert.equal(await count(), n1, 'no reconcile without a change');
  assert.equal((await getRelay(kube, ns, 'calm')).metadata.resourceVersion, rv1, 'no status write without a change');

  // A reconcile that finds everything in place writes nothing: no apply, no status.
  const applies = async () => (await op.metrics.applyTotal.get()).values.reduce((n, v) => n + v.value, 0);
  const a1 = await applies();
  const paths = childPaths(ns, 'calm');
  const rvs = await Promise.all(Object.values(paths).map(async (p) => (await get(kube, p)).metadata.resourceVersion));
  await kube.request('PATCH', resourcePath(SmtpRelays, ns, 'calm'), { contentType: 'application/merge-patch+json', body: { metadata: { labels: { poke: 'yes' } } } });
  await eventually('the poke to be reconciled', async () => (await count()) > n1);
  await sleep(500);
  assert.equal(await applies(), a1, 'no child was written');
  assert.deepEqual(await Promise.all(Object.values(paths).map(async (p) => (await get(kube, p)).metadata.resourceVersion)), rvs, 'no child changed');
});

test('deleting the SmtpRelay removes its children (garbage collector) but leaves user-supplied Secrets', async () => {
  const ns = 'cleanup';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createBasicAuthSecret(kube, ns, 'mine', 'u', 'user-supplied-password-1');
  await createRelay(kube, relayManifest(ns, 'gone', { auth: { users: [{ name: 'u', secretRef: { name: 'mine' }, allowedSenders: ['u@example.com'] }, { name: 'gen', allowedSenders: ['g@example.com'] }] } }));
  const paths = childPaths(ns, 'gone');
  for (const [what, path] of Object.entries(paths)) await eventually(`${what} to exist`, () => get(kube, path));
  await eventually('generated Secret', () => get(kube, `/api/v1/namespaces/${ns}/secrets/gone-user-gen`));
  await kube.request('DELETE', resourcePath(SmtpRelays, ns, 'gone'));
  for (const [what, path] of Object.entries(paths)) await eventually(`${what} to be collected`, async () => (await get(kube, path)) === undefined, 60_000);
  await eventually('generated Secret collected', async () => (await get(kube, `/api/v1/namespaces/${ns}/secrets/gone-user-gen`)) === undefined, 60_000);
  assert.ok(await get(kube, `/api/v1/namespaces/${ns}/secrets/mine`), 'the user-supplied Secret stays');
});

test('the operator serves its metrics', async () => {
  const res = await fetch(`http://127.0.0.1:${op.metricsPort}/metrics`);
  const text = await res.text();
  for (const name of [
    'smtp_relay_operator_reconcile_total',
    'smtp_relay_operator_reconcile_errors_total',
    'smtp_relay_operator_reconcile_duration_seconds',
    'smtp_relay_operator_workqueue_depth',
    'smtp_relay_operator_relays',
    'smtp_relay_operator_recreate_total',
  ]) {
    assert.match(text, new RegExp(`^# TYPE ${name} `, 'm'), name);
  }
  assert.match(text, /smtp_relay_operator_reconcile_total\{controller="smtprelay",result="(success|requeue)"\} [1-9]/);
  assert.equal((await fetch(`http://127.0.0.1:${op.metricsPort}/readyz`)).status, 200);
});

test('a hot-reloadable change (limits) updates the ConfigMap without a rollout; a restart-relevant one (hostname) rolls the pods', async () => {
  const ns = 'reload';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'hot'));
  const paths = childPaths(ns, 'hot');
  const cm1 = await eventually('ConfigMap', () => get(kube, paths.configMap));
  const dep1 = await eventually('Deployment', () => get(kube, paths.deployment));
  await kube.request('PATCH', resourcePath(SmtpRelays, ns, 'hot'), { contentType: 'application/merge-patch+json', body: { spec: { limits: { maxRecipients: 7 } } } });
  await eventually('ConfigMap with the new limit', async () => {
    const c = await get(kube, paths.configMap);
    return c.data['config.yaml'] !== cm1.data['config.yaml'] && /maxRecipients: 7/.test(c.data['config.yaml']);
  });
  await sleep(1000);
  assert.equal(templateHash(await get(kube, paths.deployment)), templateHash(dep1), 'limits are hot-reloaded: same pod template');

  await kube.request('PATCH', resourcePath(SmtpRelays, ns, 'hot'), { contentType: 'application/merge-patch+json', body: { spec: { hostname: 'relay2.example.com' } } });
  await eventually('pod template rolled', async () => templateHash(await get(kube, paths.deployment)) !== templateHash(dep1));
});

test('a child the API server will not update in place (immutable Secret type) is deleted, recreated and counted', async () => {
  const ns = 'immutable';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  // Left over from something else: same name as the hashed users Secret, another (immutable) type.
  await kube.request('POST', `/api/v1/namespaces/${ns}/secrets`, {
    body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'imm-users', namespace: ns, labels: { 'app.kubernetes.io/managed-by': 'smtp-relay-operator' } }, type: 'kubernetes.io/basic-auth', data: { username: b64('x'), password: b64('y') } },
  });
  const recreated = async () => (await op.metrics.recreateTotal.get()).values.reduce((n, v) => n + v.value, 0);
  const before = await recreated();
  await createRelay(kube, relayManifest(ns, 'imm'));
  const s = await eventually('users Secret replaced', async () => {
    const s = await get(kube, `/api/v1/namespaces/${ns}/secrets/imm-users`);
    return s?.type === 'Opaque' ? s : undefined;
  });
  assert.ok(s.metadata.ownerReferences?.[0]?.controller);
  assert.ok((await recreated()) > before, 'smtp_relay_operator_recreate_total counted it');
});

test('an existing object the relay does not own (a user Secret and ConfigMap with a child\'s name) is neither taken over nor deleted', async () => {
  const ns = 'foreign';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  // Not ours: no managed-by label, no ownerReference. The Secret's type differs from the
  // hashed users Secret's (Opaque), which an in-place update cannot change.
  await createBasicAuthSecret(kube, ns, 'mail-users', 'someone', 'their-own-password-1');
  await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'mail-config', namespace: ns }, data: { mine: 'yes' } } });
  const secretBefore = await get(kube, `/api/v1/namespaces/${ns}/secrets/mail-users`);
  const cmBefore = await get(kube, `/api/v1/namespaces/${ns}/configmaps/mail-config`);
  await createRelay(kube, relayManifest(ns, 'mail'));
  const r = await eventually('Reconciled=False naming the foreign objects', async () => {
    const r = await getRelay(kube, ns, 'mail');
    return condition(r, 'Reconciled')?.status === 'False' ? r : undefined;
  });
  assert.match(condition(r, 'Reconciled')?.message ?? '', /Secret mail-users.*not managed by this SmtpRelay/);
  assert.match(condition(r, 'Reconciled')?.message ?? '', /ConfigMap mail-config/);
  await eventually('the other children', () => get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/mail`));
  await sleep(1500);
  const secretAfter = await get(kube, `/api/v1/namespaces/${ns}/secrets/mail-users`);
  assert.equal(secretAfter?.metadata.uid, secretBefore.metadata.uid, 'the user Secret was not deleted');
  assert.equal(secretAfter.metadata.resourceVersion, secretBefore.metadata.resourceVersion, 'the user Secret was not written');
  const cmAfter = await get(kube, `/api/v1/namespaces/${ns}/configmaps/mail-config`);
  assert.equal(cmAfter.metadata.resourceVersion, cmBefore.metadata.resourceVersion, 'the user ConfigMap was not written');
  assert.equal(cmAfter.metadata.ownerReferences, undefined);

  // Once the user removes them, the relay gets its own.
  await kube.request('DELETE', `/api/v1/namespaces/${ns}/secrets/mail-users`);
  await kube.request('DELETE', `/api/v1/namespaces/${ns}/configmaps/mail-config`);
  await eventually('Reconciled=True', async () => condition(await getRelay(kube, ns, 'mail'), 'Reconciled')?.status === 'True', 60_000);
  const users = await get(kube, `/api/v1/namespaces/${ns}/secrets/mail-users`);
  assert.equal(users.type, 'Opaque');
  assert.equal(users.metadata.ownerReferences?.[0]?.controller, true);
});

test('a child the relay no longer wants (its Certificate, after switching to spec.tls.secretName) is deleted', async () => {
  const ns = 'prune';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'p'));
  const certPath = `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/p-tls`;
  await eventually('the Certificate', () => get(kube, certPath));
  await kube.request('PATCH', resourcePath(SmtpRelays, ns, 'p'), { contentType: 'application/merge-patch+json', body: { spec: { tls: { issuerRef: null, secretName: 'p-own-tls' } } } });
  await eventually('the Certificate to be deleted', async () => (await get(kube, certPath)) === undefined);
  await eventually('CertificateReady about the given Secret', async () => condition(await getRelay(kube, ns, 'p'), 'CertificateReady')?.reason === 'TlsSecretNotFound');
  assert.ok(await get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/p`), 'the other children stay');
});

test('two users whose generated password Secrets would have the same name (app.one, app-one) do not share a password', async () => {
  const ns = 'shared-pw';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(
    kube,
    relayManifest(ns, 'r', {
      auth: {
        users: [
          { name: 'app.one', allowedSenders: ['one@example.com'] },
          { name: 'app-one', allowedSenders: ['ceo@example.com'] },
        ],
      },
    }),
  );
  const r = await eventually('CredentialsReady=False', async () => {
    const r = await getRelay(kube, ns, 'r');
    return condition(r, 'CredentialsReady')?.status === 'False' ? r : undefined;
  });
  assert.match(condition(r, 'CredentialsReady')!.message, /app-one: .*r-user-app-one.*app\.one.*secretRef/);
  const users = unb64((await get(kube, `/api/v1/namespaces/${ns}/secrets/r-users`)).data[USERS_KEY]);
  assert.match(users, /name: app\.one/);
  assert.doesNotMatch(users, /name: app-one/, 'the second user is left out, not given the first one\'s password');
});

test('an operator started on settled relays (caches filled by a list, not by watch events) writes nothing', async () => {
  const ns = 'restart';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'steady'));
  await eventually('Certificate', () => get(kube, resourcePath(Certificates, ns, 'steady-tls')));
  await certManager.issue(ns, 'steady-tls');
  await eventually('issued and reconciled', async () => {
    const r = await getRelay(kube, ns, 'steady');
    return condition(r, 'CertificateReady')?.status === 'True' && r.status?.observedGeneration === r.metadata.generation;
  });
  await sleep(1000);
  const relayRv = (await getRelay(kube, ns, 'steady')).metadata.resourceVersion;
  // A second operator for this namespace only (the first keeps running for the others;
  // no leader election here): its first reconcile must find every child up to date.
  const fresh = await runOperator(cp, 'operator-restart', { namespaces: [ns] });
  try {
    await fresh.whenRunning();
    const reconciled = async () => (await fresh.metrics.reconcileTotal.get()).values.filter((v) => v.labels.controller === 'smtprelay').reduce((n, v) => n + v.value, 0);
    await eventually('the fresh operator reconciled the relay', async () => (await reconciled()) >= 1);
    await sleep(500);
    const applies = (await fresh.metrics.applyTotal.get()).values.reduce((n, v) => n + v.value, 0);
    assert.equal(applies, 0, 'no child re-applied after a relist');
    assert.equal((await getRelay(kube, ns, 'steady')).metadata.resourceVersion, relayRv, 'no status write');
  } finally {
    await fresh.stop();
  }
});
