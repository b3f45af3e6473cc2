// spec.queue on the real local control plane (etcd + kube-apiserver +
// kube-controller-manager, whose StatefulSet and Deployment controllers create the
// pods): with persistent storage the relay runs as a StatefulSet with a claim per
// pod, and a relay moves between a Deployment and a StatefulSet without a moment
// with no ready pod. No kubelet runs here: markRelayPodsReady plays it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import YAML from 'yaml';
import { Kube, KubeError, MEDIA_MERGE_PATCH } from '../../operator/runtime/kube.js';
import type { RunningOperator } from '../../operator/operator.js';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { CertManagerStandIn, condition, createIssuer, createNamespace, createRelay, eventually, get, getRelay, markRelayPodsReady, relayManifest, runOperator } from './support.js';

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;
let certManager: CertManagerStandIn;
const ns = 'queue';

before(async () => {
  cp = await startControlPlane({ extraControllers: ['statefulset-controller'] });
  kube = new Kube(cp.kubeconfig);
  certManager = await CertManagerStandIn.create(kube);
  op = await runOperator(cp, 'operator-queue');
  await op.whenRunning();
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
});

after(async () => {
  await op?.stop();
  await certManager?.cleanup();
  await cp?.stop();
});

const sts = (name: string) => get(kube, `/apis/apps/v1/namespaces/${ns}/statefulsets/${name}`);
const deployment = (name: string) => get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/${name}`);
const patchRelay = (name: string, body: unknown) =>
  kube.request('PATCH', `/apis/smtprelay.dev/v1alpha1/namespaces/${ns}/smtprelays/${name}`, { contentType: MEDIA_MERGE_PATCH, body });
async function eventReasons(name: string): Promise<string[]> {
  const list = await kube.get<any>(`/api/v1/namespaces/${ns}/events`, { query: { fieldSelector: `involvedObject.name=${name}` } });
  return list.items.map((e: any) => `${e.type} ${e.reason}`);
}

test('a persistent queue runs the relay as a StatefulSet: one claim per pod, kept on scale-down and deletion, the queue section in the relay config', async () => {
  await createRelay(kube, relayManifest(ns, 'stateful', { queue: { storage: { size: '2Gi' }, delayWarning: '4h' } }));
  const set = await eventually('the StatefulSet', () => sts('stateful'));
  assert.equal(await deployment('stateful'), undefined, 'no Deployment');
  assert.equal(set.spec.volumeClaimTemplates[0].metadata.name, 'spool');
  assert.equal(set.spec.volumeClaimTemplates[0].spec.resources.requests.storage, '2Gi');
  assert.deepEqual(set.spec.persistentVolumeClaimRetentionPolicy, { whenDeleted: 'Retain', whenScaled: 'Retain' });
  const mount = set.spec.template.spec.containers[0].volumeMounts.find((m: any) => m.name === 'spool');
  assert.equal(mount.mountPath, '/var/spool/smtp-relay');
  const cm = await get(kube, `/api/v1/namespaces/${ns}/configmaps/stateful-config`);
  const config = YAML.parse(cm.data['config.yaml']);
  assert.deepEqual(config.queue, { directory: '/var/spool/smtp-relay', maxBytes: Math.floor(2 * 1024 ** 3 * 0.8), lifetime: '5d', retry: { initialDelay: '1m', maxDelay: '1h' }, concurrency: 20, delayWarning: '4h' });
  // The StatefulSet controller makes a claim per pod from the template.
  await eventually('claims spool-stateful-0 and -1', async () => {
    const list = await kube.get<any>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`);
    const names = list.items.map((c: any) => c.metadata.name).sort();
    return names.includes('spool-stateful-0') && names.includes('spool-stateful-1') ? names : undefined;
  });
  await markRelayPodsReady(kube, ns, 'stateful', 2);
  const ready = await eventually('Available=True from the StatefulSet', async () => {
    const r = await getRelay(kube, ns, 'stateful');
    return condition(r, 'Available')?.status === 'True' && r.status.replicasSummary === '2/2' ? r : undefined;
  });
  assert.match(condition(ready, 'Available')!.message, /2 of 2 relay pods available/);
});

test('queue.storage cannot change once set (the StatefulSet\'s claims are immutable); what the CRD cannot compare is refused with the relay\'s words', async () => {
  await assert.rejects(patchRelay('stateful', { spec: { queue: { storage: { size: '4Gi' } } } }), (err: unknown) => {
    assert.ok(err instanceof KubeError && err.code === 422, String(err));
    assert.match(String((err as KubeError).message), /queue.storage cannot be changed once set/);
    return true;
  });
  await assert.rejects(patchRelay('stateful', { spec: { queue: { storage: { storageClassName: 'x', ephemeral: true } } } }), /storageClassName applies to persistent storage only|cannot be changed once set/);
  await createRelay(kube, relayManifest(ns, 'badqueue', { queue: { lifetime: '1h', delayWarning: '2h' } }));
  const bad = await eventually('Reconciled=False InvalidSpec', async () => {
    const r = await getRelay(kube, ns, 'badqueue');
    return condition(r, 'Reconciled')?.reason === 'InvalidSpec' ? r : undefined;
  });
  assert.match(condition(bad, 'Reconciled')!.message, /spec\.queue\.delayWarning: "2h" is not shorter than the lifetime/);
  assert.equal(await sts('badqueue'), undefined, 'nothing runs on a config the relay would refuse');
});

test('a relay moves from a Deployment to a StatefulSet and back; the old workload serves until every new pod is ready, and the claims stay', async () => {
  await createRelay(kube, relayManifest(ns, 'mover', {}));
  await eventually('the Deployment', () => deployment('mover'));
  await markRelayPodsReady(kube, ns, 'mover', 2);
  await eventually('Available=True on the Deployment', async () => condition(await getRelay(kube, ns, 'mover'), 'Available')?.status === 'True');

  await patchRelay('mover', { spec: { queue: { storage: { size: '1Gi' } } } });
  await eventually('the StatefulSet', () => sts('mover'));
  // No StatefulSet pod is ready yet: the Deployment stays, and the relay stays Available through it.
  const during = await getRelay(kube, ns, 'mover');
  assert.ok(await deployment('mover'), 'the Deployment serves until the StatefulSet is ready');
  assert.equal(condition(during, 'Available')?.status, 'True', 'the Deployment\'s pods still count');
  await markRelayPodsReady(kube, ns, 'mover', 2, (p) => p.metadata.ownerReferences?.[0]?.kind === 'StatefulSet');
  await eventually('the Deployment deleted once the StatefulSet is ready', async () => (await deployment('mover')) === undefined);
  assert.ok((await eventReasons('mover')).includes('Normal WorkloadMoved'));

  // Back: the queue removed. The StatefulSet goes once the Deployment is ready; its claims stay, with a Warning.
  await patchRelay('mover', { spec: { queue: null } });
  await eventually('the Deployment again', () => deployment('mover'));
  assert.ok(await sts('mover'), 'the StatefulSet serves until the Deployment is ready');
  await markRelayPodsReady(kube, ns, 'mover', 2, (p) => p.metadata.ownerReferences?.[0]?.kind === 'ReplicaSet');
  await eventually('the StatefulSet deleted', async () => (await sts('mover')) === undefined);
  await eventually('Warning QueueVolumesKept', async () => (await eventReasons('mover')).includes('Warning QueueVolumesKept'));
  const claims = await kube.get<any>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`, { query: { labelSelector: 'app.kubernetes.io/instance=mover' } });
  assert.deepEqual(claims.items.map((c: any) => c.metadata.name).sort(), ['spool-mover-0', 'spool-mover-1'], 'claims that may hold mail are never deleted');
});
