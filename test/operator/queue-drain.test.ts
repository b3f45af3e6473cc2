// The operator's side of draining a persistent queue (issue 14), on the real local
// control plane (etcd + kube-apiserver + kube-controller-manager with the StatefulSet
// and PVC-protection controllers): scale-down holds the StatefulSet until the leaving
// pods report an empty queue, then lowers it and deletes exactly their claims; a pod
// that never empties has its claim kept once spec.queue.drainTimeout passes; the
// deletion finalizer drains every pod and never hangs.
//
// No kubelet runs here and no relay process: each relay pod's control endpoint
// (GET /queue, POST /drain, DELETE /drain on the metrics port, Bearer control token)
// is PLAYED by a small HTTP server of this test on loopback, answering exactly as the
// contract says; the operator's test-only `podAddress` option maps each pod to its
// server. The pods get made-up IPs (status.podIP) so the hand-off list can be checked.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Kube, MEDIA_MERGE_PATCH } from '../../operator/runtime/kube.js';
import type { RunningOperator } from '../../operator/operator.js';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { CertManagerStandIn, condition, createIssuer, createNamespace, createRelay, eventually, get, getRelay, relayManifest, runOperator, sleep } from './support.js';

/** One relay pod's control endpoint, played: the queue state the contract describes, and every request seen. */
class PlayedRelay {
  draining = false;
  messages = 0;
  handedOff = 0;
  /** Answer 401 to everything (a pod the operator cannot use). */
  refuse = false;
  readonly requests: Array<{ method: string; path: string; auth: string | undefined; body: unknown }> = [];
  private constructor(
    readonly pod: string,
    private readonly server: Server,
    readonly token: () => string | undefined,
  ) {}

  static async start(pod: string, token: () => string | undefined): Promise<PlayedRelay> {
    let self: PlayedRelay | undefined;
    const server = createServer((req, res) => {
      let text = '';
      req.on('data', (c: Buffer) => (text += c.toString('utf8')));
      req.on('end', () => self!.answer(req.method ?? '', req.url ?? '', req.headers.authorization, text, res));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new PlayedRelay(pod, server, token);
    return self;
  }

  get address(): string {
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  drains(): Array<{ method: string; body: unknown }> {
    return this.requests.filter((r) => r.path === '/drain');
  }

  private answer(method: string, path: string, auth: string | undefined, text: string, res: import('node:http').ServerResponse): void {
    const body = text ? (JSON.parse(text) as unknown) : undefined;
    this.requests.push({ method, path, auth, body });
    const json = (status: number, v: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(v));
    };
    const token = this.token();
    if (this.refuse || !token || auth !== `Bearer ${token}`) return json(401, { error: 'unauthorized' });
    if (method === 'GET' && path === '/queue') {
      return json(200, { draining: this.draining, messages: this.messages, bytes: this.messages * 1000, oldestSeconds: this.messages > 0 ? 60 : 0, handedOff: this.handedOff });
    }
    if (method === 'POST' && path === '/drain') {
      this.draining = true;
      return json(200, { draining: true });
    }
    if (method === 'DELETE' && path === '/drain') {
      this.draining = false;
      return json(200, { draining: false });
    }
    return json(404, { error: 'not found' });
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;
let certManager: CertManagerStandIn;
const ns = 'drain';
const played = new Map<string, PlayedRelay>();
const tokens = new Map<string, string>();

before(async () => {
  cp = await startControlPlane({ extraControllers: ['statefulset-controller', 'persistentvolumeclaim-protection-controller'] });
  kube = new Kube(cp.kubeconfig);
  certManager = await CertManagerStandIn.create(kube);
  op = await runOperator(cp, 'operator-drain', {
    drainPollMs: 300,
    // TEST ONLY: the played control endpoint of each pod, instead of <podIP>:9090.
    podAddress: (pod) => played.get(pod.metadata.name)?.address,
  });
  await op.whenRunning();
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
});

after(async () => {
  await op?.stop();
  for (const p of played.values()) await p.stop();
  await certManager?.cleanup();
  await cp?.stop();
});

const relayPath = (name: string) => `/apis/smtprelay.dev/v1alpha1/namespaces/${ns}/smtprelays/${name}`;
const sts = (name: string) => get(kube, `/apis/apps/v1/namespaces/${ns}/statefulsets/${name}`);
const patchRelay = (name: string, body: unknown) => kube.request('PATCH', relayPath(name), { contentType: MEDIA_MERGE_PATCH, body });
const claim = (name: string) => get(kube, `/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`);
async function claimNames(instance: string): Promise<string[]> {
  const list = await kube.get<any>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`, { query: { labelSelector: `app.kubernetes.io/instance=${instance}` } });
  return list.items.filter((c: any) => !c.metadata.deletionTimestamp).map((c: any) => c.metadata.name).sort();
}
async function events(name: string): Promise<Array<{ type: string; reason: string; message: string }>> {
  const list = await kube.get<any>(`/api/v1/namespaces/${ns}/events`, { query: { fieldSelector: `involvedObject.name=${name}` } });
  return list.items.map((e: any) => ({ type: e.type, reason: e.reason, message: e.message }));
}
const podIp = (instance: string, ordinal: number) => `10.244.${instance.length}.${ordinal + 10}`;

/**
 * A relay with a persistent queue and `replicas` pods, each pod given a made-up IP and a
 * played control endpoint; returns once every claim exists.
 */
async function startRelay(name: string, replicas: number, queue: Record<string, unknown> = {}): Promise<void> {
  await createRelay(kube, relayManifest(ns, name, { replicas, queue: { storage: { size: '1Gi' }, ...queue } }));
  const token = () => tokens.get(name);
  const secret = await eventually('the internal Secret', () => get(kube, `/api/v1/namespaces/${ns}/secrets/${name}-internal`));
  tokens.set(name, Buffer.from(secret.data['control-token'], 'base64').toString('utf8'));
  const pods = await eventually(`${replicas} pods of ${name}`, async () => {
    const list = await kube.get<any>(`/api/v1/namespaces/${ns}/pods`, { query: { labelSelector: `app.kubernetes.io/instance=${name}` } });
    return list.items.length >= replicas ? list.items : undefined;
  });
  const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
  for (const pod of pods) {
    const ordinal = Number(pod.metadata.name.slice(name.length + 1));
    played.set(pod.metadata.name, await PlayedRelay.start(pod.metadata.name, token));
    await kube.request('PATCH', `/api/v1/namespaces/${ns}/pods/${pod.metadata.name}/status`, {
      contentType: MEDIA_MERGE_PATCH,
      body: {
        status: {
          phase: 'Running',
          podIP: podIp(name, ordinal),
          podIPs: [{ ip: podIp(name, ordinal) }],
          conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: now }, { type: 'ContainersReady', status: 'True', lastTransitionTime: now }],
        },
      },
    });
  }
  await eventually(`claims of ${name}`, async () => ((await claimNames(name)).length === replicas ? true : undefined));
}

test('scale 3 → 1 holds the StatefulSet until the leaving pods report an empty queue, then lowers it and deletes exactly their claims (relay control endpoint played by the test)', async () => {
  await startRelay('shrink', 3);
  played.get('shrink-1')!.messages = 5;
  played.get('shrink-2')!.messages = 7;
  const withFinalizer = await getRelay(kube, ns, 'shrink');
  assert.deepEqual(withFinalizer.metadata.finalizers, ['smtprelay.dev/drain'], 'a persistent queue gets the drain finalizer');

  await patchRelay('shrink', { spec: { replicas: 1 } });
  await eventually('POST /drain to shrink-1 and shrink-2', async () => played.get('shrink-1')!.draining && played.get('shrink-2')!.draining);
  for (const pod of ['shrink-1', 'shrink-2']) {
    const post = played.get(pod)!.requests.find((r) => r.method === 'POST' && r.path === '/drain')!;
    assert.deepEqual(post.body, { handoff: [`${podIp('shrink', 0)}:9091`] }, 'hand-off to the pod that stays, on the peer port');
    assert.equal(post.auth, `Bearer ${tokens.get('shrink')}`);
  }
  assert.equal(played.get('shrink-0')!.drains().length, 0, 'the pod that stays is never told to drain');
  const draining = await eventually('status.queue while draining', async () => {
    const r = await getRelay(kube, ns, 'shrink');
    return r.status?.queue ? r : undefined;
  });
  assert.deepEqual(draining.status.queue.draining, ['shrink-1', 'shrink-2']);
  assert.equal(draining.status.queue.messagesLeft, 12);
  assert.equal(draining.status.queue.summary, 'draining 2 pods, 12 left');
  assert.equal(condition(draining, 'QueueDrained')?.reason, 'Draining');
  assert.notEqual(condition(draining, 'Ready')?.reason, 'Draining', 'QueueDrained is not part of Ready: the staying pods serve');
  // Held: several polls later the StatefulSet still has 3, and no claim is marked or gone.
  const rv = draining.metadata.resourceVersion;
  await sleep(1500);
  assert.equal((await sts('shrink')).spec.replicas, 3, 'held at 3 while mail is queued');
  assert.deepEqual(await claimNames('shrink'), ['spool-shrink-0', 'spool-shrink-1', 'spool-shrink-2']);
  assert.equal((await claim('spool-shrink-1')).metadata.annotations?.['smtprelay.dev/queue-confirmed-empty'], undefined);
  assert.equal((await getRelay(kube, ns, 'shrink')).metadata.resourceVersion, rv, 'no status writes while the count is unchanged');

  played.get('shrink-1')!.messages = 0;
  await sleep(1000);
  assert.equal((await sts('shrink')).spec.replicas, 3, 'one pod empty is not enough');
  played.get('shrink-2')!.messages = 0;
  await eventually('StatefulSet lowered to 1', async () => (await sts('shrink')).spec.replicas === 1);
  await eventually('the drained claims deleted once their pods are gone', async () => {
    const names = await claimNames('shrink');
    return names.length === 1 && names[0] === 'spool-shrink-0';
  });
  const after = await eventually('QueueDrained=True, status.queue gone', async () => {
    const r = await getRelay(kube, ns, 'shrink');
    return condition(r, 'QueueDrained')?.status === 'True' && !r.status.queue ? r : undefined;
  });
  assert.match(condition(after, 'QueueDrained')!.message, /shrink-1, shrink-2 drained/);
  assert.equal((await claim('spool-shrink-0')).metadata.annotations?.['smtprelay.dev/queue-confirmed-empty'], undefined, 'the staying claim is never marked');
  const reasons = (await events('shrink')).map((e) => `${e.type} ${e.reason}`);
  assert.ok(reasons.includes('Normal Draining') && reasons.includes('Normal QueueDrained') && reasons.includes('Normal QueueVolumeDeleted'), reasons.join(', '));
  for (const e of await events('shrink')) assert.ok(!e.message.includes(tokens.get('shrink')!), 'the token is never in an event');
});

test('scale back up while draining: the pods that stay again are taken out of drain (DELETE /drain), status.queue cleared, no claim touched (relay control endpoint played by the test)', async () => {
  await startRelay('undo', 3);
  played.get('undo-1')!.messages = 2;
  played.get('undo-2')!.messages = 2;
  await patchRelay('undo', { spec: { replicas: 1 } });
  await eventually('status.queue draining 2 pods', async () => (await getRelay(kube, ns, 'undo')).status?.queue?.draining?.length === 2);
  await patchRelay('undo', { spec: { replicas: 3 } });
  await eventually('DELETE /drain on undo-1 and undo-2', async () => !played.get('undo-1')!.draining && !played.get('undo-2')!.draining);
  const r = await eventually('status.queue cleared', async () => {
    const r = await getRelay(kube, ns, 'undo');
    return !r.status.queue ? r : undefined;
  });
  assert.match(condition(r, 'QueueDrained')!.message, /undone/);
  assert.equal((await sts('undo')).spec.replicas, 3);
  assert.deepEqual(await claimNames('undo'), ['spool-undo-0', 'spool-undo-1', 'spool-undo-2']);
});

test('a pod the operator cannot ask is waited for, named in the condition and status.queue.unreachable; once it answers the drain goes on (relay control endpoint played by the test)', async () => {
  await startRelay('far', 2);
  played.get('far-1')!.refuse = true;
  await patchRelay('far', { spec: { replicas: 1 } });
  const r = await eventually('QueueDrained=False DrainUnreachable', async () => {
    const r = await getRelay(kube, ns, 'far');
    return condition(r, 'QueueDrained')?.reason === 'DrainUnreachable' ? r : undefined;
  });
  assert.match(condition(r, 'QueueDrained')!.message, /cannot reach far-1 \(GET \/queue: HTTP 401\)/);
  assert.deepEqual(r.status.queue.unreachable, ['far-1']);
  assert.equal(r.status.queue.summary, 'draining 1 pod', 'no count while a pod cannot be asked');
  await sleep(1000);
  assert.equal((await sts('far')).spec.replicas, 2, 'held while the pod cannot be asked');
  assert.equal((await claim('spool-far-1')).metadata.annotations?.['smtprelay.dev/queue-confirmed-empty'], undefined);
  played.get('far-1')!.refuse = false;
  await eventually('StatefulSet lowered once the pod answers empty', async () => (await sts('far')).spec.replicas === 1);
  assert.ok(played.get('far-1')!.draining);
});

test('a pod that never empties: past spec.queue.drainTimeout the pods go anyway and its claim is kept, labelled and annotated with the count, with a Warning Event (relay control endpoint played by the test)', async () => {
  await startRelay('stuck', 2, { drainTimeout: '4s' });
  played.get('stuck-1')!.messages = 9;
  await patchRelay('stuck', { spec: { replicas: 1 } });
  await eventually('POST /drain to stuck-1', async () => played.get('stuck-1')!.draining);
  assert.equal((await sts('stuck')).spec.replicas, 2, 'held while the bound has not passed');
  await eventually('StatefulSet lowered after the bound', async () => (await sts('stuck')).spec.replicas === 1, 20_000);
  const kept = await claim('spool-stuck-1');
  assert.equal(kept.metadata.labels['smtprelay.dev/queue-kept'], 'true');
  assert.equal(kept.metadata.annotations['smtprelay.dev/queue-messages'], '9');
  assert.equal(kept.metadata.annotations['smtprelay.dev/queue-confirmed-empty'], undefined);
  const warning = (await events('stuck')).find((e) => e.type === 'Warning' && e.reason === 'DrainTimedOut');
  assert.ok(warning, 'a Warning Event');
  assert.match(warning.message, /9 messages left/);
  assert.match(warning.message, /spool-stuck-1 \(9 messages\)/);
  const r = await getRelay(kube, ns, 'stuck');
  assert.equal(condition(r, 'QueueDrained')?.reason, 'DrainTimedOut');
  // Its pod goes; the claim stays through several more polls.
  await eventually('pod stuck-1 gone', async () => (await get(kube, `/api/v1/namespaces/${ns}/pods/stuck-1`)) === undefined);
  await sleep(1500);
  const still = await claim('spool-stuck-1');
  assert.ok(still && !still.metadata.deletionTimestamp, 'a claim that may hold mail is never deleted');
  assert.equal((await sts('stuck')).spec.replicas, 1, 'never raised again: the kept claim needs no more drain');
});

test('deletion with the finalizer: every pod drains with no hand-off target; once all report empty the claims go and the deletion finishes (relay control endpoint played by the test)', async () => {
  await startRelay('gone', 2);
  played.get('gone-0')!.messages = 3;
  await kube.request('DELETE', relayPath('gone'));
  await eventually('POST /drain to both pods', async () => played.get('gone-0')!.draining && played.get('gone-1')!.draining);
  assert.deepEqual(played.get('gone-0')!.drains()[0]!.body, { handoff: [] }, 'nobody to hand off to: every pod goes');
  const during = await eventually('status.queue on the deleted relay', async () => {
    const r = await getRelay(kube, ns, 'gone');
    return r.status?.queue ? r : undefined;
  });
  assert.ok(during.metadata.deletionTimestamp, 'held by the finalizer');
  assert.deepEqual(during.status.queue.draining, ['gone-0', 'gone-1']);
  played.get('gone-0')!.messages = 0;
  await eventually('the relay gone', async () => (await get(kube, relayPath('gone'))) === undefined);
  await eventually('both claims deleted', async () => (await claimNames('gone')).length === 0);
});

test('deletion with mail left at the bound: the claim is kept and labelled, an Event and the condition say how many messages remain where, and the deletion finishes (relay control endpoint played by the test)', async () => {
  await startRelay('left', 2, { drainTimeout: '4s' });
  played.get('left-1')!.messages = 4;
  // A finalizer of the test's own holds the relay after the operator's is removed, so the condition can be read.
  await patchRelay('left', { metadata: { finalizers: ['smtprelay.dev/drain', 'test.example/hold'] } });
  await kube.request('DELETE', relayPath('left'));
  const r = await eventually(
    'the drain finalizer removed after the bound',
    async () => {
      const r = await getRelay(kube, ns, 'left');
      return !r.metadata.finalizers?.includes('smtprelay.dev/drain') ? r : undefined;
    },
    20_000,
  );
  const c = condition(r, 'QueueDrained')!;
  assert.equal(c.reason, 'DrainTimedOut');
  assert.match(c.message, /4 messages left/);
  assert.match(c.message, /spool-left-1 \(4 messages\)/);
  assert.equal(r.status.queue, undefined);
  const warning = (await events('left')).find((e) => e.type === 'Warning' && e.reason === 'DrainTimedOut');
  assert.ok(warning && /spool-left-1/.test(warning.message));
  await patchRelay('left', { metadata: { finalizers: [] } });
  await eventually('the relay gone', async () => (await get(kube, relayPath('left'))) === undefined);
  const kept = await claim('spool-left-1');
  assert.equal(kept.metadata.labels['smtprelay.dev/queue-kept'], 'true');
  assert.equal(kept.metadata.annotations['smtprelay.dev/queue-messages'], '4');
  assert.ok(!kept.metadata.deletionTimestamp);
  await eventually('the empty claim deleted', async () => (await claimNames('left')).join() === 'spool-left-1');
});
