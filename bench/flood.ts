// Scenario "flood": the connection flood of issue 16 against the relay at its production
// limits (maxConnections 1,000, maxConnectionsPerIp 20, preAuthTimeout and
// maxUnauthenticated at their defaults): 50 client addresses inside the allow-list each
// hold 20 idle TCP connections (never TLS, never AUTH) and reopen each one the relay
// closes, and then twice that (100 addresses, 2,000 connections). Meanwhile a legitimate
// client sends messages one after another, each over a new connection (STARTTLS + AUTH
// PLAIN) from another address. Reported: its success rate and send times, how many idle
// connections the flood kept open and opened in all, what the relay shed, and its RSS.
// The same checks at a smaller scale are a test (test/relay/flood.test.ts).

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { createPki } from '../test/harness/support/pki.js';
import { fmt, log, rssKiB, sleep, table } from './common.js';
import { PASS, USER, startRelay, startSmtpSink, startStunnel } from './targets.js';
import { startIdleFlood } from '../test/harness/support/flood.js';

const PER_IP = 20;

const flood = (port: number, addresses: string[], maxOpens: number) => startIdleFlood(port, addresses, PER_IP, maxOpens);

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let n = 0;
  for (const line of text.split('\n')) if (line.startsWith(name + '{') || line.startsWith(name + ' ')) n += Number(line.split(' ').pop());
  return n;
}

const pct = (xs: number[], p: number) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]! : NaN);

export async function floodScenario(o: { sends: number; fillMs: number }): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-flood-'));
  const pki = await createPki({ caName: 'bench CA' });
  const cert = await pki.issue({ name: 'server' });
  const stops: (() => Promise<void>)[] = [];
  try {
    const sink = await startSmtpSink();
    stops.push(sink.stop);
    const tlsSink = await startStunnel(dir, cert, sink.port);
    stops.push(tlsSink.stop);
    const relay = await startRelay({ dir, cert, upstream: { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit', maxConnections: 5 }, maxConnections: 1000, maxConnectionsPerIp: PER_IP, logLevel: 'warn' });
    stops.push(relay.stop);
    const pid = relay.child.pid!;
    const legitimate = async (n: number) => {
      const times: number[] = [];
      let ok = 0;
      const errors = new Map<string, number>();
      for (let i = 0; i < n; i++) {
        const t = nodemailer.createTransport({
          host: '127.0.0.1', port: relay.submission, requireTLS: true, auth: { user: USER, pass: PASS },
          tls: { ca: pki.ca.certPem, servername: 'localhost' }, connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 10_000,
        });
        const t0 = performance.now();
        try {
          const info = await t.sendMail({ from: 'app@example.com', to: 'rcpt@example.net', subject: `legit ${i}`, text: 'hello' });
          if (/^250 /.test(info.response)) {
            ok++;
            times.push(performance.now() - t0);
          }
        } catch (e) {
          const k = String((e as Error).message).slice(0, 60);
          errors.set(k, (errors.get(k) ?? 0) + 1);
        } finally {
          t.close();
        }
      }
      return { ok, times, errors };
    };
    await legitimate(5); // warm up
    await sleep(2000);
    const rows: (string | number)[][] = [];
    for (const [label, addresses] of [
      ['none', 0],
      ['the issue\'s: 50 addresses × 20', 50],
      ['twice that: 100 addresses × 20', 100],
    ] as const) {
      const rss0 = rssKiB(pid);
      const shed0 = await metric(relay.metrics, 'smtp_relay_connections_shed_total');
      const f = flood(relay.submission, Array.from({ length: addresses }, (_, i) => `127.0.${1 + Math.floor(i / 200)}.${1 + (i % 200)}`), 200_000);
      let peak = rss0;
      const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(pid))), 250);
      await sleep(addresses ? o.fillMs : 0);
      const held = f.open;
      const t0 = performance.now();
      const r = await legitimate(o.sends);
      const secs = (performance.now() - t0) / 1000;
      const heldEnd = f.open;
      clearInterval(sampler);
      peak = Math.max(peak, rssKiB(pid));
      f.stop();
      const shed = (await metric(relay.metrics, 'smtp_relay_connections_shed_total')) - shed0;
      if (r.errors.size) log(`flood ${label}: failures ${[...r.errors].map(([k, v]) => `${v}× ${k}`).join(' | ')}`);
      log(`flood ${label}: ${r.ok}/${o.sends} in ${secs.toFixed(1)} s, flood held ${held}/${heldEnd}, opened ${f.opens}, shed ${shed}, RSS ${rss0}→${peak} KiB`);
      rows.push([label, fmt(addresses * PER_IP), `${fmt(held)} / ${fmt(heldEnd)}`, fmt(f.opens), fmt(shed), `${r.ok}/${o.sends}`, fmt((100 * r.ok) / o.sends, 1), fmt(pct(r.times, 50)), fmt(pct(r.times, 95)), fmt(rss0 / 1024, 0), fmt(peak / 1024, 0)]);
      await sleep(3000); // the relay closes what is left of the flood
    }
    return [
      '### Connection flood (issue 16)\n',
      `The relay at maxConnections 1,000, maxConnectionsPerIp ${PER_IP}, preAuthTimeout and maxUnauthenticated at their defaults; the flood's idle connections reopen as soon as the relay closes them. The legitimate client sends ${o.sends} messages one after another, each over a new connection (STARTTLS + AUTH PLAIN with the production scrypt cost) from 127.0.0.1, ${o.fillMs / 1000} s after the flood started.\n`,
      table(['flood', 'idle connections tried', 'held open (at start / end)', 'flood connections opened', 'shed by the relay', 'legitimate delivered', 'success %', 'send p50 ms', 'send p95 ms', 'relay RSS before (MiB)', 'relay RSS peak (MiB)'], rows),
      '',
    ].join('\n');
  } finally {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await pki.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}
