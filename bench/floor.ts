// Yardsticks for the relay's CPU per message: two pass-through "relays" with none of the
// relay's policy, logs, metrics or trace header, run next to the relay by bench/ab.ts
// (specs floor:node and floor:libraries) under the same scenario-1 load and upstream:
//
//   node      the least any Node.js relay does per message on this path: node:net/node:tls
//             sockets on both sides, STARTTLS and AUTH PLAIN taken on trust, MAIL/RCPT/DATA
//             answered from a line split, the DATA bytes forwarded as they came (already
//             dot-stuffed) on a pooled upstream TLS connection with MAIL/RCPT/DATA pipelined.
//   libraries the same with the libraries the relay is built on, used as cheaply as the relay
//             uses them: smtp-server in front (every login accepted, the message collected),
//             nodemailer's SMTPConnection pool behind, the body written as the relay writes
//             it (relay/upstream.ts dataPayload + relay/internals.ts sendPreparedPayload).
//
// So relay - libraries is what the relay's own code costs per message, and libraries - node
// what smtp-server and nodemailer cost (docs/benchmarks.md, "What the CPU per message is
// made of"). Not a product and not safe: no checks at all, loopback only, bench use only.
//
//   node dist/bench/floor.js node|libraries PORT UPSTREAM_PORT CERT KEY CA

import net from 'node:net';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { SMTPServer } from 'smtp-server';
import { sendPreparedPayload } from '../relay/internals.js';
import { dataPayload } from '../relay/upstream.js';
import { connect } from './loadgen.js';

interface Upstream {
  /** Sends one message; resolves with the upstream's final reply, rejects on any other. */
  send(from: string, to: string, data: Buffer): Promise<string>;
  dead: boolean;
}

/** Upstream connections, reused across client connections (as the relay's pool does). */
class Pool {
  private idle: Upstream[] = [];
  constructor(private readonly open: () => Promise<Upstream>) {}
  async send(from: string, to: string, data: Buffer): Promise<string> {
    let up = this.idle.pop();
    while (up?.dead) up = this.idle.pop();
    up ??= await this.open();
    const reply = await up.send(from, to, data);
    this.idle.push(up);
    return reply;
  }
}

/** A raw TLS upstream: the load generator's SMTP client (bench/loadgen.ts), MAIL/RCPT/DATA pipelined. */
async function rawUpstream(port: number): Promise<Upstream> {
  const c = await connect('127.0.0.1', port, 'implicit');
  return {
    get dead() {
      return c.sock.destroyed;
    },
    async send(from, to, data) {
      c.sock.write(`MAIL FROM:<${from}>\r\nRCPT TO:<${to}>\r\nDATA\r\n`);
      await c.expect(250, 'MAIL FROM');
      await c.expect(250, 'RCPT TO');
      await c.expect(354, 'DATA');
      c.sock.write(data);
      return (await c.expect(250, 'end of data')).text;
    },
  };
}

/** The node yardstick's client side: a line split until DATA, then the bytes until CRLF.CRLF. */
function nodeFloor(port: number, pool: Pool, ctx: tls.SecureContext): void {
  net
    .createServer((raw) => {
      let sock: net.Socket = raw;
      let from = '';
      let to = '';
      let pending: Buffer = Buffer.alloc(0);
      let data: Buffer | undefined;
      const endOfData = () => {
        if (!data || data.length < 5 || data.indexOf('\r\n.\r\n', data.length - 5) === -1) return;
        const message = data;
        data = undefined;
        pool.send(from, to, message).then(
          () => sock.write('250 2.0.0 Ok\r\n'),
          () => sock.write('451 4.4.0 upstream failed\r\n'),
        );
      };
      const onData = (chunk: Buffer) => {
        if (data) {
          data = Buffer.concat([data, chunk]);
          return endOfData();
        }
        pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        const replies: string[] = [];
        for (let i = pending.indexOf('\r\n'); i !== -1 && !data; i = pending.indexOf('\r\n')) {
          const line = pending.subarray(0, i).toString('latin1');
          pending = pending.subarray(i + 2);
          const verb = line.slice(0, 4).toUpperCase();
          if (verb === 'EHLO') replies.push('250-floor\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n');
          else if (verb === 'STAR') {
            sock.write('220 2.0.0 Ready\r\n');
            sock.removeListener('data', onData);
            pending = Buffer.alloc(0);
            sock = new tls.TLSSocket(raw, { isServer: true, secureContext: ctx });
            sock.on('data', onData);
            sock.on('error', () => undefined);
            return;
          } else if (verb === 'AUTH') replies.push('235 2.7.0 Ok\r\n');
          else if (verb === 'MAIL') {
            from = line.slice(line.indexOf('<') + 1, line.indexOf('>'));
            replies.push('250 2.1.0 Ok\r\n');
          } else if (verb === 'RCPT') {
            to = line.slice(line.indexOf('<') + 1, line.indexOf('>'));
            replies.push('250 2.1.5 Ok\r\n');
          } else if (verb === 'DATA') {
            replies.push('354 End data with <CR><LF>.<CR><LF>\r\n');
            data = pending;
            pending = Buffer.alloc(0);
          } else if (verb === 'RSET') replies.push('250 2.0.0 Ok\r\n');
          else if (verb === 'QUIT') {
            sock.end('221 2.0.0 Bye\r\n');
            return;
          } else replies.push('502 5.5.2 Error\r\n');
        }
        if (replies.length) sock.write(replies.join(''));
        endOfData();
      };
      sock.on('data', onData);
      sock.on('error', () => undefined);
      sock.write('220 floor.bench.example ESMTP\r\n');
    })
    .listen(port, '127.0.0.1');
}

/** A nodemailer upstream connection; the body goes out as the relay sends it. */
function nodemailerUpstream(port: number, ca: Buffer): Promise<Upstream> {
  return new Promise((resolve, reject) => {
    const conn = new SMTPConnection({ port, host: '127.0.0.1', secure: true, tls: { ca, checkServerIdentity: () => undefined }, logger: false });
    const up: Upstream = {
      dead: false,
      send: (from, to, message) =>
        new Promise((res, rej) => {
          sendPreparedPayload(conn, message.length, dataPayload(message));
          conn.send({ from, to: [to], size: message.length } as SMTPConnection.Envelope, message, (err, info) => (err ? rej(err) : res(String(info.response))));
        }),
    };
    conn.on('error', (err: Error) => {
      up.dead = true;
      reject(err);
    });
    conn.on('end', () => (up.dead = true));
    conn.connect(() => resolve(up));
  });
}

function librariesFloor(port: number, pool: Pool, key: Buffer, cert: Buffer): void {
  const server = new SMTPServer({
    key,
    cert,
    authMethods: ['PLAIN'],
    size: 1 << 20,
    logger: false,
    onAuth: (auth, _session, cb) => cb(null, { user: auth.username }),
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const env = session.envelope;
        const from = env.mailFrom ? env.mailFrom.address : '';
        pool.send(from, env.rcptTo[0]!.address, Buffer.concat(chunks)).then(
          () => cb(null, 'Ok'),
          (err: Error) => cb(err),
        );
      });
    },
  });
  server.listen(port, '127.0.0.1');
}

function main(): void {
  const [kind, port, upstreamPort, certFile, keyFile, caFile] = process.argv.slice(2);
  if (!['node', 'libraries'].includes(kind ?? '') || !caFile) throw new Error('usage: node dist/bench/floor.js node|libraries PORT UPSTREAM_PORT CERT KEY CA');
  const ca = readFileSync(caFile);
  const [key, cert] = [readFileSync(keyFile!), readFileSync(certFile!)];
  if (kind === 'node') nodeFloor(Number(port), new Pool(() => rawUpstream(Number(upstreamPort))), tls.createSecureContext({ key, cert }));
  else librariesFloor(Number(port), new Pool(() => nodemailerUpstream(Number(upstreamPort), ca)), key, cert);
}

if (import.meta.url === `file://${process.argv[1]}`) main();
