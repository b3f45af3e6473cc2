// operator/runtime/informer.ts against the real kube-apiserver: list + watch,
// relist on 410 Gone, the silence watchdog, metadata-only Secrets, and an API
// server restart in the middle of a watch.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Informer } from '../../operator/runtime/informer.js';
import { Kube, type KubeObject } from '../../operator/runtime/kube.js';
import { ConfigMaps, Secrets } from '../../operator/runtime/resources.js';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { b64, createNamespace, eventually, sleep } from './support.js';

let cp: ControlPlane;
let kube: Kube;
const informers: Informer<KubeObject>[] = [];

before(async () => {
  // ConfigMap watches go straight to etcd here (no watch cache), so resuming from
  // a compacted resourceVersion is answered with 410 Gone, as it is in any
  // cluster once the watch cache's window has moved past it.
  cp = await startControlPlane({ defaultCrds: false, controllerManager: false, apiserverArgs: ['--watch-cache-sizes=configmaps#0'] });
  kube = new Kube(cp.kubeconfig);
});

after(async () => {
  for (const i of informers) await i.stop();
  await cp?.stop();
});

const cm = (ns: string, name: string, v: string) => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: ns }, data: { v } });

function track(inf: Informer<KubeObject>): Informer<KubeObject> {
  informers.push(inf);
  inf.start();
  return inf;
}

test('lists, then follows adds, updates and deletes over the watch without relisting', async () => {
  const ns = 'inf-basic';
  await createNamespace(kube, ns);
  await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: cm(ns, 'a', '1') });
  const events: string[] = [];
  const inf = new Informer<KubeObject>({ kube, resource: ConfigMaps, namespace: ns });
  inf.on({ add: (o) => events.push(`add ${o.metadata?.name}`), update: (_, o) => events.push(`update ${o.metadata?.name}`), delete: (o) => events.push(`delete ${o.metadata?.name}`) });
  track(inf);
  await inf.waitForSync();
  assert.ok(inf.get(ns, 'a'));
  assert.equal(inf.get(ns, 'a')?.metadata?.managedFields, undefined, 'managedFields are not cached');
  await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: cm(ns, 'b', '1') });
  await kube.request('PUT', `/api/v1/namespaces/${ns}/configmaps/a`, { body: cm(ns, 'a', '2') });
  await kube.request('DELETE', `/api/v1/namespaces/${ns}/configmaps/b`);
  await eventually('events', async () => events.length >= 4);
  assert.deepEqual(events, ['add a', 'add b', 'update a', 'delete b']);
  assert.equal((inf.get(ns, 'a') as { data?: { v: string } }).data?.v, '2');
  assert.equal(inf.lists, 1);
});

test('a watch resuming from an expired resourceVersion gets 410 Gone and relists, catching up on what it missed', async () => {
  const ns = 'inf-gone';
  await createNamespace(kube, ns);
  const inf = track(new Informer<KubeObject>({ kube, resource: ConfigMaps, namespace: ns }));
  await inf.waitForSync();
  // Away for long: stopped, history moved on and was compacted, then resumed from an old resourceVersion.
  await inf.stop();
  await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: cm(ns, 'late', '1') });
  await cp.compactEtcd();
  (inf as unknown as { resourceVersion: string }).resourceVersion = '1';
  inf.start();
  await eventually('relist', async () => inf.lists >= 2 && inf.get(ns, 'late'));
});

test('the watchdog relists after a silent watch', async () => {
  const ns = 'inf-quiet';
  await createNamespace(kube, ns);
  const inf = track(new Informer<KubeObject>({ kube, resource: ConfigMaps, namespace: ns, watchdogMs: 1500 }));
  await inf.waitForSync();
  const n = inf.lists;
  await eventually('watchdog relist', async () => inf.lists > n, 10_000);
  await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: cm(ns, 'after', '1') });
  await eventually('still watching after the relist', async () => inf.get(ns, 'after'));
});

test('metadata-only Secrets: the cache knows a Secret exists and changes, but never holds its data', async () => {
  const ns = 'inf-meta';
  await createNamespace(kube, ns);
  const secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 's', namespace: ns, annotations: { big: 'x'.repeat(1000) } }, type: 'Opaque', data: { password: b64('do-not-cache-me') } };
  await kube.request('POST', `/api/v1/namespaces/${ns}/secrets`, { body: secret });
  const updates: KubeObject[] = [];
  const inf = new Informer<KubeObject>({
    kube,
    resource: Secrets,
    namespace: ns,
    metadataOnly: true,
    transform: (o) => {
      if (o.metadata) delete o.metadata.annotations;
      return o;
    },
  });
  inf.on({ update: (_, o) => updates.push(o) });
  track(inf);
  await inf.waitForSync();
  const cached = inf.get(ns, 's') as Record<string, unknown>;
  assert.ok(cached);
  assert.equal(cached['kind'], 'PartialObjectMetadata');
  assert.equal(cached['data'], undefined);
  assert.ok(!JSON.stringify(cached).includes(b64('do-not-cache-me')));
  await kube.request('PATCH', `/api/v1/namespaces/${ns}/secrets/s`, { contentType: 'application/merge-patch+json', body: { data: { password: b64('changed-value') } } });
  await eventually('update event', async () => updates.length > 0);
  assert.equal((updates[0] as Record<string, unknown>)['data'], undefined);
  assert.ok(!JSON.stringify(inf.list()).includes(b64('changed-value')));
});

test('survives a kube-apiserver restart: watches resume and new objects arrive', async () => {
  const ns = 'inf-restart';
  await createNamespace(kube, ns);
  const errors: unknown[] = [];
  const inf = track(new Informer<KubeObject>({ kube, resource: ConfigMaps, namespace: ns, backoffBaseMs: 200, backoffMaxMs: 2000, onError: (e) => errors.push(e) }));
  await inf.waitForSync();

  await cp.restartApiserver({ signal: 'SIGKILL', downMs: 1000 });
  await eventually('apiserver back', async () => {
    await kube.get('/api/v1/namespaces/default');
    return true;
  }, 60_000);
  await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, { body: cm(ns, 'after-restart', '1') });
  await eventually('object created after the restart reaches the cache', async () => inf.get(ns, 'after-restart'), 30_000);
  assert.ok(errors.length > 0, 'the outage was seen as watch errors and retried');
});
