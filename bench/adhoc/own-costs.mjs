// Ad hoc (not part of make bench): what the relay's own per-message steps cost on the bench
// message (10 KB), in one process, without sockets: the smuggling check, joining the
// chunks, the From:/Sender: reading, the Received: header, the DATA payload (dot-stuffing
// and its own line-ending check) and the message log line (pino, batched as the relay's).
//   node bench/adhoc/own-costs.mjs
import pino from 'pino';
import { messageBytes } from '../../dist/bench/common.js';
import { fromAddresses, otherOriginatorAddresses } from '../../dist/relay/policy/headers.js';
import { LineEndingCheck } from '../../dist/relay/policy/smuggling.js';
import { receivedHeader } from '../../dist/relay/trace.js';
import { dataPayload } from '../../dist/relay/upstream.js';

const body = messageBytes();
const log = pino({ timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: '/dev/null', sync: false, minLength: 3072, maxWrite: 4096 }));
const N = 20_000;
const trace = { helo: 'loadgen.bench.example', clientIp: '127.0.0.1', hostname: 'relay.bench.example', protocol: 'ESMTPSA', tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', sessionId: 'abcdefghijklmnop', recipients: ['rcpt@example.net'] };
const line = { event: 'message', session: 'abcdefghijklmnop', listener: 'submission', clientIp: '127.0.0.1', tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', user: 'bench', mailFrom: 'bench@example.com', recipients: 1, size: body.length, result: 'accepted', upstreamReply: '250 2.0.0 Ok: queued as 1234' };
const steps = {
  'smuggling check (session)': () => {
    const c = new LineEndingCheck();
    c.push(body);
    c.end();
  },
  'join the chunks': () => Buffer.concat([body.subarray(0, 5000), body.subarray(5000)], body.length),
  'From:/Sender: read': () => [fromAddresses(body), otherOriginatorAddresses(body)],
  'Received: header, prepended': () => Buffer.concat([Buffer.from(receivedHeader(trace), 'latin1'), body]),
  'DATA payload (dataPayload)': () => dataPayload(body),
  'message log line': () => log.info(line, 'message accepted'),
};
let total = 0;
for (const [name, fn] of Object.entries(steps)) {
  for (let i = 0; i < 2000; i++) fn();
  const t = performance.now();
  for (let i = 0; i < N; i++) fn();
  const us = ((performance.now() - t) * 1000) / N;
  total += us;
  console.log(`${name.padEnd(30)} ${us.toFixed(2)} µs`);
}
console.log(`${'all of them'.padEnd(30)} ${total.toFixed(2)} µs per message`);
