// A spool on a 2 MiB tmpfs (mounted here; the tests run as root): a full disk gives the
// 452-ready SpoolFullError, never a crash and never an acknowledged message that is not
// stored; the spool keeps working once space is freed, and reopens intact.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createSpoolMetrics } from '../../relay/spool/metrics.js';
import { Spool, SpoolFullError } from '../../relay/spool/store.js';
import { checkTestMessage, testMessage } from '../harness/spool/messages.js';

let mnt: string;
let mounted = false;
const skip = process.getuid?.() !== 0 ? 'needs root to mount a tmpfs' : false;

before(() => {
  mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-tmpfs-'));
  if (skip) return;
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', mnt]);
  mounted = true;
});
after(() => {
  // Lazy: a failed test may leave a database thread with files open.
  if (mounted) execFileSync('umount', ['-l', mnt]);
  fs.rmSync(mnt, { recursive: true, force: true });
});

async function open(dir: string, minFreeBytes: number): Promise<{ spool: Spool; registry: Registry }> {
  const registry = new Registry();
  const spool = await Spool.open({ directory: dir, limits: { maxBytes: 1 << 30, maxMessages: 1e6, minFreeBytes }, logger: pino({ level: 'silent' }), metrics: createSpoolMetrics(registry) });
  return { spool, registry };
}

async function fill(spool: Spool, run: string): Promise<{ ids: Map<string, number>; refusals: SpoolFullError[] }> {
  const ids = new Map<string, number>();
  const refusals: SpoolFullError[] = [];
  // Bounded: 400 messages of 1..48 KiB are far more than 2 MiB.
  for (let n = 0; n < 400 && refusals.length < 5; n++) {
    try {
      ids.set(await spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, testMessage(run, n)), n);
    } catch (err) {
      assert.ok(err instanceof SpoolFullError, `only SpoolFullError, got ${(err as Error).message}`);
      refusals.push(err);
    }
  }
  return { ids, refusals };
}

test('ENOSPC: a full tmpfs refuses with 452 4.3.1, keeps every acknowledged message, still records deliveries, and takes mail again once space is freed', { skip }, async () => {
  const dir = path.join(mnt, 'nocheck');
  // Something else on the volume (freed later, as when a volume is grown).
  const ballast = path.join(mnt, 'ballast');
  fs.writeFileSync(ballast, Buffer.alloc(512 * 1024, 1));
  const { spool, registry } = await open(dir, 0);
  try {
    const { ids, refusals } = await fill(spool, 'enospc');
    assert.ok(ids.size > 5, `${ids.size} stored before the disk filled`);
    assert.ok(refusals.length > 0);
    assert.ok(refusals.every((e) => e.responseCode === 452 && e.message.startsWith('4.3.1 ')));
    assert.ok(refusals.some((e) => e.reason === 'disk_full'), refusals.map((e) => e.reason).join(','));
    const full = (await registry.getSingleMetric('smtp_relay_queue_full_total')!.get()).values.find((v) => v.labels.reason === 'disk_full');
    assert.ok((full?.value ?? 0) >= 1);
    assert.equal(fs.existsSync(path.join(dir, 'reserve')), false, 'the reserve was given up for the writes that record deliveries');
    // A delivered message can still be recorded and removed on the full disk.
    const [first, second] = [...ids.keys()] as [string, string];
    const e = spool.get(second)!;
    await spool.saveState(second, { ...e.state, recipients: e.state.recipients.map((r) => ({ ...r, attempts: 1, lastError: '451 4.4.1 try later' })) });
    await spool.remove(first);
    ids.delete(first);
    fs.rmSync(ballast);
    let again: string | undefined;
    for (let i = 0; i < 40 && !again; i++) {
      again = await spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, testMessage('enospc', 1000)).catch(() => undefined);
      if (!again) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(again, 'accepts again once space is free');
    ids.set(again, 1000);
    await spool.close();
    const { spool: reopened, registry: r2 } = await open(dir, 0);
    try {
      for (const [id, n] of ids) assert.equal(checkTestMessage(await reopened.body(id))?.n, n);
      assert.equal(reopened.size.messages, ids.size);
      assert.equal(reopened.get(second)!.state.recipients[0]!.lastError, '451 4.4.1 try later');
      assert.equal((await r2.getSingleMetric('smtp_relay_queue_quarantined_total')!.get()).values[0]?.value ?? 0, 0);
    } finally {
      await reopened.close();
    }
  } finally {
    await spool.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('minFreeSpace: the free-space check refuses before the disk is full', { skip }, async () => {
  const dir = path.join(mnt, 'check');
  const { spool } = await open(dir, 1024 * 1024);
  try {
    const { ids, refusals } = await fill(spool, 'minfree');
    assert.ok(refusals.length > 0);
    assert.equal(refusals[0]!.reason, 'disk_space');
    assert.match(refusals[0]!.message, /^4\.3\.1 Mail queue full \(disk nearly full\)/);
    const free = fs.statfsSync(dir);
    assert.ok(free.bavail * free.bsize > 512 * 1024, 'stopped with room to spare');
    for (const [id, n] of ids) assert.equal(checkTestMessage(await spool.body(id))?.n, n);
  } finally {
    await spool.close();
  }
});
