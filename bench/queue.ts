// Queue mode side by side with Postfix (issue 12): both answer 250 once the message is
// on stable storage (the relay: its spool's SQLite commit with synchronous=FULL; Postfix:
// cleanup's fsync of the queue file), then deliver to the same stunnel -> smtp-sink
// upstream over verified TLS. Pooled STARTTLS + AUTH sessions from bench/loadgen.ts.
//
// Per run: acknowledged msgs/s (250s in the measured window / window), delivered msgs/s
// (every 250 of the run, warm-up included / time from the start of the load until the
// target's queue is empty again), fsync+fdatasync calls per acknowledged message (counted
// by the kernel's syscall tracepoints with `perf stat -p <pids>`, which also counts the
// threads and processes the target starts meanwhile: no ptrace, so the count does not slow
// the run; strace -f -c in a separate pass when perf is missing), and p50/p99 end of DATA
// -> 250. Runs are interleaved over the targets; medians of `reps` runs. The relay in inline
// mode (250 after the upstream's 250) is measured in the same run for reference.

import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../test/harness/support/pki.js';
import { fmt, log, median, percentile, sleep, table } from './common.js';
import { runLoad, type LoadResult } from './loadgen.js';
import { PASS, USER, postfixQueueSize, startPostfix, startRelay, startSmtpSink, startStunnel, type PostfixTarget, type RelayTarget } from './targets.js';

export interface QueueBenchConfig {
  connections: number;
  reps: number;
  warmupMs: number;
  durationMs: number;
  processes: number;
}

/** Counts fsync and fdatasync calls of a set of processes (and of what they start). */
interface SyncCounter {
  method: string;
  stop(): Promise<number>;
}

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const PERF = which('perf');
const STRACE = which('strace');

/**
 * perf stat on the syscall tracepoints: counted in the kernel per task, inherited by the
 * threads and children created after the attach (Postfix's master forks smtpd, cleanup and
 * smtp while the run goes on). NaN when neither perf nor strace is there.
 */
async function countSyncs(pids: number[], file: string): Promise<SyncCounter> {
  let child: ChildProcess;
  let method: string;
  if (PERF) {
    method = 'perf stat -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p PIDS';
    child = spawn(PERF, ['stat', '-x', ',', '-o', file, '-e', 'syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync', '-p', pids.join(',')], { stdio: 'ignore' });
  } else if (STRACE) {
    method = 'strace -f -c -e trace=fsync,fdatasync -p PIDS (slows the target)';
    child = spawn(STRACE, ['-f', '-qq', '-c', '-e', 'trace=fsync,fdatasync', '-o', file, ...pids.flatMap((p) => ['-p', String(p)])], { stdio: 'ignore' });
  } else return { method: 'none (install linux-perf or strace)', stop: async () => NaN };
  await sleep(300); // attached (perf opens its events within ~50 ms)
  return {
    method,
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
      let text = '';
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        return NaN;
      }
      let n = 0;
      if (PERF) {
        // CSV: value,unit,event,...
        for (const line of text.split('\n')) {
          const f = line.split(',');
          if (/sys_enter_(fsync|fdatasync)/.test(f[2] ?? '')) n += Number(f[0]) || 0;
        }
      } else {
        // strace -c table: % time, seconds, usecs/call, calls, errors, syscall
        for (const m of text.matchAll(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$/gm)) n += Number(m[1]);
      }
      return n;
    },
  };
}

interface Run {
  load: LoadResult;
  /** Seconds from the start of the load until the queue was empty. */
  toEmptyS: number;
  drainMs: number;
  syncs: number;
}

interface QTarget {
  key: string;
  label: string;
  port: number;
  pids(): number[];
  /** Messages still queued; -1 when it cannot be read. */
  queued(): Promise<number>;
}

/** The relay's queued messages (smtp_relay_queue_messages; 0 in inline mode, -1 when unreadable). */
export async function relayQueued(r: RelayTarget): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${r.metrics}/metrics`)).text();
    const m = /^smtp_relay_queue_messages (\S+)$/m.exec(text);
    return m ? Number(m[1]) : 0; // inline mode has no queue
  } catch {
    return -1;
  }
}

/** Polls `queued` every 50 ms until it reads 0 or `ms` have passed; what was left at the last reading. */
export async function waitEmpty(queued: () => Promise<number>, ms: number): Promise<number> {
  const deadline = performance.now() + ms;
  let left = await queued();
  while (left !== 0 && performance.now() < deadline) {
    await sleep(50);
    left = await queued();
  }
  return left;
}

async function measure(t: QTarget, cfg: QueueBenchConfig, cores: number, dir: string): Promise<Run> {
  const counter = await countSyncs(t.pids(), path.join(dir, `syncs-${t.key}-${Date.now()}.txt`));
  const t0 = performance.now();
  const load = await runLoad(
    { mode: 'send', host: '127.0.0.1', port: t.port, tls: 'starttls', auth: { user: USER, pass: PASS }, pooled: true, connections: cfg.connections, durationMs: cfg.durationMs, warmupMs: cfg.warmupMs },
    cfg.processes,
    cores,
  );
  const loadEnd = performance.now();
  const left = await waitEmpty(() => t.queued(), 120_000);
  const end = performance.now();
  if (left !== 0) log(`${t.key}: queue not empty 120 s after the load (${left} left)`);
  const syncs = await counter.stop();
  if (load.failed) log(`${t.key}: ${load.failed} failed, e.g. ${load.errors.join(' | ')}`);
  return { load, toEmptyS: left === 0 ? (end - t0) / 1000 : NaN, drainMs: end - loadEnd, syncs };
}

export async function queueModeVsPostfix(cfg: QueueBenchConfig): Promise<string> {
  const cores = os.availableParallelism();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-queue-'));
  const pki = await createPki({ caName: 'bench CA' });
  const cert = await pki.issue({ name: 'server' });
  const stops: (() => Promise<void>)[] = [];
  const load0 = os.loadavg();
  const started = new Date().toISOString().slice(11, 16);
  try {
    const sink = await startSmtpSink();
    stops.push(sink.stop);
    const tlsSink = await startStunnel(dir, cert, sink.port);
    stops.push(tlsSink.stop);
    const upstream = { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit' as const, maxConnections: cfg.connections };
    const spoolDir = path.join(dir, 'spool');
    const queued = await startRelay({ dir, cert, upstream, queue: `{directory: ${spoolDir}}` });
    stops.push(queued.stop);
    const inline = await startRelay({ dir, cert, upstream });
    stops.push(inline.stop);
    const pf: PostfixTarget = await startPostfix({ dir, cert, relayhost: { port: tlsSink.port, tls: true, caFile: cert.caFile } });
    stops.push(pf.stop);
    const targets: QTarget[] = [
      { key: 'q', label: 'relay, queue mode', port: queued.submission, pids: queued.pids, queued: () => relayQueued(queued) },
      { key: 'p', label: 'Postfix', port: pf.submission, pids: pf.pids, queued: async () => postfixQueueSize(pf) },
      { key: 'i', label: 'relay, inline mode (reference: 250 after the upstream 250)', port: inline.submission, pids: inline.pids, queued: async () => 0 },
    ];
    const runs = new Map<string, Run[]>();
    for (let rep = 1; rep <= cfg.reps; rep++) {
      for (const t of targets) {
        const r = await measure(t, cfg, cores, dir);
        log(
          `queue rep ${rep} ${t.label}: acked ${fmt(r.load.msgsPerSec)}/s, delivered ${fmt(r.load.acked / r.toEmptyS)}/s (drain ${fmt(r.drainMs)} ms), ${fmt(r.syncs / r.load.acked, 3)} syncs/msg, p50 ${fmt(percentile(r.load.latencies, 50), 2)} p99 ${fmt(percentile(r.load.latencies, 99), 2)} ms, failed ${r.load.failed}`,
        );
        runs.set(t.key, [...(runs.get(t.key) ?? []), r]);
      }
    }
    // The machine's speed in this run: Postfix's own generator against the bare smtp-sink.
    const n = 20_000;
    const s0 = performance.now();
    const ok = await new Promise<boolean>((resolve) =>
      execFile('smtp-source', ['-4', '-s', String(cfg.connections), '-l', '10240', '-m', String(n), '-f', 'bench@example.com', '-t', 'rcpt@example.net', `127.0.0.1:${sink.port}`], { timeout: 30_000 }, (err) => resolve(!err)),
    );
    const speed = ok ? n / ((performance.now() - s0) / 1000) : NaN;
    const load1 = os.loadavg();
    const med = (key: string, f: (r: Run) => number) => median((runs.get(key) ?? []).map(f));
    const acked = (r: Run) => r.load.msgsPerSec;
    const delivered = (r: Run) => r.load.acked / r.toEmptyS;
    const perMsg = (r: Run) => r.syncs / r.load.acked;
    const rows = targets.map((t) => {
      const rs = runs.get(t.key)!;
      return [
        t.label,
        fmt(med(t.key, acked)),
        rs.map((r) => fmt(acked(r))).join(' / '),
        fmt(med(t.key, delivered)),
        rs.map((r) => fmt(delivered(r))).join(' / '),
        fmt(med(t.key, (r) => r.drainMs)),
        fmt(med(t.key, perMsg), 3),
        fmt(med(t.key, (r) => percentile(r.load.latencies, 50)), 2),
        fmt(med(t.key, (r) => percentile(r.load.latencies, 99)), 2),
        rs.reduce((a, r) => a + r.load.failed, 0),
      ];
    });
    const ratio = (f: (r: Run) => number) => (med('q', f) / med('p', f)).toFixed(2);
    const method = PERF ? '`perf stat -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p <pids>` (kernel tracepoints; threads and forked children inherited)' : STRACE ? '`strace -f -c -e trace=fsync,fdatasync -p <pids>` (ptrace: slows the target)' : 'not counted (neither perf nor strace installed)';
    return (
      `### Queue mode vs Postfix: durable 250, then delivery (10 KB messages, ${cfg.connections} pooled STARTTLS + AUTH sessions, ${cfg.reps} runs of ${cfg.durationMs / 1000} s after ${cfg.warmupMs / 1000} s warm-up, interleaved, median)\n\n` +
      `Started ${started} UTC; load average (1/5/15 min) at the start ${load0.map((x) => x.toFixed(2)).join(' / ')}, at the end ${load1.map((x) => x.toFixed(2)).join(' / ')} (2 cores: the machine is shared with the load generator, stunnel and smtp-sink, and with whatever else runs). ` +
      `Machine speed in this run: smtp-source -> smtp-sink (${cfg.connections} sessions, 20,000 plain messages of 10,240 bytes) ${fmt(speed)} msgs/s. ` +
      `Both spools on the same disk (\`${os.tmpdir()}\`). acknowledged = 250s in the window / window; delivered = every 250 of the run (warm-up included) / time from the start of the load until the queue is empty; fsyncs = fsync + fdatasync calls of the target's processes and threads during load and drain, per acknowledged message, counted with ${method}.\n\n` +
      table(['target', 'acknowledged msgs/s', 'runs', 'delivered msgs/s', 'runs', 'queue drain after the load (ms)', 'fsyncs/msg', 'p50 to 250 (ms)', 'p99 to 250 (ms)', 'failed'], rows) +
      '\n\n' +
      table(
        ['ratio relay queue mode / Postfix', 'value', 'goal'],
        [
          ['acknowledged msgs/s', ratio(acked), '>= 2'],
          ['delivered msgs/s', ratio(delivered), '>= 2'],
          ['fsyncs per message', ratio(perMsg), '(info)'],
          ['p99 time to 250', ratio((r) => percentile(r.load.latencies, 99)), '(info)'],
        ],
      ) +
      '\n'
    );
  } finally {
    for (const stop of stops.reverse()) await stop().catch((e: unknown) => log(`stop: ${String(e)}`));
    await pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}
