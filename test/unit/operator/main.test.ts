import { test } from 'node:test';
import assert from 'node:assert/strict';
import { operatorPodsFromEnv, parseOperatorArgs } from '../../../operator/main.js';

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


test('the operator\'s own pods come from $POD_NAMESPACE and $OPERATOR_POD_LABELS (set by the chart); either missing = none', () => {
  assert.deepEqual(operatorPodsFromEnv({ POD_NAMESPACE: 'ops', OPERATOR_POD_LABELS: 'app.kubernetes.io/name=smtp-relay-operator, app.kubernetes.io/instance=x' }), {
    operatorPods: { namespace: 'ops', matchLabels: { 'app.kubernetes.io/name': 'smtp-relay-operator', 'app.kubernetes.io/instance': 'x' } },
  });
  assert.deepEqual(operatorPodsFromEnv({ POD_NAMESPACE: 'ops' }), {});
  assert.deepEqual(operatorPodsFromEnv({ OPERATOR_POD_LABELS: 'a=b' }), {});
  assert.throws(() => operatorPodsFromEnv({ POD_NAMESPACE: 'ops', OPERATOR_POD_LABELS: 'novalue' }), /OPERATOR_POD_LABELS: "novalue" is not key=value/);
});
