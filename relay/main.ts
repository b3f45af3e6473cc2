#!/usr/bin/env node
// smtp-relay: the hardened SMTP submission relay run in each relay pod.
//   smtp-relay serve --config FILE
//   smtp-relay check-config --config FILE
//   smtp-relay hash-password        (password on stdin)

import cluster from 'node:cluster';
import type http from 'node:http';
import pino from 'pino';
import prom from 'prom-client';
import { loadCertificate, useTicketKeys } from './certificate.js';
import { keepRestartFields, loadConfig, restartNeeded, upstreamFiles, type RelaySettings } from './config.js';
import { queueCommand, startQueueMode, stopQueueMode, type QueueMode } from './spool/index.js';
import { createMetrics, startMetricsServer } from './metrics.js';
import { hashPassword } from './password.js';
import { Relay } from './server.js';
import { Upstream } from './upstream.js';
import { loadUsers } from './users.js';
import { TokenVerifier, loadJwks } from './sa-token.js';
import { ValidationError } from './validate.js';
import { watchFiles, type FileWatch } from './watch.js';
import { IpcLimits } from './limits.js';
import { IpcQueue, runPrimary, takeTicketKeys, workerChannel, workerCount, DRAINING_ENV, type PrimaryOrder } from './workers.js';
import { startDrainControl } from './control.js';
import { upstreamReport } from './upstream-login.js';
import type { Queue } from './session.js';
import { startPeers } from './peers.js';
import { LockoutGossip } from './limits-gossip.js';

const USAGE = `usage:
  smtp-relay serve --config FILE          run the relay
  smtp-relay check-config --config FILE   validate a config (and the files it names)
  smtp-relay hash-password                read a password on stdin, print its hash
  smtp-relay queue --config FILE list|show|retry|hold|release|delete ...
                                          the spool of a relay in queue mode (kubectl exec)`;

function configArg(args: string[]): string {
  const i = args.indexOf('--config');
  const file =
    i >= 0 ? args[i + 1] : (args.find((a) => a.startsWith('--config='))?.slice('--config='.length) ?? args.find((a) => !a.startsWith('-')));
  if (!file) {
    process.stderr.write(`missing --config FILE\n${USAGE}\n`);
    process.exit(2);
  }
  return file;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function hashPasswordCommand(): Promise<number> {
  if (process.stdin.isTTY) process.stderr.write('Password (then Enter and Ctrl-D): ');
  const text = await readStdin();
  // one trailing newline is the terminal's, not the password's
  const password = text.replace(/\r?\n$/, '');
  if (password.length === 0) {
    process.stderr.write('hash-password: empty password on stdin\n');
    return 1;
  }
  if (password.length < 12) process.stderr.write('hash-password: warning: password shorter than 12 characters\n');
  process.stdout.write((await hashPassword(password)) + '\n');
  return 0;
}

function checkConfig(file: string): number {
  try {
    const settings = loadConfig(file);
    const users = loadUsers(settings.auth.usersFile);
    loadTokenVerifier(settings);
    loadCertificate(settings.tls.certFile, settings.tls.keyFile, settings.tls);
    process.stdout.write(`${file}: ok (${settings.listeners.length} listener(s), ${users.size} user(s))\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${describe(err)}\n`);
    return 1;
  }
}

/**
 * stdout, asynchronous and batched (sonic-boom, pino's destination). A write is a syscall
 * on a libuv pool thread and a wake-up of the event loop when it completes; one per log
 * line (the message line: about one per message) cost 7-12 % of the relay's CPU per pooled
 * message (docs/benchmarks.md, "What the CPU per message is made of"). So lines are
 * written once 3 KiB have gathered, or at the latest 100 ms after they were logged
 * (sonic-boom's periodic flush); pino writes what is left synchronously on exit. Each
 * write holds whole lines and at most 4 KiB (maxWrite): a pipe (a container's stdout)
 * takes a write of up to PIPE_BUF = 4096 bytes atomically, so the lines of several
 * workers sharing it never interleave (test/relay/workers.test.ts).
 */
const LOG_DESTINATION = { dest: 1, sync: false, minLength: 3072, maxWrite: 4096, periodicFlush: 100 } as const;

async function serve(file: string): Promise<void> {
  const worker = cluster.isWorker ? cluster.worker!.id : undefined;
  const logger = pino(
    { base: { service: 'smtp-relay', ...(worker ? { worker } : {}) }, timestamp: pino.stdTimeFunctions.isoTime, level: process.env.LOG_LEVEL ?? 'info' },
    pino.destination(LOG_DESTINATION),
  );
  if (worker === undefined) {
    let first: RelaySettings;
    try {
      first = loadConfig(file);
    } catch (err) {
      logger.fatal({ event: 'startup_failed', err: describe(err) }, 'cannot start');
      process.stderr.write(`${describe(err)}\n`);
      process.exit(1);
    }
    const count = workerCount(first.workers);
    if (count > 1) return runPrimary(file, first, count, logger);
  }
  // A worker: its limits and (queue mode) its spool are the primary's (relay/workers.ts),
  // its TLS session-ticket keys those of every worker.
  const channel = worker !== undefined ? workerChannel() : undefined;
  const keys = worker !== undefined ? takeTicketKeys() : undefined;
  if (keys) useTicketKeys(keys);
  let settings: RelaySettings;
  let relay: Relay;
  let upstream: Upstream;
  let queue: QueueMode | undefined;
  let workerQueue: Queue | undefined;
  const registry = new prom.Registry();
  prom.collectDefaultMetrics({ register: registry });
  const metrics = createMetrics(registry);
  try {
    settings = loadConfig(file);
    const users = loadUsers(settings.auth.usersFile);
    const certificate = loadCertificate(settings.tls.certFile, settings.tls.keyFile, settings.tls);
    upstream = new Upstream(settings.upstream, { hostname: settings.hostname, dkim: settings.dkim, logger, registry });
    const up = upstream;
    if (settings.queue && channel) {
      workerQueue = new IpcQueue(channel);
    } else if (settings.queue) {
      // the spool holds signed messages (Relay's data phase signs before it stores)
      queue = await startQueueMode(settings.queue, { deliver: (e, m) => up.deliver(e, m, { signed: true }), hostname: settings.hostname, logger, registry });
      logger.info({ event: 'queue_mode', directory: settings.queue.directory }, 'queue mode: a 250 once a message is in the spool');
    }
    relay = new Relay(settings, users, certificate, upstream, logger, metrics, queue?.spool ?? workerQueue, loadTokenVerifier(settings), channel && new IpcLimits(channel));
    logger.info({ event: 'certificate', subject: certificate.subject, notAfter: certificate.notAfter.toISOString(), users: users.size }, 'loaded');
  } catch (err) {
    logger.fatal({ event: 'startup_failed', err: describe(err) }, 'cannot start');
    process.stderr.write(`${describe(err)}\n`);
    process.exit(1);
  }

  let stopping = false;
  // The sibling channel (relay/peers.ts; a worker has none: its primary runs it): lockout
  // gossip and the hand-off of queued messages during a drain.
  let peers: Awaited<ReturnType<typeof startPeers>>;
  let gossip: LockoutGossip | undefined;
  let control: Awaited<ReturnType<typeof startDrainControl>> | undefined;
  if (channel) {
    // a worker forked while the relay drains starts draining (the primary's later orders follow)
    if (process.env[DRAINING_ENV] === '1') relay.setDrain(true);
    delete process.env[DRAINING_ENV];
  } else {
    try {
      peers = await startPeers(settings, logger, registry);
      if (peers && relay.ownLimits) gossip = new LockoutGossip(peers.channel, relay.ownLimits, { logger, registry }).start();
    } catch (err) {
      logger.fatal({ event: 'startup_failed', err: describe(err) }, 'cannot start the peer channel');
      process.exit(1);
    }
    try {
      const r = relay;
      control = await startDrainControl({
        ...(settings.metrics.controlTokenFile ? { tokenFile: settings.metrics.controlTokenFile } : {}),
        ...(queue ? { queue } : {}),
        ...(peers ? { peers: peers.channel } : {}),
        maxMessageBytes: settings.limits.maxMessageSize,
        setIntake: (d) => r.setDrain(d),
        upstream: async () => upstreamReport(settings.upstream, [upstream.loginRecord]),
        running: () => !stopping,
        logger,
        registry,
      });
    } catch (err) {
      logger.fatal({ event: 'startup_failed', err: describe(err) }, 'cannot start the drain control');
      process.exit(1);
    }
  }

  let metricsServer: http.Server | undefined;
  try {
    const ports = await relay.listen();
    if (channel) {
      // the primary serves /metrics: it asks each worker for its series
      channel.onMessage((m) => {
        const order = m as PrimaryOrder;
        if (order?.t === 'metrics') void registry.getMetricsAsJSON().then((json) => channel.send({ t: 'metrics', id: order.id, json }));
        else if (order?.t === 'upstream') channel.send({ t: 'upstream', id: order.id, record: upstream.loginRecord });
        else if (order?.t === 'drain') relay.setDrain(order.on);
      });
      channel.send({ t: 'ready', ports });
      logger.info({ event: 'worker_ready', ports }, 'worker ready');
    } else {
      metricsServer = await startMetricsServer(registry, settings.metrics.address, settings.metrics.port, () => relay.ready, control?.handler);
      logger.info({ event: 'ready', ports, metricsPort: settings.metrics.port }, 'relay ready');
    }
  } catch (err) {
    logger.fatal({ event: 'startup_failed', err: describe(err) }, 'cannot listen');
    process.exit(1);
  }

  const watches: FileWatch[] = [];
  const reloadResult = (kind: string, ok: boolean) => metrics.configReloads.inc({ kind, result: ok ? 'success' : 'failure' });

  watches.push(
    watchFiles([settings.tls.certFile, settings.tls.keyFile], () => {
      try {
        const cert = relay.reloadCertificate();
        reloadResult('certificate', true);
        logger.info({ event: 'reload', kind: 'certificate', subject: cert.subject, notAfter: cert.notAfter.toISOString(), fingerprint256: cert.fingerprint256 }, 'certificate reloaded');
      } catch (err) {
        reloadResult('certificate', false);
        logger.error({ event: 'reload_failed', kind: 'certificate', err: describe(err) }, 'new certificate refused, keeping the current one');
      }
    }),
  );
  watches.push(
    watchFiles([settings.auth.usersFile], () => {
      try {
        const users = loadUsers(settings.auth.usersFile);
        relay.setUsers(users);
        reloadResult('users', true);
        logger.info({ event: 'reload', kind: 'users', users: users.size }, 'users reloaded');
      } catch (err) {
        reloadResult('users', false);
        logger.error({ event: 'reload_failed', kind: 'users', err: describe(err) }, 'new users file refused, keeping the current one');
      }
    }),
  );
  const tokenSettings = settings.auth.serviceAccountTokens;
  if (tokenSettings) {
    // the operator rewrites the keys when the cluster's issuer rotates them
    watches.push(
      watchFiles([tokenSettings.jwksFile], () => {
        try {
          const verifier = loadTokenVerifier(settings)!;
          relay.setTokenVerifier(verifier);
          reloadResult('service_account_keys', true);
          logger.info({ event: 'reload', kind: 'service_account_keys', keys: verifier.issuer.jwks.keys.length }, 'service-account issuer keys reloaded');
        } catch (err) {
          reloadResult('service_account_keys', false);
          logger.error({ event: 'reload_failed', kind: 'service_account_keys', err: describe(err) }, 'new JWKS file refused, keeping the current keys');
        }
      }),
    );
  }
  let configWatch: FileWatch;
  const watchConfig = () =>
    watchFiles([file, ...upstreamFiles(settings)], () => {
      let next: RelaySettings;
      try {
        next = loadConfig(file);
      } catch (err) {
        reloadResult('config', false);
        logger.error({ event: 'reload_failed', kind: 'config', err: describe(err) }, 'new config refused, keeping the current one');
        return;
      }
      const restart = restartNeeded(settings, next);
      if (restart.length) logger.warn({ event: 'restart_needed', fields: restart }, 'config fields changed that only apply after a restart');
      const filesChanged = upstreamFiles(settings).join('\0') !== upstreamFiles(next).join('\0');
      relay.applySettings(next);
      if (peers && next.peers) peers.channel.update(next.peers);
      upstream.reload(next.upstream, next.dkim).then(
        () => {
          reloadResult('config', true);
          logger.info({ event: 'reload', kind: 'config' }, 'config reloaded');
        },
        (err: unknown) => {
          reloadResult('config', false);
          logger.error({ event: 'reload_failed', kind: 'upstream', err: describe(err) }, 'upstream settings refused, keeping the current ones');
        },
      );
      settings = keepRestartFields(settings, next);
      if (filesChanged) {
        configWatch.close();
        configWatch = watchConfig();
      }
    });
  configWatch = watchConfig();

  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ event: 'shutdown', signal, gracePeriodSeconds: settings.shutdownGracePeriodMs / 1000 }, 'shutting down');
    for (const w of watches) w.close();
    configWatch.close();
    const deadline = Date.now() + settings.shutdownGracePeriodMs;
    await relay.shutdown();
    // deliveries in progress get what is left of the grace period; the rest stays in the spool
    if (queue) await stopQueueMode(queue, Math.max(1000, deadline - Date.now())).catch(() => undefined);
    await upstream.close().catch(() => undefined);
    await gossip?.close();
    peers?.identity.close();
    await peers?.channel.close().catch(() => undefined);
    metricsServer?.close();
    metricsServer?.closeAllConnections();
    logger.info({ event: 'stopped' }, 'stopped');
    logger.flush?.();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  if (channel) {
    // the primary says when to drain; a primary gone (its channel closed) means the same
    channel.onMessage((m) => {
      if ((m as PrimaryOrder)?.t === 'stop') void stop('primary');
    });
    process.on('disconnect', () => void stop('primary_gone'));
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  switch (command) {
    case 'serve':
      await serve(configArg(args));
      return;
    case 'check-config':
      process.exit(checkConfig(configArg(args)));
      return;
    case 'queue': {
      const eq = args[0]?.startsWith('--config=');
      const file = configArg(args.slice(0, eq ? 1 : 2));
      const settings = loadConfig(file);
      if (!settings.queue) {
        process.stderr.write(`${file}: no queue section, the relay runs in inline mode (nothing is spooled)\n`);
        process.exit(2);
      }
      process.exit(await queueCommand(args.slice(eq ? 1 : 2), { directory: settings.queue.directory }));
      return;
    }
    case 'hash-password':
      process.exit(await hashPasswordCommand());
      return;
    case '--help':
    case '-h':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return;
    default:
      process.stderr.write(`${command ? `unknown command ${JSON.stringify(command)}\n` : ''}${USAGE}\n`);
      process.exit(2);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`smtp-relay: ${describe(err)}\n`);
  process.exit(1);
});

/** The ServiceAccount-token verifier of auth.serviceAccountTokens (its JWKS file read now), or undefined when token logins are off. */
function loadTokenVerifier(settings: RelaySettings): TokenVerifier | undefined {
  const t = settings.auth.serviceAccountTokens;
  return t ? new TokenVerifier({ issuer: t.issuer, audience: t.audience, jwks: loadJwks(t.jwksFile) }) : undefined;
}
