// Scenario 3: the relay's memory per idle TLS session, and full TLS handshakes per
// second against what `openssl speed` says one core can do for the same key exchange
// (X25519) and signature (ECDSA P-256, the certificate's key).
//
// Idle sessions: STARTTLS + EHLO, then nothing; opened from 10 source addresses
// (127.0.0.2-11) by worker processes, with the relay's maxConnections and
// maxConnectionsPerIp raised for it. Handshakes: implicit-TLS listener, a new
// connection each time (no resumption), closed once the handshake is done.

import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../test/harness/support/pki.js';
import { cpuSeconds, fmt, log, rssKiB, sleep, startProcess, stopProcess, table } from './common.js';
import { holdConnections, runLoad } from './loadgen.js';
import { imageRuntime, startRelay, startSmtpSink, startStunnel } from './targets.js';

const FLOOR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), 'tls-floor.js');

/** KiB per idle implicit-TLS connection held by a bare node:tls server (Node's own floor). */
async function nodeTlsFloor(certFile: string, keyFile: string, n: number, handshakeMs: number): Promise<{ perConn: number; held: number; hsPerCpuSecond: number; hsPerSecond: number }> {
  // the same runtime as the relay (the image's node flags and ENV), so the difference is the relay's own
  const rt = imageRuntime();
  const child = startProcess(process.execPath, [...rt.nodeArgs, FLOOR, certFile, keyFile], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...rt.env } });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
      child.once('exit', (c) => reject(new Error(`tls-floor exited with ${c}`)));
    });
    const warm = await holdConnections({ mode: 'hold', tls: 'implicit', host: '127.0.0.1', port, connections: 50, localAddresses: SOURCES, parallel: 50, timeoutMs: 20_000 }, 1);
    warm.close();
    await sleep(2000);
    const rss0 = rssKiB(child.pid!);
    const h = await holdConnections({ mode: 'hold', tls: 'implicit', host: '127.0.0.1', port, connections: n, localAddresses: SOURCES, parallel: 200, timeoutMs: 60_000 }, 2);
    await sleep(2000);
    const rss = rssKiB(child.pid!);
    h.close();
    await sleep(1000);
    const hs = await handshakeRate(port, child.pid!, handshakeMs);
    return { perConn: (rss - rss0) / Math.max(1, h.held), held: h.held, hsPerCpuSecond: hs.perCpuSecond, hsPerSecond: hs.rate };
  } finally {
    await stopProcess(child);
  }
}

/** Full handshakes/s against `port` from 2 generator processes, and per CPU-second of `pid`. */
async function handshakeRate(port: number, pids: number | (() => number[]), ms: number) {
  const all = typeof pids === 'number' ? () => [pids] : pids;
  const cpu = () => all().reduce((a, p) => a + cpuSeconds(p), 0);
  const cpu0 = cpu();
  const t0 = performance.now();
  const r = await runLoad({ mode: 'handshake', host: '127.0.0.1', port, connections: 64, durationMs: ms, warmupMs: 500 }, 2, os.availableParallelism());
  const secs = (performance.now() - t0) / 1000;
  const serverCores = (cpu() - cpu0) / secs;
  return { rate: r.msgsPerSec, serverCores, perCpuSecond: r.msgsPerSec / serverCores, failed: r.failed, what: r.errors[0] ?? '', generatorShare: r.cpuShare };
}

const SOURCES = Array.from({ length: 10 }, (_, i) => `127.0.0.${i + 2}`);

/** openssl speed for X25519 and ECDSA P-256 on one core: ops/s. */
function opensslSpeed(seconds: number): { x25519: number; sign: number; text: string } {
  const out = execFileSync('openssl', ['speed', '-seconds', String(seconds), 'ecdhx25519', 'ecdsap256'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  const sign = /256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)/.exec(out);
  const x = /ecdh \(X25519\)\s+\S+\s+([\d.]+)/.exec(out);
  if (!sign || !x) throw new Error(`cannot parse openssl speed output:\n${out}`);
  return { x25519: Number(x[1]), sign: Number(sign[1]), text: out.trim().split('\n').slice(-4).join('\n') };
}

export async function connections(o: { counts: number[]; handshakeMs: number }): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-conn-'));
  const pki = await createPki({ caName: 'bench CA' });
  const cert = await pki.issue({ name: 'server' });
  const stops: (() => Promise<void>)[] = [];
  const holders: (() => void)[] = [];
  try {
    const sink = await startSmtpSink();
    stops.push(sink.stop);
    const tlsSink = await startStunnel(dir, cert, sink.port);
    stops.push(tlsSink.stop);
    const max = Math.max(...o.counts);
    const relay = await startRelay({
      dir,
      cert,
      upstream: { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit', maxConnections: 5 },
      maxConnections: max + 100,
      maxConnectionsPerIp: Math.ceil(max / SOURCES.length) + 100,
      logLevel: 'warn',
    });
    stops.push(relay.stop);
    // a multi-worker relay (bench --workers=N) is its primary and its workers
    const rssOf = (t: { pids(): number[] }) => t.pids().reduce((a, p) => a + rssKiB(p), 0);
    // warm up the TLS and session code paths, then a baseline
    const warm = await holdConnections({ mode: 'hold', host: '127.0.0.1', port: relay.submission, connections: 50, localAddresses: SOURCES, parallel: 50, timeoutMs: 20_000 }, 1);
    warm.close();
    await sleep(3000);
    const rss0 = rssOf(relay);
    const rows: (string | number)[][] = [];
    let held = 0;
    let worst = 0;
    for (const n of o.counts) {
      const t0 = performance.now();
      const h = await holdConnections(
        { mode: 'hold', host: '127.0.0.1', port: relay.submission, connections: n - held, localAddresses: SOURCES, parallel: 200, timeoutMs: 120_000 },
        2,
      );
      holders.push(h.close);
      held += h.held;
      const openS = (performance.now() - t0) / 1000;
      if (h.failed) log(`hold ${n}: ${h.failed} failed, e.g. ${h.errors.join(' | ')}`);
      await sleep(2000);
      const rss = rssOf(relay);
      const per = (rss - rss0) / held;
      worst = Math.max(worst, per);
      rows.push([fmt(n), fmt(held), fmt(rss0), fmt(rss), fmt(per, 1), fmt(openS, 1)]);
      log(`idle ${held}: RSS ${rss} KiB, ${per.toFixed(1)} KiB per connection`);
    }
    for (const c of holders.splice(0)) c();
    // the same for implicit TLS (one socket instead of the plaintext one plus its TLS wrapper), on a fresh relay
    const relay2 = await startRelay({
      dir,
      cert,
      upstream: { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit', maxConnections: 5 },
      maxConnections: max + 100,
      maxConnectionsPerIp: Math.ceil(max / SOURCES.length) + 100,
      logLevel: 'warn',
    });
    const warm2 = await holdConnections({ mode: 'hold', tls: 'implicit', host: '127.0.0.1', port: relay2.submissions, connections: 50, localAddresses: SOURCES, parallel: 50, timeoutMs: 20_000 }, 1);
    warm2.close();
    await sleep(3000);
    const rssI0 = rssOf(relay2);
    const hi = await holdConnections({ mode: 'hold', tls: 'implicit', host: '127.0.0.1', port: relay2.submissions, connections: o.counts[0]!, localAddresses: SOURCES, parallel: 200, timeoutMs: 60_000 }, 2);
    await sleep(2000);
    const rssI = rssOf(relay2);
    hi.close();
    await relay2.stop();
    const floor = await nodeTlsFloor(cert.chainFile, cert.keyFile, o.counts[0]!, o.handshakeMs);
    rows.push([`${fmt(o.counts[0]!)}, implicit TLS listener (fresh relay)`, fmt(hi.held), fmt(rssI0), fmt(rssI), fmt((rssI - rssI0) / Math.max(1, hi.held), 1), '']);
    rows.push([`${fmt(o.counts[0]!)} on a bare node:tls server (Node's floor)`, fmt(floor.held), '', '', fmt(floor.perConn, 1), '']);
    await sleep(1000);

    // full handshakes per second on the implicit-TLS listener
    const speed = opensslSpeed(3);
    const bound = 1 / (1 / speed.x25519 + 1 / speed.sign);
    const hs = await handshakeRate(relay.submissions, () => relay.pids(), o.handshakeMs);
    const rate = hs.rate;
    const relayCores = hs.serverCores;
    const perCore = hs.perCpuSecond;
    const secs = o.handshakeMs / 1000;
    return (
      `### Scenario 3: idle TLS sessions and full handshakes\n\n` +
      `Idle sessions after STARTTLS + EHLO, from ${SOURCES.length} source addresses; relay RSS before: ${fmt(rss0)} KiB. The relay and the bare node:tls server run as the image runs them: \`node ${imageRuntime().nodeArgs.join(' ')}\`, ${Object.entries(imageRuntime().env).map(([k, v]) => `${k}=${v}`).join(' ')} (entrypoint.ts).\n\n` +
      table(['target sessions', 'open', 'RSS before (KiB)', 'RSS with them (KiB)', 'KiB per session', 'time to open (s)'], rows) +
      '\n\n' +
      `Full TLS handshakes (${hs.what}, ECDSA P-256 certificate; a new connection each, no resumption, 64 in flight from 2 generator processes using ${fmt(hs.generatorShare * 100)}% of the machine, ${fmt(secs, 1)} s; ${hs.failed} failed):\n\n` +
      table(
        ['measure', 'value', 'goal'],
        [
          ['worst KiB per idle TLS session', fmt(worst, 1), '<= 30'],
          ['handshakes/s (machine shared with the client)', fmt(rate), ''],
          ['relay CPU during handshakes (cores)', fmt(relayCores, 2), '(<= the workers)'],
          ['handshakes per relay CPU-second', fmt(perCore), ''],
          [`openssl speed, one core: X25519 ${fmt(speed.x25519)} op/s, ECDSA P-256 sign ${fmt(speed.sign)}/s -> bound`, fmt(bound), ''],
          ['handshakes/s / bound', fmt(rate / bound, 3), '>= 0.25'],
          ['handshakes per relay CPU-second / bound', fmt(perCore / bound, 3), '>= 0.25'],
          ["bare node:tls server (Node's floor): handshakes/s, per server CPU-second", `${fmt(floor.hsPerSecond)}, ${fmt(floor.hsPerCpuSecond)}`, ''],
          ["bare node:tls per CPU-second / bound", fmt(floor.hsPerCpuSecond / bound, 3), ''],
        ],
      ) +
      '\n'
    );
  } finally {
    for (const c of holders) c();
    for (const stop of stops.reverse()) await stop().catch((e: unknown) => log(`stop: ${String(e)}`));
    await pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}
