// Optional APIs missing at start: cert-manager not installed is a clear
// condition, not a crash loop; once its CRDs are installed, the running
// operator notices, watches Certificates and creates them.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join, resolve } from 'node:path';
import { readdirSync } from 'node:fs';
import { Kube } from '../../operator/runtime/kube.js';
import type { RunningOperator } from '../../operator/operator.js';
import { repoRoot, startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { condition, createIssuer, createNamespace, createRelay, eventually, get, getRelay, relayManifest, runOperator } from './support.js';

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;

before(async () => {
  cp = await startControlPlane({ defaultCrds: false, controllerManager: false, crdFiles: [join(repoRoot(), 'crds', 'smtprelay.yaml')] });
  kube = new Kube(cp.kubeconfig);
  op = await runOperator(cp, 'features', { discoveryIntervalMs: 500 });
  await op.whenRunning();
});

after(async () => {
  await op?.stop();
  await cp?.stop();
});

test('without cert-manager an issuerRef is CertificateReady=False saying so; installing cert-manager later is picked up without a restart', async () => {
  const ns = 'nocm';
  await createNamespace(kube, ns);
  await createRelay(kube, relayManifest(ns, 'relay'));
  const r = await eventually('CertificateReady=False', async () => {
    const r = await getRelay(kube, ns, 'relay');
    return condition(r, 'CertificateReady')?.status === 'False' ? r : undefined;
  });
  assert.match(condition(r, 'CertificateReady')?.message ?? '', /cert-manager\.io\/v1 API is not served; install cert-manager/);
  assert.ok(await get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/relay`), 'the other children are there');

  const dir = resolve(repoRoot(), '..', 'shared', 'cert-manager-crds');
  await cp.installCrds(readdirSync(dir).filter((f) => f.endsWith('.yaml')).map((f) => join(dir, f)));
  await createIssuer(kube, ns);
  const cert = await eventually('the Certificate, once cert-manager is served', () => get(kube, `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/relay-tls`));
  assert.equal(cert.metadata.ownerReferences?.[0]?.name, 'relay');
  // Issuing, or IssuerNotFound if that reconcile ran before the Issuer was created (re-checked every 30 s).
  await eventually('CertificateReady no longer about the missing API', async () => {
    const c = condition(await getRelay(kube, ns, 'relay'), 'CertificateReady');
    return c && ['Issuing', 'IssuerNotFound'].includes(c.reason) && !/not served/.test(c.message);
  });
  assert.equal(op.isLeader(), true);
});

test('a ServiceMonitor asked for without its CRD is explained in Reconciled and a Warning Event', async () => {
  const ns = 'nosm';
  await createNamespace(kube, ns);
  await createRelay(kube, relayManifest(ns, 'relay', { metrics: { serviceMonitor: { enabled: true } } }));
  const r = await eventually('Reconciled', async () => {
    const r = await getRelay(kube, ns, 'relay');
    return condition(r, 'Reconciled') ? r : undefined;
  });
  assert.equal(condition(r, 'Reconciled')?.status, 'True', 'the relay itself is fine');
  assert.match(condition(r, 'Reconciled')?.message ?? '', /no ServiceMonitor: .*ServiceMonitor API is not served: install the prometheus-operator CRDs/);
  await eventually('the Warning Event', async () => {
    const list = await kube.get<any>(`/api/v1/namespaces/${ns}/events`);
    return list.items.some((e: any) => e.type === 'Warning' && e.reason === 'ServiceMonitorUnavailable');
  });
});
