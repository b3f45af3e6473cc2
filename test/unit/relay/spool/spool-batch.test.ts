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

/** Records the messages the spool posts to its database thread: the ops of each (the thread is the spool's private field). */
function recordPosts(t: TestSpool): string[][] {
  const w = (t.spool as unknown as { worker: Worker }).worker;
  const posts: string[][] = [];
  const post = w.postMessage.bind(w);
  w.postMessage = ((value: { op: string }[], transfer?: readonly ArrayBuffer[]) => {
    posts.push(value.map((r) => r.op));
    post(value, transfer as ArrayBuffer[]);
  }) as Worker['postMessage'];
  return posts;
}

const message = (n: number, size = 10_240): Buffer => {
  const b = Buffer.allocUnsafe(size);
  b.fill(`Subject: ${n}\r\n`);
  return b;
};

test('the requests of one event-loop turn reach the database thread in one message', async () => {
  const t = await spool();
  // (the first enqueue reads the free space; later ones within a second use that reading)
  await t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['first@example.net'] }, message(99));
  const posts = recordPosts(t);
  const ids = await Promise.all(Array.from({ length: 12 }, (_, i) => t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: [`r${i}@example.net`] }, message(i))));
  assert.equal(new Set(ids).size, 12);
  assert.deepEqual(posts, [Array(12).fill('insert')]);
  // reads and removals of one turn likewise
  const bodies = await Promise.all(ids.map((id) => t.spool.body(id)));
  bodies.forEach((b, i) => assert.ok(b.equals(message(i)), `body ${i} read back intact`));
  await Promise.all(ids.map((id) => t.spool.remove(id)));
  assert.deepEqual(posts.slice(1), [Array(12).fill('body'), Array(12).fill('delete')]);
  assert.equal(t.spool.size.messages, 1);
});

test('requests of different turns are not held back for each other, and every body size is stored intact', async () => {
  const t = await spool();
  const posts = recordPosts(t);
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
  assert.deepEqual(posts.filter((p) => p[0] !== 'space'), Array(4).fill([['insert'], ['body']]).flat(), 'one message per awaited request');
});
