// Every object the builders produce, for every example manifest, is created
// (dry run, strict field validation) on a real kube-apiserver with the real
// cert-manager CRDs: no unknown fields, nothing the server's validation
// refuses. And what the server stores contains every field we sent with the
// same value, so the sync's "is the cached object a superset of the desired
// one" check does not see a difference on every reconcile (e.g. a quantity the
// server would rewrite).
//
// ServiceMonitor is checked offline only (operator/builders/children.test.ts,
// kubernetes-models): the prometheus-operator CRD is not part of the test
// control plane.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { startControlPlane, repoRoot, type ControlPlane } from '../harness/controlplane/harness.js';
import { Kube, KubeError } from '../../operator/runtime/kube.js';
import { isSubset } from '../../operator/runtime/apply.js';
import { API_VERSION, KIND, type SmtpRelay } from '../../operator/api/v1alpha1.js';
import { withDefaults, type SmtpRelaySpecInput } from '../harness/smtprelay/defaults.js';
import { buildChildren } from '../../operator/builders/children.js';
import { buildRelayConfig } from '../../operator/builders/relay-config.js';
import { buildGeneratedUserSecret, generatePassword } from '../../operator/builders/credentials.js';
import { buildGeneratedDkimSecret, generateDkimPrivateKey } from '../../operator/builders/dkim-key.js';
import { buildUsersSecret } from '../../operator/builders/users.js';
import { buildInternalSecret } from '../../operator/builders/internal.js';
import { QUANTITY_CASES } from '../harness/smtprelay/testkit.js';

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string };
}

const PLURALS: Record<string, string> = {
  ServiceAccount: 'serviceaccounts',
  ConfigMap: 'configmaps',
  Secret: 'secrets',
  Service: 'services',
  Deployment: 'deployments',
  StatefulSet: 'statefulsets',
  NetworkPolicy: 'networkpolicies',
  PodDisruptionBudget: 'poddisruptionbudgets',
  Certificate: 'certificates',
};

function collectionPath(o: Obj): string {
  const plural = PLURALS[o.kind];
  assert.ok(plural, `no path for ${o.kind}`);
  const base = o.apiVersion === 'v1' ? '/api/v1' : `/apis/${o.apiVersion}`;
  return `${base}/namespaces/${o.metadata.namespace}/${plural}`;
}

function exampleRelays(): SmtpRelay[] {
  const dir = join(repoRoot(), 'crds', 'examples');
  const out: SmtpRelay[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of YAML.parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      const m = doc.toJS() as { kind?: string; metadata: { name: string; namespace: string }; spec: SmtpRelaySpecInput } | null;
      if (m?.kind !== KIND) continue;
      out.push({
        apiVersion: API_VERSION,
        kind: KIND,
        metadata: { name: m.metadata.name, namespace: m.metadata.namespace, uid: '00000000-0000-4000-8000-000000000001', generation: 1 },
        spec: withDefaults(m.spec),
      });
    }
  }
  return out;
}

describe('built children on a real API server', () => {
  let cp: ControlPlane;
  let kube: Kube;
  before(async () => {
    cp = await startControlPlane({ controllerManager: false });
    kube = new Kube(cp.kubeconfig);
    await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'mail' } } });
  });
  after(async () => {
    await cp?.stop();
  });

  const dkimKey = generateDkimPrivateKey();
  for (const relay of exampleRelays()) {
    test(`every child of ${relay.metadata.name} is accepted by strict validation and stored without changing what we set`, async () => {
      const objects: Obj[] = [
        ...buildChildren(relay, buildRelayConfig(relay), {
          image: 'registry.example.com/smtp-relay:0.1.0',
          serviceMonitorCrd: false,
          // the NetworkPolicy rule for the operator's pods (metrics port, drain control) too
          operatorPods: { namespace: 'smtp-relay-system', matchLabels: { 'app.kubernetes.io/name': 'smtp-relay-operator', 'app.kubernetes.io/instance': 'ops' } },
          // a StatefulSet held above spec.replicas by a scale-down drain
          replicas: relay.spec.replicas + 1,
        }),
        buildInternalSecret(relay),
        buildUsersSecret(relay, { users: [] }),
        ...relay.spec.auth.users.map((u) => buildGeneratedUserSecret(relay, u, generatePassword(32))),
        ...relay.spec.dkim.filter((d) => !d.secretRef).map((d) => buildGeneratedDkimSecret(relay, d, dkimKey)),
      ];
      assert.ok(objects.length >= 9);
      for (const o of objects) {
        let stored: unknown;
        try {
          stored = await kube.request('POST', collectionPath(o), { body: o, query: { dryRun: 'All', fieldValidation: 'Strict' } });
        } catch (err) {
          assert.fail(`${o.kind} ${o.metadata.name} refused: ${err instanceof KubeError ? `${err.code} ${err.message}` : String(err)}`);
        }
        const { metadata, ...rest } = o as Obj & Record<string, unknown>;
        const { metadata: storedMeta, ...storedRest } = stored as { metadata: Record<string, unknown> };
        assert.ok(isSubset(rest, storedRest), `${o.kind} ${o.metadata.name}: the server changed a field we set:\n${JSON.stringify(rest)}\n${JSON.stringify(storedRest)}`);
        assert.ok(isSubset(metadata, storedMeta), `${o.kind} ${o.metadata.name}: metadata changed`);
      }
    });
  }

  test('user-written quantities (cpu 0.5, memory 1024Mi) reach the Deployment in the form the server stores', async () => {
    const relay = exampleRelays()[0]!;
    relay.spec.resources = { requests: { cpu: '0.5', memory: '0.5Gi' }, limits: { cpu: 1.5, memory: '1024Mi' } };
    const d = buildChildren(relay, buildRelayConfig(relay), { image: 'registry.example.com/smtp-relay:0.1.0', serviceMonitorCrd: false }).find((o) => o.kind === 'Deployment')!;
    const stored = await kube.request<any>('POST', collectionPath(d as Obj), { body: d, query: { dryRun: 'All', fieldValidation: 'Strict' } });
    const { metadata, ...rest } = d as unknown as Obj & Record<string, unknown>;
    const { metadata: _m, ...storedRest } = stored as { metadata: unknown };
    assert.deepEqual(stored.spec.template.spec.containers[0].resources, { requests: { cpu: '500m', memory: '512Mi' }, limits: { cpu: '1500m', memory: '1Gi' } });
    assert.ok(isSubset(rest, storedRest), 'the applier sees no difference');
  });

  test('tolerations with empty strings (key "" with Exists: all taints, as documented) are stored as the applier expects', async () => {
    const relay = exampleRelays()[0]!;
    relay.spec.tolerations = [{ key: '', operator: 'Exists' }, { key: 'dedicated', operator: 'Equal', value: '', effect: 'NoSchedule' }];
    const d = buildChildren(relay, buildRelayConfig(relay), { image: 'registry.example.com/smtp-relay:0.1.0', serviceMonitorCrd: false }).find((o) => o.kind === 'Deployment')!;
    const stored = await kube.request<any>('POST', collectionPath(d as Obj), { body: d, query: { dryRun: 'All', fieldValidation: 'Strict' } });
    const { metadata, ...rest } = d as unknown as Obj & Record<string, unknown>;
    const { metadata: _m, ...storedRest } = stored as { metadata: unknown };
    assert.ok(isSubset(rest, storedRest), `the applier sees no difference: ${JSON.stringify(stored.spec.template.spec.tolerations)}`);
  });

  test('canonicalQuantity agrees with the API server on every case of its table', async () => {
    // Sent as written, the server either keeps a quantity or rewrites it to our canonical form;
    // our canonical form it always keeps (so an applied Deployment is stored as sent).
    const inputs = QUANTITY_CASES.flatMap(([q, want]) => [q, want]);
    const containers = inputs.map((q, i) => ({ name: `c${i}`, image: 'x', resources: { requests: { cpu: q, memory: q } } }));
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'quantities', namespace: 'mail' }, spec: { containers } };
    const stored = await kube.request<any>('POST', '/api/v1/namespaces/mail/pods', { body: pod, query: { dryRun: 'All' } });
    stored.spec.containers.forEach((c: any, i: number) => {
      const sent = String(inputs[i]);
      const want = QUANTITY_CASES[Math.floor(i / 2)]![1];
      for (const got of [c.resources.requests.cpu, c.resources.requests.memory]) {
        if (i % 2 === 1) assert.equal(got, sent, `the canonical ${sent} is stored unchanged`);
        else if (got !== sent) assert.equal(got, want, `${sent} is stored as ${got}`);
      }
    });
  });
});
