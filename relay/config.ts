// Loads and validates the relay config file (format: relay/config-types.ts,
// docs/relay-config.md). Unknown fields are errors; every error names the field.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { OAUTH2_MECHANISMS, type DkimKeyConfig, type ListenerMode, type OAuth2Config, type RelayConfig, type ServiceAccountTokensConfig, type TlsVersion, type UpstreamConfig } from './config-types.js';
import { checkQueueSection, type SpoolSettings } from './spool/settings.js';
import { Checker, ValidationError, join, show, type Obj } from './validate.js';
import { oauth2Files } from './upstream-oauth2.js';

/** Strong AEAD-only suites with forward secrecy for TLS 1.2 (TLS 1.3 suites are all AEAD). */
export const DEFAULT_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export interface ListenerSettings {
  name: string;
  address: string;
  port: number;
  mode: ListenerMode;
}

export interface LimitsSettings {
  maxMessageSize: number;
  maxRecipients: number;
  maxConnections: number;
  maxConnectionsPerIp: number;
  idleTimeoutMs: number;
  /** From accept to a successful AUTH; a connection that takes longer is closed. */
  preAuthTimeoutMs: number;
  /** Connections not (yet) authenticated, TLS handshakes included; the oldest is shed for a newcomer. */
  maxUnauthenticated: number;
}

export interface LockoutSettings {
  maxFailures: number;
  windowMs: number;
  durationMs: number;
}

/** The config with defaults applied and units parsed. */
export interface RelaySettings {
  file: string;
  hostname: string;
  listeners: ListenerSettings[];
  tls: { certFile: string; keyFile: string; minVersion: TlsVersion; ciphers: string };
  auth: { usersFile: string; lockout: LockoutSettings; serviceAccountTokens?: ServiceAccountTokensConfig };
  access: { allowedCidrs: string[]; trustedProxyCidrs: string[] };
  limits: LimitsSettings;
  upstream: UpstreamConfig;
  dkim: DkimKeyConfig[];
  /** controlTokenFile: absolute; absent = the control endpoints answer 404 (relay/control.ts). */
  metrics: { address: string; port: number; controlTokenFile?: string };
  shutdownGracePeriodMs: number;
  /** Worker processes: a count, or 'auto' (relay/workers.ts workerCount). */
  workers: number | 'auto';
  /** Queue mode; undefined = inline mode. */
  queue?: SpoolSettings;
  /** Sibling replicas (relay/peers.ts); undefined = none. */
  peers?: PeersSettings;
}

/** `peers` with defaults applied: the sibling channel (relay/peers.ts). */
export interface PeersSettings {
  address: string;
  port: number;
  /** Absolute path of the shared bearer token. */
  tokenFile: string;
  /** DNS name resolved (A and AAAA) for siblings; port = `port`. */
  service?: string;
  /** Static siblings, "host:port" (IPv6 as "[addr]:port"). */
  addresses: string[];
  refreshIntervalMs: number;
}

export const DEFAULTS = {
  listenerAddress: '::',
  minVersion: 'TLSv1.2' as TlsVersion,
  lockout: { maxFailures: 5, window: '10m', duration: '15m' },
  limits: {
    maxMessageSize: '10Mi',
    maxRecipients: 100,
    maxConnections: 1000,
    maxConnectionsPerIp: 20,
    idleTimeout: '60s',
    preAuthTimeout: '10s',
  },
  upstreamMaxConnections: 5,
  upstreamTimeout: '60s',
  metricsAddress: '::',
  metricsPort: 9090,
  shutdownGracePeriod: '25s',
  // one worker per CPU the container may use, as nginx's `worker_processes auto` (issue 17)
  workers: 'auto' as number | 'auto',
  peersAddress: '::',
};

/** More worker processes than this is a typo (a relay pod rarely has more than a few CPUs). */
export const MAX_WORKERS = 64;

const WILDCARDS = new Set(['::', '0.0.0.0', '::0', '0:0:0:0:0:0:0:0']);

function readable(c: Checker, p: string, file: string | undefined, baseDir: string): string | undefined {
  if (file === undefined) return undefined;
  const abs = path.resolve(baseDir, file);
  try {
    fs.accessSync(abs, fs.constants.R_OK);
    if (!fs.statSync(abs).isFile()) return c.fail(p, `${show(file)} is not a regular file`);
  } catch (err) {
    return c.fail(p, `cannot read ${show(file)}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return abs;
}

/** Parses YAML text; syntax errors become a ValidationError naming the line. */
export function parseYamlDocument(file: string, text: string): unknown {
  try {
    return parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    throw new ValidationError(file, [`YAML syntax: ${(err as Error).message.split('\n')[0]}`]);
  }
}

/** Validates a parsed config document. `baseDir` resolves relative file paths. */
export function validateConfig(doc: unknown, file: string, baseDir: string): RelaySettings {
  const c = new Checker();
  const top = c.object('', doc, ['version', 'hostname', 'listeners', 'tls', 'auth', 'access', 'upstream'], [
    'limits',
    'dkim',
    'metrics',
    'shutdownGracePeriod',
    'queue',
    'workers',
    'peers',
  ]);
  if (!top) throw new ValidationError(file, c.problems);
  const cfg = top as Partial<Record<keyof RelayConfig, unknown>>;

  if (cfg.version !== undefined && cfg.version !== 1) c.fail('version', `${show(cfg.version)} is not supported (must be 1)`);
  let hostname = '';
  if (cfg.hostname !== undefined) {
    const h = c.string('hostname', cfg.hostname);
    if (h !== undefined && !/^(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/.test(h)) {
      c.fail('hostname', `${show(h)} is not a valid host name`);
    } else if (h) hostname = h.toLowerCase();
  }

  // listeners
  const listeners: ListenerSettings[] = [];
  const ports: { port: number; address: string; who: string }[] = [];
  const claimPort = (p: string, port: number | undefined, address: string, who: string) => {
    if (port === undefined) return;
    const clash = ports.find(
      (o) => o.port === port && (o.address === address || WILDCARDS.has(o.address) || WILDCARDS.has(address)),
    );
    if (clash) c.fail(p, `port ${port} is already used by ${clash.who}`);
    ports.push({ port, address, who });
  };
  if (cfg.listeners !== undefined) {
    const list = c.list('listeners', cfg.listeners);
    if (list && list.length === 0) c.fail('listeners', 'at least one listener is required');
    const names = new Set<string>();
    list?.forEach((item, i) => {
      const p = join('listeners', i);
      const o = c.object(p, item, ['name', 'port', 'mode'], ['address']);
      if (!o) return;
      const name = o.name === undefined ? undefined : c.string(join(p, 'name'), o.name);
      if (name !== undefined) {
        if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(name)) c.fail(join(p, 'name'), `${show(name)} must match [a-z0-9][a-z0-9_-]*`);
        if (names.has(name)) c.fail(join(p, 'name'), `${show(name)} is used by another listener`);
        names.add(name);
      }
      const address = o.address === undefined ? DEFAULTS.listenerAddress : c.ip(join(p, 'address'), o.address);
      const port = o.port === undefined ? undefined : c.port(join(p, 'port'), o.port);
      const mode = o.mode === undefined ? undefined : c.oneOf(join(p, 'mode'), o.mode, ['starttls', 'implicit'] as const);
      claimPort(join(p, 'port'), port, address ?? '', `${p} (${name ?? '?'})`);
      if (name && address !== undefined && port !== undefined && mode) listeners.push({ name, address, port, mode });
    });
  }

  // tls
  let tls: RelaySettings['tls'] = { certFile: '', keyFile: '', minVersion: DEFAULTS.minVersion, ciphers: DEFAULT_CIPHERS };
  if (cfg.tls !== undefined) {
    const o = c.object('tls', cfg.tls, ['certFile', 'keyFile'], ['minVersion', 'ciphers']);
    if (o) {
      const certFile = readable(c, 'tls.certFile', o.certFile === undefined ? undefined : c.string('tls.certFile', o.certFile), baseDir);
      const keyFile = readable(c, 'tls.keyFile', o.keyFile === undefined ? undefined : c.string('tls.keyFile', o.keyFile), baseDir);
      const minVersion = o.minVersion === undefined ? DEFAULTS.minVersion : c.oneOf('tls.minVersion', o.minVersion, ['TLSv1.2', 'TLSv1.3'] as const);
      let ciphers = DEFAULT_CIPHERS;
      if (o.ciphers !== undefined) {
        const s = c.string('tls.ciphers', o.ciphers);
        if (s !== undefined) {
          if (!/^[A-Za-z0-9_:+!@=.-]+$/.test(s)) c.fail('tls.ciphers', `${show(s)} is not an OpenSSL cipher list`);
          else if (s.split(':').some((t) => weakCipherToken(t))) {
            c.fail('tls.ciphers', `${show(s)} enables weak or null ciphers`);
          } else ciphers = s;
        }
      }
      tls = { certFile: certFile ?? '', keyFile: keyFile ?? '', minVersion: minVersion ?? DEFAULTS.minVersion, ciphers };
    }
  }

  // auth
  let auth: RelaySettings['auth'] = { usersFile: '', lockout: lockoutDefaults() };
  if (cfg.auth !== undefined) {
    const o = c.object('auth', cfg.auth, ['usersFile'], ['lockout', 'serviceAccountTokens']);
    if (o) {
      const usersFile = readable(c, 'auth.usersFile', o.usersFile === undefined ? undefined : c.string('auth.usersFile', o.usersFile), baseDir);
      const lockout = lockoutDefaults();
      if (o.lockout !== undefined) {
        const l = c.object('auth.lockout', o.lockout, [], ['maxFailures', 'window', 'duration']);
        if (l) {
          if (l.maxFailures !== undefined) lockout.maxFailures = c.int('auth.lockout.maxFailures', l.maxFailures, 1, 1000) ?? lockout.maxFailures;
          if (l.window !== undefined) lockout.windowMs = c.duration('auth.lockout.window', l.window, 1000) ?? lockout.windowMs;
          if (l.duration !== undefined) lockout.durationMs = c.duration('auth.lockout.duration', l.duration, 1000) ?? lockout.durationMs;
        }
      }
      auth = { usersFile: usersFile ?? '', lockout };
      if (o.serviceAccountTokens !== undefined) {
        const t = c.object('auth.serviceAccountTokens', o.serviceAccountTokens, ['issuer', 'audience', 'jwksFile'], []);
        if (t) {
          const issuer = t.issuer === undefined ? undefined : c.string('auth.serviceAccountTokens.issuer', t.issuer);
          const audience = t.audience === undefined ? undefined : c.string('auth.serviceAccountTokens.audience', t.audience);
          if (issuer === '') c.fail('auth.serviceAccountTokens.issuer', 'must not be empty');
          if (audience === '') c.fail('auth.serviceAccountTokens.audience', 'must not be empty');
          const jwksFile = readable(c, 'auth.serviceAccountTokens.jwksFile', t.jwksFile === undefined ? undefined : c.string('auth.serviceAccountTokens.jwksFile', t.jwksFile), baseDir);
          if (issuer && audience && jwksFile) auth.serviceAccountTokens = { issuer, audience, jwksFile };
        }
      }
    }
  }

  // access
  const access: RelaySettings['access'] = { allowedCidrs: [], trustedProxyCidrs: [] };
  if (cfg.access !== undefined) {
    const o = c.object('access', cfg.access, ['allowedCidrs'], ['proxyProtocol']);
    if (o) {
      const list = o.allowedCidrs === undefined ? undefined : c.list('access.allowedCidrs', o.allowedCidrs);
      list?.forEach((v, i) => {
        const cidr = c.cidr(join('access.allowedCidrs', i), v);
        if (cidr) access.allowedCidrs.push(cidr);
      });
      if (o.proxyProtocol !== undefined) {
        const pp = c.object('access.proxyProtocol', o.proxyProtocol, ['trustedCidrs'], []);
        const tl = pp?.trustedCidrs === undefined ? undefined : c.list('access.proxyProtocol.trustedCidrs', pp.trustedCidrs);
        tl?.forEach((v, i) => {
          const cidr = c.cidr(join('access.proxyProtocol.trustedCidrs', i), v);
          if (cidr) access.trustedProxyCidrs.push(cidr);
        });
      }
    }
  }

  // limits
  const d = DEFAULTS.limits;
  const limits: LimitsSettings = {
    maxMessageSize: 10 * 1024 * 1024,
    maxRecipients: d.maxRecipients,
    maxConnections: d.maxConnections,
    maxConnectionsPerIp: d.maxConnectionsPerIp,
    idleTimeoutMs: 60_000,
    preAuthTimeoutMs: 10_000,
    maxUnauthenticated: 0, // set below: half of maxConnections unless given
  };
  if (cfg.limits !== undefined) {
    const o = c.object('limits', cfg.limits, [], ['maxMessageSize', 'maxRecipients', 'maxConnections', 'maxConnectionsPerIp', 'idleTimeout', 'preAuthTimeout', 'maxUnauthenticated']);
    if (o) {
      if (o.maxMessageSize !== undefined) limits.maxMessageSize = c.size('limits.maxMessageSize', o.maxMessageSize, 1024) ?? limits.maxMessageSize;
      if (limits.maxMessageSize > 1024 ** 3) c.fail('limits.maxMessageSize', `${show(o.maxMessageSize)} is over the 1Gi maximum`);
      if (o.maxRecipients !== undefined) limits.maxRecipients = c.int('limits.maxRecipients', o.maxRecipients, 1, 100_000) ?? limits.maxRecipients;
      if (o.maxConnections !== undefined) limits.maxConnections = c.int('limits.maxConnections', o.maxConnections, 1, 1_000_000) ?? limits.maxConnections;
      if (o.maxConnectionsPerIp !== undefined) {
        limits.maxConnectionsPerIp = c.int('limits.maxConnectionsPerIp', o.maxConnectionsPerIp, 1, 1_000_000) ?? limits.maxConnectionsPerIp;
      }
      if (o.idleTimeout !== undefined) limits.idleTimeoutMs = c.duration('limits.idleTimeout', o.idleTimeout, 1000) ?? limits.idleTimeoutMs;
      if (o.preAuthTimeout !== undefined) limits.preAuthTimeoutMs = c.duration('limits.preAuthTimeout', o.preAuthTimeout, 1000) ?? limits.preAuthTimeoutMs;
      if (o.maxUnauthenticated !== undefined) {
        const n = c.int('limits.maxUnauthenticated', o.maxUnauthenticated, 1, 1_000_000);
        if (n !== undefined && n > limits.maxConnections) c.fail('limits.maxUnauthenticated', `${n} is more than limits.maxConnections (${limits.maxConnections})`);
        else limits.maxUnauthenticated = n ?? 0;
      }
    }
  }
  if (limits.maxUnauthenticated === 0) limits.maxUnauthenticated = Math.ceil(limits.maxConnections / 2);

  // upstream
  let upstream: UpstreamConfig = { host: '', port: 0, tls: 'starttls' };
  if (cfg.upstream !== undefined) {
    const o = c.object('upstream', cfg.upstream, ['host', 'port', 'tls'], ['caFile', 'usernameFile', 'passwordFile', 'oauth2', 'maxConnections', 'timeout', 'ehloName']);
    if (o) {
      const host = o.host === undefined ? undefined : c.string('upstream.host', o.host);
      if (host !== undefined && /[\s/]/.test(host)) c.fail('upstream.host', `${show(host)} is not a host name or IP address`);
      const port = o.port === undefined ? undefined : c.port('upstream.port', o.port);
      const mode = o.tls === undefined ? undefined : c.oneOf('upstream.tls', o.tls, ['starttls', 'implicit'] as const);
      const caFile = readable(c, 'upstream.caFile', o.caFile === undefined ? undefined : c.string('upstream.caFile', o.caFile), baseDir);
      const usernameFile = readable(c, 'upstream.usernameFile', o.usernameFile === undefined ? undefined : c.string('upstream.usernameFile', o.usernameFile), baseDir);
      const passwordFile = readable(c, 'upstream.passwordFile', o.passwordFile === undefined ? undefined : c.string('upstream.passwordFile', o.passwordFile), baseDir);
      if ((o.usernameFile === undefined) !== (o.passwordFile === undefined)) {
        c.fail(o.usernameFile === undefined ? 'upstream.usernameFile' : 'upstream.passwordFile', 'usernameFile and passwordFile must be given together');
      }
      const maxConnections = o.maxConnections === undefined ? DEFAULTS.upstreamMaxConnections : c.int('upstream.maxConnections', o.maxConnections, 1, 1000);
      let timeout = DEFAULTS.upstreamTimeout;
      if (o.timeout !== undefined && c.duration('upstream.timeout', o.timeout, 1000) !== undefined) timeout = o.timeout as string;
      let ehloName: string | undefined;
      if (o.ehloName !== undefined) ehloName = c.string('upstream.ehloName', o.ehloName);
      upstream = { host: host ?? '', port: port ?? 0, tls: mode ?? 'starttls', maxConnections: maxConnections ?? DEFAULTS.upstreamMaxConnections, timeout, ehloName: ehloName ?? hostname };
      if (caFile) upstream.caFile = caFile;
      if (usernameFile) upstream.usernameFile = usernameFile;
      if (passwordFile) upstream.passwordFile = passwordFile;
      if (o.oauth2 !== undefined) {
        if (o.usernameFile !== undefined || o.passwordFile !== undefined) {
          c.fail('upstream.oauth2', 'oauth2 and usernameFile/passwordFile exclude each other: the relay logs in one way');
        }
        const oauth2 = checkOAuth2(c, o.oauth2, baseDir);
        if (oauth2) upstream.oauth2 = oauth2;
      }
    }
  }

  // dkim
  const dkim: DkimKeyConfig[] = [];
  if (cfg.dkim !== undefined) {
    const list = c.list('dkim', cfg.dkim);
    const seen = new Set<string>();
    list?.forEach((item, i) => {
      const p = join('dkim', i);
      const o = c.object(p, item, ['domain', 'selector', 'keyFile'], []);
      if (!o) return;
      const domain = o.domain === undefined ? undefined : c.string(join(p, 'domain'), o.domain);
      if (domain !== undefined && !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/i.test(domain)) {
        c.fail(join(p, 'domain'), `${show(domain)} is not a domain name`);
      }
      const selector = o.selector === undefined ? undefined : c.string(join(p, 'selector'), o.selector);
      if (selector !== undefined && !/^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$/i.test(selector)) c.fail(join(p, 'selector'), `${show(selector)} is not a valid DKIM selector`);
      const keyFile = readable(c, join(p, 'keyFile'), o.keyFile === undefined ? undefined : c.string(join(p, 'keyFile'), o.keyFile), baseDir);
      if (domain) {
        if (seen.has(domain.toLowerCase())) c.fail(join(p, 'domain'), `${show(domain)} has more than one DKIM key`);
        seen.add(domain.toLowerCase());
      }
      if (domain && selector && keyFile) dkim.push({ domain: domain.toLowerCase(), selector, keyFile });
    });
  }

  // metrics
  const metrics: RelaySettings['metrics'] = { address: DEFAULTS.metricsAddress, port: DEFAULTS.metricsPort };
  if (cfg.metrics !== undefined) {
    const o = c.object('metrics', cfg.metrics, [], ['address', 'port', 'controlTokenFile']);
    if (o) {
      if (o.address !== undefined) metrics.address = c.ip('metrics.address', o.address) ?? metrics.address;
      if (o.port !== undefined) metrics.port = c.port('metrics.port', o.port) ?? metrics.port;
      // must exist at start; its content is read per request (a rotated token applies at once)
      const tokenFile = readable(c, 'metrics.controlTokenFile', o.controlTokenFile === undefined ? undefined : c.string('metrics.controlTokenFile', o.controlTokenFile), baseDir);
      if (tokenFile) metrics.controlTokenFile = tokenFile;
    }
  }
  claimPort('metrics.port', metrics.port, metrics.address, 'metrics');

  let shutdownGracePeriodMs = 25_000;
  if (cfg.shutdownGracePeriod !== undefined) {
    shutdownGracePeriodMs = c.duration('shutdownGracePeriod', cfg.shutdownGracePeriod, 0) ?? shutdownGracePeriodMs;
  }

  const queue = cfg.queue === undefined ? undefined : checkQueueSection(c, 'queue', cfg.queue, baseDir);

  let workers: number | 'auto' = DEFAULTS.workers;
  if (cfg.workers !== undefined) {
    if (cfg.workers === 'auto') workers = 'auto';
    else if (typeof cfg.workers === 'number') workers = c.int('workers', cfg.workers, 1, MAX_WORKERS) ?? workers;
    else c.fail('workers', `${show(cfg.workers)} must be a number from 1 to ${MAX_WORKERS}, or "auto" (one per CPU the container may use)`);
  }

  const peers = cfg.peers === undefined ? undefined : checkPeers(c, cfg.peers, baseDir);
  if (peers) claimPort('peers.port', peers.port, peers.address, 'peers');

  if (c.problems.length) throw new ValidationError(file, c.problems);
  return { file, hostname, listeners, tls, auth, access, limits, upstream, dkim, metrics, shutdownGracePeriodMs, workers, ...(queue ? { queue } : {}), ...(peers ? { peers } : {}) };
}

/** A sibling "host:port": a host name, an IPv4 address, or "[IPv6]"; split, or undefined when malformed. */
export function splitHostPort(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535 || /^0[0-9]/.test(m[3]!)) return undefined;
  if (m[1] !== undefined) return net.isIPv6(m[1]) ? { host: m[1], port } : undefined;
  const host = m[2]!;
  if (!net.isIPv4(host) && !/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(host)) return undefined;
  return { host, port };
}

/** "host:port" of an address and port, IPv6 in brackets. */
export function joinHostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** peers: the sibling channel (relay/peers.ts, docs/relay-config.md "Across replicas"). */
function checkPeers(c: Checker, v: unknown, baseDir: string): PeersSettings | undefined {
  const P = 'peers';
  const o = c.object(P, v, ['port', 'tokenFile'], ['address', 'service', 'addresses', 'refreshInterval']);
  if (!o) return undefined;
  const address = o.address === undefined ? DEFAULTS.peersAddress : c.ip(`${P}.address`, o.address);
  const port = o.port === undefined ? undefined : c.port(`${P}.port`, o.port);
  const tokenFile = readable(c, `${P}.tokenFile`, o.tokenFile === undefined ? undefined : c.string(`${P}.tokenFile`, o.tokenFile), baseDir);
  if (tokenFile) {
    const token = fs.readFileSync(tokenFile, 'utf8').trim();
    if (token.length < 16) c.fail(`${P}.tokenFile`, `the token in ${show(o.tokenFile)} is ${token.length} characters long; at least 16 are needed (the operator writes 32 random bytes)`);
    else if (/[^\x21-\x7e]/.test(token)) c.fail(`${P}.tokenFile`, `the token in ${show(o.tokenFile)} must be printable ASCII without spaces (it is sent in an HTTP header)`);
  }
  let service: string | undefined;
  if (o.service !== undefined) {
    service = c.string(`${P}.service`, o.service);
    if (service !== undefined && !/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/.test(service)) {
      service = c.fail(`${P}.service`, `${show(service)} is not a DNS name (e.g. "smtp-relay-peers.mail.svc.cluster.local")`);
    }
  }
  const addresses: string[] = [];
  if (o.addresses !== undefined) {
    const list = c.list(`${P}.addresses`, o.addresses);
    list?.forEach((item, i) => {
      const p = join(`${P}.addresses`, i);
      const s = c.string(p, item);
      if (s === undefined) return;
      if (!splitHostPort(s)) c.fail(p, `${show(s)} is not "host:port" (an IPv6 address in brackets: "[fd00::7]:9091")`);
      else addresses.push(s);
    });
  }
  let refreshIntervalMs = 10_000;
  if (o.refreshInterval !== undefined) refreshIntervalMs = c.duration(`${P}.refreshInterval`, o.refreshInterval, 1000) ?? refreshIntervalMs;
  if (address === undefined || port === undefined || !tokenFile) return undefined;
  return { address, port, tokenFile, ...(service ? { service } : {}), addresses, refreshIntervalMs };
}

function httpsUrl(c: Checker, p: string, v: unknown): string | undefined {
  const s = c.string(p, v);
  if (s === undefined) return undefined;
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return c.fail(p, `${show(s)} is not a URL`);
  }
  if (u.protocol !== 'https:') return c.fail(p, `${show(s)} must be an https:// URL (the relay sends its client secret there)`);
  return s;
}

/** upstream.oauth2: the mailbox to send as and exactly one provider (relay/upstream-oauth2.ts). */
function checkOAuth2(c: Checker, v: unknown, baseDir: string): OAuth2Config | undefined {
  const P = 'upstream.oauth2';
  const o = c.object(P, v, ['user'], ['mechanism', 'microsoft', 'google', 'generic']);
  if (!o) return undefined;
  const user = o.user === undefined ? undefined : c.string(`${P}.user`, o.user);
  if (user !== undefined && /[\s\x00-\x1f\x7f]/.test(user)) c.fail(`${P}.user`, `${show(user)} must not contain spaces or control characters`);
  const mechanism = o.mechanism === undefined ? undefined : c.oneOf(`${P}.mechanism`, o.mechanism, OAUTH2_MECHANISMS);
  const given = (['microsoft', 'google', 'generic'] as const).filter((k) => o[k] !== undefined);
  if (given.length !== 1) {
    c.fail(P, `give exactly one of microsoft, google, generic${given.length ? ` (found ${given.join(', ')})` : ''}`);
    return undefined;
  }
  const file = (p: string, x: unknown) => readable(c, p, x === undefined ? undefined : c.string(p, x), baseDir);
  const out: OAuth2Config = { user: user ?? '', ...(mechanism ? { mechanism } : {}) };
  if (o.microsoft !== undefined) {
    const m = c.object(`${P}.microsoft`, o.microsoft, ['tenantId', 'clientId', 'clientSecretFile'], ['tokenUrl']);
    if (!m) return undefined;
    const tenantId = m.tenantId === undefined ? undefined : c.string(`${P}.microsoft.tenantId`, m.tenantId);
    if (tenantId !== undefined && !/^[A-Za-z0-9.-]+$/.test(tenantId)) c.fail(`${P}.microsoft.tenantId`, `${show(tenantId)} is not a tenant ID (a GUID) or a domain`);
    const clientId = m.clientId === undefined ? undefined : c.string(`${P}.microsoft.clientId`, m.clientId);
    const clientSecretFile = file(`${P}.microsoft.clientSecretFile`, m.clientSecretFile);
    const tokenUrl = m.tokenUrl === undefined ? undefined : httpsUrl(c, `${P}.microsoft.tokenUrl`, m.tokenUrl);
    out.microsoft = { tenantId: tenantId ?? '', clientId: clientId ?? '', clientSecretFile: clientSecretFile ?? '', ...(tokenUrl ? { tokenUrl } : {}) };
  } else if (o.google !== undefined) {
    const g = c.object(`${P}.google`, o.google, ['serviceAccountFile'], []);
    if (!g) return undefined;
    out.google = { serviceAccountFile: file(`${P}.google.serviceAccountFile`, g.serviceAccountFile) ?? '' };
  } else {
    const g = c.object(`${P}.generic`, o.generic, ['tokenUrl', 'clientId', 'clientSecretFile'], ['scope']);
    if (!g) return undefined;
    const tokenUrl = g.tokenUrl === undefined ? undefined : httpsUrl(c, `${P}.generic.tokenUrl`, g.tokenUrl);
    const clientId = g.clientId === undefined ? undefined : c.string(`${P}.generic.clientId`, g.clientId);
    const clientSecretFile = file(`${P}.generic.clientSecretFile`, g.clientSecretFile);
    const scope = g.scope === undefined ? undefined : c.string(`${P}.generic.scope`, g.scope);
    out.generic = { tokenUrl: tokenUrl ?? '', clientId: clientId ?? '', clientSecretFile: clientSecretFile ?? '', ...(scope ? { scope } : {}) };
  }
  return out;
}

/**
 * A cipher-list entry that adds weak suites: a broad group (ALL, DEFAULT ...) or a
 * name or alias with null encryption, no authentication, RC4, (3)DES, MD5 or export
 * strength, e.g. NULL-SHA256, ADH-AES256-GCM-SHA384, RC4-SHA, DES-CBC3-SHA. Entries
 * that remove suites ("!aNULL", "-RC4") are fine.
 */
function weakCipherToken(token: string): boolean {
  if (/^[!-]/.test(token)) return false;
  const t = token.replace(/^\+/, '').toUpperCase();
  if (/^(ALL|DEFAULT|COMPLEMENTOFALL|COMPLEMENTOFDEFAULT|LOW|MEDIUM)$/.test(t)) return true;
  return /NULL|ADH|AECDH|ANON|RC4|DES|MD5|EXP/.test(t);
}

function lockoutDefaults(): LockoutSettings {
  return { maxFailures: DEFAULTS.lockout.maxFailures, windowMs: 600_000, durationMs: 900_000 };
}

/** Reads, parses and validates the config file. Throws ValidationError. */
export function loadConfig(file: string): RelaySettings {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ValidationError(file, [`cannot read the config file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  const doc = parseYamlDocument(file, text);
  return validateConfig(doc, file, path.dirname(path.resolve(file)));
}

/**
 * How a change to each config field takes effect: 'restart' (read only at start:
 * sockets, the metrics server, the TLS settings and the watched users file) or
 * 'reload' (applied to new sessions and deliveries in place). The one list: the
 * relay's reload (keepRestartFields), its warning (restartNeeded) and the operator's
 * restart hash (restartRelevantConfig, operator/builders/deployment.ts) all read it.
 * The type makes a new RelayConfig field a compile error until it is listed here.
 */
export const FIELD_EFFECTS = {
  version: 'restart',
  hostname: 'restart',
  listeners: 'restart',
  tls: 'restart',
  metrics: 'restart',
  // issuer and audience change only with the cluster or the relay's name; the keys file is watched
  auth: { usersFile: 'restart', lockout: 'reload', serviceAccountTokens: 'restart' },
  access: 'reload',
  limits: 'reload',
  upstream: 'reload',
  dkim: 'reload',
  shutdownGracePeriod: 'reload',
  // the spool is opened, recovered and its scheduler started once, at start
  queue: 'restart',
  // processes are forked at start
  workers: 'restart',
  // the peer listener binds at start (the DNS name's addresses are re-resolved while running, relay/peers.ts)
  peers: 'restart',
} as const satisfies { [K in keyof Required<RelayConfig>]: FieldEffect | { [S in keyof Required<RelayConfig[K] & object>]: FieldEffect } };

type FieldEffect = 'restart' | 'reload';

/** The upstream and DKIM files `s` names: watched with the config file, reloaded with it. */
export function upstreamFiles(s: RelaySettings): string[] {
  return [s.upstream.caFile, s.upstream.usernameFile, s.upstream.passwordFile, ...(s.upstream.oauth2 ? oauth2Files(s.upstream.oauth2) : []), ...s.dkim.map((d) => d.keyFile)].filter(
    (f): f is string => !!f,
  );
}

/** Dotted paths of the fields that need a restart, e.g. "auth.usersFile". */
export const RESTART_FIELDS: readonly string[] = Object.entries(FIELD_EFFECTS).flatMap(([k, v]) =>
  typeof v === 'string' ? (v === 'restart' ? [k] : []) : Object.entries(v).flatMap(([sub, e]) => (e === 'restart' ? [`${k}.${sub}`] : [])),
);

function pick(obj: unknown, dotted: string): unknown {
  let cur = obj;
  for (const part of dotted.split('.')) cur = cur && typeof cur === 'object' ? (cur as Record<string, unknown>)[part] : undefined;
  return cur;
}

function put(obj: Record<string, unknown>, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let cur = obj;
  for (const part of parts.slice(0, -1)) {
    cur[part] = { ...(cur[part] as Record<string, unknown>) };
    cur = cur[part] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]!] = value;
}

/**
 * The restart fields of a config file, keyed by their last name ("usersFile"): the
 * operator hashes this object, and these keys keep the hash of pods rolled out before
 * this list existed (a changed hash would roll every relay on an operator upgrade).
 */
export function restartRelevantConfig(config: RelayConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of RESTART_FIELDS) {
    const key = f.slice(f.lastIndexOf('.') + 1);
    if (key in out) throw new Error(`relay/config.ts FIELD_EFFECTS: two restart fields end in "${key}"`);
    out[key] = pick(config, f);
  }
  return out;
}

/** Restart fields whose value differs between the running and the new settings. */
export function restartNeeded(running: RelaySettings, next: RelaySettings): string[] {
  return RESTART_FIELDS.filter((f) => JSON.stringify(pick(running, f)) !== JSON.stringify(pick(next, f)));
}

/** The new settings, except that every restart field keeps its running value. */
export function keepRestartFields(running: RelaySettings, next: RelaySettings): RelaySettings {
  const out = { ...next } as unknown as Record<string, unknown>;
  for (const f of RESTART_FIELDS) {
    const v = pick(running, f);
    if (v !== undefined) put(out, f, v);
  }
  return out as unknown as RelaySettings;
}

export type { Obj };
