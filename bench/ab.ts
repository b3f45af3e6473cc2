// A/B runs of two (or more) relay builds on the same targets, alternating, for changes
// whose effect is smaller than the run-to-run noise of a shared machine: each build's
// relay is started once (from its own dist/), then the scenario-1 load (pooled STARTTLS +
// AUTH, or a new connection per message) runs against them in the order A B, B A, A B, ...
// Per run: the relay's CPU per acknowledged message (user + system, /proc/PID/stat, as
// scenario 1 counts it), its read/write syscalls per message (/proc/PID/io) and msgs/s.
// --mode=queue: pooled, each relay in queue mode with its own spool; after each run the
// relay's queue is waited for until empty, so its CPU per message includes the delivery.
// Not part of `make bench`; run by hand, e.g. with the baseline built into /tmp/a/dist:
//
//   node dist/bench/ab.js --mode=pooled|new|queue --runs=5 --seconds=3 /tmp/a/dist dist
//   (DIST@warn: that build's relay with LOG_LEVEL=warn, e.g. to see what the per-message log lines cost;
//   floor:node and floor:libraries: the yardsticks of bench/floor.ts, e.g. `dist floor:libraries floor:node`)
//
// A build directory needs its node_modules and package.json reachable as this one's are
// (a copy of dist/ next to a package.json and a node_modules symlink).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../test/harness/support/pki.js';
import { fmt, log, machine, machineBusySeconds, median, table } from './common.js';
import { runLoad } from './loadgen.js';
import { relayQueued, waitEmpty } from './queue.js';
import { FLOOR_KINDS, PASS, USER, startFloor, startRelay, startSmtpSink, startStunnel, type FloorKind, type RelayTarget } from './targets.js';

interface Sample {
  msgsPerSec: number;
  cpuUs: number;
  userUs: number;
  sysUs: number;
  syscrPerMsg: number;
  syscwPerMsg: number;
  busy: number;
  failed: number;
}

/** user and system CPU seconds of a process (utime, stime). */
function cpuSplit(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { user: Number(f[11]) / 100, sys: Number(f[12]) / 100 };
}

/** Read and write syscalls of a process so far (/proc/PID/io). */
function syscalls(pid: number): { r: number; w: number } {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  return { r: Number(/syscr: (\d+)/.exec(io)?.[1] ?? NaN), w: Number(/syscw: (\d+)/.exec(io)?.[1] ?? NaN) };
}

async function main() {
  const args = process.argv.slice(2);
  const opt = (name: string, dflt: string) => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? dflt;
  const mode = opt('mode', 'pooled');
  const runs = Number(opt('runs', '5'));
  const seconds = Number(opt('seconds', '3'));
  const connections = Number(opt('connections', '20'));
  // DIST or DIST@LEVEL (the relay's LOG_LEVEL; default info, as in production), or
  // floor:node / floor:libraries (bench/floor.ts, the yardsticks)
  const specs = args.filter((a) => !a.startsWith('--')).map((a) => {
    if (a.startsWith('floor:')) {
      const kind = a.slice(6) as FloorKind;
      if (!FLOOR_KINDS.includes(kind)) throw new Error(`${a}: no such yardstick (floor:${FLOOR_KINDS.join(', floor:')})`);
      return { dist: a, logLevel: 'info', floor: kind };
    }
    const at = a.lastIndexOf('@');
    return at > 0 ? { dist: path.resolve(a.slice(0, at)), logLevel: a.slice(at + 1), floor: undefined } : { dist: path.resolve(a), logLevel: 'info', floor: undefined };
  });
  const builds = specs.map((s) => (s.logLevel === 'info' ? s.dist : `${s.dist} LOG_LEVEL=${s.logLevel}`));
  if (builds.length < 2 || !['pooled', 'new', 'queue'].includes(mode) || !(runs > 0) || !(seconds > 0)) {
    throw new Error('usage: node dist/bench/ab.js [--mode=pooled|new|queue] [--runs=N] [--seconds=S] [--connections=N] DIST_A DIST_B ...');
  }
  const labels = opt('labels', builds.map((_, i) => String.fromCharCode(65 + i)).join(',')).split(',');
  const cores = os.availableParallelism();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-ab-'));
  const pki = await createPki({ caName: 'bench CA' });
  const cert = await pki.issue({ name: 'server' });
  const stops: (() => Promise<void>)[] = [];
  const load0 = os.loadavg();
  try {
    const sink = await startSmtpSink();
    stops.push(sink.stop);
    const tlsSink = await startStunnel(dir, cert, sink.port);
    stops.push(tlsSink.stop);
    const upstream = { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit' as const, maxConnections: connections };
    const relays: Pick<RelayTarget, 'child' | 'submission'>[] = [];
    for (const b of specs) {
      if (b.floor) {
        if (mode === 'queue') throw new Error(`${b.dist} has no queue mode`);
        const f = await startFloor(b.floor, cert, tlsSink.port);
        stops.push(f.stop);
        relays.push(f);
        continue;
      }
      const queue = mode === 'queue' ? `{directory: ${path.join(dir, `spool-${relays.length}`)}}` : undefined;
      const r = await startRelay({ dir, cert, upstream, workers: 1, entrypoint: path.join(b.dist, 'entrypoint.js'), logLevel: b.logLevel, ...(queue ? { queue } : {}) });
      stops.push(r.stop);
      relays.push(r);
    }
    const samples: Sample[][] = builds.map(() => []);
    const one = async (i: number): Promise<void> => {
      const pid = relays[i]!.child.pid!;
      const c0 = cpuSplit(pid);
      const s0 = syscalls(pid);
      const b0 = machineBusySeconds();
      const t0 = performance.now();
      const r = await runLoad(
        { mode: 'send', host: '127.0.0.1', port: relays[i]!.submission, tls: 'starttls', auth: { user: USER, pass: PASS }, pooled: mode !== 'new', connections, durationMs: seconds * 1000, warmupMs: 500 },
        2,
        cores,
      );
      // queue mode: until the queue is empty again (its deliveries are part of the cost)
      if (mode === 'queue') {
        const left = await waitEmpty(() => relayQueued(relays[i] as RelayTarget), 60_000);
        if (left !== 0) log(`${labels[i]}: queue not empty 60 s after the load (${left} left)`);
      }
      const secs = (performance.now() - t0) / 1000;
      const c1 = cpuSplit(pid);
      const s1 = syscalls(pid);
      const n = r.acked;
      const s: Sample = {
        msgsPerSec: r.msgsPerSec,
        cpuUs: ((c1.user + c1.sys - c0.user - c0.sys) / n) * 1e6,
        userUs: ((c1.user - c0.user) / n) * 1e6,
        sysUs: ((c1.sys - c0.sys) / n) * 1e6,
        syscrPerMsg: (s1.r - s0.r) / n,
        syscwPerMsg: (s1.w - s0.w) / n,
        busy: (machineBusySeconds() - b0) / secs / cores,
        failed: r.failed,
      };
      samples[i]!.push(s);
      log(`run ${samples[i]!.length} ${labels[i]}: ${fmt(s.msgsPerSec)} msgs/s, ${fmt(s.cpuUs)} µs/msg (user ${fmt(s.userUs)}, sys ${fmt(s.sysUs)}), syscalls/msg r ${fmt(s.syscrPerMsg, 1)} w ${fmt(s.syscwPerMsg, 1)}, machine ${fmt(s.busy * 100)}% busy, failed ${s.failed}${r.errors.length ? ` (${r.errors[0]})` : ''}`);
    };
    // one unmeasured warm-up run each (JIT, pools, TLS session caches)
    for (let i = 0; i < builds.length; i++) {
      await one(i);
      samples[i]!.pop();
    }
    for (let run = 0; run < runs; run++) {
      const order = builds.map((_, i) => i);
      if (run % 2) order.reverse();
      for (const i of order) await one(i);
    }
    const load1 = os.loadavg();
    const med = (i: number, f: (s: Sample) => number) => median(samples[i]!.map(f));
    const rows = builds.map((b, i) => [
      `${labels[i]} (${b})`,
      fmt(med(i, (s) => s.cpuUs)),
      samples[i]!.map((s) => fmt(s.cpuUs)).join(' / '),
      `${fmt(med(i, (s) => s.userUs))} / ${fmt(med(i, (s) => s.sysUs))}`,
      `${fmt(med(i, (s) => s.syscrPerMsg), 1)} / ${fmt(med(i, (s) => s.syscwPerMsg), 1)}`,
      fmt(med(i, (s) => s.msgsPerSec)),
      samples[i]!.map((s) => fmt(s.msgsPerSec)).join(' / '),
      `${fmt(med(i, (s) => s.busy * 100))}%`,
      samples[i]!.reduce((a, s) => a + s.failed, 0),
      i === 0 ? '' : `${fmt((med(i, (s) => s.cpuUs) / med(0, (s) => s.cpuUs) - 1) * 100, 1)}%`,
      // run k of this build against run k of A, measured next to each other: the machine's
      // load drifts less within a pair than over the whole session
      i === 0 ? '' : `${fmt((median(samples[i]!.map((s, k) => s.cpuUs / samples[0]![k]!.cpuUs)) - 1) * 100, 1)}%`,
    ]);
    console.log(
      `A/B ${mode}, ${connections} connections, ${runs} runs of ${seconds} s per build (alternating), ${new Date().toISOString().slice(0, 16)} UTC\n` +
        `Machine: ${machine()}; load average ${load0.map((l) => l.toFixed(2)).join(' ')} at start, ${load1.map((l) => l.toFixed(2)).join(' ')} at end\n\n` +
        table(['build', 'CPU µs/msg (median)', 'runs', 'user / sys µs/msg', 'read / write syscalls per msg', 'msgs/s (median)', 'runs', 'machine busy', 'failed', 'CPU vs A (medians)', 'CPU vs A (median of paired runs)'], rows),
    );
  } finally {
    for (const stop of stops.reverse()) await stop().catch((e: unknown) => log(`stop: ${String(e)}`));
    await pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
