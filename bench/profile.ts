// Profiles the relay under the scenario-1 load (pooled STARTTLS + AUTH, or a new
// connection per message) with node --cpu-prof and prints the top self-time costs,
// by function and by package/file, and the CPU of each of the relay's threads. Not part of
// `make bench`; run by hand:
//
//   node dist/bench/profile.js [pooled|new|queue] [seconds]    (queue: pooled, in queue mode)
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../test/harness/support/pki.js';
import { fmt, table } from './common.js';
import { runLoad } from './loadgen.js';
import { PASS, USER, startRelay, startSmtpSink, startStunnel } from './targets.js';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

export function summarize(file: string, top = 25): string {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = p.timeDeltas[i] ?? 0;
    self.set(id, (self.get(id) ?? 0) + dt);
    total += dt;
  });
  const byFn = new Map<string, number>();
  const byPkg = new Map<string, number>();
  for (const [id, t] of self) {
    const n = byId.get(id)!;
    const url = n.callFrame.url.replace(/^file:\/\//, '');
    const short = url.includes('node_modules/') ? url.slice(url.lastIndexOf('node_modules/') + 13) : url.replace(/^.*\/dist\//, 'dist/');
    const fn = `${n.callFrame.functionName || '(anonymous)'} ${short ? `${short}:${n.callFrame.lineNumber + 1}` : ''}`.trim();
    byFn.set(fn, (byFn.get(fn) ?? 0) + t);
    const pkg = !url ? n.callFrame.functionName || '(native)' : url.includes('node_modules/') ? url.slice(url.lastIndexOf('node_modules/') + 13).split('/')[0]! : url.startsWith('node:') ? url : short.split('/').slice(0, 3).join('/');
    byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + t);
  }
  const rows = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, t]) => [k, fmt(t / 1000), `${fmt((t / total) * 100, 1)}%`]);
  return `Profile ${path.basename(file)}: ${fmt(total / 1000)} ms sampled\n\n${table(['function (self time)', 'ms', 'share'], rows(byFn))}\n\n${table(['package / file (self time)', 'ms', 'share'], rows(byPkg))}\n`;
}

async function main() {
  const mode = process.argv[2] ?? 'pooled';
  const seconds = Number(process.argv[3] ?? 8);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-prof-'));
  const profDir = path.join(dir, 'prof');
  const pki = await createPki({ caName: 'bench CA' });
  const cert = await pki.issue({ name: 'server' });
  const sink = await startSmtpSink();
  const tlsSink = await startStunnel(dir, cert, sink.port);
  const relay = await startRelay({
    dir,
    cert,
    upstream: { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit', maxConnections: 20 },
    nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`],
    hashN: mode === 'new' ? 1024 : 32768,
    ...(mode === 'queue' ? { queue: `{directory: ${path.join(dir, 'spool')}}` } : {}),
  });
  const r = await runLoad(
    { mode: 'send', host: '127.0.0.1', port: relay.submission, tls: 'starttls', auth: { user: USER, pass: PASS }, pooled: mode !== 'new', connections: 20, durationMs: seconds * 1000, warmupMs: 1000 },
    2,
    os.availableParallelism(),
  );
  // CPU seconds by thread (main, libuv pool, V8 workers, the spool's database thread)
  const threads = new Map<string, number>();
  for (const t of readdirSync(`/proc/${relay.child.pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${relay.child.pid}/task/${t}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      threads.set(name, (threads.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) / 100);
    } catch {
      /* gone */
    }
  }
  await relay.stop();
  await tlsSink.stop();
  await sink.stop();
  console.log(`${mode}: ${fmt(r.msgsPerSec)} msgs/s, ${r.failed} failed\n`);
  console.log(`relay CPU seconds by thread name: ${[...threads].sort((a, b) => b[1] - a[1]).map(([n, c]) => `${n} ${c.toFixed(2)}`).join(', ')}\n`);
  const f = readdirSync(profDir).find((x) => x.endsWith('.cpuprofile'))!;
  console.log(summarize(path.join(profDir, f)));
  await pki.cleanup();
  if (!process.env['KEEP']) rmSync(dir, { recursive: true, force: true });
  else console.log(`kept ${path.join(profDir, f)}`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
