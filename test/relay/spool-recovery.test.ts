// Recovery at start: damaged, truncated and zero-byte spool contents are moved to
// quarantine/, logged and counted, and the spool opens anyway.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Writable } from 'node:stream';
import { after, test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createSpoolMetrics } from '../../relay/spool/metrics.js';
import { Spool } from '../../relay/spool/store.js';
import { checkTestMessage, testMessage } from '../harness/spool/messages.js';

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-recovery-'));
after(() => fs.rmSync(base, { recursive: true, force: true }));

async function open(dir: string) {
  const registry = new Registry();
  const logs: string[] = [];
  const logger = pino({ level: 'info' }, new Writable({ write: (c: Buffer, _e, cb) => (logs.push(c.toString()), cb()) }));
  const spool = await Spool.open({ directory: dir, limits: { maxBytes: 1 << 30, maxMessages: 1e6, minFreeBytes: 0 }, logger, metrics: createSpoolMetrics(registry) });
  const quarantined = async () => (await registry.getSingleMetric('smtp_relay_queue_quarantined_total')!.get()).values[0]?.value ?? 0;
  return { spool, logs, quarantined };
}

async function filled(name: string, n: number): Promise<{ dir: string; ids: string[] }> {
  const dir = path.join(base, name);
  const { spool } = await open(dir);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(await spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, testMessage(name, i)));
  await spool.close();
  return { dir, ids };
}

test('a message whose bytes were damaged is quarantined with its envelope; the others stay', async () => {
  const { dir, ids } = await filled('flip', 3);
  const db = new DatabaseSync(path.join(dir, 'spool.db'));
  const row = db.prepare('SELECT body FROM message WHERE id = ?').get(ids[1]!) as { body: Uint8Array };
  const body = Buffer.from(row.body);
  body.writeUInt8(body.readUInt8(body.length - 10) ^ 0x20, body.length - 10);
  db.prepare('UPDATE message SET body = ? WHERE id = ?').run(body, ids[1]!);
  db.close();
  const { spool, logs, quarantined } = await open(dir);
  try {
    assert.deepEqual([...spool.ids()].sort(), [ids[0], ids[2]].sort());
    assert.equal(await quarantined(), 1);
    assert.ok(fs.existsSync(path.join(dir, 'quarantine', `${ids[1]}.eml`)));
    assert.match(fs.readFileSync(path.join(dir, 'quarantine', `${ids[1]}.json`), 'utf8'), /checksum mismatch/);
    assert.ok(logs.some((l) => l.includes('damaged spool entry moved to quarantine') && l.includes(ids[1]!)));
    assert.ok(checkTestMessage(await spool.body(ids[0]!)));
  } finally {
    await spool.close();
  }
});

test('zero-byte and truncated message rows are quarantined', async () => {
  const { dir, ids } = await filled('short', 3);
  const db = new DatabaseSync(path.join(dir, 'spool.db'));
  db.prepare('UPDATE message SET body = ? WHERE id = ?').run(Buffer.alloc(0), ids[0]!);
  const row = db.prepare('SELECT body FROM message WHERE id = ?').get(ids[2]!) as { body: Uint8Array };
  db.prepare('UPDATE message SET body = ? WHERE id = ?').run(Buffer.from(row.body).subarray(0, 100), ids[2]!);
  db.close();
  const { spool, quarantined } = await open(dir);
  try {
    assert.deepEqual([...spool.ids()], [ids[1]]);
    assert.equal(await quarantined(), 2);
    assert.match(fs.readFileSync(path.join(dir, 'quarantine', `${ids[0]}.json`), 'utf8'), /zero-byte message/);
    assert.match(fs.readFileSync(path.join(dir, 'quarantine', `${ids[2]}.json`), 'utf8'), /truncated: 100 of \d+ bytes/);
  } finally {
    await spool.close();
  }
});

test('a truncated database file is moved aside whole, its intact messages are copied back, and the spool starts', async () => {
  const { dir } = await filled('cut', 20);
  const file = path.join(dir, 'spool.db');
  // Checkpoint the WAL into the file first, so that cutting the file cuts messages.
  const db = new DatabaseSync(file);
  db.exec('PRAGMA wal_checkpoint(TRUNCATE)');
  db.close();
  const size = fs.statSync(file).size;
  // Cut the last tenth, as a torn tail of the file would.
  fs.truncateSync(file, Math.floor((size * 0.9) / 4096) * 4096);
  const { spool, logs, quarantined } = await open(dir);
  try {
    assert.ok(spool.size.messages < 20, `${spool.size.messages} salvaged`);
    for (const id of spool.ids()) assert.ok(checkTestMessage(await spool.body(id)), 'only intact messages are copied back');
    process.stdout.write(`# truncated database: ${spool.size.messages} of 20 messages salvaged\n`);
    assert.equal(await quarantined(), 1);
    const moved = fs.readdirSync(path.join(dir, 'quarantine'));
    assert.ok(moved.some((f) => f.endsWith('-spool.db')), moved.join(','));
    assert.ok(logs.some((l) => l.includes('database unreadable')));
    // And it works: a new message is stored.
    await spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, testMessage('cut', 99));
  } finally {
    await spool.close();
  }
});

test('a database file of garbage is moved aside; a zero-byte one is simply an empty spool', async () => {
  const dir = path.join(base, 'garbage');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'spool.db'), Buffer.alloc(8192, 0x5a));
  const g = await open(dir);
  assert.equal(await g.quarantined(), 1);
  await g.spool.close();
  const dir2 = path.join(base, 'zero');
  fs.mkdirSync(dir2);
  fs.writeFileSync(path.join(dir2, 'spool.db'), '');
  const z = await open(dir2);
  assert.equal(z.spool.size.messages, 0);
  assert.equal(await z.quarantined(), 0);
  await z.spool.close();
});
