// Every example in crds/examples/ applied (server-side, as `kubectl apply
// --server-side` does) to the local control plane with the operator running:
// each yields all its children and a status that tells the truth about what
// is there and what is missing. Some references are provided on purpose and
// some are not, so both sides of each condition are seen.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { Kube, MEDIA_APPLY_PATCH, resourcePath, type Resource } from '../../operator/runtime/kube.js';
import { resourceForKind } from '../../operator/runtime/resources.js';
import type { RunningOperator } from '../../operator/operator.js';
import { repoRoot, startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { b64, condition, createIssuer, createNamespace, eventually, get, getRelay, runOperator } from './support.js';

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;
let pki: Pki;

const SECRET: Resource = { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true };

/**
 * A stand-in for prometheus-operator's ServiceMonitor CRD (same group, version
 * and names; the schema keeps any spec): enough for the operator to detect the
 * kind and for the API server to store what it applies.
 */
const serviceMonitorCrdStandIn = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: 'servicemonitors.monitoring.coreos.com' },
  spec: {
    group: 'monitoring.coreos.com',
    scope: 'Namespaced',
    names: { plural: 'servicemonitors', singular: 'servicemonitor', kind: 'ServiceMonitor', listKind: 'ServiceMonitorList' },
    versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', properties: { spec: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } } } }],
  },
};

before(async () => {
  cp = await startControlPlane({ crdObjects: [serviceMonitorCrdStandIn] });
  kube = new Kube(cp.kubeconfig);
  pki = await createPki();
  op = await runOperator(cp, 'operator-examples');
  await op.whenRunning();
});

after(async () => {
  await op?.stop();
  await pki?.cleanup();
  await cp?.stop();
});

/** What each example's status must say, given the references provided below. */
const expected: Record<string, Record<string, string>> = {
  outbound: { CredentialsReady: 'True', CertificateReady: 'False/Issuing', UpstreamReady: 'True', DkimReady: 'True', Reconciled: 'True' },
  signed: { DkimReady: 'True', CertificateReady: 'False/Issuing', Reconciled: 'True' },
  office: { CertificateReady: 'True/TlsSecretValid', Reconciled: 'True' },
  shared: { UpstreamReady: 'False/UpstreamCredentialsNotFound', Reconciled: 'True' },
  ses: { UpstreamReady: 'True', CertificateReady: 'False/Issuing', Reconciled: 'True' },
  // the real API server's issuer keys fetched: the ServiceAccount user can authenticate
  tokens: { CredentialsReady: 'True/CredentialsValid', Reconciled: 'True' },
  'outbound-full': { UpstreamReady: 'False/UpstreamCredentialsNotFound', DkimReady: 'False/DkimSecretNotFound', Reconciled: 'True' },
  m365: { UpstreamReady: 'True/UpstreamConfigured', CertificateReady: 'False/Issuing', Reconciled: 'True' },
  workspace: { UpstreamReady: 'False/UpstreamOAuth2SecretNotFound', CertificateReady: 'False/Issuing', Reconciled: 'True' },
  // a persistent queue: a StatefulSet instead of a Deployment
  queued: { CredentialsReady: 'True', CertificateReady: 'False/Issuing', Reconciled: 'True' },
};

test('every example applies and yields its children and a truthful status', async () => {
  await createNamespace(kube, 'mail');
  await createNamespace(kube, 'apps'); // serviceaccount-login.yaml's app namespace
  await createIssuer(kube, 'mail', 'ca-issuer');
  await kube.request('POST', '/apis/cert-manager.io/v1/clusterissuers', {
    body: { apiVersion: 'cert-manager.io/v1', kind: 'ClusterIssuer', metadata: { name: 'letsencrypt' }, spec: { selfSigned: {} } },
  });
  // Provided: the DKIM key of dkim.yaml and the TLS Secret of ip-allowlist.yaml.
  const dkimKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  await kube.request('POST', resourcePath(SECRET, 'mail'), { body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'example-org-dkim', namespace: 'mail' }, type: 'Opaque', data: { 'private.key': b64(dkimKey) } } });
  const cert = await pki.issue({ name: 'office' });
  await kube.request('POST', resourcePath(SECRET, 'mail'), {
    body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'office-smtp-tls', namespace: 'mail' }, type: 'kubernetes.io/tls', data: { 'tls.crt': b64(cert.chainPem), 'tls.key': b64(cert.keyPem) } },
  });

  const dir = join(repoRoot(), 'crds', 'examples');
  const relays: string[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of YAML.parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      const obj = doc.toJS();
      if (!obj) continue;
      const r = resourceForKind(obj.kind);
      assert.ok(r, `${file}: kind ${obj.kind} known`);
      await kube.request('PATCH', resourcePath(r, obj.metadata.namespace, obj.metadata.name), { query: { fieldManager: 'kubectl', force: true }, contentType: MEDIA_APPLY_PATCH, body: obj });
      if (obj.kind === 'SmtpRelay') relays.push(obj.metadata.name);
    }
  }
  assert.deepEqual([...relays].sort(), Object.keys(expected).sort(), 'every example has expectations here');

  for (const name of relays) {
    const workload = name === 'queued' ? 'statefulsets' : 'deployments';
    for (const path of [`/apis/apps/v1/namespaces/mail/${workload}/${name}`, `/api/v1/namespaces/mail/configmaps/${name}-config`, `/api/v1/namespaces/mail/secrets/${name}-users`, `/apis/networking.k8s.io/v1/namespaces/mail/networkpolicies/${name}`, `/apis/policy/v1/namespaces/mail/poddisruptionbudgets/${name}`, `/api/v1/namespaces/mail/services/${name}`]) {
      await eventually(`${name}: ${path}`, () => get(kube, path));
    }
    const r = await eventually(`${name}: status as expected`, async () => {
      const r = await getRelay(kube, 'mail', name);
      const ok = Object.entries(expected[name]!).every(([type, want]) => {
        const c = condition(r, type);
        const [status, reason] = want.split('/');
        return c && c.status === status && (!reason || c.reason === reason);
      });
      return ok ? r : undefined;
    });
    // No kubelet: no pods run, and Ready says so rather than claiming success.
    assert.equal(condition(r, 'Ready')?.status, 'False', `${name}: Ready must not be True without running pods`);
    assert.equal(r.status.observedGeneration, r.metadata.generation);
    assert.match(r.status.endpoint, new RegExp(`^${name}\\.mail\\.svc:\\d+$`));
    for (const c of r.status.conditions) assert.ok(c.message && c.reason, `${name}: ${c.type} has a reason and a message`);
  }
  const tokens = await getRelay(kube, 'mail', 'tokens');
  assert.deepEqual(tokens.status.bindings, [
    { user: 'reports', secretName: 'tokens-binding-reports' },
    { user: 'billing', secretName: 'tokens-binding-billing' },
  ]);
  const signed = await getRelay(kube, 'mail', 'signed');
  assert.deepEqual(signed.status.dnsRecords.map((d: { name: string }) => d.name).sort(), ['relay1._domainkey.example.com', 'sel2026._domainkey.example.org']);
  const sm = await eventually('ServiceMonitor of outbound-full (serviceMonitor.enabled)', () => get(kube, '/apis/monitoring.coreos.com/v1/namespaces/mail/servicemonitors/outbound-full'));
  assert.equal(sm.metadata.labels.release, 'prometheus');
  assert.equal(sm.spec.endpoints[0].port, 'metrics');
  assert.equal(await get(kube, '/apis/monitoring.coreos.com/v1/namespaces/mail/servicemonitors/outbound'), undefined, 'no ServiceMonitor unless enabled');
  assert.match(condition(await getRelay(kube, 'mail', 'm365'), 'UpstreamReady')!.message, /with OAuth2 \(microsoft\) as relay@contoso\.com/);
  assert.match(condition(await getRelay(kube, 'mail', 'workspace'), 'UpstreamReady')!.message, /workspace-relay-sa \(spec\.upstream\.oauth2\.google\.serviceAccountSecretRef\) does not exist/);
  const full = await getRelay(kube, 'mail', 'outbound-full');
  assert.match(condition(full, 'UpstreamReady')!.message, /sendgrid-smtp/);
  assert.match(condition(full, 'DkimReady')!.message, /billing-dkim/);
});
