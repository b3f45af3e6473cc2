// Ad hoc (not part of make bench): RSS per idle TLS session of a bare node:tls server.
//   flock /tmp/bench.lock node bench/adhoc/tls-mem.mjs N LABEL [ENV=V ...] [-- node flags]
// Server: bench/adhoc/tls-floor-variants.mjs (bench/tls-floor.ts that prints memoryUsage()
// on SIGUSR2; ENV TLS12=1 caps it at TLS 1.2, NOTICKET=1 sets sessionTimeout 0). Implicit
// TLS sessions from 127.0.0.2-11 via bench/loadgen.ts holdConnections.
import { createPki } from '../../dist/test/harness/support/pki.js';
import { holdConnections } from '../../dist/bench/loadgen.js';
import { rssKiB, sleep, startProcess, stopProcess } from '../../dist/bench/common.js';
const [n, label, ...rest] = process.argv.slice(2);
const dd = rest.indexOf('--');
const envs = dd >= 0 ? rest.slice(0, dd) : rest;
const flags = dd >= 0 ? rest.slice(dd + 1) : [];
const env = { ...process.env };
for (const e of envs) { const i = e.indexOf('='); env[e.slice(0, i)] = e.slice(i + 1); }
const pki = await createPki({ caName: 'm CA' });
const cert = await pki.issue({ name: 'server' });
const SOURCES = Array.from({ length: 10 }, (_, i) => `127.0.0.${i + 2}`);
const server = process.env.SERVER ?? new URL('./tls-floor-variants.mjs', import.meta.url).pathname;
const child = startProcess(process.execPath, [...flags, server, cert.chainFile, cert.keyFile], { stdio: ['ignore', 'pipe', 'inherit'], env });
const port = await new Promise((res) => child.stdout.once('data', (d) => res(Number(d.toString().trim()))));
const mode = 'implicit';
const warm = await holdConnections({ mode: 'hold', tls: mode, host: '127.0.0.1', port, connections: 50, localAddresses: SOURCES, parallel: 50, timeoutMs: 20000 }, 1);
warm.close();
process.kill(child.pid,'SIGUSR2');await sleep(2000);
const rss0 = rssKiB(child.pid);
const h = await holdConnections({ mode: 'hold', tls: mode, host: '127.0.0.1', port, connections: Number(n), localAddresses: SOURCES, parallel: 200, timeoutMs: 60000 }, 2);
process.kill(child.pid,'SIGUSR2');await sleep(2000);
const rss = rssKiB(child.pid);
h.close();
console.log(`${label}: held ${h.held} rss0 ${rss0} rss ${rss} -> ${((rss - rss0) / h.held).toFixed(1)} KiB/session`);
await stopProcess(child);
await pki.cleanup();
process.exit(0);
