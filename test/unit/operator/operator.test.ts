import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SecretIndex, childChanged, ownerKey, trimChild } from '../../../operator/operator.js';
import { SecretDerivations } from '../../../operator/controllers/secrets.js';
import { parseOperatorArgs } from '../../../operator/main.js';

test('the Secret index maps a Secret to every relay that reads it and forgets dropped references', () => {
  const idx = new SecretIndex();
  idx.set('ns/a', new Set(['ns/shared', 'ns/a-only']));
  idx.set('ns/b', new Set(['ns/shared']));
  assert.deepEqual(idx.relaysFor('ns/shared').sort(), ['ns/a', 'ns/b']);
  idx.set('ns/a', new Set(['ns/other']));
  assert.deepEqual(idx.relaysFor('ns/shared'), ['ns/b']);
  assert.deepEqual(idx.relaysFor('ns/a-only'), []);
  idx.add('ns/a', new Set(['ns/more']));
  assert.deepEqual(idx.relaysFor('ns/other'), ['ns/a'], 'add keeps what was known');
  assert.deepEqual(idx.relaysFor('ns/more'), ['ns/a']);
  idx.set('ns/b', new Set());
  idx.set('ns/a', new Set());
  assert.equal(idx.size(), 0, 'no entries left behind for deleted relays');
});

test('a child maps to its controlling SmtpRelay; other owners do not count', () => {
  const child = (refs: object[]) => ({ metadata: { namespace: 'mail', name: 'x', ownerReferences: refs as never } });
  assert.equal(ownerKey(child([{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'outbound', uid: 'u', controller: true }])), 'mail/outbound');
  assert.equal(ownerKey(child([{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'outbound', uid: 'u' }])), undefined, 'not the controller');
  assert.equal(ownerKey(child([{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'rs', uid: 'u', controller: true }])), undefined);
  assert.equal(ownerKey(child([])), undefined);
});

test('CLI flags: defaults, lists, seconds to milliseconds, and refusals', () => {
  const a = parseOperatorArgs(['--relay-image', 'img:1', '--namespaces', 'mail, other,', '--leader-elect', '--lease-duration', '20', '--workers', '4']);
  assert.equal(a.relayImage, 'img:1');
  assert.deepEqual(a.namespaces, ['mail', 'other']);
  assert.equal(a.leaderElect, true);
  assert.equal(a.leaseDurationMs, 20_000);
  assert.equal(a.renewDeadlineMs, 10_000);
  assert.equal(a.retryPeriodMs, 2_000);
  assert.equal(a.workers, 4);
  assert.equal(a.metricsPort, 8080);
  assert.deepEqual(parseOperatorArgs([]).namespaces, []);
  assert.throws(() => parseOperatorArgs(['--workers', '0']), /--workers must be a number >= 1/);
  assert.throws(() => parseOperatorArgs(['--image-pull-policy', 'Sometimes']), /Always, IfNotPresent or Never/);
  assert.throws(() => parseOperatorArgs(['--no-such-flag']), /Unknown option/);
});

const deployment = (rv: string, status: Record<string, unknown>, replicas = 2) =>
  trimChild('Deployment', {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: 'r', namespace: 'ns', resourceVersion: rv, generation: 1 },
    spec: { replicas },
    status,
  } as never);

test('the children cache keeps of a Deployment status only the replica counts the reconcile reads', () => {
  const d = deployment('1', { observedGeneration: 1, replicas: 2, updatedReplicas: 2, readyReplicas: 1, availableReplicas: 1, unavailableReplicas: 1, conditions: [{ type: 'Progressing', lastUpdateTime: 't' }] });
  assert.deepEqual((d as { status?: unknown }).status, { readyReplicas: 1, availableReplicas: 1 });
  const cert = trimChild('Certificate', { kind: 'Certificate', metadata: { name: 'c' }, status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'ok', lastTransitionTime: 't', observedGeneration: 1 }], notAfter: 'n', renewalTime: 'x', revision: 1 } } as never);
  assert.deepEqual((cert as { status?: unknown }).status, { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'ok' }], notAfter: 'n' });
  const pdb = trimChild('PodDisruptionBudget', { kind: 'PodDisruptionBudget', metadata: { name: 'p' }, spec: { maxUnavailable: 1 }, status: { currentHealthy: 0, expectedPods: 2 } } as never);
  assert.deepEqual(pdb, { kind: 'PodDisruptionBudget', metadata: { name: 'p' }, spec: { maxUnavailable: 1 } }, 'no status the reconcile does not read');
});

test("a child's update reconciles its relay only when something kept in the cache changed", () => {
  const a = deployment('1', { observedGeneration: 1, replicas: 2, unavailableReplicas: 2 });
  // The controller-manager's bookkeeping only: no reconcile.
  assert.equal(childChanged(a, deployment('2', { observedGeneration: 2, replicas: 2, unavailableReplicas: 2, conditions: [{ type: 'Available' }] })), false);
  assert.equal(childChanged(a, deployment('3', { replicas: 2, readyReplicas: 1 })), true, 'a pod became ready');
  assert.equal(childChanged(a, deployment('5', { replicas: 1, unavailableReplicas: 1 })), false, 'pods being created: not read');
  assert.equal(childChanged(a, deployment('4', { replicas: 2 }, 5)), true, 'someone edited the spec');
  assert.equal(childChanged(a, a), false);
});

test('derived Secret values are valid for one resourceVersion and bounded', () => {
  const d = new SecretDerivations(2);
  d.set('tls\0ns/a', '10', { notAfter: 'x' });
  assert.deepEqual(d.get('tls\0ns/a', '10'), { value: { notAfter: 'x' } });
  assert.equal(d.get('tls\0ns/a', '11'), undefined, 'the Secret changed: derive again');
  d.set('tls\0ns/b', '1', undefined);
  assert.deepEqual(d.get('tls\0ns/b', '1'), { value: undefined }, 'an undefined value (no problem) is a hit too');
  d.set('tls\0ns/c', '1', 1);
  assert.equal(d.size(), 2);
  assert.equal(d.get('tls\0ns/a', '10'), undefined, 'the oldest entry went first');
});
