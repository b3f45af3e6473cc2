import assert from 'node:assert/strict';
import { test } from 'node:test';
import { nextAttemptAt, retryDelay } from '../../../../relay/spool/retry.js';
import { QUEUE_DEFAULTS } from '../../../../relay/spool/settings.js';

const r = QUEUE_DEFAULTS.retry;
const MIN = 60_000;

test('without jitter the delays double from 1m and stop at the 1h cap', () => {
  const delays = Array.from({ length: 9 }, (_, i) => retryDelay(i + 1, r, 0) / MIN);
  assert.deepEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
});

test('jitter only shortens a delay, by at most 20 %, and never goes past the cap', () => {
  for (let a = 1; a <= 12; a++) {
    const full = retryDelay(a, r, 0);
    const least = retryDelay(a, r, 0.999999);
    assert.ok(least <= full && least >= full * 0.8 - 1, `attempt ${a}: ${least} vs ${full}`);
    assert.ok(full <= r.maxDelayMs);
  }
});

test('a huge attempt count neither overflows nor passes the cap', () => {
  assert.equal(retryDelay(10_000, r, 0), r.maxDelayMs);
});

test('the next attempt is never later than the expiry, so the last try happens at the lifetime', () => {
  const created = 0;
  const lifetime = 5 * 86_400_000;
  const now = lifetime - 10 * MIN;
  assert.equal(nextAttemptAt(now, created, lifetime, 20, r, 0), lifetime);
  assert.equal(nextAttemptAt(MIN, created, lifetime, 1, r, 0), 2 * MIN);
});

test('the schedule over five days: about 120 retries, six of them in the first 64 minutes', () => {
  let t = 0;
  let n = 0;
  const times: number[] = [];
  while (t < 5 * 86_400_000 && n < 1000) {
    n++;
    t = nextAttemptAt(t, 0, 5 * 86_400_000, n, r, 0);
    times.push(t);
  }
  assert.equal(times.filter((x) => x <= 64 * MIN).length, 6);
  assert.ok(n > 110 && n < 130, String(n));
});
