// The floor for scenario 3: a bare node:tls server (same certificate, same TLS
// settings as Node's defaults) that greets and answers every line with 250, so the
// memory per idle TLS connection of Node itself can be told apart from the relay's.
//
//   node dist/bench/tls-floor.js CERT KEY   -> prints the port, then serves until killed
import { readFileSync } from 'node:fs';
import tls from 'node:tls';

const [certFile, keyFile] = process.argv.slice(2);
const server = tls.createServer({ cert: readFileSync(certFile!), key: readFileSync(keyFile!) }, (s) => {
  s.setNoDelay(true);
  s.write('220 floor.bench.example ESMTP\r\n');
  let buf = '';
  s.setEncoding('latin1');
  s.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\r\n')) >= 0) {
      buf = buf.slice(i + 2);
      s.write('250 floor.bench.example\r\n');
    }
  });
  s.on('error', () => undefined);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${(server.address() as { port: number }).port}\n`);
});
