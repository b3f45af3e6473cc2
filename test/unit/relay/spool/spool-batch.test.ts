// How the spool's thread hands requests to its database thread: the requests of one
// event-loop turn in one message (one wake-up, one transaction), bodies intact.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { afterEach, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { tempSpool, type TestSpool } from './fake.js';

let open: TestSpool[] = [];
afterEach(async () => {
  for (const t of open) await t.cleanup();
  open = [];
});

async function spool(): Promise<TestSpool> {
  const t = await tempSpool();
  open.push(t);
  return t;
}

/** Counts the messages the spool posts to its database thread (the thread is the spool's private field). */
function countPosts(t: TestSpool): { posts: number; requests: number } {
  const w = (t.spool as unknown as { worker: Worker }).worker;
  const seen = { posts: 0, requests: 0 };
  const post = w.postMessage.bind(w);
  w.postMessage = ((value: unknown, transfer?: readonly ArrayBuffer[]) => {
    seen.posts++;
    seen.requests += Array.isArray(value) ? value.length : 1;
    post(value, transfer as ArrayBuffer[]);
  }) as Worker['postMessage'];
  return seen;
}

const message = (n: number, size = 10_240): Buffer => {
  const b = Buffer.allocUnsafe(size);
  b.fill(`Subject: ${n}\r\n`);
  return b;
};

test('the requests of one event-loop turn reach the database thread in one message', async () => {
  const t = await spool();
  const seen = countPosts(t);
  const ids = await Promise.all(Array.from({ length: 12 }, (_, i) => t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: [`r${i}@example.net`] }, message(i))));
  assert.equal(new Set(ids).size, 12);
  assert.deepEqual(seen, { posts: 1, requests: 12 });
  // reads and removals of one turn likewise
  const bodies = await Promise.all(ids.map((id) => t.spool.body(id)));
  bodies.forEach((b, i) => assert.ok(b.equals(message(i)), `body ${i} read back intact`));
  assert.deepEqual(seen, { posts: 2, requests: 24 });
  await Promise.all(ids.map((id) => t.spool.remove(id)));
  assert.deepEqual(seen, { posts: 3, requests: 36 });
  assert.equal(t.spool.size.messages, 0);
});

test('requests of different turns are not held back for each other, and every body size is stored intact', async () => {
  const t = await spool();
  const seen = countPosts(t);
  // small (Node's shared buffer pool), medium, and larger than the pool (its own memory)
  const sizes = [200, 10_240, 100_000, 1_048_576];
  for (const [i, size] of sizes.entries()) {
    const body = Buffer.concat([Buffer.from(`Subject: ${i}\r\n\r\n`), crypto.randomBytes(size)]);
    const copy = Buffer.from(body);
    const id = await t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, body);
    assert.ok(body.equals(copy), 'the caller’s buffer is untouched');
    assert.equal(t.spool.get(id)?.size, copy.length);
    assert.ok((await t.spool.body(id)).equals(copy), `a ${size}-byte message read back intact`);
  }
  assert.deepEqual(seen, { posts: 8, requests: 8 }, 'one message per awaited request');
});
