import assert from 'node:assert/strict';
import { test } from 'node:test';
import { validateQueueConfig, QUEUE_DEFAULTS } from '../../../../relay/spool/settings.js';
import { ValidationError } from '../../../../relay/validate.js';

function problems(v: unknown): string[] {
  try {
    validateQueueConfig(v, 'relay.yaml', '/etc/relay');
    return [];
  } catch (err) {
    assert.ok(err instanceof ValidationError);
    return err.problems;
  }
}

test('a directory alone turns queue mode on with the documented defaults', () => {
  const s = validateQueueConfig({ directory: 'spool' }, 'relay.yaml', '/etc/relay');
  assert.deepEqual(s, {
    directory: '/etc/relay/spool',
    maxBytes: 1024 ** 3,
    maxMessages: 100_000,
    minFreeBytes: 64 * 1024 ** 2,
    lifetimeMs: 5 * 86_400_000,
    retry: { ...QUEUE_DEFAULTS.retry },
    concurrency: 20,
    delayWarningMs: 0,
  });
});

test('every field is parsed with its unit', () => {
  const s = validateQueueConfig(
    { directory: '/var/spool/relay', maxBytes: '2Gi', maxMessages: 5000, minFreeSpace: '100Mi', lifetime: '2d', retry: { initialDelay: '30s', maxDelay: '30m' }, concurrency: 8, delayWarning: '4h' },
    'relay.yaml',
    '/',
  );
  assert.equal(s.maxBytes, 2 * 1024 ** 3);
  assert.equal(s.minFreeBytes, 100 * 1024 ** 2);
  assert.equal(s.lifetimeMs, 2 * 86_400_000);
  assert.equal(s.retry.initialDelayMs, 30_000);
  assert.equal(s.retry.maxDelayMs, 1_800_000);
  assert.equal(s.concurrency, 8);
  assert.equal(s.delayWarningMs, 4 * 3_600_000);
});

test('a missing directory, an unknown field and bad units are all reported, each naming its field', () => {
  assert.deepEqual(problems({ maxBytes: 'lots', lifetime: 5, concurency: 3 }), [
    'queue.concurency: unknown field (allowed: directory, maxBytes, maxMessages, minFreeSpace, lifetime, retry, concurrency, delayWarning)',
    'queue.directory: required field is missing',
    'queue.maxBytes: "lots" is not a size (bytes, or a number with Ki, Mi or Gi)',
    'queue.lifetime: 5 is not a duration (examples: "30s", "10m", "1h")',
  ]);
});

test('a maximum retry delay shorter than the first one is refused', () => {
  assert.match(problems({ directory: '/s', retry: { initialDelay: '1h', maxDelay: '10m' } })[0]!, /^queue\.retry\.maxDelay: "10m" is shorter than retry\.initialDelay "1h"/);
});

test('a delay warning that would come after the bounce is refused', () => {
  assert.match(problems({ directory: '/s', lifetime: '1d', delayWarning: '2d' })[0]!, /^queue\.delayWarning: "2d" is not shorter than the lifetime/);
});

test('a spool size under 1 MiB and a zero concurrency are refused', () => {
  assert.deepEqual(problems({ directory: '/s', maxBytes: 1000, concurrency: 0 }), [
    'queue.maxBytes: 1000 is too small (minimum 1048576 bytes)',
    'queue.concurrency: 0 is out of range 1..10000',
  ]);
});
