// kill -9 against the spool: a real child process (test/harness/spool/child.ts) is killed
// with SIGKILL while it writes, and again while it delivers to a real SMTP sink.
// Proves: no message acknowledged as durable is lost, nothing partly written is ever
// delivered, and duplicates happen only across a kill during delivery (counted).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createSpoolMetrics } from '../../relay/spool/metrics.js';
import { Spool } from '../../relay/spool/store.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { checkTestMessage, sha, testMessage } from '../harness/spool/messages.js';

const CHILD = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../harness/spool/child.js');
const RUN = `crash${process.pid}`;
let dir: string;
let sink: Sink;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-crash-'));
  sink = await startSink();
});
after(async () => {
  await sink.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function child(settings: object): { proc: ChildProcess; lines: string[]; waitFor(pred: (lines: string[]) => boolean, ms: number): Promise<void> } {
  const proc = spawn(process.execPath, [CHILD], { env: { ...process.env, SPOOL_CHILD: JSON.stringify(settings) }, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let partial = '';
  const listeners = new Set<() => void>();
  proc.stdout!.on('data', (d: Buffer) => {
    const parts = (partial + d.toString()).split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
    for (const l of listeners) l();
  });
  return {
    proc,
    lines,
    waitFor: (pred, ms) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (pred(lines)) {
            listeners.delete(check);
            clearTimeout(t);
            resolve();
          }
        };
        const t = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`child: condition not met in ${ms} ms (${lines.length} lines)`));
        }, ms);
        listeners.add(check);
        proc.once('exit', () => setTimeout(check, 10));
        check();
      }),
  };
}

async function kill9(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGKILL');
  await exited;
}

async function openSpool(): Promise<{ spool: Spool; registry: Registry }> {
  const registry = new Registry();
  const spool = await Spool.open({ directory: dir, limits: { maxBytes: 1 << 30, maxMessages: 1e6, minFreeBytes: 0 }, logger: pino({ level: 'silent' }), metrics: createSpoolMetrics(registry), clock: undefined });
  return { spool, registry };
}

/** Acknowledged message number -> sha256 of its bytes. */
const acked = new Map<number, { id: string; sha: string }>();
const KILLS = 10;

test(`${KILLS} kill -9 while 8 writers enqueue: every acknowledged message is there, whole; nothing partial is`, async () => {
  let start = 0;
  for (let k = 0; k < KILLS; k++) {
    const c = child({ mode: 'write', directory: dir, run: RUN, start, writers: 8 });
    // Kill after a random number of acknowledgements (5..150) plus a random 0..15 ms,
    // so that the kill lands anywhere in a write: before, inside or after a commit.
    const target = 5 + Math.floor(Math.random() * 146);
    await c.waitFor((l) => l.filter((x) => x.startsWith('ACK ')).length >= target, 20_000);
    await new Promise((r) => setTimeout(r, Math.random() * 15));
    await kill9(c.proc);
    for (const l of c.lines) {
      const [tag, id, n, digest] = l.split(' ');
      if (tag === 'ACK') acked.set(Number(n), { id: id!, sha: digest! });
    }
    start += 100_000; // fresh sequence numbers for each child
    const { spool, registry } = await openSpool();
    try {
      for (const [n, a] of acked) {
        assert.ok(spool.get(a.id), `acknowledged message ${n} (${a.id}) lost after kill ${k + 1}`);
      }
      for (const id of spool.ids()) {
        const body = await spool.body(id);
        assert.ok(checkTestMessage(body), `entry ${id} is not a complete test message`);
      }
      for (const [, a] of [...acked].slice(-20)) assert.equal(sha(await spool.body(a.id)), a.sha);
      const q = (await registry.getSingleMetric('smtp_relay_queue_quarantined_total')!.get()).values[0]?.value ?? 0;
      assert.equal(q, 0, 'a crash never leaves a damaged entry');
    } finally {
      await spool.close();
    }
  }
  assert.ok(acked.size >= KILLS * 5);
});

test('kill -9 while delivering to a real SMTP sink: every message arrives whole, duplicates only from kills', async () => {
  const { spool } = await openSpool();
  const expected = new Set<number>();
  for (const id of spool.ids()) expected.add(checkTestMessage(await spool.body(id))!.n);
  await spool.close();
  for (const n of acked.keys()) assert.ok(expected.has(n));
  const settings = { mode: 'run', directory: dir, upstream: { port: sink.port, caFile: sink.caFile }, concurrency: 8 };
  // Deliver in bursts, each cut by SIGKILL, then let the last run finish.
  sink.behaviour.delayDataMs = 2;
  for (let k = 0; k < 5; k++) {
    const before = sink.messages.length;
    const c = child(settings);
    await c.waitFor((l) => l.includes('READY'), 20_000);
    const want = Math.min(expected.size, before + 10 + Math.floor(Math.random() * 40));
    const deadline = Date.now() + 20_000;
    while (sink.messages.length < want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await kill9(c.proc);
  }
  const last = child(settings);
  await last.waitFor((l) => l.includes('READY'), 20_000);
  const deadline = Date.now() + 60_000;
  // Checked incrementally: re-checking every message on each poll would starve the
  // sink, which runs in this process.
  const seen = new Set<number>();
  let checked = 0;
  const missingCount = () => {
    for (; checked < sink.messages.length; checked++) {
      const ok = checkTestMessage(sink.messages[checked]!.raw);
      if (ok && expected.has(ok.n)) seen.add(ok.n);
    }
    return expected.size - seen.size;
  };
  while (missingCount() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  last.proc.kill('SIGTERM');
  await new Promise((r) => last.proc.once('exit', r));

  const counts = new Map<number, number>();
  for (const m of sink.messages) {
    const ok = checkTestMessage(m.raw);
    assert.ok(ok, 'a delivered message is complete and unchanged');
    assert.equal(ok.run, RUN);
    counts.set(ok.n, (counts.get(ok.n) ?? 0) + 1);
  }
  const missing = [...expected].filter((n) => !counts.has(n));
  assert.deepEqual(missing, [], 'every stored message was delivered');
  const duplicates = [...counts.values()].reduce((a, c) => a + c - 1, 0);
  // Each kill can interrupt at most `concurrency` deliveries between the sink's 250 and the spool's update.
  assert.ok(duplicates <= 5 * 8, `${duplicates} duplicates`);
  const { spool: after } = await openSpool();
  assert.equal(after.size.messages, 0, 'the spool is empty');
  await after.close();
  process.stdout.write(`# spool-crash: ${acked.size} acknowledged across ${KILLS} kills, ${expected.size} stored, ${sink.messages.length} delivered, ${duplicates} duplicate(s) from 5 kills during delivery\n`);
});
