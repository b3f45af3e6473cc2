// Scenario 1 (throughput side by side) and scenario 2 (latency), on one set of targets:
//   a) smtp-sink directly (the ceiling), and through stunnel (the TLS ceiling)
//   b) our relay -> stunnel -> smtp-sink, STARTTLS + AUTH PLAIN, upstream over verified TLS
//   c) Postfix as the same relay (STARTTLS required, Cyrus sasldb AUTH) -> stunnel -> smtp-sink
// and without TLS/AUTH where the target allows it (smtp-sink, Postfix -> smtp-sink in the
// clear; our relay has no plaintext mode on either side). Every run is bounded in time
// (warmup + window) and each target is measured 3 times, interleaved; the median is reported.

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../test/harness/support/pki.js';
import { cpuSecondsWithReaped, fmt, log, machineBusySeconds, median, percentile, sleep, table } from './common.js';
import { runLoad, type LoadResult, type SendOptions } from './loadgen.js';
import { PASS, USER, postfixQueueSize, startPostfix, startRelay, startSmtpSink, startStunnel, type PostfixTarget, type Target } from './targets.js';

export interface ThroughputConfig {
  connections: number;
  reps: number;
  warmupMs: number;
  durationMs: number;
  processes: number;
  /** Only these row keys (for quick runs); default all. */
  only?: string[];
}

interface Case {
  key: string;
  label: string;
  target: Target;
  load: Omit<SendOptions, 'mode' | 'connections' | 'durationMs' | 'warmupMs'>;
  /** Postfix instance whose queue must be empty before the next run. */
  drain?: PostfixTarget;
  /** The upstream processes this target delivers to (stunnel, smtp-sink): their CPU is the harness's, with the load generator's. */
  upstream?: Target[];
}

interface Measured {
  load: LoadResult;
  /** Target CPU seconds per second (1.0 = one core). */
  targetCores: number;
  /** Target CPU per acknowledged message (µs), from the start of the load until its queue drained (Postfix delivers after the window). */
  cpuPerMsgUs: number;
  machineBusy: number;
  /** CPU per acknowledged message of everything but the target: the load generator (its window) and the upstream processes (the whole run and drain), µs. */
  harnessPerMsgUs: number;
  drainMs: number;
  /** Wall time of the load run (warm-up + window + ramp-down), s. */
  runS: number;
}

export interface ThroughputOutput {
  text: string;
  /** Median msgs/s by case key. */
  rates: Record<string, number>;
}

async function measure(c: Case, cfg: ThroughputConfig, cores: number, extra: Partial<SendOptions> = {}): Promise<Measured> {
  // Every process of the target, also those that come and go (their CPU reaches their parent's cutime when reaped).
  const cpuOf = (targets: Target[]) => targets.flatMap((t) => t.pids()).reduce((a, p) => a + cpuSecondsWithReaped(p), 0);
  const targetCpu = () => cpuOf([c.target]);
  const upstreamCpu = () => cpuOf(c.upstream ?? []);
  const cpu0 = targetCpu();
  const up0 = upstreamCpu();
  const busy0 = machineBusySeconds();
  const t0 = performance.now();
  const load = await runLoad({ mode: 'send', connections: cfg.connections, durationMs: cfg.durationMs, warmupMs: cfg.warmupMs, ...c.load, ...extra }, cfg.processes, cores);
  const secs = (performance.now() - t0) / 1000;
  const targetCores = (targetCpu() - cpu0) / secs;
  const machineBusy = (machineBusySeconds() - busy0) / secs / cores;
  let drainMs = 0;
  if (c.drain) {
    const d0 = performance.now();
    while (postfixQueueSize(c.drain) > 0 && performance.now() - d0 < 30_000) await sleep(200);
    drainMs = performance.now() - d0;
  }
  const cpuPerMsgUs = load.acked ? ((targetCpu() - cpu0) / load.acked) * 1e6 : NaN;
  const harnessPerMsgUs = (load.ok ? (load.cpuSeconds / load.ok) * 1e6 : NaN) + (load.acked ? ((upstreamCpu() - up0) / load.acked) * 1e6 : NaN);
  if (load.failed) log(`${c.key}: ${load.failed} failed, e.g. ${load.errors.join(' | ')}`);
  return { load, targetCores, cpuPerMsgUs, machineBusy, harnessPerMsgUs, drainMs, runS: secs };
}

export async function throughputAndLatency(cfg: ThroughputConfig): Promise<ThroughputOutput> {
  const cores = os.availableParallelism();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-tp-'));
  const pki = await createPki({ caName: 'bench CA' });
  const cert = await pki.issue({ name: 'server' });
  const stops: (() => Promise<void>)[] = [];
  try {
    const sink = await startSmtpSink();
    stops.push(sink.stop);
    const tlsSink = await startStunnel(dir, cert, sink.port);
    stops.push(tlsSink.stop);
    const upstream = { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit' as const, maxConnections: cfg.connections };
    const relay = await startRelay({ dir, cert, upstream });
    stops.push(relay.stop);
    const relayCheap = await startRelay({ dir, cert, upstream, hashN: 1024 });
    stops.push(relayCheap.stop);
    // one worker per core (workers: auto) next to the single process, unless --workers chose for all
    const perCore = cores > 1 && !process.env.BENCH_RELAY_WORKERS ? await startRelay({ dir, cert, upstream, workers: 'auto' }) : undefined;
    if (perCore) stops.push(perCore.stop);
    const pfTls = await startPostfix({ dir, cert, relayhost: { port: tlsSink.port, tls: true, caFile: cert.caFile } });
    stops.push(pfTls.stop);
    const pfPlain = await startPostfix({ dir, cert, relayhost: { port: sink.port, tls: false, caFile: cert.caFile } });
    stops.push(pfPlain.stop);
    const auth = { user: USER, pass: PASS };
    const h = '127.0.0.1';
    const cases: Case[] = [
      { key: 'a', label: 'a) smtp-sink, plain', target: sink, upstream: [], load: { host: h, port: sink.port, tls: 'plain', pooled: true } },
      { key: 'aT', label: "a') stunnel -> smtp-sink, implicit TLS", target: tlsSink, upstream: [sink], load: { host: h, port: tlsSink.port, tls: 'implicit', pooled: true } },
      { key: 'b', label: 'b) relay, STARTTLS + AUTH', target: relay, load: { host: h, port: relay.submission, tls: 'starttls', auth, pooled: true } },
      ...(perCore ? [{ key: 'bW', label: `b) relay, ${cores} workers (one per core), STARTTLS + AUTH`, target: perCore, load: { host: h, port: perCore.submission, tls: 'starttls', auth, pooled: true } }] : []),
      { key: 'c', label: 'c) Postfix, STARTTLS + AUTH', target: pfTls, drain: pfTls, load: { host: h, port: pfTls.submission, tls: 'starttls', auth, pooled: true } },
      { key: 'cP', label: 'c) Postfix, plain (no TLS, no AUTH)', target: pfPlain, drain: pfPlain, load: { host: h, port: pfPlain.plain, tls: 'plain', pooled: true } },
      { key: 'aN', label: 'a) smtp-sink, plain, new conn/msg', target: sink, upstream: [], load: { host: h, port: sink.port, tls: 'plain', pooled: false } },
      { key: 'bN', label: 'b) relay, STARTTLS + AUTH, new conn/msg (scrypt N=32768)', target: relay, load: { host: h, port: relay.submission, tls: 'starttls', auth, pooled: false } },
      ...(perCore
        ? [{ key: 'bNW', label: `b) relay, ${cores} workers, STARTTLS + AUTH, new conn/msg (scrypt N=32768)`, target: perCore, load: { host: h, port: perCore.submission, tls: 'starttls', auth, pooled: false } }]
        : []),
      { key: 'bNc', label: 'b) relay, STARTTLS + AUTH, new conn/msg (scrypt N=1024)', target: relayCheap, load: { host: h, port: relayCheap.submission, tls: 'starttls', auth, pooled: false } },
      { key: 'cN', label: 'c) Postfix, STARTTLS + AUTH, new conn/msg', target: pfTls, drain: pfTls, load: { host: h, port: pfTls.submission, tls: 'starttls', auth, pooled: false } },
      { key: 'cPN', label: 'c) Postfix, plain, new conn/msg', target: pfPlain, drain: pfPlain, load: { host: h, port: pfPlain.plain, tls: 'plain', pooled: false } },
    ].filter((c) => !cfg.only || cfg.only.includes(c.key)) as Case[];
    // the relays and Postfix deliver through stunnel to smtp-sink (Postfix plain: to smtp-sink)
    for (const c of cases) c.upstream ??= c.target === pfPlain ? [sink] : [tlsSink, sink];

    const results = new Map<string, Measured[]>();
    for (let rep = 1; rep <= cfg.reps; rep++) {
      for (const c of cases) {
        const m = await measure(c, cfg, cores);
        log(`rep ${rep} ${c.label}: ${fmt(m.load.msgsPerSec)} msgs/s, generator ${fmt(m.load.cpuShare * 100)}% of ${cores} cores, target ${fmt(m.targetCores * 100)}% of a core, failed ${m.load.failed}`);
        results.set(c.key, [...(results.get(c.key) ?? []), m]);
      }
    }
    // reference: Postfix's own load generator against the same sink (is ours the limit?)
    let smtpSource = NaN;
    if (!cfg.only || cfg.only.includes('a')) {
      const n = 20_000;
      const t0 = performance.now();
      const ok = await new Promise<boolean>((resolve) =>
        execFile('smtp-source', ['-4', '-s', String(cfg.connections), '-l', '10240', '-m', String(n), '-f', 'bench@example.com', '-t', 'rcpt@example.net', `127.0.0.1:${sink.port}`], { timeout: 30_000 }, (err) => resolve(!err)),
      );
      if (ok) smtpSource = n / ((performance.now() - t0) / 1000);
      log(`smtp-source -> smtp-sink: ${fmt(smtpSource)} msgs/s`);
    }
    const rates: Record<string, number> = {};
    const cpuUs: Record<string, number> = {};
    /** msgs/s the whole machine could carry at the target's and the harness's measured CPU per message. */
    const bound: Record<string, number> = {};
    const rows: (string | number)[][] = [];
    for (const c of cases) {
      const ms = results.get(c.key)!;
      const rate = median(ms.map((m) => m.load.msgsPerSec));
      rates[c.key] = rate;
      cpuUs[c.key] = median(ms.map((m) => m.cpuPerMsgUs));
      const harnessUs = median(ms.map((m) => m.harnessPerMsgUs));
      // a one-process relay can use one core of them (b, bN, bNc unless --workers)
      const oneCore = (c.target === relay || c.target === relayCheap) && !process.env.BENCH_RELAY_WORKERS;
      bound[c.key] = Math.min((cores * 1e6) / (cpuUs[c.key]! + harnessUs), oneCore ? 1e6 / cpuUs[c.key]! : Infinity);
      if (c.drain) rates[`${c.key}_e2e`] = median(ms.map((m) => (m.load.msgsPerSec * m.runS) / (m.runS + m.drainMs / 1000)));
      const resumed = ms.reduce((a, m) => a + m.load.tlsResumed, 0);
      const hs = ms.reduce((a, m) => a + m.load.tlsHandshakes, 0);
      rows.push([
        c.label,
        fmt(rate),
        ms.map((m) => fmt(m.load.msgsPerSec)).join(' / '),
        `${fmt(median(ms.map((m) => m.load.cpuShare * 100)))}%`,
        `${fmt(median(ms.map((m) => m.targetCores * 100)))}%`,
        fmt(median(ms.map((m) => m.cpuPerMsgUs))),
        `${fmt(median(ms.map((m) => m.machineBusy * 100)))}%`,
        fmt(harnessUs),
        fmt(bound[c.key]!),
        c.load.pooled ? '-' : hs ? `${fmt((resumed / hs) * 100)}%` : 'n/a',
        ms.reduce((a, m) => a + m.load.failed, 0),
        c.drain ? fmt(median(ms.map((m) => m.drainMs))) : '-',
        c.drain ? fmt(median(ms.map((m) => (m.load.msgsPerSec * m.runS) / (m.runS + m.drainMs / 1000)))) : '(= msgs/s)',
      ]);
    }
    const ratio = (x: string, y: string) => (rates[x] && rates[y] ? `${(rates[x]! / rates[y]!).toFixed(2)}` : 'n/a');
    const boundRatio = (x: string, y: string) => (bound[x] && rates[y] ? `${(bound[x]! / rates[y]!).toFixed(2)} (${fmt(bound[x]!)} / ${fmt(rates[y]!)} msgs/s)` : 'n/a');
    const cpuRatio = (x: string, y: string) => (cpuUs[x] && cpuUs[y] ? `${(cpuUs[x]! / cpuUs[y]!).toFixed(2)} (${fmt(cpuUs[x]!)} / ${fmt(cpuUs[y]!)} µs)` : 'n/a');
    let text =
      `### Scenario 1: throughput (10 KB messages, ${cfg.connections} connections, ${cfg.reps} runs of ${cfg.durationMs / 1000} s after ${cfg.warmupMs / 1000} s warmup, median)\n\n` +
      table(['target', 'msgs/s (median)', 'runs', 'generator CPU (of all cores)', 'target CPU (of one core)', 'target CPU per message (µs, incl. its queue drain)', 'machine busy', 'harness CPU per message (µs: load generator + stunnel + smtp-sink)', `machine bound (msgs/s: ${cores} cores / (target + harness) per message; a one-process relay: at most 1 core / target)`, 'TLS resumed', 'failed', 'Postfix queue drain after run (ms)', 'delivered to the sink, incl. drain (≈ msgs/s)'], rows) +
      `\n\nReference: Postfix's smtp-source (${cfg.connections} sessions, 20,000 messages of 10,240 bytes, one run) -> the same smtp-sink: ${fmt(smtpSource)} msgs/s, against our generator's ${fmt(rates['a'] ?? NaN)} msgs/s in row a).\n\n` +
      table(
        ['ratio', 'value', 'goal'],
        [
          ['b/a  relay STARTTLS+AUTH vs smtp-sink plain', ratio('b', 'a'), '(ceiling)'],
          ["b/a' relay vs smtp-sink behind stunnel TLS", ratio('b', 'aT'), '(ceiling)'],
          ['b/c  pooled, STARTTLS + AUTH', ratio('b', 'c'), '>= 2'],
          ...(perCore ? [[`bW/c  pooled, ${cores} workers`, ratio('bW', 'c'), '>= 3']] : []),
          ['b/c  pooled, Postfix counted until its queue drained to the sink', ratio('b', 'c_e2e'), '(info)'],
          ['bN/cN  new connection per message, production hash', ratio('bN', 'cN'), '>= 2'],
          ...(perCore ? [[`bNW/cN  new connection per message, ${cores} workers`, ratio('bNW', 'cN'), '>= 2']] : []),
          ['bNc/cN  new connection per message, cheap hash', ratio('bNc', 'cN'), '>= 2'],
          ['b/cP  relay (TLS+AUTH, its only mode) vs Postfix plain', ratio('b', 'cP'), '>= 2'],
          ['CPU per message, pooled: relay b / Postfix c (all its processes)', cpuRatio('b', 'c'), '<= 0.5'],
          ...(perCore ? [[`CPU per message, pooled: relay bW (${cores} workers) / Postfix c`, cpuRatio('bW', 'c'), '<= 0.5']] : []),
          ['CPU per message, new connection: relay bN / Postfix cN', cpuRatio('bN', 'cN'), '<= 0.5'],
          ['reachable on this machine, pooled: relay b machine bound / Postfix c rate', boundRatio('b', 'c'), '(info: b/c cannot exceed it)'],
          ...(perCore ? [[`reachable on this machine, pooled: relay bW (${cores} workers) machine bound / Postfix c rate`, boundRatio('bW', 'c'), '(info)']] : []),
          ['reachable on this machine, new connection: relay bN machine bound / Postfix cN rate', boundRatio('bN', 'cN'), '(info)'],
        ],
      ) +
      '\n';

    // Scenario 2: latency, end of DATA -> 250, pooled STARTTLS+AUTH sessions.
    if (!cfg.only || cfg.only.includes('lat')) {
      const max = rates['b'] ?? 0;
      const relayCase = cases.find((c) => c.key === 'b') ?? { key: 'b', label: '', target: relay, load: { host: h, port: relay.submission, tls: 'starttls' as const, auth, pooled: true } };
      const sinkCase: Case = { key: 'aT', label: '', target: tlsSink, load: { host: h, port: tlsSink.port, tls: 'implicit', pooled: true } };
      const latRows: (string | number)[][] = [];
      const lat = (m: Measured) => [fmt(m.load.msgsPerSec), fmt(percentile(m.load.latencies, 50), 2), fmt(percentile(m.load.latencies, 99), 2)];
      const one = { ...cfg, connections: 1 };
      const sRelay = await measure(relayCase, one, cores);
      const sSink = await measure(sinkCase, one, cores);
      latRows.push(['single session, relay (STARTTLS+AUTH -> TLS upstream)', 'closed loop', ...lat(sRelay)]);
      latRows.push(['single session, straight to the sink (TLS via stunnel)', 'closed loop', ...lat(sSink)]);
      const added50 = percentile(sRelay.load.latencies, 50) - percentile(sSink.load.latencies, 50);
      const added99 = percentile(sRelay.load.latencies, 99) - percentile(sSink.load.latencies, 99);
      let half99 = NaN;
      let sinkHalf99 = NaN;
      if (max > 0) {
        for (const [name, frac] of [
          ['half', 0.5],
          ['full', 1],
        ] as const) {
          const rate = Math.max(1, Math.round(max * frac));
          const mr = await measure(relayCase, cfg, cores, { rate });
          const msink = await measure(sinkCase, cfg, cores, { rate });
          latRows.push([`relay, ${cfg.connections} sessions at ${name} of max`, `${fmt(rate)}/s`, ...lat(mr)]);
          latRows.push([`sink via stunnel, ${cfg.connections} sessions, same rate`, `${fmt(rate)}/s`, ...lat(msink)]);
          if (name === 'half') {
            half99 = percentile(mr.load.latencies, 99);
            sinkHalf99 = percentile(msink.load.latencies, 99);
          }
        }
      }
      text +=
        `\n### Scenario 2: latency, end of DATA -> 250 (relay max rate from scenario 1: ${fmt(max)} msgs/s)\n\n` +
        table(['load', 'offered', 'achieved msgs/s', 'p50 ms', 'p99 ms'], latRows) +
        '\n\n' +
        table(
          ['measure', 'value (ms)', 'goal'],
          [
            ['single session added latency, p50', fmt(added50, 2), '< 2'],
            ['single session added latency, p99', fmt(added99, 2), ''],
            ['half load added latency, p99 (relay p99 - sink p99 at the same rate)', fmt(half99 - sinkHalf99, 2), '< 5'],
          ],
        ) +
        '\n';
    }
    return { text, rates };
  } finally {
    for (const stop of stops.reverse()) await stop().catch((e: unknown) => log(`stop: ${String(e)}`));
    await pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}
