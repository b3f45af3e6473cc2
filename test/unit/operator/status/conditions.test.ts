import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Condition } from '../../../../operator/api/v1alpha1.js';
import { conditionsFixture } from '../../../harness/smtprelay/fixtures.js';
import { conditionsEqual, rfc3339, setCondition } from '../../../../operator/status/conditions.js';

const t0 = new Date('2026-03-01T10:00:00.123Z');
const t1 = new Date('2026-03-01T11:00:00.987Z');
const at = (d: Date) => () => d;

test('a new condition gets the current time (second precision) and the generation', () => {
  const list = setCondition(undefined, { type: 'CertificateReady', status: 'False', reason: 'Issuing', message: 'waiting' }, 3, at(t0));
  assert.deepEqual(list, [{ type: 'CertificateReady', status: 'False', lastTransitionTime: '2026-03-01T10:00:00Z', reason: 'Issuing', message: 'waiting', observedGeneration: 3 }]);
});

test('a condition whose status did not change keeps its lastTransitionTime but takes the new reason, message and generation', () => {
  const first = setCondition(undefined, { type: 'CertificateReady', status: 'False', reason: 'Issuing', message: 'waiting' }, 1, at(t0));
  const second = setCondition(first, { type: 'CertificateReady', status: 'False', reason: 'IssuerNotFound', message: 'no issuer' }, 2, at(t1));
  assert.equal(second[0]!.lastTransitionTime, '2026-03-01T10:00:00Z');
  assert.equal(second[0]!.reason, 'IssuerNotFound');
  assert.equal(second[0]!.observedGeneration, 2);
});

test('a condition whose status changed moves its lastTransitionTime; other conditions are untouched and order is kept', () => {
  let list = setCondition(undefined, { type: 'A', status: 'False', reason: 'R', message: 'm' }, 1, at(t0));
  list = setCondition(list, { type: 'B', status: 'True', reason: 'R', message: 'm' }, 1, at(t0));
  const before = structuredClone(list);
  const after = setCondition(list, { type: 'A', status: 'True', reason: 'R', message: 'm' }, 1, at(t1));
  assert.deepEqual(list, before, 'input not mutated');
  assert.deepEqual(after.map((c) => [c.type, c.lastTransitionTime]), [
    ['A', '2026-03-01T11:00:00Z'],
    ['B', '2026-03-01T10:00:00Z'],
  ]);
});

/** All conditions with `status` at t0, then the overrides. */
const all = (status: 'True' | 'False' | 'Unknown', except: Partial<Record<string, Partial<Condition>>> = {}): Condition[] => conditionsFixture(status, t0, except);

test('conditionsEqual ignores order but not content', () => {
  const a = all('True');
  assert.ok(conditionsEqual(a, [...a].reverse()));
  assert.ok(!conditionsEqual(a, all('True', { DkimReady: { message: 'other' } })));
  assert.ok(!conditionsEqual(a, a.slice(1)));
  assert.ok(conditionsEqual(undefined, []));
});

