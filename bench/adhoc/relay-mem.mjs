// Ad hoc (not part of make bench): the relay's memory per idle TLS session, with its
// process.memoryUsage() split (mem.mjs prints it on SIGUSR2), 2 s and 14 s after opening.
//   flock /tmp/bench.lock node bench/adhoc/relay-mem.mjs N starttls|implicit LABEL [ENV=V ...] [-- node flags]
// The relay runs with the image runtime (bench/targets.ts) plus the ENV and flags given.
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPki } from '../../dist/test/harness/support/pki.js';
import { holdConnections } from '../../dist/bench/loadgen.js';
import { rssKiB, sleep } from '../../dist/bench/common.js';
import { startRelay, startSmtpSink, startStunnel } from '../../dist/bench/targets.js';
const [nS, mode, label, ...rest] = process.argv.slice(2);
const dd = rest.indexOf('--');
const envs = dd >= 0 ? rest.slice(0, dd) : rest;
const flags = dd >= 0 ? rest.slice(dd + 1) : [];
for (const e of envs) { const i = e.indexOf('='); process.env[e.slice(0, i)] = e.slice(i + 1); }
const n = Number(nS);
const dir = mkdtempSync(path.join(os.tmpdir(), 'rmem-'));
const pki = await createPki({ caName: 'bench CA' });
const cert = await pki.issue({ name: 'server' });
const sink = await startSmtpSink();
const tlsSink = await startStunnel(dir, cert, sink.port);
const SOURCES = Array.from({ length: 10 }, (_, i) => `127.0.0.${i + 2}`);
const relay = await startRelay({ dir, cert, upstream: { port: tlsSink.port, caFile: cert.caFile, tls: 'implicit', maxConnections: 5 }, maxConnections: n + 100, maxConnectionsPerIp: Math.ceil(n / 10) + 100, logLevel: 'warn', nodeArgs: [`--import=${new URL('./mem.mjs', import.meta.url).href}`, ...flags] });
const pid = relay.child.pid;
const port = mode === 'implicit' ? relay.submissions : relay.submission;
const warm = await holdConnections({ mode: 'hold', tls: mode, host: '127.0.0.1', port, connections: 50, localAddresses: SOURCES, parallel: 50, timeoutMs: 20000 }, 1);
warm.close();
await sleep(3000);
process.kill(pid, 'SIGUSR2');
const rss0 = rssKiB(pid);
const h = await holdConnections({ mode: 'hold', tls: mode, host: '127.0.0.1', port, connections: n, localAddresses: SOURCES, parallel: 200, timeoutMs: 60000 }, 2);
await sleep(2000);
process.kill(pid, 'SIGUSR2');
await sleep(300);
const rss = rssKiB(pid);
const mems = readFileSync(relay.logFile, 'utf8').split('\n').filter((l) => l.startsWith('MEM')).map((l) => JSON.parse(l.slice(4)));
const [a, b] = mems.slice(-2);
const per = (k) => ((b[k] - a[k]) / h.held).toFixed(1);
await sleep(12000);
process.kill(pid, 'SIGUSR2');
await sleep(300);
const rssLate = rssKiB(pid);
const c = readFileSync(relay.logFile, 'utf8').split('\n').filter((l) => l.startsWith('MEM')).map((l) => JSON.parse(l.slice(4))).pop();
console.log(`${label} ${mode}: after 14 s: RSS ${((rssLate - rss0) / h.held).toFixed(1)} KiB/session, heapTotal ${((c.heapTotal - a.heapTotal) / h.held).toFixed(1)} heapUsed ${((c.heapUsed - a.heapUsed) / h.held).toFixed(1)}`);
console.log(`${label} ${mode}: held ${h.held}, RSS ${((rss - rss0) / h.held).toFixed(1)} KiB/session; heapTotal ${per('heapTotal')} heapUsed ${per('heapUsed')} external ${per('external')} KiB/session`);
h.close();
await relay.stop(); await tlsSink.stop(); await sink.stop(); await pki.cleanup();
process.exit(0);
