// `smtp-relay queue list|show|retry|hold|release|delete`: the spool tool, usable with
// `kubectl exec` while the relay runs.
//
// Coordination: SQLite lets several processes use the database at once, so `list` and
// `show` read it directly. Changes go through the running relay instead: the tool adds a
// row to the `control` table and the relay's scheduler (which polls it every second)
// applies it and writes the result back. Only one process then ever writes a message's
// state, so a command cannot be lost under a delivery that finishes at the same moment
// (two writers of the same row would each write a whole state, and the last one wins).
// When no relay runs (scheduler.alive not touched for 5 s) the tool applies the change
// itself, through the same code.
import { DatabaseSync } from 'node:sqlite';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createSpoolMetrics } from './metrics.js';
import { ALIVE_FILE, Scheduler, resolveIds } from './scheduler.js';
import { QUEUE_DEFAULTS } from './settings.js';
import { Spool } from './store.js';
import type { EntryState, StoredEnvelope } from './types.js';

export interface QueueCliOptions {
  /** The spool directory (queue.directory of the relay config). */
  directory: string;
  out?: NodeJS.WritableStream;
  err?: NodeJS.WritableStream;
  /** How long to wait for the running relay to apply a change; default 15 s. */
  timeoutMs?: number;
}

export const QUEUE_USAGE = `usage: smtp-relay queue <command> [--dir=<spool directory>]
  list [--json]                  messages: id, age, sender, pending recipients, attempts, last error
  show <id> [--body]             one message's envelope and recipients (--body: also the message)
  retry <id>... | ALL            deliver now (pending recipients)
  hold <id>... | ALL             do not deliver until released
  release <id>... | ALL
  delete <id>...                 remove without delivering or reporting
Ids may be abbreviated to a unique prefix of at least 6 characters.`;

/** The relay is running if its scheduler touched scheduler.alive within this long. */
const ALIVE_MS = 5000;

interface Row {
  id: string;
  envelope: StoredEnvelope;
  state: EntryState;
  size: number;
}

export function formatAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${m % 60 ? `${m % 60}m` : ''}`;
  return `${Math.floor(h / 24)}d${h % 24 ? `${h % 24}h` : ''}`;
}

function openDb(directory: string): DatabaseSync {
  const file = path.join(directory, 'spool.db');
  if (!fs.existsSync(file)) throw new Error(`no spool in ${directory} (no spool.db): is queue.directory right?`);
  const db = new DatabaseSync(file);
  db.exec('PRAGMA busy_timeout=10000');
  return db;
}

function readRows(db: DatabaseSync): Row[] {
  const rows = db.prepare('SELECT id, envelope, state, size FROM message ORDER BY id').all() as { id: string; envelope: string; state: string; size: number }[];
  return rows.map((r) => ({ id: r.id, envelope: JSON.parse(r.envelope), state: JSON.parse(r.state), size: r.size }));
}

function relayRunning(directory: string): boolean {
  try {
    return Date.now() - fs.statSync(path.join(directory, ALIVE_FILE)).mtimeMs < ALIVE_MS;
  } catch {
    return false;
  }
}

const pendingOf = (s: EntryState) => s.recipients.filter((r) => r.status === 'pending' || r.status === 'failed-temporary');

/** Runs one `queue` command; resolves with the process exit code. */
export async function queueCommand(argv: string[], opts: QueueCliOptions): Promise<number> {
  const out = opts.out ?? process.stdout;
  const err = opts.err ?? process.stderr;
  const dirArg = argv.find((a) => a.startsWith('--dir='));
  const directory = dirArg ? path.resolve(dirArg.slice(6)) : opts.directory;
  const args = argv.filter((a) => !a.startsWith('--dir='));
  const [cmd, ...rest] = args;
  const flags = new Set(rest.filter((a) => a.startsWith('--')));
  const ids = rest.filter((a) => !a.startsWith('--'));
  const print = (s: string) => out.write(s + '\n');
  try {
    switch (cmd) {
      case 'list': {
        const db = openDb(directory);
        const rows = readRows(db);
        db.close();
        const now = Date.now();
        if (flags.has('--json')) {
          print(JSON.stringify(rows.map((r) => ({ id: r.id, created: new Date(r.envelope.created).toISOString(), sender: r.envelope.mailFrom, size: r.size, held: r.state.held, recipients: r.state.recipients }))));
          return 0;
        }
        print(['ID', 'AGE', 'SIZE', 'SENDER', 'PENDING', 'ATTEMPTS', 'STATE', 'LAST ERROR'].join('\t'));
        for (const r of rows) {
          const pending = pendingOf(r.state);
          const attempts = Math.max(0, ...r.state.recipients.map((x) => x.attempts));
          const lastError = pending.find((x) => x.lastError)?.lastError ?? '';
          print(
            [r.id, formatAge(now - r.envelope.created), String(r.size), r.envelope.mailFrom || '<>', pending.map((x) => x.address).join(',') || '-', String(attempts), r.state.held ? 'held' : 'queued', lastError].join('\t'),
          );
        }
        print(`${rows.length} message(s)`);
        return 0;
      }
      case 'show': {
        if (ids.length !== 1) throw new UsageError('show takes one id');
        const db = openDb(directory);
        const rows = readRows(db);
        const [[, id]] = resolveIds(ids, rows.map((r) => r.id)) as [[string, string | undefined]];
        const row = rows.find((r) => r.id === id);
        if (!row) {
          db.close();
          err.write(`queue: no message ${ids[0]}\n`);
          return 1;
        }
        print(JSON.stringify({ ...row.envelope, created: new Date(row.envelope.created).toISOString(), size: row.size, held: row.state.held, recipients: row.state.recipients.map((r) => ({ ...r, nextAttempt: new Date(r.nextAttempt).toISOString() })) }, null, 2));
        if (flags.has('--body')) {
          const b = db.prepare('SELECT body FROM message WHERE id = ?').get(row.id) as { body: Uint8Array } | undefined;
          out.write('\n');
          out.write(Buffer.from(b?.body ?? new Uint8Array()));
        }
        db.close();
        return 0;
      }
      case 'retry':
      case 'hold':
      case 'release':
      case 'delete': {
        if (!ids.length) throw new UsageError(`${cmd} needs at least one id (or ALL)`);
        if (cmd === 'delete' && ids.includes('ALL')) throw new UsageError('delete ALL is not allowed; list the ids');
        const results = relayRunning(directory) ? await viaRelay(directory, cmd, ids, opts.timeoutMs ?? 15_000) : await offline(directory, cmd, ids);
        let failed = 0;
        for (const [id, result] of Object.entries(results)) {
          if (result === 'not found' || result.startsWith('unknown')) failed++;
          print(`${id}: ${result}`);
        }
        return failed ? 1 : 0;
      }
      default:
        throw new UsageError(cmd ? `unknown command ${JSON.stringify(cmd)}` : 'no command given');
    }
  } catch (e) {
    err.write(`queue: ${(e as Error).message}\n`);
    if (e instanceof UsageError) err.write(QUEUE_USAGE + '\n');
    return 2;
  }
}

class UsageError extends Error {}

async function viaRelay(directory: string, op: string, ids: string[], timeoutMs: number): Promise<Record<string, string>> {
  const db = openDb(directory);
  try {
    const r = db.prepare('INSERT INTO control (op, ids, created) VALUES (?, ?, ?)').run(op, JSON.stringify(ids), Date.now());
    const seq = Number(r.lastInsertRowid);
    const get = db.prepare('SELECT done, result FROM control WHERE seq = ?');
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const row = get.get(seq) as { done: number; result: string | null } | undefined;
      if (row?.done) {
        db.prepare('DELETE FROM control WHERE seq = ?').run(seq);
        return JSON.parse(row.result ?? '{}') as Record<string, string>;
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    // Not applied in time: take the request back so it does not happen by surprise later.
    const taken = db.prepare('DELETE FROM control WHERE seq = ? AND done = 0').run(seq);
    if (Number(taken.changes) === 0) {
      const row = get.get(seq) as { result: string | null } | undefined;
      db.prepare('DELETE FROM control WHERE seq = ?').run(seq);
      return JSON.parse(row?.result ?? '{}') as Record<string, string>;
    }
    throw new Error(`the running relay did not apply the command within ${timeoutMs} ms; nothing was changed`);
  } finally {
    db.close();
  }
}

async function offline(directory: string, op: string, ids: string[]): Promise<Record<string, string>> {
  const logger = pino({ level: 'warn' }, pino.destination(2));
  const metrics = createSpoolMetrics(new Registry());
  const spool = await Spool.open({ directory, limits: { maxBytes: Infinity, maxMessages: Infinity, minFreeBytes: 0 }, logger, metrics });
  try {
    const scheduler = new Scheduler({
      spool,
      deliver: () => Promise.reject(new Error('no delivery from the queue tool')),
      hostname: 'localhost',
      lifetimeMs: QUEUE_DEFAULTS.lifetimeMs,
      retry: QUEUE_DEFAULTS.retry,
      concurrency: 1,
      delayWarningMs: 0,
      logger,
      metrics,
    });
    const results: Record<string, string> = {};
    for (const [given, id] of resolveIds(ids, [...spool.ids()])) results[given] = id ? await scheduler.command(op, id) : 'not found';
    return results;
  } finally {
    await spool.close();
  }
}
