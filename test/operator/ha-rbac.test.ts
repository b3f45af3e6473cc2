// Leader election between two operator instances, and the operator running
// under exactly the RBAC rules of operator/rbac/*.yaml (a ServiceAccount
// token kubeconfig from the real API server), on the local control plane.

import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import YAML from 'yaml';
import { Kube, resourcePath } from '../../operator/runtime/kube.js';
import { Leases } from '../../operator/runtime/resources.js';
import { microTime } from '../../operator/runtime/leader.js';
import type { RunningOperator } from '../../operator/operator.js';
import { repoRoot, startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { condition, createIssuer, lostLeadership, createNamespace, createRelay, eventually, get, getRelay, relayManifest, runOperator, sleep } from './support.js';

let cp: ControlPlane;
let kube: Kube;
const running: RunningOperator[] = [];

before(async () => {
  cp = await startControlPlane();
  kube = new Kube(cp.kubeconfig);
});

// An instance a failed test left running would reconcile the next test's relays: each test starts alone.
beforeEach(async () => {
  for (const op of running.splice(0)) await op.stop().catch(() => {});
});

after(async () => {
  for (const op of running) await op.stop().catch(() => {});
  await cp?.stop();
});

const reconciles = async (op: RunningOperator): Promise<number> => {
  const m = await op.metrics.reconcileTotal.get();
  return m.values.filter((v) => v.labels.controller === 'smtprelay').reduce((n, v) => n + v.value, 0);
};

// Long enough not to lose a lease on a loaded 2-core machine (8 s / 6 s lost it once in make
// test at load 18, and the standby then reconciled); the graceful handover is checked
// against its own bound below, not against the lease duration.
const lease = { leaderElect: true, leaseNamespace: 'default', leaseName: 'ha-test', leaseDurationMs: 20_000, renewDeadlineMs: 15_000, retryPeriodMs: 500 };
/** A released Lease is taken at the standby's next retry: well under a lease duration. */
const HANDOVER_BOUND_MS = 5000;

test('two operator instances elect one leader; only it reconciles; on graceful stop it hands over at once', async () => {
  const a = await runOperator(cp, 'op-a', lease);
  running.push(a);
  await a.whenRunning();
  const b = await runOperator(cp, 'op-b', lease);
  running.push(b);
  await sleep(2000);
  assert.equal(a.isLeader(), true);
  assert.equal(b.isLeader(), false, 'the second instance stays standby');
  const l = await kube.get<any>(resourcePath(Leases, 'default', 'ha-test'));
  assert.equal(l.spec.holderIdentity, 'op-a');
  assert.match(l.spec.renewTime, /\.\d{6}Z$/, 'renewTime is a MicroTime');

  const ns = 'ha';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, 'one'));
  await eventually('status from the leader', async () => condition(await getRelay(kube, ns, 'one'), 'Ready'));
  assert.deepEqual(lostLeadership, [], 'no instance lost its Lease (a loaded machine delaying renewals past renewDeadline)');
  assert.ok((await reconciles(a)) > 0, 'the leader reconciled');
  assert.equal(await reconciles(b), 0, 'the standby does not reconcile');
  // The standby is ready (it serves health and waits); it must not be restarted by probes.
  assert.equal((await fetch(`http://127.0.0.1:${b.metricsPort}/readyz`)).status, 200);

  const t0 = Date.now();
  await a.stop();
  await eventually('b to lead', async () => b.isLeader(), 10_000);
  const tookMs = Date.now() - t0;
  assert.ok(tookMs < HANDOVER_BOUND_MS, `handover after release took ${tookMs} ms (bound ${HANDOVER_BOUND_MS} ms; a lease duration is ${lease.leaseDurationMs} ms)`);
  await b.whenRunning();
  await createRelay(kube, relayManifest(ns, 'two'));
  await eventually('status from the new leader', async () => condition(await getRelay(kube, ns, 'two'), 'Ready'));
  assert.deepEqual(lostLeadership, [], 'no instance lost its Lease');
  const l2 = await kube.get<any>(resourcePath(Leases, 'default', 'ha-test'));
  assert.equal(l2.spec.holderIdentity, 'op-b');
  assert.ok(l2.spec.leaseTransitions >= 1);
  await b.stop();
});

/** operator/rbac/*.yaml as objects, with `drop` removing one verb from one resource's rule. */
function rbacObjects(suffix: string, drop?: { resource: string; verb: string }): any[] {
  const dir = join(repoRoot(), 'operator', 'rbac');
  const out: any[] = [];
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of YAML.parseAllDocuments(readFileSync(join(dir, f), 'utf8'))) {
      const obj = doc.toJS();
      if (!obj) continue;
      obj.metadata.name += suffix;
      if (drop) {
        obj.rules = obj.rules.flatMap((r: any) => {
          if (!r.resources?.includes(drop.resource)) return [r]; // nonResourceURLs rules have no resources
          const rest = { ...r, resources: r.resources.filter((x: string) => x !== drop.resource) };
          const only = { ...r, resources: [drop.resource], verbs: r.verbs.filter((v: string) => v !== drop.verb) };
          return [rest, only].filter((x) => x.resources.length > 0 && x.verbs.length > 0);
        });
      }
      out.push(obj);
    }
  }
  return out;
}

async function bindOperatorRbac(saNamespace: string, saName: string, suffix: string, drop?: { resource: string; verb: string }): Promise<Kube> {
  // The operator's own kubeconfig reader (bearer token), as the CLI would load it.
  const { path } = await cp.serviceAccountKubeconfig(saNamespace, saName);
  for (const obj of rbacObjects(suffix, drop)) {
    const subjects = [{ kind: 'ServiceAccount', name: saName, namespace: saNamespace }];
    if (obj.kind === 'ClusterRole') {
      await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', { body: obj });
      await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
        body: { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: obj.metadata.name }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: obj.metadata.name }, subjects },
      });
    } else {
      obj.metadata.namespace = saNamespace;
      await kube.request('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${saNamespace}/roles`, { body: obj });
      await kube.request('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${saNamespace}/rolebindings`, {
        body: { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', metadata: { name: obj.metadata.name, namespace: saNamespace }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: obj.metadata.name }, subjects },
      });
    }
  }
  return Kube.fromKubeconfig(path);
}

test('with a ServiceAccount bound to exactly operator/rbac/*.yaml the operator reconciles; without one verb it cannot', async () => {
  const system = 'smtp-relay-system';
  await createNamespace(kube, system);
  const saKube = await bindOperatorRbac(system, 'smtp-relay-operator', '');
  const ns = 'rbac';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  const op = await runOperator(cp, 'op-rbac', { kube: saKube, leaderElect: true, leaseNamespace: system, leaseName: 'rbac-test', leaseDurationMs: 8000, renewDeadlineMs: 6000, retryPeriodMs: 500 });
  running.push(op);
  await op.whenRunning();
  await createRelay(kube, relayManifest(ns, 'least', { dkim: [{ domain: 'example.com', selector: 'sel1' }] }));
  for (const path of [
    `/api/v1/namespaces/${ns}/serviceaccounts/least`,
    `/api/v1/namespaces/${ns}/configmaps/least-config`,
    `/api/v1/namespaces/${ns}/secrets/least-users`,
    `/api/v1/namespaces/${ns}/secrets/least-user-app`,
    `/apis/apps/v1/namespaces/${ns}/deployments/least`,
    `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/least-tls`,
    `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/least`,
    `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/least`,
  ]) {
    await eventually(path, () => get(kube, path));
  }
  const r = await eventually('status with DKIM record', async () => {
    const r = await getRelay(kube, ns, 'least');
    return r?.status?.dnsRecords?.length ? r : undefined;
  });
  assert.equal(r.status.dnsRecords[0].name, 'sel1._domainkey.example.com');
  assert.match(r.status.dnsRecords[0].value, /^v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]{300,}$/);
  assert.equal(condition(r, 'DkimReady')?.status, 'True');
  const errorsBefore = (await op.metrics.reconcileErrors.get()).values.reduce((n, v) => n + v.value, 0);
  assert.equal(errorsBefore, 0, 'no reconcile failed for lack of permission');
  await op.stop();

  // The same rules minus "patch" on smtprelays/status: the operator cannot report status.
  const weakKube = await bindOperatorRbac(system, 'weak-operator', '-weak', { resource: 'smtprelays/status', verb: 'patch' });
  const ns2 = 'rbac-weak';
  await createNamespace(kube, ns2);
  await createIssuer(kube, ns2);
  const review = await weakKube.request<any>('POST', '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', {
    body: { apiVersion: 'authorization.k8s.io/v1', kind: 'SelfSubjectAccessReview', spec: { resourceAttributes: { group: 'smtprelay.dev', resource: 'smtprelays', subresource: 'status', verb: 'patch', namespace: ns2 } } },
  });
  assert.equal(review.status.allowed, false, `the reduced role must not allow patching status: ${JSON.stringify(review.status)}`);
  const weak = await runOperator(cp, 'op-weak', { kube: weakKube, namespaces: [ns2] });
  running.push(weak);
  await weak.whenRunning();
  await createRelay(kube, relayManifest(ns2, 'weak'));
  await eventually('reconcile errors', async () => (await weak.metrics.reconcileErrors.get()).values.some((v) => v.value > 0));
  assert.equal((await getRelay(kube, ns2, 'weak')).status, undefined, 'no status without the patch verb');
  await weak.stop();
});

test('the smtp-relay-operator CLI runs with --kubeconfig, leads, and on SIGTERM releases the Lease and exits 0', async () => {
  const { spawn } = await import('node:child_process');
  const main = join(repoRoot(), 'dist', 'operator', 'main.js');
  const child = spawn(process.execPath, [main, '--kubeconfig', cp.kubeconfigPath, '--relay-image', 'registry.invalid/smtp-relay:cli', '--metrics-port', '0', '--metrics-address', '127.0.0.1', '--leader-elect', '--leader-election-namespace', 'default', '--leader-election-id', 'cli-test', '--retry-period', '0.5', '--lease-duration', '8', '--renew-deadline', '6'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  try {
    const port = await eventually('metrics port in the log', async () => Number(/"metricsPort":(\d+)/.exec(out)?.[1]) || undefined, 20_000);
    await eventually('the CLI to lead', async () => (await kube.get<any>(resourcePath(Leases, 'default', 'cli-test'))).spec.holderIdentity);
    await eventually('caches synced', async () => out.includes('caches synced'));
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
    for (const line of out.trim().split('\n')) {
      const rec = JSON.parse(line);
      assert.ok(rec.level && rec.msg, `every log line is pino JSON: ${line}`);
    }
    child.kill('SIGTERM');
    assert.equal(await exited, 0, `exit code 0 after SIGTERM; output:\n${out}`);
    const l = await kube.get<any>(resourcePath(Leases, 'default', 'cli-test'));
    assert.ok(!l.spec.holderIdentity, 'the Lease is released on graceful shutdown');
  } finally {
    child.kill('SIGKILL');
  }
});

test('a leader whose Lease is taken over stops reconciling at once, even when the process does not exit', async () => {
  const l = { ...lease, leaseName: 'ha-lost', leaseDurationMs: 3000, renewDeadlineMs: 2000, retryPeriodMs: 200 };
  const op = await runOperator(cp, 'op-lost', l);
  running.push(op);
  await op.whenRunning();
  // Someone else writes the Lease as its holder (as after a partition in which ours expired).
  const path = resourcePath(Leases, 'default', 'ha-lost');
  const deadline = Date.now() + 15_000;
  while (!lostLeadership.includes('op-lost') && Date.now() < deadline) {
    try {
      const cur = await kube.get<any>(path);
      await kube.request('PUT', path, { body: { ...cur, spec: { ...cur.spec, holderIdentity: 'intruder', renewTime: microTime(Date.now()) } } });
    } catch {
      /* a conflict with the elector's own write: try again */
    }
    await sleep(150);
  }
  assert.ok(lostLeadership.includes('op-lost'), 'the Lease was lost');
  const n = await reconciles(op);
  const ns = 'ha-lost';
  await createNamespace(kube, ns);
  await createRelay(kube, relayManifest(ns, 'after'));
  await sleep(2500);
  assert.equal(await reconciles(op), n, 'no reconcile after leadership was lost');
  assert.equal((await getRelay(kube, ns, 'after')).status, undefined, 'no status written');
  assert.equal(await get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/after`), undefined, 'no child written');
});

test('under exactly operator/rbac/*.yaml the queue drain works: the finalizer, pods looked up by name, claims marked and deleted (relay control endpoint played by the test)', async () => {
  const system = 'smtp-relay-system';
  await createNamespace(kube, system).catch(() => {});
  const saKube = await bindOperatorRbac(system, 'drain-operator', '-drain');
  const ns = 'rbac-drain';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  // Each pod's control endpoint, played: empty queue, draining once told.
  const draining = new Set<string>();
  const servers = new Map<string, Server>();
  for (const pod of ['lq-0', 'lq-1']) {
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        if (req.method === 'POST' && req.url === '/drain') draining.add(pod);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ draining: draining.has(pod), messages: 0, bytes: 0, oldestSeconds: 0, handedOff: 0 }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.set(pod, server);
  }
  const op = await runOperator(cp, 'op-rbac-drain', {
    kube: saKube,
    namespaces: [ns],
    drainPollMs: 300,
    podAddress: (p) => {
      const s = servers.get(p.metadata.name);
      return s ? `127.0.0.1:${(s.address() as AddressInfo).port}` : undefined;
    },
  });
  running.push(op);
  try {
    await op.whenRunning();
    await createRelay(kube, relayManifest(ns, 'lq', { replicas: 2, queue: { storage: { size: '1Gi' } } }));
    await eventually('the StatefulSet', () => get(kube, `/apis/apps/v1/namespaces/${ns}/statefulsets/lq`));
    await eventually('the drain finalizer', async () => (await getRelay(kube, ns, 'lq')).metadata.finalizers?.includes('smtprelay.dev/drain'));
    // No StatefulSet controller on this control plane: the pods and claims are made here.
    const labels = { 'app.kubernetes.io/instance': 'lq', 'app.kubernetes.io/name': 'smtp-relay', 'app.kubernetes.io/managed-by': 'smtp-relay-operator' };
    for (const i of [0, 1]) {
      await kube.request('POST', `/api/v1/namespaces/${ns}/persistentvolumeclaims`, {
        body: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', metadata: { name: `spool-lq-${i}`, labels }, spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } } },
      });
      await kube.request('POST', `/api/v1/namespaces/${ns}/pods`, { body: { apiVersion: 'v1', kind: 'Pod', metadata: { name: `lq-${i}`, labels }, spec: { containers: [{ name: 'relay', image: 'x' }] } } });
      await kube.request('PATCH', `/api/v1/namespaces/${ns}/pods/lq-${i}/status`, { contentType: 'application/merge-patch+json', body: { status: { podIP: `10.9.0.${i + 1}` } } });
    }
    await kube.request('PATCH', `/apis/smtprelay.dev/v1alpha1/namespaces/${ns}/smtprelays/lq`, { contentType: 'application/merge-patch+json', body: { spec: { replicas: 1 } } });
    await eventually('the StatefulSet lowered after lq-1 drained', async () => (await get(kube, `/apis/apps/v1/namespaces/${ns}/statefulsets/lq`)).spec.replicas === 1);
    assert.ok(draining.has('lq-1') && !draining.has('lq-0'));
    const marked = await get(kube, `/api/v1/namespaces/${ns}/persistentvolumeclaims/spool-lq-1`);
    assert.ok(marked.metadata.annotations['smtprelay.dev/queue-confirmed-empty'], 'marked through the operator\'s own patch verb');
    await kube.request('DELETE', `/api/v1/namespaces/${ns}/pods/lq-1`, { query: { gracePeriodSeconds: 0 } });
    const gone = async (name: string) => {
      const c = await get(kube, `/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`);
      return c === undefined || c.metadata.deletionTimestamp !== undefined; // pvc-protection may hold it a moment
    };
    await eventually('spool-lq-1 deleted by the operator', () => gone('spool-lq-1'));
    assert.equal(await gone('spool-lq-0'), false, 'the claim that stays is untouched');
    await kube.request('DELETE', `/apis/smtprelay.dev/v1alpha1/namespaces/${ns}/smtprelays/lq`);
    await eventually('the relay deleted once lq-0 drained (finalizer removed by the operator)', async () => (await get(kube, `/apis/smtprelay.dev/v1alpha1/namespaces/${ns}/smtprelays/lq`)) === undefined);
    assert.ok(draining.has('lq-0'));
    await eventually('spool-lq-0 deleted', () => gone('spool-lq-0'));
    const errors = (await op.metrics.reconcileErrors.get()).values.reduce((n, v) => n + v.value, 0);
    assert.equal(errors, 0, 'no reconcile failed for lack of permission');
  } finally {
    for (const s of servers.values()) await new Promise<void>((r) => (s.closeAllConnections(), s.close(() => r())));
  }
});
