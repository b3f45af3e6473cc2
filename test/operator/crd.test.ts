// The SmtpRelay CRD against a real kube-apiserver (test/harness/controlplane): it is
// accepted (structural schema, CEL rules within the cost budget), every
// example manifest applies with server-side apply, every bad manifest is
// rejected with its expected message, the server's defaults equal
// operator/api/defaults.ts, kubectl explain has a description for every field,
// and the printer columns show the status.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { startControlPlane, repoRoot, type ControlPlane } from '../harness/controlplane/harness.js';
import { Kube, KubeError, MEDIA_APPLY_PATCH, MEDIA_MERGE_PATCH } from '../../operator/runtime/kube.js';
import { CRD_NAME, FIELD_MANAGER, GROUP, PLURAL, VERSION, type SmtpRelay } from '../../operator/api/v1alpha1.js';
import { withDefaults, type SmtpRelaySpecInput } from '../harness/smtprelay/defaults.js';

const root = repoRoot();
const crdFile = join(root, 'crds', 'smtprelay.yaml');
const examplesDir = join(root, 'crds', 'examples');
const badDir = join(root, 'test', 'operator', 'fixtures', 'bad');

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [k: string]: unknown;
}

function docs(file: string): Manifest[] {
  return YAML.parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => d.toJS() as Manifest | null)
    .filter((d): d is Manifest => !!d);
}

/**
 * Creates the CRD from its YAML as raw JSON and waits for Established. (Not
 * through a client-node typed API: its serializer knows `default`, `enum` and
 * `x-kubernetes-*` only under their TypeScript names and silently drops them
 * from a plain object.)
 */
async function installCrdRaw(kube: Kube, file: string): Promise<void> {
  const [crd] = docs(file);
  assert.ok(crd);
  await kube.request('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', { body: crd });
  const deadline = Date.now() + 30_000;
  for (;;) {
    const cur = await kube.get<{ status?: { conditions?: Array<{ type: string; status: string }> } }>(
      `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata.name}`,
    );
    if (cur.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) return;
    assert.ok(Date.now() < deadline, `CRD not Established: ${JSON.stringify(cur.status)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function pathOf(m: Manifest): string {
  const ns = m.metadata.namespace ?? 'default';
  if (m.apiVersion === 'v1') return `/api/v1/namespaces/${ns}/${m.kind.toLowerCase()}s/${m.metadata.name}`;
  if (m.apiVersion === `${GROUP}/${VERSION}`) return `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}/${m.metadata.name}`;
  throw new Error(`fixture kind ${m.apiVersion} ${m.kind} not handled`);
}

async function apply(kube: Kube, m: Manifest, dryRun = false): Promise<Manifest> {
  return kube.request<Manifest>('PATCH', pathOf(m), {
    body: m,
    contentType: MEDIA_APPLY_PATCH,
    query: { fieldManager: 'crd-test', force: true, fieldValidation: 'Strict', dryRun: dryRun ? 'All' : undefined },
  });
}

async function create(kube: Kube, m: Manifest): Promise<Manifest> {
  const path = pathOf(m).replace(/\/[^/]+$/, '');
  return kube.request<Manifest>('POST', path, { body: m, query: { fieldValidation: 'Strict', dryRun: 'All' } });
}

describe('SmtpRelay CRD on a real API server', () => {
  let cp: ControlPlane;
  let kube: Kube;

  before(async () => {
    cp = await startControlPlane({ controllerManager: false, defaultCrds: false });
    kube = new Kube(cp.kubeconfig);
    await installCrdRaw(kube, crdFile);
    await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'mail' } } });
    // serviceaccount-login.yaml's app namespace (its ServiceAccount is part of the example)
    await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'apps' } } });
  });
  after(async () => {
    await cp?.stop();
  });

  test('the CRD is established with its short name, category and status subresource', async () => {
    const crd = await kube.get<{ spec: { names: { shortNames: string[] }; versions: Array<{ subresources?: { status?: object } }> }; status: { conditions: Array<{ type: string; status: string }> } }>(
      `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${CRD_NAME}`,
    );
    assert.deepEqual(crd.spec.names.shortNames, ['smtpr']);
    assert.ok(crd.spec.versions[0]?.subresources?.status, 'status subresource');
    const established = crd.status.conditions.find((c) => c.type === 'Established');
    assert.equal(established?.status, 'True');
  });

  for (const file of readdirSync(examplesDir).filter((f) => f.endsWith('.yaml')).sort()) {
    test(`the example ${file} applies with server-side apply`, async () => {
      let seen = 0;
      for (const m of docs(join(examplesDir, file))) {
        const out = await apply(kube, m);
        assert.equal(out.metadata.name, m.metadata.name);
        if (m.kind === 'SmtpRelay') seen++;
      }
      assert.ok(seen >= 1, `${file} holds an SmtpRelay`);
    });
  }

  test('the server fills in the same defaults as operator/api/defaults.ts', async () => {
    for (const file of ['minimal.yaml', 'full.yaml', 'ip-allowlist.yaml', 'dkim.yaml', 'multi-app.yaml', 'smarthost-credentials.yaml', 'microsoft365-oauth2.yaml', 'google-workspace-oauth2.yaml']) {
      for (const m of docs(join(examplesDir, file)).filter((d) => d.kind === 'SmtpRelay')) {
        const stored = await kube.get<SmtpRelay>(pathOf(m));
        assert.deepEqual(stored.spec, withDefaults(m['spec'] as SmtpRelaySpecInput), `${file}: server defaults differ from withDefaults()`);
      }
    }
  });

  test('the minimal example gets secure defaults', async () => {
    const stored = await kube.get<SmtpRelay>('/apis/smtprelay.dev/v1alpha1/namespaces/mail/smtprelays/outbound');
    assert.equal(stored.spec.replicas, 2);
    assert.deepEqual(stored.spec.listeners, { submission: { enabled: true, port: 587 }, submissions: { enabled: true, port: 465 } });
    assert.equal(stored.spec.tls.minVersion, 'TLSv1.2');
    assert.deepEqual(stored.spec.tls.issuerRef, { name: 'ca-issuer', kind: 'Issuer', group: 'cert-manager.io' });
    assert.deepEqual(stored.spec.auth.lockout, { maxFailures: 5, window: '10m', duration: '15m' });
    assert.equal(stored.spec.auth.passwordPolicy.minLength, 16);
    assert.equal(stored.spec.upstream.tls, 'starttls');
    assert.equal(stored.spec.limits.maxMessageSize, '10Mi');
  });

  const badFiles = readdirSync(badDir).filter((f) => f.endsWith('.yaml')).sort();
  test('there are bad manifests to test', () => assert.ok(badFiles.length >= 20, `${badFiles.length} bad manifests`));
  for (const file of badFiles) {
    const text = readFileSync(join(badDir, file), 'utf8');
    const expect = /^# expect: (.+)$/m.exec(text)?.[1];
    test(`the bad manifest ${file} is rejected: ${expect}`, async () => {
      assert.ok(expect, `${file} has a "# expect: <message substring>" line`);
      const [m] = docs(join(badDir, file));
      assert.ok(m);
      const check = (how: string) => (err: unknown) => {
        assert.ok(err instanceof KubeError, `${how}: ${String(err)}`);
        assert.ok([400, 422].includes(err.code), `${how}: HTTP ${err.code}: ${err.message}`);
        assert.ok(err.message.includes(expect), `${how}: expected "${expect}" in: ${err.message}`);
        return true;
      };
      // kubectl create / client-side apply
      await assert.rejects(create(kube, m), check('create'));
      // kubectl apply --server-side (the server answers an unknown field here with a 500 of its own wording)
      if (!file.startsWith('unknown-field')) await assert.rejects(apply(kube, m, true), check('server-side apply'));
      else await assert.rejects(apply(kube, m, true), /field not declared in schema/);
    });
  }

  test('kubectl explain reads well: every field of the published schema has a description', async () => {
    // The OpenAPI document of a new CRD is published a moment after it is Established.
    let doc: { components: { schemas: Record<string, Schema> } } | undefined;
    for (let i = 0; i < 100 && !doc; i++) {
      try {
        doc = await kube.get(`/openapi/v3/apis/${GROUP}/${VERSION}`);
      } catch (err) {
        if (!(err instanceof KubeError) || err.code !== 404) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    assert.ok(doc, 'OpenAPI v3 document published within 20 s');
    const key = Object.keys(doc.components.schemas).find((k) => k.endsWith('.SmtpRelay'));
    assert.ok(key, 'SmtpRelay in the OpenAPI v3 document');
    const missing: string[] = [];
    const walk = (s: Schema, path: string) => {
      for (const [name, child] of Object.entries(s.properties ?? {})) {
        const p = `${path}.${name}`;
        if (p !== '.metadata' && !child.description && !child.allOf) missing.push(p);
        walk(child, p);
      }
      if (s.items) walk(s.items, `${path}[]`);
    };
    walk(doc.components.schemas[key]!, '');
    assert.deepEqual(missing, []);
  });

  test('the printer columns show Ready, Endpoint, Replicas, the queue while it drains and certificate expiry from the status', async () => {
    const base = '/apis/smtprelay.dev/v1alpha1/namespaces/mail/smtprelays/outbound';
    await kube.request('PATCH', `${base}/status`, {
      contentType: MEDIA_MERGE_PATCH,
      query: { fieldManager: FIELD_MANAGER },
      body: {
        status: {
          observedGeneration: 1,
          conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'The relay is serving mail', lastTransitionTime: '2026-01-01T00:00:00Z', observedGeneration: 1 }],
          endpoint: 'outbound.mail.svc:587',
          replicas: 2,
          readyReplicas: 1,
          replicasSummary: '1/2',
          certificate: { notAfter: '2026-04-01T00:00:00Z', secretName: 'outbound-tls' },
          dnsRecords: [{ type: 'TXT', name: 'relay1._domainkey.example.com', value: 'v=DKIM1; k=rsa; p=AAAA' }],
          queue: { draining: ['outbound-1', 'outbound-2'], since: '2026-01-01T00:00:00Z', messagesLeft: 340, summary: 'draining 2 pods, 340 left' },
        },
      },
    });
    const table = await kube.get<{ columnDefinitions: Array<{ name: string }>; rows: Array<{ cells: unknown[] }> }>(base, {
      accept: 'application/json;as=Table;v=v1;g=meta.k8s.io',
    });
    const names = table.columnDefinitions.map((c) => c.name);
    assert.deepEqual(names, ['Name', 'Ready', 'Reason', 'Endpoint', 'Replicas', 'Queue', 'Cert Expiry', 'Age']);
    const cells = table.rows[0]!.cells;
    assert.deepEqual(cells.slice(0, 7), ['outbound', 'True', 'Ready', 'outbound.mail.svc:587', '1/2', 'draining 2 pods, 340 left', '2026-04-01T00:00:00Z']);
  });

  test('a status with a malformed condition is refused (status schema is enforced)', async () => {
    await assert.rejects(
      kube.request('PATCH', '/apis/smtprelay.dev/v1alpha1/namespaces/mail/smtprelays/outbound/status', {
        contentType: MEDIA_MERGE_PATCH,
        body: { status: { conditions: [{ type: 'Ready', status: 'Maybe', reason: 'x', message: '', lastTransitionTime: '2026-01-01T00:00:00Z' }] } },
      }),
      (err: unknown) => err instanceof KubeError && err.code === 422 && /Unsupported value: "Maybe"/.test(err.message),
    );
  });
});

interface Schema {
  description?: string;
  properties?: Record<string, Schema>;
  items?: Schema;
  allOf?: unknown[];
}
