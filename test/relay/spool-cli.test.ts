// The queue tool (relay/spool/cli.ts) as a separate process, against a spool that a
// running delivery process (test/harness/spool/child.ts) is using, and with none running.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { startSink, type Sink } from '../harness/support/sink.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHILD = path.resolve(here, '../harness/spool/child.js');
const CLI = path.resolve(here, '../harness/spool/queue-cli.js');
const run = promisify(execFile);
let dir: string;
let sink: Sink;
let relay: ChildProcess | undefined;

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, dir, ...args], { timeout: 30_000 });
    return { code: 0, out: stdout, err: stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

async function startChild(settings: object): Promise<ChildProcess> {
  const p = spawn(process.execPath, [CHILD], { env: { ...process.env, SPOOL_CHILD: JSON.stringify(settings) }, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error('child did not start')), 20_000);
    p.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (/READY|DONE/.test(out)) {
        clearTimeout(t);
        resolve();
      }
    });
  });
  return p;
}

async function waitFor(cond: () => boolean | Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ids = async () => (JSON.parse((await cli('list', '--json')).out) as { id: string; held: boolean; recipients: { attempts: number }[] }[]);

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-cli-'));
  sink = await startSink({ behaviour: { tempFailAll: true } });
  const w = await startChild({ mode: 'write', directory: dir, run: 'cli', count: 4, writers: 1 });
  await new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)));
  relay = await startChild({ mode: 'run', directory: dir, upstream: { port: sink.port, caFile: sink.caFile }, retryMs: 600_000 });
});
after(async () => {
  if (relay && relay.exitCode === null) {
    relay.kill('SIGKILL');
    await new Promise((r) => relay!.once('exit', r));
  }
  await sink.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('list shows id, age, sender, pending recipients, attempts and the last error, and never a body', async () => {
  await waitFor(async () => (await ids()).every((m) => m.recipients[0]!.attempts >= 1), 'first attempts');
  const { code, out } = await cli('list');
  assert.equal(code, 0);
  const lines = out.trim().split('\n');
  assert.deepEqual(lines[0]!.split('\t'), ['ID', 'AGE', 'SIZE', 'SENDER', 'PENDING', 'ATTEMPTS', 'STATE', 'LAST ERROR']);
  assert.equal(lines.at(-1), '4 message(s)');
  const row = lines[1]!.split('\t');
  assert.match(row[1]!, /^\d+s$/);
  assert.deepEqual(row.slice(3, 7), ['app@example.com', 'rcpt@example.net', '1', 'queued']);
  assert.match(row[7]!, /^451 4\.1\.0 Upstream deferred the sender/);
  assert.ok(!out.includes('X-Seq'), 'no message content');
});

test('show prints the envelope and recipient states; the body only with --body', async () => {
  const [first] = await ids();
  const plain = await cli('show', first!.id.slice(0, 10));
  assert.equal(plain.code, 0);
  const env = JSON.parse(plain.out) as { id: string; mailFrom: string; recipients: { status: string }[] };
  assert.equal(env.id, first!.id);
  assert.equal(env.recipients[0]!.status, 'failed-temporary');
  assert.ok(!plain.out.includes('X-Seq'));
  const withBody = await cli('show', first!.id, '--body');
  assert.match(withBody.out, /\r\nX-Seq: 0\r\n/);
});

test('against the running relay: hold, retry, release and delete are applied by it', async () => {
  const list = await ids();
  const [a, b, c, d] = list.map((m) => m.id) as [string, string, string, string];
  assert.equal((await cli('hold', a)).out.trim(), `${a}: held`);
  assert.equal((await cli('delete', d)).out.trim(), `${d}: deleted`);
  assert.equal((await cli('delete', 'nosuchid')).code, 1);
  sink.behaviour.tempFailAll = false;
  const retried = await cli('retry', 'ALL');
  assert.equal(retried.code, 0);
  assert.match(retried.out, new RegExp(`${a}: scheduled \\(still held`));
  await waitFor(() => sink.messages.length === 2, 'b and c delivered at once, without waiting for the 10 min backoff');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(sink.messages.length, 2, 'the held one waits');
  assert.deepEqual((await ids()).map((m) => [m.id, m.held]), [[a, true]]);
  assert.equal((await cli('release', a)).out.trim(), `${a}: released`);
  await waitFor(() => sink.messages.length === 3, 'a delivered after release');
  const seqs = sink.messages.map((m) => /X-Seq: (\d+)/.exec(m.raw.toString())![1]).sort();
  assert.deepEqual(seqs, ['0', '1', '2'], 'the deleted message was never delivered');
  void b;
  void c;
});

test('with no relay running, the tool applies changes itself', async () => {
  relay!.kill('SIGTERM');
  await new Promise((r) => relay!.once('exit', r));
  const w = await startChild({ mode: 'write', directory: dir, run: 'cli2', count: 1, writers: 1 });
  await new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)));
  const [m] = await ids();
  const t0 = Date.now();
  assert.equal((await cli('hold', m!.id)).out.trim(), `${m!.id}: held`);
  assert.ok(Date.now() - t0 < 10_000, 'no wait for a relay that is not there');
  assert.equal((await ids())[0]!.held, true);
  assert.equal((await cli('delete', m!.id)).out.trim(), `${m!.id}: deleted`);
  assert.deepEqual(await ids(), []);
});

test('usage errors exit 2 and print the usage', async () => {
  const r = await cli('frobnicate');
  assert.equal(r.code, 2);
  assert.match(r.err, /unknown command "frobnicate"[^]*usage: smtp-relay queue/);
  assert.equal((await cli('delete', 'ALL')).code, 2);
});
