/**
 * End to end on the one-node cluster (see test/e2e/env.ts): the SmtpRelay deleted → its pods
 * get SIGTERM from the real kubelet and stop, every child it owned is garbage-collected
 * (kube-controller-manager's garbage collector), no relay container is left in containerd;
 * then the environment stopped → no container, pod network namespace or control-plane process
 * is left running.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { Environment, RELAY_NAMESPACE, startEnvironment, waitFor } from './env.js';

const RELAY = 'short-lived';

const CHILD_KINDS = [
  '/api/v1/namespaces/mail/serviceaccounts',
  '/api/v1/namespaces/mail/configmaps',
  '/api/v1/namespaces/mail/secrets',
  '/api/v1/namespaces/mail/services',
  '/apis/apps/v1/namespaces/mail/deployments',
  '/apis/apps/v1/namespaces/mail/replicasets',
  '/api/v1/namespaces/mail/pods',
  '/apis/networking.k8s.io/v1/namespaces/mail/networkpolicies',
  '/apis/policy/v1/namespaces/mail/poddisruptionbudgets',
  '/apis/cert-manager.io/v1/namespaces/mail/certificates',
  '/apis/discovery.k8s.io/v1/namespaces/mail/endpointslices',
];

interface Obj { metadata: { name: string; uid: string; ownerReferences?: { uid: string }[] } }

describe('end to end: deleting an SmtpRelay stops its pods and removes its children', { timeout: 600_000 }, () => {
  let env: Environment;

  before(async () => {
    env = await startEnvironment({ ...(process.env['E2E_DEBUG'] ? { log: (l) => console.error(l) } : {}) });
  });
  after(async () => {
    await env?.stop();
  });

  it('SmtpRelay deleted: pods stopped with SIGTERM, owned children gone, nothing of it left running', async () => {
    await env.applyRelay({ name: RELAY, replicas: 2 });
    await env.waitRelayReady(RELAY);
    await env.waitEndpoints(RELAY, 2);
    const relay = await env.kube.get<Obj>(`/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${RELAY}`);
    const relayPods = (await env.node.runningPods()).filter((p) => p.namespace === RELAY_NAMESPACE);
    assert.equal(relayPods.length, 2);
    const pids = relayPods.flatMap((p) => p.pids);
    assert.equal(pids.length, 2);

    // The owned children exist (directly owned, or owned through the Deployment/ReplicaSet).
    const owned = async (): Promise<string[]> => {
      const uids = new Set([relay.metadata.uid]);
      const out: string[] = [];
      // Two passes: ReplicaSets are owned by the Deployment, Pods by the ReplicaSets.
      for (let pass = 0; pass < 3; pass++) {
        for (const path of CHILD_KINDS) {
          const list = await env.kube.get<{ items: Obj[] }>(path);
          for (const o of list.items) {
            if ((o.metadata.ownerReferences ?? []).some((r) => uids.has(r.uid))) {
              if (!uids.has(o.metadata.uid)) out.push(`${path.split('/').pop()}/${o.metadata.name}`);
              uids.add(o.metadata.uid);
            }
          }
        }
      }
      return [...new Set(out)].sort();
    };
    const before = await owned();
    for (const kind of ['serviceaccounts', 'configmaps', 'secrets', 'services', 'deployments', 'replicasets', 'pods', 'networkpolicies', 'poddisruptionbudgets', 'certificates']) {
      assert.ok(before.some((o) => o.startsWith(`${kind}/`)), `a ${kind} child exists before deletion: ${before.join(', ')}`);
    }

    await env.kube.request('DELETE', `/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${RELAY}`);
    await waitFor('every owned child gone', async () => ((await owned()).length === 0 ? true : undefined), 180_000, 500);
    await waitFor('no relay pod object left', async () => {
      const pods = await env.kube.get<{ items: unknown[] }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/pods`);
      return pods.items.length === 0 ? true : undefined;
    }, 120_000);
    assert.deepEqual((await env.node.runningPods()).filter((p) => p.namespace === RELAY_NAMESPACE), []);
    const tasks = await env.node.taskPids();
    for (const p of relayPods) for (const id of Object.values(p.containerIds)) assert.ok(!tasks.has(id), `container ${id} of ${p.name} is gone from containerd`);
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), `relay process ${pid} is gone`);
    for (const p of relayPods) {
      const log = env.node.logs(RELAY_NAMESPACE, p.name, 'relay');
      assert.match(log, /SIGTERM|shutting down|drain/i, `the relay of ${p.name} got SIGTERM (log):\n${log.slice(-2000)}`);
    }
    // The operator is still there and healthy.
    assert.ok((await env.node.runningPods()).some((p) => p.namespace === 'smtp-relay-system' && p.ready));
  });

  it('stopping the environment leaves no container, pod network namespace or control-plane process', async () => {
    const containerPids = await env.node.containerPids();
    const cpPids = env.cp.pids;
    // The pods' network namespaces (containerd's cni-*, one per sandbox).
    const netnsOf = (): string[] => (existsSync('/run/netns') ? readdirSync('/run/netns').filter((n) => n.startsWith('cni-')) : []);
    const netns = netnsOf();
    assert.ok(netns.length >= 1, 'the operator pod has its network namespace until then');
    assert.ok(containerPids.length >= 2, 'the operator container and its sandbox run until then');
    await env.stop(); // throws if the cluster's stop() finds anything left
    for (const pid of [...containerPids, ...cpPids]) assert.throws(() => process.kill(pid, 0), `process ${pid} is gone`);
    const left = netnsOf();
    for (const n of netns) assert.ok(!left.includes(n), `pod network namespace ${n} removed`);
  });
});
