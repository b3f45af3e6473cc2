// The spool database, in a worker thread: node:sqlite is synchronous and a commit
// with synchronous=FULL waits for an fsync, which must not block the relay's event loop.
//
// Group commit: every request that reaches this thread in one event-loop turn runs in
// one transaction, and the replies go back only after its COMMIT (WAL, synchronous=FULL:
// the WAL is fsynced before COMMIT returns). Requests that arrive while a commit waits
// for the disk queue up and form the next group. bench/spool.ts measured this at 0.06
// to 0.3 syncs per message with 8-64 concurrent writers.
import { parentPort, workerData } from 'node:worker_threads';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import type { DbReply, DbRequest, LoadedRow, OpenResult, SpaceInfo } from './db-protocol.js';

const { directory } = workerData as { directory: string };
const DB_FILE = 'spool.db';

let db: DatabaseSync;
let st: Record<'insert' | 'update' | 'del' | 'body' | 'controlDone', StatementSync>;

function quarantineDir(): string {
  const q = path.join(directory, 'quarantine');
  fs.mkdirSync(q, { recursive: true, mode: 0o700 });
  return q;
}

function openDb(): void {
  db = new DatabaseSync(path.join(directory, DB_FILE));
  db.exec('PRAGMA busy_timeout=10000');
  db.exec('PRAGMA journal_mode=WAL');
  // FULL: the WAL is fsynced at every commit (NORMAL can lose the last commits on power loss).
  db.exec('PRAGMA synchronous=FULL');
  // After a burst the WAL is cut back to this size at the next checkpoint instead of
  // keeping its peak size on disk.
  db.exec('PRAGMA journal_size_limit=67108864');
  db.exec(`CREATE TABLE IF NOT EXISTS message (
    id TEXT PRIMARY KEY, envelope TEXT NOT NULL, state TEXT NOT NULL,
    size INTEGER NOT NULL, crc INTEGER NOT NULL, body BLOB NOT NULL)`);
  db.exec(`CREATE TABLE IF NOT EXISTS control (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, ids TEXT NOT NULL,
    created INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, result TEXT)`);
}

/**
 * Copies every row that can still be read and passes its checksum from a damaged
 * database (moved to quarantine/) into the new one. Reading stops at the first error.
 */
function salvage(file: string): number {
  let n = 0;
  let old: DatabaseSync | undefined;
  try {
    // Not read-only: a WAL database cannot be opened read-only without its -shm file.
    old = new DatabaseSync(file);
    const ins = db.prepare('INSERT OR IGNORE INTO message (id, envelope, state, size, crc, body) VALUES (?, ?, ?, ?, ?, ?)');
    const rows = old.prepare('SELECT id, envelope, state, size, crc, body FROM message').iterate() as Iterable<{ id: string; envelope: string; state: string; size: number; crc: number; body: Uint8Array }>;
    db.exec('BEGIN');
    try {
      for (const r of rows) {
        if (r.body?.length === r.size && crc32(r.body) === r.crc) {
          ins.run(r.id, r.envelope, r.state, r.size, r.crc, r.body);
          n++;
        }
      }
    } catch {
      /* the damaged part: keep what was read */
    }
    db.exec('COMMIT');
  } catch {
    /* nothing readable */
  } finally {
    try {
      old?.close();
    } catch {
      /* ignore */
    }
  }
  return n;
}

/** Opens the database; a damaged one is moved aside whole (with its WAL) and a new one made. */
function open(): OpenResult {
  const result: OpenResult = { rows: [], quarantined: [] };
  fs.mkdirSync(directory, { recursive: true, mode: 0o700 });
  try {
    openDb();
    const check = db.prepare('PRAGMA quick_check').all() as { quick_check: string }[];
    if (check[0]?.quick_check !== 'ok') throw Object.assign(new Error(check.map((r) => r.quick_check).join('; ')), { code: 'ERR_SQLITE_ERROR' });
  } catch (err) {
    try {
      db?.close();
    } catch {
      /* already unusable */
    }
    const q = quarantineDir();
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    for (const suffix of ['', '-wal', '-shm']) {
      const from = path.join(directory, DB_FILE + suffix);
      if (fs.existsSync(from)) fs.renameSync(from, path.join(q, `${stamp}-${DB_FILE}${suffix}`));
    }
    const moved = path.join(q, `${stamp}-${DB_FILE}`);
    openDb();
    const salvaged = salvage(moved);
    result.quarantined.push({ id: DB_FILE, reason: `database unreadable: ${(err as Error).message}; ${salvaged} intact message(s) copied back`, file: moved });
  }
  sizeReserve();
  reserveGone = !makeReserve();
  st = {
    insert: db.prepare('INSERT INTO message (id, envelope, state, size, crc, body) VALUES (?, ?, ?, ?, ?, ?)'),
    update: db.prepare('UPDATE message SET state = ? WHERE id = ?'),
    del: db.prepare('DELETE FROM message WHERE id = ?'),
    body: db.prepare('SELECT body, crc FROM message WHERE id = ?'),
    controlDone: db.prepare('UPDATE control SET done = 1, result = ? WHERE seq = ?'),
  };
  // Every row is checked against its checksum; a damaged one is written out to
  // quarantine/ (what can be read of it) and removed, and the relay starts anyway.
  const rows = db.prepare('SELECT id, envelope, state, size, crc, body FROM message ORDER BY rowid').iterate() as Iterable<{
    id: string;
    envelope: string;
    state: string;
    size: number;
    crc: number;
    body: Uint8Array;
  }>;
  const bad: string[] = [];
  for (const r of rows) {
    let why = '';
    if (!r.body || r.body.length === 0) why = 'zero-byte message';
    else if (r.body.length !== r.size) why = `truncated: ${r.body.length} of ${r.size} bytes`;
    else if (crc32(r.body) !== r.crc) why = 'checksum mismatch';
    let row: LoadedRow | undefined;
    if (!why) {
      try {
        row = { id: r.id, envelope: JSON.parse(r.envelope), state: JSON.parse(r.state), size: r.size };
      } catch {
        why = 'envelope or state is not JSON';
      }
    }
    if (row) {
      result.rows.push(row);
      continue;
    }
    const q = quarantineDir();
    const base = path.join(q, r.id.replace(/[^A-Za-z0-9_-]/g, '_'));
    try {
      fs.writeFileSync(base + '.eml', r.body ?? Buffer.alloc(0));
      fs.writeFileSync(base + '.json', JSON.stringify({ id: r.id, reason: why, envelope: r.envelope, state: r.state, size: r.size }) + '\n');
    } catch {
      /* the row is removed anyway: it can never be delivered correctly */
    }
    result.quarantined.push({ id: r.id, reason: why, file: base + '.eml' });
    bad.push(r.id);
  }
  if (bad.length) {
    db.exec('BEGIN');
    for (const id of bad) st.del.run(id);
    db.exec('COMMIT');
  }
  return result;
}

function run(req: DbRequest): unknown {
  switch (req.op) {
    case 'insert':
      st.insert.run(req.id, req.envelope, req.state, req.body.length, crc32(req.body), req.body);
      return undefined;
    case 'update':
      st.update.run(req.state, req.id);
      return undefined;
    case 'delete':
      st.del.run(req.id);
      return undefined;
    case 'body': {
      const row = st.body.get(req.id) as { body: Uint8Array; crc: number } | undefined;
      if (!row) throw Object.assign(new Error(`no message ${req.id}`), { code: 'ENOENT' });
      if (crc32(row.body) !== row.crc) throw Object.assign(new Error(`message ${req.id} fails its checksum`), { code: 'EDAMAGED' });
      return Buffer.from(row.body.buffer, row.body.byteOffset, row.body.length);
    }
    case 'control':
      return db.prepare('SELECT seq, op, ids FROM control WHERE done = 0 ORDER BY seq').all();
    case 'controlDone':
      st.controlDone.run(req.result, req.controlSeq);
      return undefined;
    default:
      throw new Error(`unknown request ${(req as { op: string }).op}`);
  }
}

function errorOf(err: unknown): { code: string; message: string } {
  const e = err as { code?: string; errcode?: number; errstr?: string; message?: string };
  // SQLITE_FULL (13): the disk (or the file size limit) is full.
  const code = e.errcode === 13 || /SQLITE_FULL|database or disk is full/i.test(e.message ?? '') ? 'ENOSPC' : (e.code ?? 'EDB');
  return { code, message: e.message ?? String(err) };
}

// Room kept for deletes and state updates when the disk fills up: SQLite needs free
// space to record even a DELETE (the WAL grows first), so a disk filled to the last byte
// by new mail could otherwise never be emptied by delivering it. On ENOSPC this file is
// removed, the writes that free space are retried, and new mail is refused until the
// reserve can be made again (after a delete). Its size: a checkpoint of the WAL may have
// to grow spool.db by the WAL's size before the WAL's own space can be given back; with a
// reserve smaller than the WAL, a disk filled to the last byte could never be emptied
// (seen with 256 KiB and SQLite's default 4 MiB checkpoint: the spool refused forever).
// So the reserve is an eighth of the volume (256 KiB to 5 MiB), and the WAL is
// checkpointed before it outgrows four fifths of the reserve (SQLite's default of 1,000
// pages from a 40 MiB volume up, so real volumes keep the default).
const RESERVE_FILE = 'reserve';
const RESERVE_MIN = 256 * 1024;
const RESERVE_MAX = 5 * 1024 * 1024;
let reserveBytes = RESERVE_MIN;

function sizeReserve(): void {
  const st = fs.statfsSync(directory);
  reserveBytes = Math.min(RESERVE_MAX, Math.max(RESERVE_MIN, Math.floor((st.blocks * st.bsize) / 8 / 4096) * 4096));
  const pageSize = (db.prepare('PRAGMA page_size').get() as { page_size: number }).page_size;
  db.exec(`PRAGMA wal_autocheckpoint=${Math.max(16, Math.min(1000, Math.floor((reserveBytes * 0.8) / pageSize)))}`);
}
let reserveGone = false;
let reserveTried = 0;

function makeReserve(): boolean {
  const file = path.join(directory, RESERVE_FILE);
  try {
    if (fs.existsSync(file) && fs.statSync(file).size === reserveBytes) return true;
    fs.writeFileSync(file, Buffer.alloc(reserveBytes));
    return true;
  } catch {
    fs.rmSync(file, { force: true });
    return false;
  }
}

const isWrite = (r: DbRequest) => r.op === 'insert' || r.op === 'update' || r.op === 'delete' || r.op === 'controlDone';
const noSpace = { code: 'ENOSPC', message: 'disk full (the spool keeps its reserve for deliveries)' };

/** Runs a group in one transaction; throws (after ROLLBACK) on a failure of the whole group. */
function runGroup(group: DbRequest[]): DbReply[] {
  const writes = group.some(isWrite);
  const replies: DbReply[] = [];
  try {
    if (writes) db.exec('BEGIN IMMEDIATE');
    for (const req of group) {
      try {
        replies.push({ seq: req.seq, ok: true, value: run(req) });
      } catch (err) {
        // A failed write of one request must not take back the others: it changed nothing.
        const e = errorOf(err);
        if (e.code === 'ENOSPC' || e.code === 'EDB') throw err;
        replies.push({ seq: req.seq, ok: false, error: e });
      }
    }
    if (writes) db.exec('COMMIT');
    return replies;
  } catch (err) {
    if (writes) {
      try {
        db.exec('ROLLBACK');
      } catch {
        /* nothing to roll back */
      }
    }
    throw err;
  }
}

/**
 * The room inside the database: delivered messages leave free pages in spool.db (SQLite
 * does not give them back to the file system, and new messages reuse them), and the WAL
 * keeps its peak size until it is truncated. Near a full disk the store asks for a
 * truncating checkpoint first, so that the file system sees the WAL's space again.
 */
function space(truncateWal: boolean): SpaceInfo {
  const pageSize = (db.prepare('PRAGMA page_size').get() as { page_size: number }).page_size;
  const freePages = () => (db.prepare('PRAGMA freelist_count').get() as { freelist_count: number }).freelist_count;
  if (truncateWal) {
    checkpointTruncate();
    // Free pages are reused by new messages only through the WAL, which needs room on the
    // file system first: with the disk full of a mostly empty database, give the pages
    // back (VACUUM rewrites just the live rows) when that fits in what is free.
    const pages = (db.prepare('PRAGMA page_count').get() as { page_count: number }).page_count;
    const free = freePages();
    const live = (pages - free) * pageSize;
    if (free > 0 && free * 2 >= pages && Date.now() - lastVacuum > VACUUM_EVERY_MS) {
      lastVacuum = Date.now();
      fs.rmSync(path.join(directory, RESERVE_FILE), { force: true });
      try {
        if (live <= fsFree()) {
          db.exec('VACUUM');
          checkpointTruncate();
        }
      } catch {
        /* no room after all: counted as before */
      } finally {
        reserveGone = !makeReserve();
      }
    }
  }
  let walBytes = 0;
  try {
    walBytes = fs.statSync(path.join(directory, `${DB_FILE}-wal`)).size;
  } catch {
    /* no WAL file */
  }
  return { freelistBytes: freePages() * pageSize, walBytes, reserveMissingBytes: reserveGone ? reserveBytes : 0 };
}

/** At most one VACUUM attempt this often (a failed one costs a read of every live row). */
const VACUUM_EVERY_MS = 30_000;
let lastVacuum = 0;

function checkpointTruncate(): void {
  try {
    db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
  } catch {
    /* busy (the queue tool reading): the next check tries again */
  }
}

function fsFree(): number {
  const st = fs.statfsSync(directory);
  return st.bavail * st.bsize;
}

let batch: DbRequest[] = [];
let scheduled = false;

function flush(): void {
  scheduled = false;
  let group = batch;
  batch = [];
  const replies: DbReply[] = [];
  // Space may have been freed by something else (a volume grown, files removed).
  if (reserveGone && group.some((r) => r.op === 'insert') && Date.now() - reserveTried > 1000) {
    reserveTried = Date.now();
    reserveGone = !makeReserve();
  }
  if (reserveGone) {
    for (const r of group) if (r.op === 'insert') replies.push({ seq: r.seq, ok: false, error: noSpace });
    group = group.filter((r) => r.op !== 'insert');
  }
  try {
    replies.push(...runGroup(group));
  } catch (err) {
    const e = errorOf(err);
    if (e.code === 'ENOSPC' && !reserveGone) {
      reserveGone = true;
      fs.rmSync(path.join(directory, RESERVE_FILE), { force: true });
      for (const r of group) if (r.op === 'insert') replies.push({ seq: r.seq, ok: false, error: e });
      group = group.filter((r) => r.op !== 'insert');
      try {
        replies.push(...runGroup(group));
      } catch (err2) {
        for (const req of group) replies.push({ seq: req.seq, ok: false, error: errorOf(err2) });
      }
    } else {
      for (const req of group) replies.push({ seq: req.seq, ok: false, error: e });
    }
  }
  if (reserveGone && group.some((r) => r.op === 'delete')) reserveGone = !makeReserve();
  parentPort!.postMessage(replies);
}

// The store sends the requests of one of its event-loop turns together (store.ts request()).
parentPort!.on('message', (reqs: DbRequest[]) => {
  for (const req of reqs) receive(req);
});

function receive(req: DbRequest): void {
  if (req.op === 'open') {
    let reply: DbReply;
    try {
      reply = { seq: req.seq, ok: true, value: open() };
    } catch (err) {
      reply = { seq: req.seq, ok: false, error: errorOf(err) };
    }
    parentPort!.postMessage([reply]);
    return;
  }
  if (req.op === 'space') {
    // Between groups, never inside a transaction (a checkpoint cannot run in one).
    let reply: DbReply;
    try {
      reply = { seq: req.seq, ok: true, value: space(req.truncateWal) };
    } catch (err) {
      reply = { seq: req.seq, ok: false, error: errorOf(err) };
    }
    parentPort!.postMessage([reply]);
    return;
  }
  if (req.op === 'close') {
    try {
      db?.close();
    } catch {
      /* closing anyway */
    }
    parentPort!.postMessage([{ seq: req.seq, ok: true }]);
    return;
  }
  batch.push(req);
  // Requests that arrive while this thread is inside a commit are delivered after it,
  // in one go: they become the next group.
  if (!scheduled) {
    scheduled = true;
    setImmediate(flush);
  }
}
