import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../../../operator/runtime/clock.js';
import { WorkQueue } from '../../../../operator/runtime/queue.js';

/** A promise with its resolve/reject exposed, to hold a handler open. */
function gate(): { promise: Promise<void>; open: () => void; fail: (e: Error) => void } {
  let open!: () => void;
  let fail!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    open = res;
    fail = rej;
  });
  return { promise, open, fail };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

test('a key added many times while waiting is handled once', async () => {
  const seen: string[] = [];
  const q = new WorkQueue({ workers: 2, handler: async (k) => void seen.push(k), clock: new FakeClock() });
  q.add('ns/a');
  q.add('ns/a');
  q.add('ns/b');
  q.add('ns/a');
  assert.equal(q.depth(), 2);
  q.start();
  await q.whenIdle();
  assert.deepEqual(seen, ['ns/a', 'ns/b']);
  assert.equal(q.depth(), 0);
});

test('the same key is never handled by two workers at once; a re-add while handling runs once after', async () => {
  let concurrent = 0;
  let maxConcurrent = 0;
  const gates = [gate(), gate()];
  let calls = 0;
  const q = new WorkQueue({
    workers: 4,
    clock: new FakeClock(),
    handler: async () => {
      const g = gates[calls++]!;
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      await g.promise;
      concurrent--;
    },
  });
  q.start();
  q.add('ns/a');
  await tick();
  assert.equal(q.active(), 1);
  q.add('ns/a');
  q.add('ns/a');
  await tick();
  assert.equal(calls, 1, 'second add must wait for the first handler');
  assert.equal(q.depth(), 0, 'a key being handled is not counted as waiting');
  gates[0]!.open();
  await tick();
  await tick();
  assert.equal(calls, 2);
  gates[1]!.open();
  await q.whenIdle();
  assert.equal(calls, 2);
  assert.equal(maxConcurrent, 1);
});

test('different keys run in parallel up to the worker count', async () => {
  const g = gate();
  let running = 0;
  let max = 0;
  const q = new WorkQueue({
    workers: 3,
    clock: new FakeClock(),
    handler: async () => {
      running++;
      max = Math.max(max, running);
      await g.promise;
      running--;
    },
  });
  for (const k of ['a', 'b', 'c', 'd', 'e']) q.add(`ns/${k}`);
  q.start();
  await tick();
  assert.equal(q.active(), 3);
  assert.equal(q.depth(), 2);
  g.open();
  await q.whenIdle();
  assert.equal(max, 3);
});

test('a failing key backs off exponentially up to the cap and is forgotten on success', async () => {
  const clock = new FakeClock();
  let calls = 0;
  const times: number[] = [];
  const retries: number[] = [];
  const q = new WorkQueue({
    workers: 1,
    clock,
    baseDelayMs: 100,
    maxDelayMs: 1000,
    onError: (_k, _e, ms) => retries.push(ms),
    handler: async () => {
      calls++;
      times.push(clock.now());
      if (calls <= 6) throw new Error('boom');
    },
  });
  q.start();
  q.add('ns/a');
  for (let i = 0; i < 10; i++) {
    await q.whenIdle();
    // Advance exactly to the retry: one millisecond earlier must not run it.
    const wait = retries.at(-1) ?? 0;
    const before = calls;
    clock.advance(wait - 1);
    await tick();
    assert.equal(calls, before);
    clock.advance(1);
    await tick();
  }
  await q.whenIdle();
  assert.deepEqual(retries, [100, 200, 400, 800, 1000, 1000]);
  assert.equal(calls, 7);
  assert.equal(q.failureCount('ns/a'), 0, 'success resets the backoff');
  // Each retry happened exactly when its backoff ran out.
  const gaps = times.slice(1).map((t, i) => t - times[i]!);
  assert.deepEqual(gaps, [100, 200, 400, 800, 1000, 1000]);
});

test('requeue-after handles the key again after the delay; an earlier add wins', async () => {
  const clock = new FakeClock();
  let calls = 0;
  const q = new WorkQueue({
    workers: 1,
    clock,
    handler: async () => {
      calls++;
      return calls === 1 ? { requeueAfterMs: 5000 } : {};
    },
  });
  q.start();
  q.add('ns/a');
  await q.whenIdle();
  assert.equal(calls, 1);
  clock.advance(4999);
  await q.whenIdle();
  assert.equal(calls, 1);
  clock.advance(1);
  await tick();
  await q.whenIdle();
  assert.equal(calls, 2);

  // addAfter keeps the earlier of two due times.
  q.addAfter('ns/b', 10_000);
  q.addAfter('ns/b', 1_000);
  q.addAfter('ns/b', 20_000);
  clock.advance(1000);
  await tick();
  await q.whenIdle();
  assert.equal(calls, 3);
  clock.advance(30_000);
  await tick();
  await q.whenIdle();
  assert.equal(calls, 3, 'the superseded delayed adds must not fire');
});

test('shutdown waits for handlers in flight, drops queued keys and accepts no more', async () => {
  const g = gate();
  const seen: string[] = [];
  const q = new WorkQueue({
    workers: 1,
    clock: new FakeClock(),
    handler: async (k) => {
      seen.push(k);
      await g.promise;
    },
  });
  q.start();
  q.add('ns/a');
  q.add('ns/b');
  await tick();
  let done = false;
  const s = q.shutdown().then(() => {
    done = true;
  });
  await tick();
  assert.equal(done, false, 'shutdown must wait for the handler in flight');
  g.open();
  await s;
  q.add('ns/c');
  await tick();
  assert.deepEqual(seen, ['ns/a']);
  assert.equal(q.depth(), 0);
});
