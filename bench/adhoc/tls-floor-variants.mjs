// bench/tls-floor.ts with knobs for bench/adhoc/tls-mem.mjs: TLS12=1, NOTICKET=1; memoryUsage() on SIGUSR2.
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
const [certFile, keyFile] = process.argv.slice(2);
const opts = { cert: readFileSync(certFile), key: readFileSync(keyFile) };
if (process.env.TLS12) opts.maxVersion = 'TLSv1.2';
if (process.env.NOTICKET) opts.sessionTimeout = 0;
const server = tls.createServer(opts, (s) => {
  s.setNoDelay(true);
  s.write('220 floor.bench.example ESMTP\r\n');
  let buf = '';
  s.setEncoding('latin1');
  s.on('data', (d) => { buf += d; let i; while ((i = buf.indexOf('\r\n')) >= 0) { buf = buf.slice(i + 2); s.write('250 floor.bench.example\r\n'); } });
  s.on('error', () => undefined);
});
process.on('SIGUSR2', () => { const m = process.memoryUsage(); process.stderr.write(`MEM ${JSON.stringify({ rss: m.rss >> 10, heapTotal: m.heapTotal >> 10, heapUsed: m.heapUsed >> 10, external: m.external >> 10, ab: m.arrayBuffers >> 10 })}\n`); });
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
