// UpstreamReady from the relay pods' own logins (issue 15), on the real control plane
// (etcd + kube-apiserver): the operator asks each pod's GET /upstream and shows a refusal
// as UpstreamReady=False/UpstreamAuthRefused with the pod's name and the upstream's words,
// one Warning Event; a Secret problem still wins; back to UpstreamConfigured once a login
// succeeds; a pod that does not answer changes nothing.
//
// No kubelet runs here, so no pod: the relay "pod" is a REAL relay process (test/relay/
// harness.ts) on loopback, logging in to a real upstream SMTP server (test/harness/support/
// sink.ts, PLAIN/LOGIN) with the wrong password, its control endpoints guarded by the control
// token the operator generated into the relay's internal Secret. The operator's TEST ONLY
// `relayPods` option stands in for the DNS records of the relay's headless Service, naming
// two pods: the real relay, and one whose address nobody listens on (unreachable).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Kube } from '../../operator/runtime/kube.js';
import type { RunningOperator } from '../../operator/operator.js';
import type { RelayPod } from '../../operator/upstream-logins.js';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { SecretDir, sendPooled, startRelay, tempDir, type RelayProcess } from '../relay/harness.js';
import { CertManagerStandIn, condition, createBasicAuthSecret, createIssuer, createNamespace, createRelay, eventually, get, getRelay, relayManifest, runOperator, unb64 } from './support.js';

const ns = 'upstream';
const name = 'outbound';
const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const UPSTREAM_USER = 'relay@example.com';
const RIGHT = 'upstream-password-Kx71-right';
const WRONG = 'upstream-password-Kx71-WRONG';

let cp: ControlPlane;
let kube: Kube;
let op: RunningOperator;
let pki: Pki;
let certManager: CertManagerStandIn;
let dir: string;
let sink: Sink;
const accepted = { user: UPSTREAM_USER, pass: RIGHT };
let relay: RelayProcess | undefined;
/** The relay's pods as the operator is told of them (TEST ONLY relayPods). */
let pods: RelayPod[] = [];

before(async () => {
  cp = await startControlPlane();
  kube = new Kube(cp.kubeconfig);
  pki = await createPki();
  certManager = await CertManagerStandIn.create(kube);
  dir = await tempDir('operator-upstream-');
  sink = await startSink({ pki, auth: accepted });
  op = await startOperator('operator-upstream');
  await createNamespace(kube, ns);
  await createIssuer(kube, ns);
});

after(async () => {
  await op?.stop();
  if (relay) assert.equal(await relay.stop(), 0, relay.stderr);
  await sink?.stop();
  await pki?.cleanup();
  await certManager?.cleanup();
  await cp?.stop();
});

async function events(): Promise<Array<{ type: string; reason: string; message: string; count: number }>> {
  const list = await kube.get<any>(`/api/v1/namespaces/${ns}/events`, { query: { fieldSelector: `involvedObject.name=${name}` } });
  return list.items.map((e: any) => ({ type: e.type, reason: e.reason, message: e.message, count: e.count }));
}

/** The operator, polling every 300 ms; the relay's pods as `pods` says (the first time after `slowStartMs`: the first reconciles come before the first poll). */
async function startOperator(identity: string, slowStartMs = 0): Promise<RunningOperator> {
  let first = slowStartMs > 0;
  const o = await runOperator(cp, identity, {
    upstreamPollMs: 300,
    relayPods: async (r) => {
      if (first) {
        first = false;
        await new Promise((done) => setTimeout(done, slowStartMs));
      }
      return r.metadata.name === name ? pods : [];
    },
  });
  await o.whenRunning();
  return o;
}

const upstreamReady = async () => condition(await getRelay(kube, ns, name), 'UpstreamReady');
const send = (tag: string) => sendPooled(relay!, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 1, tag });

test('a pod whose upstream refuses the login turns UpstreamReady False with the pod and the upstream\'s words (one Warning); a Secret problem wins; a good login turns it back; an unreachable pod changes nothing', async () => {
  await createBasicAuthSecret(kube, ns, 'upstream-smtp', UPSTREAM_USER, WRONG);
  await createRelay(kube, relayManifest(ns, name, { upstream: { host: '127.0.0.1', port: sink.port, credentialsSecretRef: { name: 'upstream-smtp' } } }));
  await eventually('the Certificate', () => get(kube, `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/${name}-tls`));
  await certManager.issue(ns, `${name}-tls`);
  const internal = await eventually('the internal Secret', () => get(kube, `/api/v1/namespaces/${ns}/secrets/${name}-internal`));
  const token = unb64(internal.data['control-token']);
  assert.ok(token.length >= 32);

  // the relay pod: the real relay with the operator's control token, logging in with the Secret's (wrong) password
  const files = await SecretDir.create(dir, 'pod-files', { token, username: UPSTREAM_USER, password: WRONG });
  relay = await startRelay({
    dir,
    cert: await pki.issue({ name: 'relay' }),
    users: [APP],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    upstreamExtra: `  usernameFile: ${files.file('username')}\n  passwordFile: ${files.file('password')}\n`,
    metricsExtra: `controlTokenFile: ${files.file('token')}`,
  });
  pods = [
    { name: `${name}-7d9c5b-x2k4q`, address: `127.0.0.1:${relay.ports.metrics}` },
    { name: `${name}-7d9c5b-gone1`, address: `127.0.0.1:${await closedPort()}` },
  ];

  const configured = await eventually('UpstreamReady True from the Secret', async () => {
    const c = await upstreamReady();
    return c?.status === 'True' ? c : undefined;
  });
  assert.equal(configured.reason, 'UpstreamConfigured');

  // the upstream refuses: the relay's client gets 451, the pod's GET /upstream says so
  const [reply] = await send('refused');
  assert.match(reply!, /^451 4\.7\.0 .*Upstream authentication failed/);
  const refused = await eventually('UpstreamReady False: UpstreamAuthRefused', async () => {
    const c = await upstreamReady();
    return c?.reason === 'UpstreamAuthRefused' ? c : undefined;
  }, 15_000);
  assert.equal(refused.status, 'False');
  assert.match(refused.message, new RegExp(`^the upstream 127\\.0\\.0\\.1:${sink.port} refuses the relay's login \\(PLAIN\\) on pod ${name}-7d9c5b-x2k4q: "535 5\\.7\\.8 Authentication credentials invalid" since \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ; check the username and password in Secret upstream-smtp`));
  assert.ok(!refused.message.includes('gone1'), 'the unreachable pod is not named');
  // Ready says why first (no pod is Available either: no kubelet here)
  const ready = await eventually('Ready naming UpstreamReady', async () => {
    const c = condition(await getRelay(kube, ns, name), 'Ready');
    return c?.message.startsWith('UpstreamReady:') ? c : undefined;
  });
  assert.equal(ready.status, 'False');
  assert.equal(ready.reason, 'UpstreamAuthRefused');
  const warned = await eventually('the Warning Event', async () => {
    const w = (await events()).filter((e) => e.reason === 'UpstreamAuthRefused');
    return w.length > 0 ? w : undefined;
  });
  assert.deepEqual(warned.map((e) => [e.type, e.count]), [['Warning', 1]]);
  assert.match(warned[0]!.message, /refuses the relay's login \(PLAIN\) on pod outbound-7d9c5b-x2k4q: "535 5\.7\.8 Authentication credentials invalid"/);

  // a restart (or a new leader): the condition keeps saying so, no flip to True and back, no second Warning
  await op.stop();
  op = await startOperator('operator-upstream-2', 2000);
  await new Promise((r) => setTimeout(r, 3500)); // the first reconciles, then several polls
  const kept = await upstreamReady();
  assert.equal(kept?.reason, 'UpstreamAuthRefused');
  assert.equal(kept?.lastTransitionTime, refused.lastTransitionTime, 'UpstreamReady did not change status across the restart');
  assert.deepEqual((await events()).filter((e) => e.reason === 'UpstreamAuthRefused').map((e) => [e.type, e.count]), [['Warning', 1]]);

  // a Secret problem is the cause: it is what UpstreamReady says while it lasts
  await kube.request('DELETE', `/api/v1/namespaces/${ns}/secrets/upstream-smtp`);
  const missing = await eventually('UpstreamReady: the missing Secret wins', async () => {
    const c = await upstreamReady();
    return c?.reason === 'UpstreamCredentialsNotFound' ? c : undefined;
  });
  assert.equal(missing.status, 'False');
  await createBasicAuthSecret(kube, ns, 'upstream-smtp', UPSTREAM_USER, WRONG);
  await eventually('UpstreamAuthRefused again once the Secret is back', async () => (await upstreamReady())?.reason === 'UpstreamAuthRefused');

  // the upstream takes the login: the next message logs in, and the pod says so
  accepted.pass = WRONG;
  assert.deepEqual((await send('fixed')).map((r) => r.slice(0, 3)), ['250']);
  const back = await eventually('UpstreamReady True again', async () => {
    const c = await upstreamReady();
    return c?.status === 'True' ? c : undefined;
  }, 15_000);
  assert.equal(back.reason, 'UpstreamConfigured');
  const all = await eventually('the Normal Event', async () => {
    const e = await events();
    return e.some((x) => x.reason === 'UpstreamAuthAccepted') ? e : undefined;
  });
  assert.deepEqual(
    all.filter((e) => e.reason === 'UpstreamAuthRefused').map((e) => [e.type, e.count]),
    [['Warning', 1]],
    'one Warning for the refusal, though the condition went through the Secret problem and back',
  );
  // a few more polls: nothing flips while one pod stays unreachable
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await upstreamReady())?.status, 'True');

  // nothing secret anywhere the operator wrote
  const shown = JSON.stringify(await getRelay(kube, ns, name)) + JSON.stringify(await events());
  for (const s of [RIGHT, WRONG, token]) assert.ok(!shown.includes(s), 'a secret in status or events');
});
