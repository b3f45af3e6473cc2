// A recording upstream SMTP server ("smarthost") on loopback, built on a
// second smtp-server instance. It records every accepted message with its
// envelope and the exact bytes received (dot-unstuffed, without the final
// ".\r\n"), and can be told to misbehave through `sink.behaviour`, which may
// be changed while it runs.
//
//   const sink = await startSink();                  // STARTTLS, own test CA
//   ... deliver to sink.host:sink.port, trusting sink.caFile ...
//   assert.equal(sink.messages.length, 1);
//   sink.behaviour.refuseRecipients = ['bad@example.net'];
//   await sink.stop();
import net from 'node:net';
import type { Socket } from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerSession, SMTPServerOptions } from 'smtp-server';
import { createPki, type CertFiles, type Pki } from './pki.js';

export interface SinkMessage {
  mailFrom: string;
  rcptTo: string[];
  /** The message exactly as received in DATA. */
  raw: Buffer;
  /** AUTH user, when the client authenticated. */
  user?: string;
  /** TLS was on when DATA was sent. */
  secure: boolean;
  /** EHLO/HELO name the client gave. */
  clientHostname: string;
  /** The MAIL command of the transaction and its RCPT commands, as sent (parameters included). */
  commands: string[];
}

export interface SinkBehaviour {
  /** Recipients (case-insensitive) refused at RCPT with `550 5.1.1`. */
  refuseRecipients: string[];
  /** Recipients refused at RCPT with `450 4.2.1` (temporary). */
  tempFailRecipients: string[];
  /** Answer MAIL FROM with `451 4.3.0` (and so every transaction). */
  tempFailAll: boolean;
  /** Reply given after DATA instead of 250, e.g. {code: 554, message: 'no'}. */
  dataReply?: { code: number; message: string };
  /** Milliseconds to wait before answering after DATA. */
  delayDataMs: number;
  /** Milliseconds to wait before answering MAIL FROM. */
  delayMailMs: number;
  /** Drop the TCP connection without a reply: at connect, at MAIL, or after DATA was received. */
  close?: 'connect' | 'mail' | 'data';
}

export interface SinkOptions {
  /** 'starttls' (default), 'implicit' TLS, or 'none' (no TLS offered at all). */
  tls?: 'starttls' | 'implicit' | 'none';
  /** Certificate to serve; default one issued from `pki` (or from a new test CA). */
  cert?: CertFiles;
  /** PKI to issue the default certificate from; default a new one (cleaned up on stop). */
  pki?: Pki;
  /** Require AUTH (PLAIN/LOGIN) with these credentials. */
  auth?: { user: string; pass: string };
  /**
   * Require AUTH XOAUTH2 (the only mechanism then offered): `check` answers undefined to
   * accept the user and token, or the refusal, e.g. {code: 535, message: '5.7.3 ...'}.
   */
  oauth2?: { check(user: string, accessToken: string): Promise<{ code: number; message: string } | { challenge: Record<string, string> } | undefined> };
  /** Initial behaviour. */
  behaviour?: Partial<SinkBehaviour>;
  /** Max message size (SIZE); default 50 MiB. */
  size?: number;
  /** Loopback port to listen on; default an ephemeral one. */
  port?: number;
  /** Address to listen on (default 127.0.0.1; the e2e environment gives the cluster's node address). */
  host?: string;
  /** Do not advertise PIPELINING (clients then wait for each reply). */
  noPipelining?: boolean;
  /** Advertise DSN (RFC 3461) and accept its parameters; default false (smtp-server's default). */
  dsn?: boolean;
}

export interface Sink {
  host: string;
  port: number;
  /** CA certificate that signed the sink's certificate (file + PEM). */
  caFile: string;
  caPem: string;
  cert: CertFiles;
  messages: SinkMessage[];
  /** Every RCPT TO the sink was sent, accepted or not, in order. */
  rcptAttempts: string[];
  /** Count of TCP connections accepted. */
  connections: number;
  /** Failed AUTH attempts. */
  authFailures: number;
  behaviour: SinkBehaviour;
  /** Resolves once `n` messages have been recorded (rejects after timeoutMs). */
  waitForMessages(n: number, timeoutMs?: number): Promise<SinkMessage[]>;
  /** Destroys every open connection (e.g. to play a server that dropped idle sessions). */
  dropConnections(): void;
  /** Stops listening and destroys open connections. */
  stop(): Promise<void>;
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function smtpError(code: number, message: string): Error & { responseCode: number } {
  return Object.assign(new Error(message), { responseCode: code });
}

export async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  const mode = opts.tls ?? 'starttls';
  let ownPki: Pki | undefined;
  let cert = opts.cert;
  if (!cert) {
    const pki = opts.pki ?? (ownPki = await createPki({ caName: 'sink test CA' }));
    cert = await pki.issue({ name: `sink-${Date.now()}-${Math.random().toString(36).slice(2, 8)}` });
  }
  const behaviour: SinkBehaviour = {
    refuseRecipients: [],
    tempFailRecipients: [],
    tempFailAll: false,
    delayDataMs: 0,
    delayMailMs: 0,
    ...opts.behaviour,
  };
  const messages: SinkMessage[] = [];
  const rcptAttempts: string[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  const sockets = new Set<Socket>();
  // session id -> raw TCP socket, so a behaviour can drop a connection mid-transaction.
  const sessionSockets = new Map<string, Socket>();
  const state = { connections: 0, authFailures: 0 };
  // session id -> the MAIL and RCPT command lines of its current transaction, read from
  // smtp-server's command log (its one public view of the lines as the client sent them).
  const transactionLines = new Map<string, string[]>();
  const commandLog = (entry: { tnx?: string; cid?: string }, _label?: unknown, line?: unknown) => {
    if (entry?.tnx !== 'command' || !entry.cid || typeof line !== 'string') return;
    if (/^MAIL FROM:/i.test(line)) transactionLines.set(entry.cid, [line]);
    else if (/^RCPT TO:/i.test(line)) transactionLines.get(entry.cid)?.push(line);
  };
  const quiet = () => undefined;

  const lc = (s: string) => s.toLowerCase();
  const dropSession = (session: SMTPServerSession) => {
    sessionSockets.get(session.id)?.destroy();
  };

  const options: SMTPServerOptions = {
    secure: mode === 'implicit',
    key: cert.keyPem,
    cert: cert.chainPem,
    minVersion: 'TLSv1.2',
    hideSTARTTLS: mode === 'none',
    disabledCommands: [...(mode === 'none' ? ['STARTTLS'] : []), ...(opts.auth || opts.oauth2 ? [] : ['AUTH'])],
    authOptional: !opts.auth && !opts.oauth2,
    authMethods: opts.oauth2 ? ['XOAUTH2'] : ['PLAIN', 'LOGIN'],
    allowInsecureAuth: mode === 'none',
    disableReverseLookup: true,
    size: opts.size ?? 50 * 1024 * 1024,
    hidePIPELINING: opts.noPipelining ?? false,
    banner: 'test sink',
    hideDSN: !opts.dsn,
    logger: { debug: commandLog, trace: quiet, info: quiet, warn: quiet, error: quiet, fatal: quiet } as unknown as SMTPServerOptions['logger'],
    closeTimeout: 1000,
    onConnect(session, cb) {
      state.connections++;
      // smtp-server gives no socket to onConnect; match by remote port (loopback only).
      for (const s of sockets) {
        if (s.remotePort === session.remotePort) sessionSockets.set(session.id, s);
      }
      if (behaviour.close === 'connect') {
        dropSession(session);
        return; // never answered: the socket is gone
      }
      cb();
    },
    onAuth(auth, _session, cb) {
      if (opts.oauth2) {
        if (auth.method !== 'XOAUTH2' || !auth.accessToken) return cb(smtpError(504, '5.7.4 XOAUTH2 only'));
        void opts.oauth2.check(auth.username ?? '', auth.accessToken).then((refusal) => {
          if (!refusal) return cb(null, { user: auth.username });
          state.authFailures++;
          // Gmail's way: a 334 with a JSON error; after the client's empty line, 535.
          if ('challenge' in refusal) return cb(null, { data: refusal.challenge } as unknown as { user: string });
          cb(smtpError(refusal.code, refusal.message));
        });
        return;
      }
      if (opts.auth && auth.username === opts.auth.user && auth.password === opts.auth.pass) {
        return cb(null, { user: auth.username });
      }
      state.authFailures++;
      cb(smtpError(535, '5.7.8 Authentication credentials invalid'));
    },
    onMailFrom(_address, session, cb) {
      if (behaviour.close === 'mail') return dropSession(session);
      void delay(behaviour.delayMailMs).then(() => {
        if (behaviour.tempFailAll) return cb(smtpError(451, '4.3.0 Sink told to fail temporarily'));
        cb();
      });
    },
    onRcptTo(address, _session, cb) {
      rcptAttempts.push(address.address);
      if (behaviour.tempFailAll) return cb(smtpError(451, '4.3.0 Sink told to fail temporarily'));
      if (behaviour.refuseRecipients.map(lc).includes(lc(address.address))) {
        return cb(smtpError(550, `5.1.1 <${address.address}>: Recipient address rejected`));
      }
      if (behaviour.tempFailRecipients.map(lc).includes(lc(address.address))) {
        return cb(smtpError(450, `4.2.1 <${address.address}>: Mailbox temporarily unavailable`));
      }
      cb();
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        void (async () => {
          if (behaviour.close === 'data') return dropSession(session);
          if (behaviour.delayDataMs) await delay(behaviour.delayDataMs);
          if ((stream as unknown as { sizeExceeded?: boolean }).sizeExceeded) {
            return cb(smtpError(552, '5.3.4 Message too big'));
          }
          if (behaviour.dataReply) {
            return cb(smtpError(behaviour.dataReply.code, behaviour.dataReply.message));
          }
          const user = (session.user as string | undefined) ?? undefined;
          messages.push({
            mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
            rcptTo: session.envelope.rcptTo.map((r) => r.address),
            raw: Buffer.concat(chunks),
            ...(user ? { user } : {}),
            secure: session.secure,
            clientHostname: session.hostNameAppearsAs ?? '',
            commands: transactionLines.get(session.id) ?? [],
          });
          for (const w of [...waiters]) {
            if (messages.length >= w.n) {
              waiters.splice(waiters.indexOf(w), 1);
              w.resolve();
            }
          }
          cb(null, `2.0.0 Ok: queued as sink-${messages.length}`);
        })();
      });
    },
  };
  const server = new SMTPServer(options);
  server.on('error', () => {
    /* a client dropping mid-handshake; nothing to record */
  });
  // The underlying net/tls server: track raw sockets to be able to drop them.
  const inner = (server as unknown as { server: net.Server }).server;
  inner.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  await new Promise<void>((resolve, reject) => {
    const onErr = (e: Error) => reject(e);
    inner.once('error', onErr);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      inner.off('error', onErr);
      resolve();
    });
  });
  const port = (inner.address() as net.AddressInfo).port;

  return {
    host: opts.host ?? '127.0.0.1',
    port,
    caFile: cert.caFile,
    caPem: cert.caPem,
    cert,
    messages,
    rcptAttempts,
    get connections() {
      return state.connections;
    },
    get authFailures() {
      return state.authFailures;
    },
    behaviour,
    waitForMessages(n: number, timeoutMs = 10_000) {
      if (messages.length >= n) return Promise.resolve(messages);
      return new Promise<SinkMessage[]>((resolve, reject) => {
        const t = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(new Error(`sink: ${messages.length} message(s) after ${timeoutMs} ms, wanted ${n}`));
        }, timeoutMs);
        const w = {
          n,
          resolve: () => {
            clearTimeout(t);
            resolve(messages);
          },
        };
        waiters.push(w);
      });
    },
    dropConnections() {
      for (const s of sockets) s.destroy();
    },
    async stop() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const s of sockets) s.destroy();
      await closed;
      if (ownPki) await ownPki.cleanup();
    },
  };
}

/** A loopback port with nothing listening on it (for "upstream down" tests). */
export async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}
