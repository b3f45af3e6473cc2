// Ad hoc (not part of make bench): latency variants of the relay side by side at one paced rate.
//   flock /tmp/bench.lock node bench/adhoc/lat.mjs RATE REPS 'LABEL;NODEFLAG,NODEFLAG;ENV=V,ENV=V;DISTDIR' ...
// e.g. node bench/adhoc/lat.mjs 1358 3 'default' 'heap64;--initial-heap-size=64,--trace-gc'
//      'before;;;/path/to/old/dist'   (the relay of another build's dist/)
// Each variant is its own relay (started by bench/targets.ts, i.e. with the image runtime plus
// the flags given); 20 sessions, 5 s windows after 1 s warm-up, interleaved; the sink via
// stunnel at the same rate after each repetition. With --import=$PWD/bench/adhoc/eld.mjs among the
// flags (an absolute path: the relay runs in a temp dir), the relay's event-loop delay is
// printed too; with --trace-gc, GC counts.
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../../dist/test/harness/support/pki.js';
import { runLoad } from '../../dist/bench/loadgen.js';
import { percentile, cpuSeconds } from '../../dist/bench/common.js';
import { PASS, USER, startRelay, startSmtpSink, startStunnel } from '../../dist/bench/targets.js';
import { readFileSync } from 'node:fs';
const [rateS, repsS, ...variants] = process.argv.slice(2);
const rate = Number(rateS), reps = Number(repsS);
const dir = mkdtempSync(path.join(os.tmpdir(), 'lat-'));
const pki = await createPki({ caName: 'bench CA' });
const cert = await pki.issue({ name: 'server' });
const sink = await startSmtpSink();
const tlsSink = await startStunnel(dir, cert, sink.port);
const upstream = { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit', maxConnections: 20 };
const targets = [];
for (const v of variants) {
  const [label, flags = '', envs = '', which = ''] = v.split(';');
  const nodeArgs = flags ? flags.split(',') : [];
  const extraEnv = Object.fromEntries(envs ? envs.split(',').map((e) => e.split('=')) : []);
  const saved = { ...process.env };
  Object.assign(process.env, extraEnv);
  // which: another build's dist/ (e.g. a copy of an older commit's) to compare with
  const start = which ? (await import(path.resolve(which, 'bench/targets.js'))).startRelay : startRelay;
  const r = await start({ dir, cert, upstream, nodeArgs });
  process.env = saved;
  targets.push({ label, r, eld: nodeArgs.some((a) => a.includes('eld.mjs')) });
}
const auth = { user: USER, pass: PASS };
const out = {};
const sinkRes = [];
for (let rep = 0; rep < reps; rep++) {
  for (const t of targets) {
    const c0 = cpuSeconds(t.r.child.pid);
    if (t.eld) process.kill(t.r.child.pid, 'SIGUSR2');
    const res = await runLoad({ mode: 'send', host: '127.0.0.1', port: t.r.submission, tls: 'starttls', auth, pooled: true, connections: 20, durationMs: 5000, warmupMs: 1000, rate }, 2, 2);
    const cpu = cpuSeconds(t.r.child.pid) - c0;
    if (t.eld) process.kill(t.r.child.pid, 'SIGUSR2');
    await new Promise((r) => setTimeout(r, 200));
    const eld = !t.eld ? '' : readFileSync(t.r.logFile, 'utf8').split('\n').filter((l) => l.startsWith('ELD')).pop();
    const line = `${t.label}: ${res.msgsPerSec.toFixed(0)}/s p50 ${percentile(res.latencies, 50).toFixed(2)} p99 ${percentile(res.latencies, 99).toFixed(2)} p99.9 ${percentile(res.latencies, 99.9).toFixed(2)} max ${Math.max(...res.latencies).toFixed(1)} relayCPU ${cpu.toFixed(2)}s failed ${res.failed} | ${eld}`;
    console.log(`rep ${rep} ${line}`);
    (out[t.label] ??= []).push(percentile(res.latencies, 99));
  }
  const s = await runLoad({ mode: 'send', host: '127.0.0.1', port: tlsSink.port, tls: 'implicit', pooled: true, connections: 20, durationMs: 5000, warmupMs: 1000, rate }, 2, 2);
  console.log(`rep ${rep} sink: p50 ${percentile(s.latencies, 50).toFixed(2)} p99 ${percentile(s.latencies, 99).toFixed(2)}`);
  sinkRes.push(percentile(s.latencies, 99));
}
for (const [k, v] of Object.entries(out)) console.log(`SUMMARY ${k}: p99 ${v.map((x) => x.toFixed(2)).join(' / ')}`);
console.log(`SUMMARY sink: p99 ${sinkRes.map((x) => x.toFixed(2)).join(' / ')}`);
for (const t of targets) {
  const log = readFileSync(t.r.logFile, 'utf8').split('\n');
  const mc = log.filter((l) => /Mark-Compact|Mark-sweep/i.test(l));
  const sc = log.filter((l) => /Scavenge/.test(l));
  const pause = (l) => Number((/,\s*([\d.]+)\s*\/\s*[\d.]+\s*ms/.exec(l) ?? [])[1] ?? NaN);
  const mcp = mc.map(pause).filter((x) => !isNaN(x));
  const scp = sc.map(pause).filter((x) => !isNaN(x));
  if (mc.length || sc.length) console.log(`GC ${t.label}: mark-compact ${mc.length} (max ${Math.max(...mcp).toFixed(1)} ms, sum ${mcp.reduce((a, b) => a + b, 0).toFixed(0)}), scavenge ${sc.length} (max ${Math.max(...scp).toFixed(1)} ms, sum ${scp.reduce((a, b) => a + b, 0).toFixed(0)}); e.g. ${mc[0] ?? ''}`);
  await t.r.stop();
}
await tlsSink.stop(); await sink.stop(); await pki.cleanup();
process.exit(0);
