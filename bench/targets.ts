// The systems under test, each started on loopback high ports and stopped after:
// Postfix's smtp-sink (the ceiling), stunnel in front of it (smtp-sink has no TLS, and
// both relays must reach their smarthost over verified TLS), our relay process, and a
// separate Debian Postfix instance configured as the equivalent relay.

import { execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { programs } from '../entrypoint.js';
import { usersYaml, SecretDir } from '../test/relay/harness.js';
import type { CertFiles } from '../test/harness/support/pki.js';
import { POSTFIX_MASTER_CF_SERVICES } from '../test/harness/support/postfix.js';
import { atExit, freePort, processTree, sleep, startProcess, stopProcess, waitForPort } from './common.js';

export const USER = 'bench';
export const PASS = 'bench-password-0123456789';
const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The image's single entrypoint (dist/entrypoint.js): `relay serve ...` runs the relay in that process. */
const ENTRYPOINT = path.resolve(HERE, '../entrypoint.js');

/**
 * How the image runs the relay: the node flags and environment that dist/entrypoint.js
 * adds for it (entrypoint.ts `programs`, the one place they are defined). The relay itself
 * is started through the entrypoint, which adds them; this is for the bare TLS floor.
 */
export function imageRuntime(): { nodeArgs: string[]; env: Record<string, string> } {
  const relay = programs['relay']!;
  return { nodeArgs: [...relay.nodeFlags], env: { ...relay.env } };
}

function need(cmd: string, pkg: string): string {
  for (const dir of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    try {
      execFileSync('test', ['-x', path.join(dir, cmd)]);
      return path.join(dir, cmd);
    } catch {
      /* next */
    }
  }
  throw new Error(`${cmd} not found: install it with "apt-get install -y ${pkg}" (bash .ci/run installs every package the project needs)`);
}

export interface Target {
  name: string;
  port: number;
  /** Pids whose CPU/RSS belong to the target. */
  pids(): number[];
  stop(): Promise<void>;
}

/** Postfix's smtp-sink: accepts and discards, PIPELINING on, no TLS. */
export async function startSmtpSink(): Promise<Target> {
  const bin = need('smtp-sink', 'postfix');
  const port = await freePort();
  const child = startProcess(bin, ['-4', '-a', '-u', 'postfix', '-h', 'sink.bench.example', '-m', '12000', `127.0.0.1:${port}`, '4096']);
  await waitForPort(port);
  return { name: 'smtp-sink', port, pids: () => [child.pid!], stop: () => stopProcess(child) };
}

/** stunnel: implicit TLS on `port` (the given certificate), plaintext to `backendPort`. */
export async function startStunnel(dir: string, cert: CertFiles, backendPort: number): Promise<Target> {
  const bin = need('stunnel4', 'stunnel4');
  const port = await freePort();
  const conf = path.join(dir, `stunnel-${port}.conf`);
  writeFileSync(
    conf,
    `foreground = yes\npid =\ndebug = 3\nsyslog = no\n[smtps]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backendPort}\ncert = ${cert.chainFile}\nkey = ${cert.keyFile}\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n`,
  );
  const child = startProcess(bin, [conf]);
  await waitForPort(port);
  return { name: 'stunnel', port, pids: () => [child.pid!], stop: () => stopProcess(child) };
}

export interface RelayTarget extends Target {
  submission: number;
  submissions: number;
  metrics: number;
  child: ChildProcess;
  logFile: string;
}

/** The kinds of bench/floor.ts: yardsticks that pass messages on with none of the relay's checks. */
export const FLOOR_KINDS = ['node', 'libraries'] as const;
export type FloorKind = (typeof FLOOR_KINDS)[number];

/** A bench/floor.ts yardstick on a free port, delivering to `upstreamPort` (implicit TLS, `cert`'s CA). */
export async function startFloor(kind: FloorKind, cert: CertFiles, upstreamPort: number): Promise<{ child: ChildProcess; submission: number; stop(): Promise<void> }> {
  const port = await freePort();
  const child = startProcess(process.execPath, [path.join(HERE, 'floor.js'), kind, String(port), String(upstreamPort), cert.chainFile, cert.keyFile, cert.caFile], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForPort(port);
  return { child, submission: port, stop: () => stopProcess(child) };
}

export interface RelayBenchOptions {
  dir: string;
  cert: CertFiles;
  upstream: { port: number; caFile: string; tls: 'implicit' | 'starttls'; maxConnections: number };
  maxConnections?: number;
  maxConnectionsPerIp?: number;
  /** scrypt cost of the bench user's hash; default the production N=32768. */
  hashN?: number;
  nodeArgs?: string[];
  logLevel?: string;
  /** A `queue:` section (queue mode), e.g. `{directory: /tmp/x/spool}`; default inline mode. */
  queue?: string;
  /** The relay's `workers` setting; default BENCH_RELAY_WORKERS (bench/main.ts --workers=N), else 1 (one process; the relay's own default is `auto`). */
  workers?: number | 'auto';
  /** Another build's dist/entrypoint.js (bench/ab.ts: A/B runs of two builds); default this build's. */
  entrypoint?: string;
}

/**
 * Extra node flags for every relay the bench starts, from BENCH_RELAY_NODE_OPTIONS
 * (space-separated), e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`: a profile of the relay
 * under any scenario (written when the relay exits at the scenario's end). They go on
 * node's command line before the entrypoint, which keeps them when it adds the image's
 * runtime flags (entrypoint.ts).
 */
export function relayNodeOptions(env: NodeJS.ProcessEnv = process.env): string[] {
  return (env['BENCH_RELAY_NODE_OPTIONS'] ?? '').split(/\s+/).filter(Boolean);
}

/** The worker processes a multi-worker relay forked (the children of its primary). */
function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Our relay process, started like the image starts it (node FLAGS dist/entrypoint.js relay serve, the image's ENV), logging JSON lines to a file as in production. */
export async function startRelay(o: RelayBenchOptions): Promise<RelayTarget> {
  const tlsDir = await SecretDir.create(o.dir, `tls-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`, {
    'tls.crt': readFileSync(o.cert.chainFile),
    'tls.key': readFileSync(o.cert.keyFile),
  });
  const users = await usersYaml([{ name: USER, password: PASS, allowedSenders: ['*@example.com'], strongHash: !o.hashN || o.hashN === 32768 }]);
  const usersDir = await SecretDir.create(o.dir, `users-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`, { 'users.yaml': users });
  const submission = await freePort();
  const submissions = await freePort();
  const metrics = await freePort();
  const config = `version: 1
hostname: relay.bench.example
listeners:
  - {name: submission, address: 127.0.0.1, port: ${submission}, mode: starttls}
  - {name: submissions, address: 127.0.0.1, port: ${submissions}, mode: implicit}
tls:
  certFile: ${tlsDir.file('tls.crt')}
  keyFile: ${tlsDir.file('tls.key')}
auth:
  usersFile: ${usersDir.file('users.yaml')}
  lockout: {maxFailures: 1000, window: 1m, duration: 1m}
access:
  allowedCidrs: ["127.0.0.0/8"]
limits: {maxMessageSize: 1Mi, maxRecipients: 10, maxConnections: ${o.maxConnections ?? 1000}, maxConnectionsPerIp: ${o.maxConnectionsPerIp ?? 100}, idleTimeout: 300s}
upstream:
  host: 127.0.0.1
  port: ${o.upstream.port}
  tls: ${o.upstream.tls}
  caFile: ${o.upstream.caFile}
  maxConnections: ${o.upstream.maxConnections}
  timeout: 30s
metrics: {address: 127.0.0.1, port: ${metrics}}
shutdownGracePeriod: 5s
${o.queue ? `queue: ${o.queue}\n` : ''}workers: ${o.workers ?? (process.env.BENCH_RELAY_WORKERS || 1)}
`;
  const configFile = path.join(o.dir, `relay-${submission}.yaml`);
  writeFileSync(configFile, config);
  // Not beside the config file: the relay watches that directory (relay/watch.ts), and a log
  // written there woke it for each write, which a relay logging to stdout never pays.
  mkdirSync(path.join(o.dir, 'logs'), { recursive: true });
  const logFile = path.join(o.dir, 'logs', `relay-${submission}.log`);
  const out = openSync(logFile, 'w');
  const child = startProcess(process.execPath, [...relayNodeOptions(), ...(o.nodeArgs ?? []), o.entrypoint ?? ENTRYPOINT, 'relay', 'serve', '--config', configFile], {
    stdio: ['ignore', out, out],
    env: { ...process.env, LOG_LEVEL: o.logLevel ?? 'info' },
    cwd: o.dir,
  });
  const deadline = Date.now() + 20_000;
  const ready = async () => {
    try {
      return (await fetch(`http://127.0.0.1:${metrics}/readyz`)).status === 200;
    } catch {
      return false;
    }
  };
  while (!(await ready())) {
    if (child.exitCode !== null) throw new Error(`relay exited with ${child.exitCode}: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`relay not ready after 20 s: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
    await sleep(100);
  }
  return {
    name: 'relay',
    port: submission,
    submission,
    submissions,
    metrics,
    child,
    logFile,
    // the primary and, with several workers, each worker (their CPU is the relay's)
    pids: () => [child.pid!, ...childPids(child.pid!)],
    stop: () => stopProcess(child, 'SIGTERM', 15_000),
  };
}

export interface PostfixOptions {
  dir: string;
  cert: CertFiles;
  /** The smarthost: host name for TLS verification, port, and whether it speaks implicit TLS. */
  relayhost: { port: number; tls: boolean; caFile: string };
}

export interface PostfixTarget extends Target {
  /** smtpd without TLS or AUTH (clients in mynetworks may relay). */
  plain: number;
  /** smtpd with STARTTLS required and SASL AUTH (Cyrus sasldb) required to relay. */
  submission: number;
  configDir: string;
}


/**
 * A Postfix instance of its own (config_directory, queue_directory and data_directory
 * under `dir`, the queue on the same disk as everything else), started as root with
 * `postfix -c DIR start` and stopped with `postfix -c DIR stop` (also at exit).
 */
export async function startPostfix(o: PostfixOptions): Promise<PostfixTarget> {
  const postfix = need('postfix', 'postfix');
  const saslpasswd2 = need('saslpasswd2', 'sasl2-bin');
  need('smtp-sink', 'postfix');
  const base = path.join(o.dir, `postfix-${Date.now()}`);
  const etc = path.join(base, 'etc');
  const queue = path.join(base, 'queue');
  const data = path.join(base, 'data');
  const sasl = path.join(etc, 'sasl');
  for (const d of [etc, queue, data, sasl]) mkdirSync(d, { recursive: true });
  const uid = Number(execFileSync('id', ['-u', 'postfix']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postfix']).toString().trim());
  chownSync(data, uid, gid);
  // Postfix's unprivileged daemons must reach the queue: every parent directory traversable.
  chmodSync(o.dir, 0o755);
  chmodSync(base, 0o755);
  const plain = await freePort();
  const submission = await freePort();
  const hostname = 'postfix.bench.example';
  // TLS key readable by root only (smtpd reads it before dropping privileges, as in /etc/ssl/private).
  writeFileSync(
    path.join(etc, 'main.cf'),
    `compatibility_level = 3.6
queue_directory = ${queue}
data_directory = ${data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = ${hostname}
mydomain = bench.example
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
mynetworks = 127.0.0.0/8
relayhost = [localhost]:${o.relayhost.port}
smtp_host_lookup = native
smtpd_peername_lookup = no
disable_dns_lookups = yes
maillog_file_prefixes = ${base}
maillog_file = ${path.join(base, 'maillog')}
biff = no
append_dot_mydomain = no
message_size_limit = 1048576
smtpd_banner = $myhostname ESMTP
# inbound TLS (used by the submission service below) with a session cache and tickets
smtpd_tls_cert_file = ${o.cert.chainFile}
smtpd_tls_key_file = ${o.cert.keyFile}
smtpd_tls_session_cache_database = btree:$data_directory/smtpd_scache
smtpd_tls_security_level = none
# SASL AUTH via Cyrus sasldb (PLAIN)
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = ${sasl}
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# outbound: the smarthost, over verified TLS like our relay's upstream when it speaks TLS
${
  o.relayhost.tls
    ? `smtp_tls_security_level = secure
smtp_tls_secure_cert_match = nexthop
smtp_tls_wrappermode = yes
smtp_tls_CAfile = ${o.relayhost.caFile}
smtp_tls_connection_reuse = yes
smtp_tls_session_cache_database = btree:$data_directory/smtp_scache`
    : 'smtp_tls_security_level = none'
}
`,
  );
  writeFileSync(
    path.join(etc, 'master.cf'),
    `${plain} inet n - n - - smtpd
${submission} inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o mynetworks=
${POSTFIX_MASTER_CF_SERVICES}`,
  );
  const sasldb = path.join(etc, 'sasldb2');
  writeFileSync(path.join(sasl, 'smtpd.conf'), `pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: ${sasldb}\n`);
  execFileSync(saslpasswd2, ['-p', '-c', '-f', sasldb, '-u', hostname, USER], { input: PASS });
  chownSync(sasldb, uid, gid);
  chmodSync(sasldb, 0o600);
  const run = (...args: string[]) => execFileSync(postfix, ['-c', etc, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    run('check');
    run('start');
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    let maillog = '';
    try {
      maillog = readFileSync(path.join(base, 'maillog'), 'utf8').slice(-2000);
    } catch {
      /* none */
    }
    throw new Error(`postfix -c ${etc} start failed: ${err.stderr?.toString() ?? err.message}\n${maillog}`);
  }
  let stopped = false;
  const stopSync = () => {
    if (stopped) return;
    stopped = true;
    try {
      run('stop');
    } catch {
      /* already down */
    }
  };
  atExit(stopSync);
  await waitForPort(plain);
  await waitForPort(submission);
  const masterPid = () => {
    try {
      return Number(readFileSync(path.join(queue, 'pid', 'master.pid'), 'utf8').trim());
    } catch {
      return 0;
    }
  };
  return {
    name: 'postfix',
    port: submission,
    plain,
    submission,
    configDir: etc,
    pids: () => (masterPid() ? processTree(masterPid()) : []),
    stop: async () => {
      stopSync();
      await sleep(500);
      rmSync(base, { recursive: true, force: true });
    },
  };
}

/** Messages Postfix still has queued (0 when it kept up). */
export function postfixQueueSize(t: PostfixTarget): number {
  try {
    const out = execFileSync('postqueue', ['-c', t.configDir, '-j'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
    return out.split('\n').filter((l) => l.trim()).length;
  } catch {
    return -1;
  }
}
