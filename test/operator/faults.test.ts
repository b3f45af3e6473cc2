// Control-plane faults on the real local control plane (etcd + kube-apiserver +
// kube-controller-manager, test/harness/controlplane/harness.ts): the API server restarted
// in the middle of reconciles, etcd compacted under the operator's watches, watches gone
// silent, the operator SIGKILLed between the writes of its reconciles, and children deleted
// or edited by hand. In each case the operator converges within 30 s, with no duplicate
// child (children listed by their owner reference and counted) and no pod-template change
// that was not needed (the Deployment's template hash, generation and ReplicaSets).
//
// The operator reaches the API server through a TCP proxy of the test
// (test/harness/support/fault-proxy.ts), which can reset every connection or freeze them
// (open, but nothing more arrives: a silent watch). Deployments, ConfigMaps and Services
// are watched straight from etcd here (no watch cache), so a watch resumed from a
// compacted resourceVersion gets 410 Gone, as it does in any cluster once the watch
// cache's window has moved past it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import YAML from 'yaml';
import { USERS_KEY } from '../../operator/api/v1alpha1.js';
import { Kube, resourcePath } from '../../operator/runtime/kube.js';
import { SmtpRelays } from '../../operator/runtime/resources.js';
import type { RunningOperator } from '../../operator/operator.js';
import { parseHash, verifyPassword } from '../../relay/password.js';
import { repoRoot, startControlPlane, startProcess, type ControlPlane, type Proc } from '../harness/controlplane/harness.js';
import { FaultProxy } from '../harness/support/fault-proxy.js';
import { TEST_IMAGE, condition, createIssuer, createNamespace, createRelay, eventually, get, getRelay, relayManifest, runOperator, sleep, templateHash, unb64 } from './support.js';

const CONVERGE_MS = 30_000;

let cp: ControlPlane;
let kube: Kube;
let proxy: FaultProxy;
let proxyKubeconfigPath: string;
let op: RunningOperator | undefined;
const processes: Proc[] = [];

before(async () => {
  cp = await startControlPlane({ apiserverArgs: ['--watch-cache-sizes=deployments.apps#0,configmaps#0,services#0'] });
  kube = new Kube(cp.kubeconfig);
  const url = new URL(cp.server);
  proxy = await FaultProxy.start({ host: url.hostname, port: Number(url.port) });
  // The admin kubeconfig, pointed at the proxy (the API server's certificate is for 127.0.0.1, the proxy's address too).
  proxyKubeconfigPath = join(cp.dir, 'operator-via-proxy.kubeconfig');
  writeFileSync(proxyKubeconfigPath, readFileSync(cp.kubeconfigPath, 'utf8').replace(cp.server, `https://127.0.0.1:${proxy.port}`), { mode: 0o600 });
  op = await startInProcess('faults');
});

after(async () => {
  await op?.stop().catch(() => {});
  for (const p of processes) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await proxy?.stop();
  await cp?.stop();
});

async function startInProcess(name: string): Promise<RunningOperator> {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(proxyKubeconfigPath);
  // production settings: the informers' watchdog (5 min) and the HTTP/2 PING interval (10 s)
  const o = await runOperator(cp, name, { kube: new Kube(kc) });
  await o.whenRunning();
  return o;
}

// --- children, listed by owner ---

const CHILD_LISTS = [
  '/api/v1/namespaces/NS/serviceaccounts',
  '/api/v1/namespaces/NS/configmaps',
  '/api/v1/namespaces/NS/secrets',
  '/api/v1/namespaces/NS/services',
  '/apis/apps/v1/namespaces/NS/deployments',
  '/apis/networking.k8s.io/v1/namespaces/NS/networkpolicies',
  '/apis/policy/v1/namespaces/NS/poddisruptionbudgets',
  '/apis/cert-manager.io/v1/namespaces/NS/certificates',
];

interface Snapshot {
  /** "<Kind>/<name with the relay's name as %>", sorted: every child the relay owns, duplicates included. */
  children: string[];
  uids: Record<string, string>;
  resourceVersions: Record<string, string>;
  deployment: { generation: number; templateHash: string; replicaSets: number };
}

async function snapshot(ns: string, name: string): Promise<Snapshot> {
  const relay = await getRelay(kube, ns, name);
  const children: string[] = [];
  const uids: Record<string, string> = {};
  const resourceVersions: Record<string, string> = {};
  for (const path of CHILD_LISTS) {
    const list = await kube.get<any>(path.replace('NS', ns));
    for (const o of list.items) {
      if (!(o.metadata.ownerReferences ?? []).some((r: any) => r.uid === relay.metadata.uid)) continue;
      const key = `${path.split('/').pop()}/${String(o.metadata.name).replace(name, '%')}`;
      children.push(key);
      uids[key] = o.metadata.uid;
      resourceVersions[key] = o.metadata.resourceVersion;
    }
  }
  children.sort();
  const dep = await get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/${name}`);
  const rs = await kube.get<any>(`/apis/apps/v1/namespaces/${ns}/replicasets`);
  const replicaSets = dep ? rs.items.filter((r: any) => (r.metadata.ownerReferences ?? []).some((o: any) => o.uid === dep.metadata.uid)).length : 0;
  return { children, uids, resourceVersions, deployment: { generation: dep?.metadata.generation ?? 0, templateHash: dep ? templateHash(dep) : '', replicaSets } };
}

/** The children a relay of relayManifest() has once reconciled, learnt from one created in calm conditions. */
let expectedChildren: string[];

/** Converged: status up to date and Reconciled, every expected child there once, nothing else. */
async function converged(ns: string, name: string): Promise<Snapshot | undefined> {
  const r = await getRelay(kube, ns, name);
  if (r?.status?.observedGeneration !== r?.metadata?.generation || condition(r, 'Reconciled')?.status !== 'True' || condition(r, 'CredentialsReady')?.status !== 'True') return undefined;
  const s = await snapshot(ns, name);
  // the ReplicaSet too (kube-controller-manager makes it a moment after the Deployment)
  return JSON.stringify(s.children) === JSON.stringify(expectedChildren) && s.deployment.replicaSets > 0 ? s : undefined;
}

async function waitConverged(what: string, ns: string, names: string[], startedAt = Date.now()): Promise<{ snapshots: Map<string, Snapshot>; tookMs: number }> {
  const snapshots = new Map<string, Snapshot>();
  for (const name of names) {
    const left = CONVERGE_MS - (Date.now() - startedAt);
    snapshots.set(name, await eventually(`${what}: ${ns}/${name} converged within ${CONVERGE_MS} ms`, () => converged(ns, name), Math.max(left, 1)));
  }
  const tookMs = Date.now() - startedAt;
  for (const [name, s] of snapshots) {
    assert.deepEqual(s.children, expectedChildren, `${what}: ${ns}/${name} has each child once`);
    assert.equal(s.deployment.replicaSets, 1, `${what}: ${ns}/${name}: one ReplicaSet, so the pod template never changed`);
  }
  return { snapshots, tookMs };
}

/** The hashed users Secret verifies the password in the generated user Secret (no password made twice). */
async function passwordsAgree(ns: string, name: string): Promise<void> {
  const generated = await get(kube, `/api/v1/namespaces/${ns}/secrets/${name}-user-app`);
  const password = unb64(generated.data.password);
  const users = YAML.parse(unb64((await get(kube, `/api/v1/namespaces/${ns}/secrets/${name}-users`)).data[USERS_KEY])) as { users: { name: string; passwordHash: string }[] };
  const hash = parseHash(users.users.find((u) => u.name === 'app')!.passwordHash);
  assert.notEqual(typeof hash, 'string');
  assert.equal(await verifyPassword(password, hash as Exclude<typeof hash, string>), true, `${ns}/${name}: the users Secret holds the hash of the generated password`);
}

const lists = async (o: RunningOperator, reason: string): Promise<number> =>
  (await o.metrics.informerLists.get()).values.filter((v) => v.labels.reason === reason).reduce((n, v) => n + v.value, 0);
const applies = async (o: RunningOperator): Promise<number> => (await o.metrics.applyTotal.get()).values.reduce((n, v) => n + v.value, 0);

async function relaysIn(ns: string, n: number): Promise<string[]> {
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  const names = Array.from({ length: n }, (_, i) => `r${i}`);
  for (const name of names) await createRelay(kube, relayManifest(ns, name));
  return names;
}

test('reference: a relay reconciled in calm conditions', async () => {
  await createNamespace(kube, 'calm');
  await createIssuer(kube, 'calm');
  await createRelay(kube, relayManifest('calm', 'ref'));
  await eventually('the reference relay reconciled', async () => {
    const r = await getRelay(kube, 'calm', 'ref');
    return r?.status?.observedGeneration === r?.metadata?.generation && condition(r, 'Reconciled')?.status === 'True' && condition(r, 'CredentialsReady')?.status === 'True';
  });
  await sleep(1000);
  const s = await snapshot('calm', 'ref');
  expectedChildren = s.children;
  assert.deepEqual(expectedChildren, [
    'configmaps/%-config',
    'deployments/%',
    'networkpolicies/%',
    'poddisruptionbudgets/%',
    'secrets/%-binding-app',
    'secrets/%-internal',
    'secrets/%-user-app',
    'secrets/%-users',
    'serviceaccounts/%',
    'services/%',
    'services/%-metrics',
    'services/%-peers',
    'certificates/%-tls',
  ].sort());
  assert.equal(s.deployment.generation, 1);
});

test('(a) kube-apiserver killed and restarted in the middle of reconciles, then restarted gracefully on settled relays', async () => {
  assert.ok(op);
  const ns = 'apiserver-restart';
  const names = await relaysIn(ns, 4);
  // some children written, not all: the reconciles are in flight
  await eventually('the first children', () => get(kube, `/api/v1/namespaces/${ns}/serviceaccounts/r0`), 10_000);
  await cp.restartApiserver({ signal: 'SIGKILL', downMs: 2000 });
  const { snapshots, tookMs } = await waitConverged('after a kube-apiserver crash', ns, names);
  for (const name of names) {
    await passwordsAgree(ns, name);
    assert.equal(snapshots.get(name)!.deployment.generation, 1, `${ns}/${name}: the Deployment was written once or rewritten identically`);
  }
  console.log(`# (a) converged ${tookMs} ms after the API server was back`);

  // settled: a graceful restart writes nothing and changes no pod template
  await sleep(1500);
  const before = new Map(await Promise.all(names.map(async (n) => [n, await snapshot(ns, n)] as const)));
  const a0 = await applies(op);
  await cp.restartApiserver({ signal: 'SIGTERM' });
  // the operator is back on its watches (the relays' informer listed or re-watched), then quiet
  await sleep(5000);
  for (const name of names) {
    const s = await snapshot(ns, name);
    const b = before.get(name)!;
    // the Deployment's resourceVersion moves with its status (kube-controller-manager): compared by generation and template
    const withoutDeployment = (x: Record<string, string>) => Object.fromEntries(Object.entries(x).filter(([k]) => k !== 'deployments/%'));
    assert.deepEqual(withoutDeployment(s.resourceVersions), withoutDeployment(b.resourceVersions), `${ns}/${name}: no child rewritten after a restart of a settled control plane`);
    assert.deepEqual(s.uids, b.uids);
    assert.deepEqual(s.deployment, snapshots.get(name)!.deployment);
  }
  assert.equal(await applies(op), a0, 'no child applied');
});

test('(b) etcd compacted at its current revision: resumed watches get 410 Gone, the operator relists and converges', async () => {
  assert.ok(op);
  const ns = 'compaction';
  const names = await relaysIn(ns, 2);
  await waitConverged('before compaction', ns, names);
  const before = await snapshot(ns, 'r0');
  const expired0 = await lists(op, 'expired');
  // history moves on past what the informers saw, is compacted, and then every watch must resume
  // the operator's watches stop at their resourceVersions (frozen), changes it must notice
  // are made, history moves on, is compacted, and then every watch must resume (cut)
  proxy.freeze();
  const t0 = Date.now();
  await kube.request('DELETE', `/api/v1/namespaces/${ns}/services/r0`);
  await kube.request('DELETE', `/api/v1/namespaces/${ns}/configmaps/r1-config`);
  await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: 'compaction-noise' } } });
  await kube.request('POST', '/api/v1/namespaces/compaction-noise/configmaps', { body: { metadata: { name: 'noise' }, data: { a: '1' } } });
  const rev = await cp.compactEtcd();
  proxy.cut();
  const { snapshots, tookMs } = await waitConverged('after compaction', ns, names, t0);
  await eventually('relists after 410 Gone', async () => (await lists(op!, 'expired')) > expired0, CONVERGE_MS);
  console.log(`# (b) compacted at revision ${rev}; converged in ${tookMs} ms; ${(await lists(op, 'expired')) - expired0} relists on 410 Gone`);
  const after = snapshots.get('r0')!;
  assert.notEqual(after.uids['services/%'], before.uids['services/%'], 'the deleted Service was made again');
  assert.deepEqual(after.deployment, before.deployment, 'the Deployment was not touched');
});

test('(c) watches gone silent (connections frozen, no FIN or RST): the dead connection is found by its unanswered PING and the operator converges', async () => {
  assert.ok(op);
  const ns = 'silent';
  const names = await relaysIn(ns, 2);
  await waitConverged('before the freeze', ns, names);
  const before = await snapshot(ns, 'r0');
  const frozen = proxy.freeze();
  assert.ok(frozen >= 1, `the operator's connections were frozen (${frozen}; HTTP/2 carries every watch on one)`);
  const t0 = Date.now();
  await kube.request('DELETE', `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/r0`);
  await kube.request('PATCH', `/api/v1/namespaces/${ns}/services/r1`, { contentType: 'application/merge-patch+json', body: { spec: { selector: { hijacked: 'yes' } } } });
  const { snapshots, tookMs } = await waitConverged('after a silent watch', ns, names, t0);
  const svc = await get(kube, `/api/v1/namespaces/${ns}/services/r1`);
  assert.equal(svc.spec.selector.hijacked, undefined, 'the hand edit was undone');
  console.log(`# (c) ${frozen} connections frozen; converged in ${tookMs} ms`);
  assert.deepEqual(snapshots.get('r0')!.deployment, before.deployment, 'the Deployment was not touched');
  const log = readFileSync(join(cp.dir, 'logs', 'faults.log'), 'utf8');
  assert.match(log, /watch failed; retrying/, 'the watches failed over to a new connection');
});

test('(e) children deleted or edited by hand are put back, the pod template only where it was edited', async () => {
  assert.ok(op);
  const ns = 'hand-edits';
  const names = await relaysIn(ns, 2);
  const { snapshots } = await waitConverged('before the edits', ns, names);
  const before0 = snapshots.get('r0')!;
  const before1 = snapshots.get('r1')!;
  const t0 = Date.now();
  // r0: deleted
  for (const path of [
    `/apis/apps/v1/namespaces/${ns}/deployments/r0`,
    `/api/v1/namespaces/${ns}/services/r0`,
    `/api/v1/namespaces/${ns}/secrets/r0-users`,
    `/api/v1/namespaces/${ns}/secrets/r0-binding-app`,
    `/api/v1/namespaces/${ns}/secrets/r0-internal`,
    `/api/v1/namespaces/${ns}/services/r0-peers`,
    `/api/v1/namespaces/${ns}/configmaps/r0-config`,
    `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/r0`,
    `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/r0`,
    `/api/v1/namespaces/${ns}/serviceaccounts/r0`,
    `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/r0-tls`,
  ]) {
    await kube.request('DELETE', path);
  }
  // r1: edited (a field the operator sets, with another value)
  const merge = (path: string, body: object) => kube.request('PATCH', path, { contentType: 'application/merge-patch+json', body });
  await merge(`/api/v1/namespaces/${ns}/configmaps/r1-config`, { data: { 'config.yaml': 'tampered: true\n' } });
  await merge(`/api/v1/namespaces/${ns}/services/r1`, { spec: { selector: { hijacked: 'yes' } } });
  await merge(`/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/r1`, { spec: { ingress: [{}] } });
  await merge(`/api/v1/namespaces/${ns}/secrets/r1-users`, { data: { [USERS_KEY]: Buffer.from('users: []\n').toString('base64') } });
  await merge(`/apis/apps/v1/namespaces/${ns}/deployments/r1`, { spec: { template: { spec: { containers: [{ name: 'relay', image: 'evil.example/relay:latest' }] } } } });
  const after0 = await eventually(`r0 converged within ${CONVERGE_MS} ms`, () => converged(ns, 'r0'), CONVERGE_MS);
  const after1 = await eventually(`r1 converged within ${CONVERGE_MS - (Date.now() - t0)} ms`, async () => {
    const s = await converged(ns, 'r1');
    const cm = await get(kube, `/api/v1/namespaces/${ns}/configmaps/r1-config`);
    const np = await get(kube, `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/r1`);
    const dep = await get(kube, `/apis/apps/v1/namespaces/${ns}/deployments/r1`);
    const svc = await get(kube, `/api/v1/namespaces/${ns}/services/r1`);
    const users = unb64((await get(kube, `/api/v1/namespaces/${ns}/secrets/r1-users`)).data[USERS_KEY]);
    const restored = !cm.data['config.yaml'].includes('tampered') && JSON.stringify(np.spec.ingress) !== '[{}]' && templateHash(dep) === before1.deployment.templateHash && !svc.spec.selector.hijacked && users.includes('name: app');
    return restored ? s : undefined;
  }, Math.max(CONVERGE_MS - (Date.now() - t0), 1));
  console.log(`# (e) converged in ${Date.now() - t0} ms`);
  assert.deepEqual(after0.children, expectedChildren);
  assert.equal(after0.deployment.templateHash, before0.deployment.templateHash, 'the re-made Deployment has the same pod template');
  assert.equal(after0.deployment.replicaSets, 1);
  await passwordsAgree(ns, 'r0');
  // r1's template was edited by hand and put back: two generations, the original template
  assert.equal(after1.deployment.templateHash, before1.deployment.templateHash);
  assert.equal(after1.deployment.generation, before1.deployment.generation + 2, 'the hand edit and its undoing, nothing more');
  assert.equal(after1.uids['deployments/%'], before1.uids['deployments/%'], 'edited in place, not re-created');
  await passwordsAgree(ns, 'r1');
});

test('(d) the operator process SIGKILLed at random moments while it creates the children of several relays, then started again', async () => {
  // The in-process operator gives way to an operator process (the one `smtp-relay-operator` runs).
  await op?.stop();
  op = undefined;
  const ns = 'killed';
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
  const names: string[] = [];
  const start = (i: number): Proc => {
    const p = startProcess(`operator-process-${i}`, process.execPath, [
      join(repoRoot(), 'dist', 'operator', 'main.js'),
      `--kubeconfig=${proxyKubeconfigPath}`, `--relay-image=${TEST_IMAGE}`, '--metrics-port=0', '--metrics-address=127.0.0.1', '--workers=2', '--log-level=debug',
    ], join(cp.dir, 'logs'));
    processes.push(p);
    return p;
  };
  const logOf = (p: Proc) => readFileSync(p.logPath, 'utf8');
  const childrenOf = async (list: string[]) => {
    let n = 0;
    for (const name of list) n += (await snapshot(ns, name)).children.length;
    return n;
  };
  const kills: string[] = [];
  let midWrite = 0;
  // at least 6 kills, and on until 2 of them left a relay between its first and last write (at most 12)
  for (let i = 0; i < 12 && (i < 6 || midWrite < 2); i++) {
    // every process has new relays to make the children of
    const fresh = [`r${names.length}`, `r${names.length + 1}`];
    for (const name of fresh) await createRelay(kube, relayManifest(ns, name));
    names.push(...fresh);
    const p = start(i);
    await eventually(`operator process ${i} reconciling`, async () => /"msg":"caches synced"/.test(logOf(p)), 20_000);
    const ms = randomInt(0, 600);
    await sleep(ms);
    process.kill(p.pid, 'SIGKILL');
    await p.exited;
    // relays left half-written by this kill (some children made, not all)
    let half = 0;
    for (const name of names) {
      const n = (await snapshot(ns, name)).children.length;
      if (n > 0 && n < expectedChildren.length) half++;
    }
    if (half > 0) midWrite++;
    kills.push(`${ms} ms (${await childrenOf(names)}/${names.length * expectedChildren.length} children, ${half} relays half-written)`);
  }
  const partial = await childrenOf(names);
  const t0 = Date.now();
  const last = start(99);
  const { tookMs } = await waitConverged(`after ${kills.length} SIGKILLs`, ns, names, t0);
  console.log(`# (d) killed after ${kills.join(', ')}; ${midWrite} kills in the middle of a relay's writes; ${partial} of ${names.length * expectedChildren.length} children there at the last start; converged ${tookMs} ms after it`);
  assert.ok(midWrite >= 1, `at least one kill came between the writes of a reconcile: ${kills.join(', ')}`);
  for (const name of names) {
    await passwordsAgree(ns, name);
    const s = await snapshot(ns, name);
    assert.equal(s.deployment.generation, 1, `${ns}/${name}: the Deployment was written once or rewritten identically`);
  }
  process.kill(last.pid, 'SIGTERM');
  await last.exited;
  assert.deepEqual(last.exitInfo, { code: 0, signal: null }, `the last operator process stopped cleanly:\n${logOf(last).split('\n').slice(-5).join('\n')}`);
});

test('every fault left the relays of the earlier cases as they were', async () => {
  // no operator runs now: this is what the faults left behind, read once more
  const relays = await kube.get<any>(resourcePath(SmtpRelays));
  assert.ok(relays.items.length >= 1 + 4 + 2 + 2 + 2 + 12);
  for (const r of relays.items) {
    const s = await snapshot(r.metadata.namespace, r.metadata.name);
    assert.deepEqual(s.children, expectedChildren, `${r.metadata.namespace}/${r.metadata.name}`);
  }
});
