import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseOperatorArgs } from '../../../operator/main.js';

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

