import { test } from 'node:test';
import assert from 'node:assert/strict';
import { boundedName, childNames, dkimSecretName, userAnnotations, userSecretName } from '../../../../operator/builders/meta.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';

test('child names derive from the relay name; the TLS Secret is the given one when tls.secretName is set', () => {
  assert.deepEqual(childNames(relayFixture()), {
    serviceAccount: 'outbound',
    configMap: 'outbound-config',
    usersSecret: 'outbound-users',
    deployment: 'outbound',
    service: 'outbound',
    metricsService: 'outbound-metrics',
    certificate: 'outbound-tls',
    tlsSecret: 'outbound-tls',
    networkPolicy: 'outbound',
    podDisruptionBudget: 'outbound',
    serviceMonitor: 'outbound',
    internalSecret: 'outbound-internal',
    peersService: 'outbound-peers',
  });
  const given = relayFixture({ hostname: 'r.example.com', tls: { secretName: 'mine' }, upstream: { host: 'u.example.com' } });
  assert.equal(childNames(given).tlsSecret, 'mine');
});

test('user Secret names: the spec’d name, else <relay>-user-<name> with every non-alphanumeric as "-"', () => {
  const relay = relayFixture();
  assert.equal(userSecretName(relay, { name: 'ops@team_a.b', allowedSenders: [] }), 'outbound-user-ops-team-a-b');
  assert.equal(userSecretName(relay, { name: 'x', secretRef: { name: 'given' }, allowedSenders: [] }), 'given');
  assert.match(userSecretName(relay, { name: 'x', allowedSenders: [] }), /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
});

test('DKIM Secret names: the spec’d one, else <relay>-dkim-<selector>-<domain with dots as dashes>, bounded to 253', () => {
  const relay = relayFixture();
  assert.equal(dkimSecretName(relay, { domain: 'mail.example.com', selector: 's1' }), 'outbound-dkim-s1-mail-example-com');
  assert.equal(dkimSecretName(relay, { domain: 'example.com', selector: 's1', secretRef: { name: 'k', key: 'private.key' } }), 'k');
  const long = dkimSecretName(relay, { domain: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.com`, selector: 's'.repeat(63) });
  assert.ok(long.length <= 253, `${long.length}`);
  assert.match(long, /-[0-9a-f]{10}$/);
});

test('boundedName keeps short names and shortens long ones deterministically, never ending in "-" or "."', () => {
  assert.equal(boundedName('short'), 'short');
  const a = boundedName(`${'x'.repeat(250)}-.-tail`, 20);
  assert.equal(a.length <= 20, true);
  assert.equal(a, boundedName(`${'x'.repeat(250)}-.-tail`, 20));
  assert.notEqual(boundedName(`${'x'.repeat(30)}a`, 20), boundedName(`${'x'.repeat(30)}b`, 20));
  assert.match(boundedName(`${'x'.repeat(8)}.-.-.-.-.-.-.-.-.-.-.-.-`, 20), /^x+-[0-9a-f]{10}$/);
});

test("user annotations: kubectl's, the operator's and the Deployment controller's keys are dropped, the rest sorted", () => {
  assert.deepEqual(
    userAnnotations({ 'z/z': '1', 'kubectl.kubernetes.io/last-applied-configuration': '{}', 'smtprelay.dev/restart-hash': 'x', 'deployment.kubernetes.io/revision': '3', 'a/a': '2' }),
    { 'a/a': '2', 'z/z': '1' },
  );
  assert.deepEqual(userAnnotations(undefined), {});
});
