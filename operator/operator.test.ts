import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SecretIndex, ownerKey } from './operator.js';
import { parseOperatorArgs } from './main.js';

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
