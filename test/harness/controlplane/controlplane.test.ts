// Smoke test of the loopback control plane (test/harness/controlplane/harness.ts):
// namespace, a CRD + custom resource, an informer that relists after a 410 Gone
// caused by etcd compaction, garbage collection of dependents, Deployment ->
// ReplicaSet, TokenRequest ServiceAccount kubeconfigs under RBAC, and a stop()
// that leaves no process behind.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import * as k8s from '@kubernetes/client-node';
import { join, resolve } from 'node:path';
import { startControlPlane, repoRoot, type ControlPlane } from './harness.js';

const GROUP = 'cptest.example.com';
const widgetCrd = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: `widgets.${GROUP}` },
  spec: {
    group: GROUP,
    scope: 'Namespaced',
    names: { plural: 'widgets', singular: 'widget', kind: 'Widget', listKind: 'WidgetList' },
    versions: [
      {
        name: 'v1',
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: 'object',
            properties: {
              spec: {
                type: 'object',
                properties: { size: { type: 'integer', minimum: 1, maximum: 10 } },
                required: ['size'],
              },
              status: { type: 'object', properties: { ready: { type: 'boolean' } } },
            },
          },
        },
      },
    ],
  },
};

// Watches of widgets go straight to etcd (no watch cache for this resource only), so that
// resuming a watch from a resourceVersion older than an etcd compaction gets 410 Gone.
// With the watch cache, which keeps its own event window, the same watch would be served
// from memory; a 410 then needs a resourceVersion older than that window.
const NO_WATCH_CACHE = `widgets.${GROUP}#0`;

let cp: ControlPlane;
let startupMs = 0;
let startedPids: number[] = [];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function eventually<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(200);
  }
}
const code = (e: unknown): number | undefined => (e as { code?: number }).code;

before(async () => {
  const t0 = Date.now();
  // The repo's own CRDs are installed in a test below, so that a bad CRD there fails that test
  // with the apiserver's message rather than every test here.
  cp = await startControlPlane({ defaultCrds: false, crdObjects: [widgetCrd], apiserverArgs: [`--watch-cache-sizes=${NO_WATCH_CACHE}`] });
  startupMs = Date.now() - t0;
  startedPids = [...cp.pids];
  process.stderr.write(`control plane started in ${startupMs} ms, pids ${startedPids.join(' ')}\n`);
});

after(async () => {
  await cp?.stop();
});

test('starts from warm binaries in under 15 s, with etcd, apiserver and controller manager', () => {
  assert.equal(startedPids.length, 3, `expected 3 processes, got ${startedPids.join(',')}`);
  assert.ok(startupMs < 15_000, `startup took ${startupMs} ms`);
  assert.match(cp.server, /^https:\/\/127\.0\.0\.1:\d+$/);
});

test("the repo's CRDs (crds/, ../shared/cert-manager-crds/) are accepted and become Established", async () => {
  const root = repoRoot();
  const files = [join(root, 'crds'), resolve(root, '..', 'shared', 'cert-manager-crds')].flatMap((d) =>
    existsSync(d) ? readdirSync(d).filter((n) => /\.ya?ml$/.test(n)).map((n) => join(d, n)) : [],
  );
  assert.ok(files.length >= 6, `expected the cert-manager CRDs at least, found ${files.join(', ')}`);
  const t0 = Date.now();
  await cp.installCrds(files);
  process.stderr.write(`${files.length} CRD files installed and Established in ${Date.now() - t0} ms\n`);
  const api = cp.kubeconfig.makeApiClient(k8s.ApiextensionsV1Api);
  const names = (await api.listCustomResourceDefinition()).items.map((c) => c.metadata!.name);
  assert.ok(names.includes('certificates.cert-manager.io'), names.join(','));
});

test('namespace, CRD with schema validation, custom resource, informer with 410 relist after compaction', async () => {
  const kc = cp.kubeconfig;
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const ns = 'cp-smoke';
  await core.createNamespace({ body: { metadata: { name: ns } } });

  const widget = (name: string, size: number): object => ({ apiVersion: `${GROUP}/v1`, kind: 'Widget', metadata: { name, namespace: ns }, spec: { size } });
  await custom.createNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets', body: widget('w1', 1) });
  // Real OpenAPI validation: size above the maximum is rejected.
  await assert.rejects(
    custom.createNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets', body: widget('bad', 99) }),
    (e: unknown) => code(e) === 422,
  );

  let lists = 0;
  const listFn = async (): Promise<k8s.KubernetesListObject<k8s.KubernetesObject>> => {
    lists++;
    return (await custom.listNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets' })) as k8s.KubernetesListObject<k8s.KubernetesObject>;
  };
  const informer = k8s.makeInformer(kc, `/apis/${GROUP}/v1/namespaces/${ns}/widgets`, listFn) as k8s.Informer<k8s.KubernetesObject> &
    k8s.ObjectCache<k8s.KubernetesObject> & { latestResourceVersion(): string };
  const errors: unknown[] = [];
  informer.on('error', (e) => errors.push(e));
  const added = new Set<string>();
  informer.on('add', (o) => added.add(o.metadata!.name!));
  await informer.start();
  try {
    await eventually('informer to list w1', async () => added.has('w1'));
    assert.equal(lists, 1);

    // A watch event arrives over the live watch (no relist).
    await custom.createNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets', body: widget('w2', 2) });
    await eventually('watch event for w2', async () => added.has('w2'));
    assert.equal(lists, 1);

    // Stop watching, let history move on, compact etcd, resume from the old resourceVersion.
    await informer.stop();
    const oldRv = informer.latestResourceVersion();
    assert.ok(oldRv, 'informer has a resourceVersion to resume from');
    await custom.createNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets', body: widget('w3', 3) });
    await custom.deleteNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets', name: 'w1' });
    const compactedAt = await cp.compactEtcd();
    assert.ok(compactedAt > Number(oldRv), `compaction revision ${compactedAt} is newer than ${oldRv}`);

    // The raw watch from the old resourceVersion is answered with 410 Gone.
    const gone = await new Promise<number | undefined>((res, rej) => {
      void new k8s.Watch(kc)
        .watch(`/apis/${GROUP}/v1/namespaces/${ns}/widgets`, { resourceVersion: oldRv }, (type, obj: { code?: number }) => {
          if (type === 'ERROR') res(obj.code);
        }, (err: unknown) => (err ? (code(err) === 410 || (err as { statusCode?: number }).statusCode === 410 ? res(410) : rej(err)) : res(undefined)))
        .then((req) => setTimeout(() => req.abort(), 10_000).unref());
    });
    assert.equal(gone, 410, 'watch from a compacted resourceVersion gets 410 Gone');

    // The informer, restarted from the same old resourceVersion, relists and converges.
    const deleted: string[] = [];
    informer.on('delete', (o) => deleted.push(o.metadata!.name!));
    await informer.start();
    await eventually('informer relist after 410', async () => lists === 2 && added.has('w3') && deleted.includes('w1'));
    assert.deepEqual(informer.list(ns).map((o) => o.metadata!.name).sort(), ['w2', 'w3']);
    // informer.stop() itself reports an AbortError to 'error' listeners (client-node 2.0.1); anything else is a failure.
    assert.deepEqual(errors.filter((e) => (e as Error).name !== 'AbortError'), [], 'no informer errors');
  } finally {
    await informer.stop();
  }
});

test('garbage collector deletes dependents of a deleted owner; Deployments get ReplicaSets', async () => {
  const kc = cp.kubeconfig;
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  const ns = 'cp-gc';
  await core.createNamespace({ body: { metadata: { name: ns } } });

  // Owner: a custom resource; dependent: a ConfigMap.
  const owner = (await custom.createNamespacedCustomObject({
    group: GROUP, version: 'v1', namespace: ns, plural: 'widgets',
    body: { apiVersion: `${GROUP}/v1`, kind: 'Widget', metadata: { name: 'owner' }, spec: { size: 1 } },
  })) as k8s.KubernetesObject;
  await core.createNamespacedConfigMap({
    namespace: ns,
    body: {
      metadata: {
        name: 'dependent',
        ownerReferences: [{ apiVersion: `${GROUP}/v1`, kind: 'Widget', name: 'owner', uid: owner.metadata!.uid!, controller: true, blockOwnerDeletion: true }],
      },
      data: { a: 'b' },
    },
  });
  await custom.deleteNamespacedCustomObject({ group: GROUP, version: 'v1', namespace: ns, plural: 'widgets', name: 'owner' });
  await eventually('ConfigMap dependent garbage-collected', async () => {
    try {
      await core.readNamespacedConfigMap({ name: 'dependent', namespace: ns });
      return false;
    } catch (e) {
      if (code(e) === 404) return true;
      throw e;
    }
  });

  // Deployment controller makes a ReplicaSet; deleting the Deployment cascades to it.
  await apps.createNamespacedDeployment({
    namespace: ns,
    body: {
      metadata: { name: 'web' },
      spec: {
        replicas: 1,
        selector: { matchLabels: { app: 'web' } },
        template: { metadata: { labels: { app: 'web' } }, spec: { containers: [{ name: 'c', image: 'example.invalid/none:1' }] } },
      },
    },
  });
  await eventually('ReplicaSet for Deployment web', async () => (await apps.listNamespacedReplicaSet({ namespace: ns })).items.length === 1);
  await eventually('Pod from the ReplicaSet', async () => (await core.listNamespacedPod({ namespace: ns })).items.length === 1);
  await apps.deleteNamespacedDeployment({ name: 'web', namespace: ns });
  await eventually('ReplicaSet garbage-collected', async () => (await apps.listNamespacedReplicaSet({ namespace: ns })).items.length === 0);
});

test('TokenRequest ServiceAccount kubeconfig: forbidden without a RoleBinding, allowed with one', async () => {
  const admin = cp.kubeconfig;
  const core = admin.makeApiClient(k8s.CoreV1Api);
  const rbac = admin.makeApiClient(k8s.RbacAuthorizationV1Api);
  const ns = 'cp-rbac';
  await core.createNamespace({ body: { metadata: { name: ns } } });
  const sa = await cp.serviceAccountKubeconfig(ns, 'tester');
  assert.ok(existsSync(sa.path));
  assert.ok(!readFileSync(sa.path, 'utf8').includes('client-key-data'), 'SA kubeconfig carries only the token');
  const saCore = sa.kubeconfig.makeApiClient(k8s.CoreV1Api);

  await assert.rejects(saCore.listNamespacedConfigMap({ namespace: ns }), (e: unknown) => code(e) === 403);

  await rbac.createNamespacedRole({
    namespace: ns,
    body: { metadata: { name: 'cm-reader' }, rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list'] }] },
  });
  await rbac.createNamespacedRoleBinding({
    namespace: ns,
    body: {
      metadata: { name: 'tester-cm-reader' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'cm-reader' },
      subjects: [{ kind: 'ServiceAccount', name: 'tester', namespace: ns }],
    },
  });
  await eventually('RoleBinding to take effect', async () => {
    await saCore.listNamespacedConfigMap({ namespace: ns });
    return true;
  }, 10_000);
  // Still only what the Role grants.
  await assert.rejects(saCore.listNamespacedSecret({ namespace: ns }), (e: unknown) => code(e) === 403);
  await assert.rejects(saCore.listNamespacedConfigMap({ namespace: 'default' }), (e: unknown) => code(e) === 403);
});

test('restartApiserver(): a crashed kube-apiserver comes back on the same URL with the same data, and with the flags given for that start', async () => {
  const core = cp.kubeconfig.makeApiClient(k8s.CoreV1Api);
  await core.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: 'survives-restart' }, data: { v: '1' } } });
  const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  const apiserverPid = () => cp.pids.find((p) => cmdline(p).some((a) => a.endsWith('kube-apiserver')));
  const old = apiserverPid();
  assert.ok(old);
  await cp.restartApiserver({ signal: 'SIGKILL', downMs: 500, args: ['--v=2'] });
  assert.throws(() => process.kill(old, 0), (e: NodeJS.ErrnoException) => e.code === 'ESRCH', 'the old process is gone');
  const fresh = apiserverPid();
  assert.ok(fresh && fresh !== old);
  const args = cmdline(fresh);
  assert.ok(args.includes('--v=2') && !args.includes('--v=1'), 'the given flag replaced the same-named one');
  const cm = await core.readNamespacedConfigMap({ namespace: 'default', name: 'survives-restart' });
  assert.equal(cm.data?.['v'], '1', 'etcd kept the data');
});

test('a missing binary fails with a message that says how to build it', async () => {
  const empty = mkdtempSync(join(tmpdir(), 'cp-nobin-'));
  const saved = process.env.CONTROLPLANE_BIN;
  process.env.CONTROLPLANE_BIN = empty;
  try {
    await assert.rejects(startControlPlane(), /etcd is missing .*Run `make controlplane`/);
  } finally {
    if (saved === undefined) delete process.env.CONTROLPLANE_BIN;
    else process.env.CONTROLPLANE_BIN = saved;
    rmSync(empty, { recursive: true, force: true });
  }
});

test('a SIGKILLed test process leaves no control plane process running', async () => {
  const harness = new URL('./harness.js', import.meta.url).href;
  const script = `import(${JSON.stringify(harness)}).then(async (m) => {
    const cp = await m.startControlPlane({ defaultCrds: false, controllerManager: false });
    process.stdout.write(JSON.stringify({ pids: cp.pids, dir: cp.dir }) + '\\n');
    setInterval(() => {}, 1 << 30);
  });`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', r));
  const line = await new Promise<string>((res, rej) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) res(buf.split('\n')[0]!);
    });
    child.once('exit', (c) => rej(new Error(`child exited early (${c})`)));
  });
  const { pids, dir } = JSON.parse(line) as { pids: number[]; dir: string };
  assert.equal(pids.length, 2);
  for (const pid of pids) process.kill(pid, 0); // running
  child.kill('SIGKILL');
  await exited;
  await eventually('children of the killed process to die', async () =>
    pids.every((pid) => {
      try {
        process.kill(pid, 0);
        return false;
      } catch (e) {
        return (e as NodeJS.ErrnoException).code === 'ESRCH';
      }
    }), 15_000);
  // Its temp folder stays (the next startControlPlane() removes such folders); remove it here.
  rmSync(dir, { recursive: true, force: true });
});

test('stop() ends every process it started and removes its temp folder', async () => {
  const dir = cp.dir;
  await cp.stop();
  for (const pid of startedPids) {
    assert.throws(() => process.kill(pid, 0), (e: NodeJS.ErrnoException) => e.code === 'ESRCH', `pid ${pid} still running`);
  }
  // Nothing else on the machine runs with our temp folder on its command line.
  const leftovers = readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(dir);
      } catch {
        return false;
      }
    });
  assert.deepEqual(leftovers, []);
  assert.equal(existsSync(dir), false);
  assert.deepEqual(cp.pids, []);
});
