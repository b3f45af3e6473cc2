// Round trip of one SharedLimits call (relay/limits.ts) from a worker to its primary over
// node:cluster IPC (advanced serialization), as a multi-worker relay makes them.
//   make build && node bench/adhoc/ipc-rtt.mjs
import cluster from 'node:cluster';
const { LocalLimits, LimitServer, IpcLimits } = await import(new URL('../../dist/relay/limits.js', import.meta.url).href);
if (cluster.isPrimary) {
  cluster.setupPrimary({ serialization: 'advanced' });
  const local = new LocalLimits({ limits: { maxConnections: 1e6, maxConnectionsPerIp: 1e6, maxUnauthenticated: 1e6, preAuthTimeoutMs: 1e4 }, lockout: { maxFailures: 5, windowMs: 6e5, durationMs: 9e5 } }, () => {});
  const w = cluster.fork();
  const server = new LimitServer(local, (_id, m) => w.send(m));
  w.on('message', (m) => { if (m?.t === 'limits') server.handle(w.id, m); else { console.log(JSON.stringify(m)); w.kill(); } });
} else {
  const lim = new IpcLimits({ send: (m) => process.send(m), onMessage: (h) => process.on('message', h) });
  for (let i = 0; i < 2000; i++) await lim.lockedFor(['ip:1', 'user:x']);
  const n = 20000; const t0 = performance.now();
  for (let i = 0; i < n; i++) await lim.lockedFor(['ip:1', 'user:x']);
  const seq = (performance.now() - t0) / n;
  const t1 = performance.now();
  await Promise.all(Array.from({ length: n }, (_, i) => lim.connect({ key: `k${i}`, ip: '10.0.0.1', listener: 's', countedAtAccept: false }, () => {})));
  const par = (performance.now() - t1) / n;
  process.send({ t: 'result', sequentialRttMs: +seq.toFixed(4), pipelinedPerCallMs: +par.toFixed(4) });
}
