// Which durable store for the spool (relay/spool/)? On this machine's disk, compares:
//   files   one file per message: tmp name + fdatasync + rename + one directory fsync per
//           group (GroupCommit below)
//   sqlite  node:sqlite, WAL, synchronous=FULL, in a worker thread; each batch of the
//           messages that arrived while the previous commit ran is one transaction
//   spool   relay/spool/store.ts as shipped: the sqlite design plus checksums, the
//           envelope and state rows, limits and the free-space check
//   lmdb    the lmdb package (if installed: LMDB_DIR=<dir with node_modules/lmdb>), put()
//           then wait for `flushed` (put resolves at commit, before durability)
// Acknowledged msgs/s at 1/8/64 concurrent writers for 4 KiB and 100 KiB messages,
// fsync+fdatasync calls per message (a separate pass of 300 messages under strace -f -c,
// so the tracing does not slow the timed runs) and p50/p99 time to durable; medians of
// 3 runs; ratios against files. (/proc/diskstats flush counts stay at 0 on this VM's
// virtio disk, which advertises no volatile cache, so they measure nothing here.)
//
//   node dist/bench/spool.js [--seconds=1.5] [--dir=/var/tmp] [--runs=3]
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createSpoolMetrics } from '../relay/spool/metrics.js';
import { Spool } from '../relay/spool/store.js';
import { median, percentile } from './common.js';

const arg = (name: string, def: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? def;
const SECONDS = Number(arg('seconds', '1.5'));
const RUNS = Number(arg('runs', '3'));
const BASE = arg('dir', os.tmpdir());
const MAX_MESSAGES = 200_000;

// One file per message with group commit: each file is written under a temporary name
// and fdatasync'ed on arrival; the files synced meanwhile are renamed together and the
// directory is fsynced once for the group.
interface Waiting {
  tmp: string;
  final: string;
  resolve: () => void;
  reject: (err: Error) => void;
}

class GroupCommit {
  /** fsync/fdatasync calls made (files + directory). */
  syncs = 0;
  private waiting: Waiting[] = [];
  private running = false;

  constructor(private readonly directory: string) {}

  /**
   * Writes `data` to `tmp`, syncs it, renames it to `final` (in this.directory) and syncs
   * the directory. Resolves only when all of that is done. On any error the temporary
   * file is removed and the promise rejects (nothing was made durable).
   */
  async write(tmp: string, final: string, data: Buffer[]): Promise<void> {
    let fh: fsp.FileHandle | undefined;
    try {
      fh = await fsp.open(tmp, 'wx', 0o600);
      await fh.writev(data);
      await fh.datasync();
      this.syncs++;
    } catch (err) {
      await fh?.close().catch(() => undefined);
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    await fh.close();
    await new Promise<void>((resolve, reject) => {
      this.waiting.push({ tmp, final, resolve, reject });
      if (!this.running) void this.run();
    });
  }

  /** Renames every file synced so far and syncs the directory once for them all. */
  private async run(): Promise<void> {
    this.running = true;
    try {
      // Bounded: each turn takes at least one waiting write, and writers only add
      // entries after their own file sync, so the loop ends when arrivals stop.
      while (this.waiting.length) {
        const group = this.waiting.splice(0);
        const renamed: Waiting[] = [];
        await Promise.all(
          group.map(async (w) => {
            try {
              await fsp.rename(w.tmp, w.final);
              renamed.push(w);
            } catch (err) {
              await fsp.rm(w.tmp, { force: true }).catch(() => undefined);
              w.reject(err as Error);
            }
          }),
        );
        if (!renamed.length) continue;
            try {
          await syncDirectory(this.directory);
          this.syncs++;
          for (const w of renamed) w.resolve();
        } catch (err) {
          // The names may or may not be durable: take the files back out so that nothing
          // unacknowledged is delivered.
          await Promise.all(renamed.map((w) => fsp.rm(w.final, { force: true }).catch(() => undefined)));
          for (const w of renamed) w.reject(err as Error);
        }
      }
    } finally {
      this.running = false;
    }
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

interface Store {
  put(id: number, data: Buffer): Promise<void>;
  close(): Promise<void>;
}

async function filesStore(dir: string): Promise<Store> {
  const tmp = path.join(dir, 'tmp');
  const queue = path.join(dir, 'queue');
  await fsp.mkdir(tmp, { recursive: true });
  await fsp.mkdir(queue, { recursive: true });
  const gc = new GroupCommit(queue);
  return {
    put: (id, data) => gc.write(path.join(tmp, `${id}.tmp`), path.join(queue, String(id)), [data]),
    close: async () => undefined,
  };
}

const SQLITE_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { DatabaseSync } = require('node:sqlite');
const db = new DatabaseSync(workerData.file);
db.exec('PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, data BLOB)');
const ins = db.prepare('INSERT INTO m (id, data) VALUES (?, ?)');
let batch = [];
let scheduled = false;
function flush() {
  scheduled = false;
  const b = batch; batch = [];
  db.exec('BEGIN');
  for (const [id, data] of b) ins.run(id, data);
  db.exec('COMMIT');
  parentPort.postMessage(b.map((x) => x[0]));
}
parentPort.on('message', (m) => {
  if (m === 'close') { db.close(); parentPort.postMessage('closed'); return; }
  batch.push(m);
  // Messages that arrive while a commit blocks this thread are delivered after it: one batch.
  if (!scheduled) { scheduled = true; setImmediate(flush); }
});
`;

async function sqliteStore(dir: string): Promise<Store> {
  const w = new Worker(SQLITE_WORKER, { eval: true, workerData: { file: path.join(dir, 'spool.db') } });
  const waiting = new Map<number, () => void>();
  let closed: (() => void) | undefined;
  w.on('message', (m: number[] | 'closed') => {
    if (m === 'closed') return closed?.();
    for (const id of m) {
      waiting.get(id)?.();
      waiting.delete(id);
    }
  });
  return {
    put: (id, data) =>
      new Promise<void>((resolve) => {
        waiting.set(id, resolve);
        w.postMessage([id, data]);
      }),
    close: async () => {
      await new Promise<void>((r) => {
        closed = r;
        w.postMessage('close');
      });
      await w.terminate();
    },
  };
}

interface LmdbDb {
  put(k: number, v: Buffer): Promise<boolean>;
  flushed: Promise<void>;
  close(): Promise<void>;
}

async function spoolStore(dir: string): Promise<Store> {
  const spool = await Spool.open({
    directory: dir,
    limits: { maxBytes: 2 ** 40, maxMessages: 1e9, minFreeBytes: 0 },
    logger: pino({ level: 'silent' }),
    metrics: createSpoolMetrics(new Registry()),
  });
  return {
    put: async (_id, data) => {
      await spool.enqueue({ mailFrom: 'bench@example.com', rcptTo: ['rcpt@example.net'] }, data);
    },
    close: () => spool.close(),
  };
}

async function lmdbStore(dir: string): Promise<Store | undefined> {
  const root = process.env.LMDB_DIR ?? '/tmp/spool-bench-deps';
  const entry = path.join(root, 'node_modules/lmdb/dist/index.cjs');
  if (!fs.existsSync(entry)) return undefined;
  const lmdb = (await import(pathToFileURL(entry).href)) as { open(o: object): LmdbDb };
  const db = lmdb.open({ path: path.join(dir, 'spool.mdb'), encoding: 'binary', compression: false });
  return {
    put: async (id, data) => {
      await db.put(id, data);
      await db.flushed;
    },
    close: () => db.close(),
  };
}

interface Result {
  rate: number;
  flushesPerMsg: number;
  p50: number;
  p99: number;
}

async function runOnce(kind: string, writers: number, size: number, messages = MAX_MESSAGES): Promise<Result | undefined> {
  const dir = await fsp.mkdtemp(path.join(BASE, `spool-bench-${kind}-`));
  try {
    const store =
      kind === 'files' ? await filesStore(dir) : kind === 'sqlite' ? await sqliteStore(dir) : kind === 'spool' ? await spoolStore(dir) : await lmdbStore(dir);
    if (!store) return undefined;
    const data = Buffer.alloc(size, 'x');
    const lat: number[] = [];
    let next = 0;
    const t0 = performance.now();
    const end = t0 + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: writers }, async () => {
        while ((messages < MAX_MESSAGES || performance.now() < end) && next < messages) {
          const id = next++;
          const s = performance.now();
          await store.put(id, data);
          lat.push(performance.now() - s);
        }
      }),
    );
    const secs = (performance.now() - t0) / 1000;
    await store.close();
    return { rate: lat.length / secs, flushesPerMsg: NaN, p50: percentile(lat, 50), p99: percentile(lat, 99) };
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/** fsync/fdatasync calls per message, counted by strace on a child writing 300 messages. */
function syncsPerMessage(kind: string, writers: number, size: number): number {
  const out = path.join(os.tmpdir(), `spool-bench-strace-${process.pid}.txt`);
  const r = spawnSync(
    'strace',
    ['-f', '-qq', '-c', '-e', 'trace=fsync,fdatasync,msync,sync_file_range', '-o', out, process.execPath, process.argv[1]!, `--cell=${kind}:${writers}:${size}`, `--dir=${BASE}`],
    { stdio: ['ignore', 'ignore', 'inherit'], timeout: 120_000 },
  );
  if (r.status !== 0 || !fs.existsSync(out)) return NaN;
  const text = fs.readFileSync(out, 'utf8');
  fs.rmSync(out, { force: true });
  const total = /^\s*\S+\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?total$/m.exec(text);
  return total ? Number(total[1]) / COUNT_MESSAGES : NaN;
}

const COUNT_MESSAGES = 300;

async function main(): Promise<void> {
  const cell = arg('cell', '');
  if (cell) {
    const [kind, writers, size] = cell.split(':');
    await runOnce(kind!, Number(writers), Number(size), COUNT_MESSAGES);
    return;
  }
  const kinds = ['files', 'sqlite', 'spool', 'lmdb'];
  const rows: string[] = [];
  rows.push(`Spool stores on ${BASE} (${os.cpus().length} CPUs), ${SECONDS}s per run, median of ${RUNS} runs. Ratio = store / files.`);
  rows.push('');
  rows.push('| size | writers | store | ack msgs/s | ratio | syncs/msg | p50 ms | p99 ms |');
  rows.push('|---|---|---|---|---|---|---|---|');
  for (const size of [4096, 100 * 1024]) {
    for (const writers of [1, 8, 64]) {
      let base: Result | undefined;
      for (const kind of kinds) {
        const runs: Result[] = [];
        for (let i = 0; i < RUNS; i++) {
          const r = await runOnce(kind, writers, size);
          if (r) runs.push(r);
        }
        if (!runs.length) {
          rows.push(`| ${size / 1024} KiB | ${writers} | ${kind} | not installed | | | | |`);
          continue;
        }
        const m: Result = {
          rate: median(runs.map((r) => r.rate)),
          flushesPerMsg: median(runs.map((r) => r.flushesPerMsg)),
          p50: median(runs.map((r) => r.p50)),
          p99: median(runs.map((r) => r.p99)),
        };
        m.flushesPerMsg = syncsPerMessage(kind, writers, size);
        base ??= m;
        rows.push(
          `| ${size / 1024} KiB | ${writers} | ${kind} | ${m.rate.toFixed(0)} | ${(m.rate / base.rate).toFixed(2)} | ${m.flushesPerMsg.toFixed(2)} | ${m.p50.toFixed(2)} | ${m.p99.toFixed(2)} |`,
        );
        process.stderr.write(rows[rows.length - 1] + '\n');
      }
    }
  }
  console.log(rows.join('\n'));
}

await main();
