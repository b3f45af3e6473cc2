import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ANNOTATION_SPEC_HASH } from '../../../../operator/api/v1alpha1.js';
import { canonicalJson, isImmutableRejection, isSubset, needsApply, removalPatch, withSpecHash } from '../../../../operator/runtime/apply.js';
import { KubeError, type KubeObject } from '../../../../operator/runtime/kube.js';
import { microTime } from '../../../../operator/runtime/leader.js';

const desired = {
  apiVersion: 'v1',
  kind: 'ConfigMap',
  metadata: { name: 'r', namespace: 'ns', labels: { a: '1' }, ownerReferences: [{ apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', name: 'r', uid: 'u', controller: true }] },
  data: { 'config.yaml': 'version: 1\n' },
};

/** What the API server hands back after applying `desired`: our fields plus its own. */
function served(obj: typeof desired): Record<string, unknown> {
  const d = withSpecHash(obj);
  return { ...d, metadata: { ...d.metadata, uid: 'x', resourceVersion: '7', creationTimestamp: '2026-01-01T00:00:00Z', labels: { ...d.metadata.labels, extra: 'by-someone' } } };
}

test('canonical JSON does not depend on key order', () => {
  assert.equal(canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: null } }), canonicalJson({ a: { c: null, d: [1, { x: 1, y: 2 }] }, b: 1 }));
});

test('an object the server holds as we applied it (plus server fields) needs no apply', () => {
  assert.equal(needsApply(desired, served(desired)), false);
});

test('an absent object needs an apply', () => {
  assert.equal(needsApply(desired, undefined), true);
});

test('a field of ours edited by someone else needs an apply (the repair)', () => {
  const s = served(desired);
  s['data'] = { 'config.yaml': 'tampered' };
  assert.equal(needsApply(desired, s), true);
});

test('a changed desired object needs an apply, also when it only drops a field', () => {
  const fewer = { ...desired, metadata: { ...desired.metadata, labels: {} } };
  assert.equal(needsApply(fewer, served(desired)), true, 'the spec hash differs');
});

test('a Secret built with stringData compares equal to the data the server returns', () => {
  const secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 's', namespace: 'ns' }, type: 'Opaque', stringData: { users: 'a: b' } };
  const d = withSpecHash(secret);
  const back = { apiVersion: 'v1', kind: 'Secret', metadata: { ...d.metadata, uid: 'x' }, type: 'Opaque', data: { users: Buffer.from('a: b').toString('base64') } };
  assert.equal(needsApply(secret, back), false);
  back.data.users = Buffer.from('other').toString('base64');
  assert.equal(needsApply(secret, back), true);
});

test('the spec hash ignores a stale hash annotation on the input', () => {
  const a = withSpecHash<KubeObject>(desired);
  const b = withSpecHash<KubeObject>(a);
  assert.ok(a.metadata?.annotations?.[ANNOTATION_SPEC_HASH]);
  assert.equal(a.metadata?.annotations?.[ANNOTATION_SPEC_HASH], b.metadata?.annotations?.[ANNOTATION_SPEC_HASH]);
});

test('subset compare: arrays must match in length, extra object keys are fine', () => {
  assert.equal(isSubset({ a: [1, 2] }, { a: [1, 2], b: 3 }), true);
  assert.equal(isSubset({ a: [1, 2] }, { a: [1, 2, 3] }), false);
  assert.equal(isSubset({ a: [{ x: 1 }] }, { a: [{ x: 1, y: 2 }] }), true);
  assert.equal(isSubset({ a: 1 }, {}), false);
});

test('an immutable-field rejection is recognised from a 422 Status message', () => {
  assert.equal(isImmutableRejection(new KubeError(422, 'Invalid', 'Deployment.apps "r" is invalid: spec.selector: Invalid value: ...: field is immutable')), true);
  assert.equal(isImmutableRejection(new KubeError(422, 'Invalid', 'spec.replicas: must be >= 0')), false);
  assert.equal(isImmutableRejection(new KubeError(409, 'Conflict', 'field is immutable')), false);
});

test('MicroTime has exactly six fractional digits', () => {
  assert.equal(microTime(Date.UTC(2026, 10, 27, 22, 20, 54, 123)), '2026-11-27T22:20:54.123000Z');
});

test('a selector with a label or expression added by hand needs an apply, and the merge patch that removes it first', () => {
  const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'r', namespace: 'ns' }, spec: { selector: { app: 'relay', instance: 'r' }, ports: [{ name: 'smtp', port: 587 }] } };
  const s = withSpecHash(svc) as KubeObject & { spec: Record<string, any> };
  const stored = { ...s, spec: { ...s.spec, clusterIP: '10.0.0.5', selector: { ...s.spec['selector'], hijacked: 'yes' } } } as KubeObject;
  assert.equal(needsApply(svc, stored), true, 'a subset compare alone would miss it');
  assert.deepEqual(removalPatch(svc, stored), { spec: { selector: { hijacked: null } } });
  assert.equal(removalPatch(svc, { ...s, spec: { ...s.spec, clusterIP: '10.0.0.5' } } as KubeObject), undefined, 'server fields elsewhere are not touched');
  const np = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'r', namespace: 'ns' }, spec: { podSelector: { matchLabels: { instance: 'r' } }, policyTypes: ['Ingress'] } };
  const npStored = { ...withSpecHash(np), spec: { ...np.spec, podSelector: { matchLabels: { instance: 'r', other: 'x' }, matchExpressions: [{ key: 'k', operator: 'Exists' }] } } } as KubeObject;
  assert.deepEqual(removalPatch(np, npStored), { spec: { podSelector: { matchLabels: { other: null }, matchExpressions: null } } });
  assert.equal(removalPatch(desired, served(desired)), undefined, 'kinds without exact paths: extra labels by others are left alone');
});
