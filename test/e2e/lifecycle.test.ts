/**
 * End to end (see test/e2e/env.ts): the SmtpRelay deleted → its pods get SIGTERM and stop,
 * every child it owned is garbage-collected (kube-controller-manager's garbage collector),
 * no relay container is left; then the environment stopped → no container, pod network or
 * control-plane process is left running.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
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
    env = await startEnvironment({ ...(process.env['E2E_DEBUG'] ? { log: (l) => console.error(l), kubeletLog: (l) => console.error(l) } : {}) });
  });
  after(async () => {
    await env?.stop();
  });

  it('SmtpRelay deleted: pods stopped with SIGTERM, owned children gone, nothing of it left running', async () => {
    await env.applyRelay({ name: RELAY, replicas: 2 });
    await env.waitRelayReady(RELAY);
    await env.waitEndpoints(RELAY, 2);
    const relay = await env.kube.get<Obj>(`/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${RELAY}`);
    const relayPods = env.kubelet.runningPods().filter((p) => p.namespace === RELAY_NAMESPACE);
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
    assert.deepEqual(env.kubelet.runningPods().filter((p) => p.namespace === RELAY_NAMESPACE), []);
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), `relay process ${pid} is gone`);
    for (const p of relayPods) {
      const log = env.kubelet.logs(RELAY_NAMESPACE, p.name);
      assert.match(log, /SIGTERM|shutting down|drain/i, `the relay of ${p.name} got SIGTERM (log):\n${log.slice(-2000)}`);
    }
    // The operator is still there and healthy.
    assert.ok(env.kubelet.runningPods().some((p) => p.namespace === 'smtp-relay-system' && p.ready));
  });

  it('stopping the environment leaves no container, pod network or control-plane process', async () => {
    const containerPids = env.kubelet.containerPids();
    const cpPids = env.cp.pids;
    // Pod network namespaces are srop-pod-<slot>, slot = (podIP - 198.18.0.0) / 4 (test/harness/kubelet/netns.ts).
    const netnsNames = env.kubelet.runningPods().flatMap((p) => {
      if (!p.podIP) return [];
      const [a = 0, b = 0, c = 0, d = 0] = p.podIP.split('.').map(Number);
      const n = ((a << 24) >>> 0) + (b << 16) + (c << 8) + d - (((198 << 24) >>> 0) + (18 << 16));
      return [`srop-pod-${Math.floor(n / 4)}`];
    });
    assert.ok(netnsNames.length >= 1);
    for (const n of netnsNames) assert.match(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), new RegExp(`^${n}\\b`, 'm'));
    assert.ok(containerPids.length >= 1, 'the operator container runs until then');
    await env.stop();
    for (const pid of [...containerPids, ...cpPids]) assert.throws(() => process.kill(pid, 0), `process ${pid} is gone`);
    assert.deepEqual(env.kubelet.runningPods(), []);
    const netns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    for (const n of netnsNames) assert.doesNotMatch(netns, new RegExp(`^${n}\\b`, 'm'), `pod network ${n} removed`);
  });
});
