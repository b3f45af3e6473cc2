import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { API_VERSION, KIND, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, type SmtpRelay } from '../../../../operator/api/v1alpha1.js';
import { withDefaults, type SmtpRelaySpecInput } from '../../../harness/smtprelay/defaults.js';
import { buildChildren as buildWithConfig, type ChildrenInputs } from '../../../../operator/builders/children.js';
import { buildRelayConfig } from '../../../../operator/builders/relay-config.js';
import { buildGeneratedUserSecret } from '../../../../operator/builders/credentials.js';
import { buildGeneratedDkimSecret } from '../../../../operator/builders/dkim-key.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import { assertGolden, assertValidAgainstSchema, repoRoot } from '../../../harness/smtprelay/testkit.js';
import { buildUsersSecret } from '../../../../operator/builders/users.js';

const INPUTS: ChildrenInputs = { image: 'registry.example.com/smtp-relay:0.1.0', serviceMonitorCrd: true };
/** The children as one reconcile builds them: the relay config once, then every child from it. */
const buildChildren = (relay: SmtpRelay, inputs: ChildrenInputs) => buildWithConfig(relay, buildRelayConfig(relay), inputs);

function exampleRelays(): Array<{ file: string; relay: SmtpRelay }> {
  const dir = join(repoRoot(), 'crds', 'examples');
  const out: Array<{ file: string; relay: SmtpRelay }> = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const doc of YAML.parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      const m = doc.toJS() as { kind?: string; metadata: { name: string; namespace: string }; spec: SmtpRelaySpecInput };
      if (m?.kind !== KIND) continue;
      out.push({
        file: file.replace(/\.yaml$/, ''),
        relay: {
          apiVersion: API_VERSION,
          kind: KIND,
          metadata: { name: m.metadata.name, namespace: m.metadata.namespace, uid: '00000000-0000-4000-8000-000000000001', generation: 1 },
          spec: withDefaults(m.spec),
        },
      });
    }
  }
  return out;
}

for (const { file, relay } of exampleRelays()) {
  test(`the children of the ${file} example are exactly the golden objects`, () => {
    assertGolden(`children-${file}`, buildChildren(relay, INPUTS));
  });

  test(`every child of the ${file} example validates against its Kubernetes schema`, () => {
    for (const child of buildChildren(relay, INPUTS)) assertValidAgainstSchema(child);
  });
}

test('building twice gives byte-identical JSON', () => {
  for (const { relay } of exampleRelays()) {
    assert.equal(JSON.stringify(buildChildren(relay, INPUTS)), JSON.stringify(buildChildren(structuredClone(relay), INPUTS)));
  }
});

test('the order of keys in user-written maps does not change the output', () => {
  const a = relayFixture(undefined, (r) => {
    r.spec.podAnnotations = { 'b.example/x': '1', 'a.example/y': '2' };
    r.spec.nodeSelector = { zeta: 'z', alpha: 'a' };
    r.spec.service.annotations = { 'z/z': 'z', 'a/a': 'a' };
    r.spec.access.allowedNamespaces = { matchLabels: { team: 'x', env: 'prod' } };
  });
  const b = relayFixture(undefined, (r) => {
    r.spec.podAnnotations = { 'a.example/y': '2', 'b.example/x': '1' };
    r.spec.nodeSelector = { alpha: 'a', zeta: 'z' };
    r.spec.service.annotations = { 'a/a': 'a', 'z/z': 'z' };
    r.spec.access.allowedNamespaces = { matchLabels: { env: 'prod', team: 'x' } };
  });
  assert.equal(JSON.stringify(buildChildren(a, INPUTS)), JSON.stringify(buildChildren(b, INPUTS)));
});

test('every child is owned by the relay (controller, blockOwnerDeletion) and carries the standard labels', () => {
  const relay = relayFixture();
  const secrets = [
    buildUsersSecret(relay, { users: [] }),
    buildGeneratedUserSecret(relay, relay.spec.auth.users[0]!, 'x'.repeat(32)),
    buildGeneratedDkimSecret(relay, { domain: 'example.com', selector: 's1' }, '-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n'),
  ];
  for (const child of [...buildChildren(relay, INPUTS), ...secrets]) {
    assert.deepEqual(
      child.metadata.ownerReferences,
      [{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'outbound', uid: relay.metadata.uid, controller: true, blockOwnerDeletion: true }],
      `${child.kind} ${child.metadata.name}`,
    );
    assert.equal(child.metadata.namespace, 'mail');
    assert.equal(child.metadata.labels[LABEL_NAME], 'smtp-relay');
    assert.equal(child.metadata.labels[LABEL_INSTANCE], 'outbound');
    assert.equal(child.metadata.labels[LABEL_MANAGED_BY], 'smtp-relay-operator');
    assertValidAgainstSchema(child);
  }
});

test("the relay's own labels and annotations (kubectl's last-applied-configuration too) reach no child", () => {
  const relay = relayFixture(undefined, (r) => {
    r.metadata.labels = { team: 'mail', 'app.kubernetes.io/name': 'spoofed' };
    r.metadata.annotations = { 'kubectl.kubernetes.io/last-applied-configuration': '{"secret":"x"}', note: 'n' };
    r.spec.podAnnotations = { 'kubectl.kubernetes.io/restartedAt': '2026-01-01', 'example.com/team': 'platform' };
  });
  const json = JSON.stringify(buildChildren(relay, INPUTS));
  assert.ok(!json.includes('last-applied-configuration'));
  assert.ok(!json.includes('restartedAt'), 'kubectl.kubernetes.io/* pod annotations are not copied');
  assert.ok(!json.includes('spoofed') && !json.includes('"team"'));
  assert.ok(json.includes('example.com/team'), 'ordinary pod annotations are copied onto the pods');
});

test('a Certificate only with tls.issuerRef; with tls.secretName the relay serves that Secret', () => {
  const issued = buildChildren(relayFixture(), INPUTS);
  assert.equal(issued.filter((c) => c.kind === 'Certificate').length, 1);
  const given = buildChildren(relayFixture({ hostname: 'relay.example.com', tls: { secretName: 'my-tls' }, upstream: { host: 'smtp.example.net' } }), INPUTS);
  assert.equal(given.filter((c) => c.kind === 'Certificate').length, 0);
  const dep = given.find((c) => c.kind === 'Deployment');
  assert.ok(JSON.stringify(dep).includes('"secretName":"my-tls"'));
});

test('a ServiceMonitor only when enabled in the spec and its CRD exists', () => {
  const enabled = relayFixture(undefined, (r) => (r.spec.metrics.serviceMonitor.enabled = true));
  assert.equal(buildChildren(enabled, INPUTS).filter((c) => c.kind === 'ServiceMonitor').length, 1);
  assert.equal(buildChildren(enabled, { ...INPUTS, serviceMonitorCrd: false }).filter((c) => c.kind === 'ServiceMonitor').length, 0);
  assert.equal(buildChildren(relayFixture(), INPUTS).filter((c) => c.kind === 'ServiceMonitor').length, 0);
});

test('the NetworkPolicy comes before the Deployment, so no pod runs unfenced', () => {
  const kinds = buildChildren(relayFixture(), INPUTS).map((c) => c.kind);
  assert.ok(kinds.indexOf('NetworkPolicy') < kinds.indexOf('Deployment'), kinds.join(','));
});
