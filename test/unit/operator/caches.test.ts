import { test } from 'node:test';
import assert from 'node:assert/strict';
import { childChanged, trimChild } from '../../../operator/caches.js';

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

