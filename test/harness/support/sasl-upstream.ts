// An upstream SMTP server played by the test, written against the socket, for the SASL
// token mechanisms smtp-server does not implement: OAUTHBEARER (RFC 7628) and XOAUTH2,
// as Gmail and Exchange Online speak them. It advertises exactly the mechanisms it is
// given (Gmail: "... XOAUTH2 OAUTHBEARER ..."; Exchange Online: "LOGIN XOAUTH2"), requires
// STARTTLS before AUTH and AUTH before MAIL, and keeps every AUTH exchange byte for byte
// (the decoded initial response and every client line after it) so a test can check
// the wire format.
//
// A token refusal is played the way RFC 7628 (and Gmail, for XOAUTH2) do it: a 334 error
// challenge with base64 JSON {"status":"invalid_token",...}; the client must answer with
// a lone ^A (OAUTHBEARER) or an empty line (XOAUTH2); then the failure reply. An answer
// other than the one the RFC prescribes is recorded (`protocolErrors`) and refused 501.
// Messages are accepted after DATA (250) and kept.
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import tls from 'node:tls';
import type { CertFiles } from './pki.js';

export type SaslRefusal =
  /** The RFC 7628 failure: 334 error challenge, the client's ^A (or empty line), then `code message`. */
  | { challenge: Record<string, string>; code?: number; message?: string; again?: boolean }
  /** A refusal without a challenge, e.g. Exchange's 535 5.7.139 (a policy, not the token). */
  | { code: number; message: string };

export interface SaslAuth {
  mechanism: string;
  /** The decoded initial response, byte for byte. */
  initial: Buffer;
  /** OAUTHBEARER: `a=` of the gs2 header; XOAUTH2: `user=`. */
  user?: string;
  /** The key=value pairs after the gs2 header (OAUTHBEARER) or the whole message (XOAUTH2). */
  pairs: Record<string, string>;
  /** The bearer token (`auth=Bearer <token>`). */
  token?: string;
  /** Client lines after a 334 challenge, as sent (base64 text). */
  followUp: string[];
  /** The final reply sent. */
  reply: string;
}

export interface SaslUpstreamOptions {
  cert: CertFiles;
  /** Mechanisms after "AUTH" in the EHLO reply after STARTTLS. */
  mechanisms: string[];
  /** Decides a token login: undefined accepts it. */
  check(mechanism: string, user: string | undefined, token: string | undefined): Promise<SaslRefusal | undefined>;
}

export interface SaslUpstream {
  host: string;
  port: number;
  auths: SaslAuth[];
  messages: { user?: string; from: string; to: string[]; data: string }[];
  /** Client behaviour the RFCs do not allow, described. */
  protocolErrors: string[];
  connections: number;
  /** Resolves once `n` messages have been accepted (rejects after timeoutMs). */
  waitForMessages(n: number, timeoutMs?: number): Promise<void>;
  /** Destroys every open connection. */
  dropConnections(): void;
  stop(): Promise<void>;
}

const MAX_LINE = 16 * 1024;

export async function startSaslUpstream(opts: SaslUpstreamOptions): Promise<SaslUpstream> {
  const secureContext = tls.createSecureContext({ key: opts.cert.keyPem, cert: opts.cert.chainPem, minVersion: 'TLSv1.2' });
  const auths: SaslAuth[] = [];
  const messages: SaslUpstream['messages'] = [];
  const protocolErrors: string[] = [];
  const sockets = new Set<net.Socket>();
  const state = { connections: 0 };

  const server = net.createServer((raw) => {
    state.connections++;
    sockets.add(raw);
    raw.on('close', () => sockets.delete(raw));
    raw.on('error', () => undefined);
    let sock: net.Socket = raw;
    let secure = false;
    let user: string | undefined;
    let buf = '';
    let data: string[] | undefined;
    let envelope: { from: string; to: string[] } | undefined;
    /** The next client line goes here instead of the command loop (SASL continuation). */
    let continuation: ((line: string) => void) | undefined;
    let busy = false;
    const queue: string[] = [];

    const send = (line: string) => {
      if (!sock.destroyed) sock.write(`${line}\r\n`);
    };
    const onData = (chunk: Buffer) => {
      buf += chunk.toString('latin1');
      if (buf.length > MAX_LINE && !buf.includes('\n') && !data) {
        send('500 5.5.2 Line too long');
        sock.destroy();
        return;
      }
      let i: number;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        queue.push(buf.slice(0, i));
        buf = buf.slice(i + 2);
      }
      if (continuation && queue.length) {
        const c = continuation;
        continuation = undefined;
        c(queue.shift()!);
      }
      void drain();
    };
    const drain = async () => {
      if (busy) return;
      busy = true;
      try {
        while (queue.length && !sock.destroyed) {
          const line = queue.shift()!;
          if (data) {
            if (line === '.') {
              const msg = { ...(user ? { user } : {}), from: envelope!.from, to: envelope!.to, data: data.join('\r\n') };
              messages.push(msg);
              data = undefined;
              envelope = undefined;
              send('250 2.0.0 OK queued');
              for (const w of [...waiters]) if (messages.length >= w.n) w.resolve();
            } else data.push(line.startsWith('.') ? line.slice(1) : line);
            continue;
          }
          if (await command(line)) return; // STARTTLS: the socket is being replaced
        }
      } finally {
        busy = false;
      }
    };
    /** Reads the next client line (SASL continuation). */
    const nextLine = () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise<string>((resolve) => (continuation = resolve)));

    const ehlo = (name: string) => {
      const ext = ['8BITMIME', 'PIPELINING', 'SIZE 35882577', secure ? `AUTH ${opts.mechanisms.join(' ')}` : 'STARTTLS'];
      send(`250-sasl-upstream.test at your service, [${name}]`);
      ext.forEach((e, i) => send(`250${i === ext.length - 1 ? ' ' : '-'}${e}`));
    };

    const auth = async (mechanism: string, initialB64: string | undefined): Promise<void> => {
      if (!secure) return send('530 5.7.0 Must issue a STARTTLS command first');
      if (user) return send('503 5.5.1 Already authenticated');
      if (!opts.mechanisms.includes(mechanism) || (mechanism !== 'OAUTHBEARER' && mechanism !== 'XOAUTH2')) {
        return send('504 5.7.4 Unrecognized authentication type');
      }
      if (!initialB64) return send('501 5.5.2 Initial response required');
      const initial = Buffer.from(initialB64, 'base64');
      const record: SaslAuth = { mechanism, initial, pairs: {}, followUp: [], reply: '' };
      auths.push(record);
      const text = initial.toString('utf8');
      if (mechanism === 'OAUTHBEARER') {
        // gs2-header kvsep *(key=value kvsep) kvsep
        const m = /^n,(?:a=([^,]*))?,\x01((?:[A-Za-z]+=[\x21-\x7e \t\r\n]*\x01)*)\x01$/.exec(text);
        if (!m) {
          protocolErrors.push(`OAUTHBEARER initial response malformed: ${JSON.stringify(text.replace(/Bearer \S+/, 'Bearer <token>'))}`);
          record.reply = '501 5.5.2 Malformed OAUTHBEARER message';
          return send(record.reply);
        }
        if (m[1] !== undefined) record.user = m[1].replace(/=2C/g, ',').replace(/=3D/g, '=');
        for (const kv of m[2]!.split('\x01').filter(Boolean)) {
          const eq = kv.indexOf('=');
          record.pairs[kv.slice(0, eq)] = kv.slice(eq + 1);
        }
      } else {
        const m = /^((?:[A-Za-z]+=[^\x01]*\x01)+)\x01$/.exec(text);
        if (!m) {
          protocolErrors.push('XOAUTH2 initial response malformed');
          record.reply = '501 5.5.2 Malformed XOAUTH2 message';
          return send(record.reply);
        }
        for (const kv of m[1]!.split('\x01').filter(Boolean)) {
          const eq = kv.indexOf('=');
          record.pairs[kv.slice(0, eq)] = kv.slice(eq + 1);
        }
        record.user = record.pairs.user;
      }
      const bearer = /^Bearer (\S+)$/.exec(record.pairs.auth ?? '');
      if (bearer) record.token = bearer[1];
      const refusal = await opts.check(mechanism, record.user, record.token);
      if (!refusal) {
        user = record.user;
        record.reply = '235 2.7.0 Accepted';
        return send(record.reply);
      }
      if ('challenge' in refusal) {
        send(`334 ${Buffer.from(JSON.stringify(refusal.challenge)).toString('base64')}`);
        const answer = await nextLine();
        record.followUp.push(answer);
        const expected = mechanism === 'OAUTHBEARER' ? 'AQ==' : '';
        if (answer !== expected) {
          protocolErrors.push(`${mechanism}: the answer to the error challenge was ${JSON.stringify(answer)}, not ${JSON.stringify(expected)}`);
          record.reply = '501 5.5.2 Bad response to the error challenge';
          return send(record.reply);
        }
        if (refusal.again) {
          // not RFC 7628: a second challenge; a client can only cancel the exchange ("*", RFC 4954)
          send(`334 ${Buffer.from(JSON.stringify(refusal.challenge)).toString('base64')}`);
          const cancel = await nextLine();
          record.followUp.push(cancel);
          record.reply = cancel === '*' ? '501 5.7.0 Authentication cancelled' : '535 5.7.8 Authentication failed';
          return send(record.reply);
        }
        record.reply = `${refusal.code ?? 535} ${refusal.message ?? '5.7.8 Username and Password not accepted'}`;
        return send(record.reply);
      }
      record.reply = `${refusal.code} ${refusal.message}`;
      send(record.reply);
    };

    /** One command; true when the connection was handed to TLS (stop reading this socket). */
    const command = async (line: string): Promise<boolean> => {
      const [verb = '', ...rest] = line.split(' ');
      switch (verb.toUpperCase()) {
        case 'EHLO':
          ehlo(rest.join(' '));
          return false;
        case 'STARTTLS': {
          if (secure) {
            send('503 5.5.1 TLS already active');
            return false;
          }
          send('220 2.0.0 Ready to start TLS');
          sock.off('data', onData);
          queue.length = 0; // anything pipelined after STARTTLS is discarded
          buf = '';
          const tlsSock = new tls.TLSSocket(sock, { isServer: true, secureContext });
          tlsSock.on('error', () => raw.destroy());
          // from here every byte read has come through the handshake
          secure = true;
          sock = tlsSock;
          tlsSock.on('data', onData);
          return true;
        }
        case 'AUTH':
          await auth((rest[0] ?? '').toUpperCase(), rest[1]);
          return false;
        case 'MAIL': {
          if (!user) {
            send('530 5.7.0 Authentication required');
            return false;
          }
          envelope = { from: /<([^>]*)>/.exec(line)?.[1] ?? '', to: [] };
          send('250 2.1.0 OK');
          return false;
        }
        case 'RCPT':
          if (!envelope) send('503 5.5.1 MAIL first');
          else {
            envelope.to.push(/<([^>]*)>/.exec(line)?.[1] ?? '');
            send('250 2.1.5 OK');
          }
          return false;
        case 'DATA':
          if (!envelope?.to.length) send('503 5.5.1 RCPT first');
          else {
            data = [];
            send('354 Go ahead');
          }
          return false;
        case 'RSET':
          envelope = undefined;
          send('250 2.0.0 OK');
          return false;
        case 'NOOP':
          send('250 2.0.0 OK');
          return false;
        case 'QUIT':
          send('221 2.0.0 closing connection');
          sock.end();
          return false;
        default:
          send('502 5.5.1 Unrecognized command');
          return false;
      }
    };

    raw.on('data', onData);
    send('220 sasl-upstream.test ESMTP ready');
  });
  const waiters = new Set<{ n: number; resolve: () => void }>();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    host: '127.0.0.1',
    port,
    auths,
    messages,
    protocolErrors,
    get connections() {
      return state.connections;
    },
    waitForMessages(n, timeoutMs = 10_000) {
      if (messages.length >= n) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const w = {
          n,
          resolve: () => {
            clearTimeout(timer);
            waiters.delete(w);
            resolve();
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`sasl upstream: ${messages.length} of ${n} messages within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(w);
      });
    },
    dropConnections() {
      for (const s of sockets) s.destroy();
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
