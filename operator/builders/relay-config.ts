// The relay's config file (relay/config-types.ts RelayConfig) and the
// ConfigMap that carries it. File paths are the fixed mount paths of
// operator/api/v1alpha1.ts, which the Deployment builder mounts.

import YAML from 'yaml';
import type { DkimKeyConfig, ListenerConfig, OAuth2Config, RelayConfig } from '../../relay/config-types.js';
import { validateQueueConfig, type QueueConfig } from '../../relay/spool/settings.js';
import {
  CONFIG_KEY,
  CONTROL_TOKEN_FILE,
  JWKS_FILE,
  PEER_PORT,
  PEER_TOKEN_FILE,
  METRICS_PORT,
  PORT_NAME_SUBMISSION,
  PORT_NAME_SUBMISSIONS,
  RELAY_SHUTDOWN_GRACE_SECONDS,
  SUBMISSION_CONTAINER_PORT,
  SUBMISSIONS_CONTAINER_PORT,
  SPOOL_DIR,
  SPOOL_FILL_RATIO,
  TLS_CERT_FILE,
  TLS_KEY_FILE,
  tokenAudience,
  UPSTREAM_CA_FILE,
  UPSTREAM_OAUTH2_CLIENT_SECRET_FILE,
  UPSTREAM_OAUTH2_SERVICE_ACCOUNT_FILE,
  UPSTREAM_PASSWORD_FILE,
  UPSTREAM_USERNAME_FILE,
  USERS_FILE,
  dkimKeyFile,
  type DkimSpec,
  type QueueSpec,
  type SmtpRelay,
  type UpstreamOAuth2Spec,
} from '../api/v1alpha1.js';
import { childMetadata, childNames, type ChildMetadata } from './meta.js';
import { cpuCores } from './quantity.js';

export interface ConfigInputs {
  /**
   * DKIM entries to leave out of the config because their key is missing or
   * unusable (keys: dkimRecordName(entry)); the relay then sends unsigned for
   * that domain instead of failing to start. Absent: every entry is used.
   */
  skipDkim?: ReadonlySet<string>;
  /** The cluster's ServiceAccount token issuer (its `iss`), once the operator has fetched the keys. */
  serviceAccountIssuer?: string;
  /** Cluster DNS domain, for the peers Service's name; default cluster.local. */
  clusterDomain?: string;
}

export interface ConfigMap {
  apiVersion: 'v1';
  kind: 'ConfigMap';
  metadata: ChildMetadata;
  data: Record<string, string>;
}

/** "<selector>._domainkey.<domain>": the DNS name of a DKIM key, also its identity here. */
export function dkimRecordName(entry: Pick<DkimSpec, 'domain' | 'selector'>): string {
  return `${entry.selector}._domainkey.${entry.domain.toLowerCase()}`;
}

/** The listeners the relay opens, on its fixed container ports. */
export function relayListeners(relay: SmtpRelay): ListenerConfig[] {
  const out: ListenerConfig[] = [];
  if (relay.spec.listeners.submission.enabled) out.push({ name: PORT_NAME_SUBMISSION, port: SUBMISSION_CONTAINER_PORT, mode: 'starttls' });
  if (relay.spec.listeners.submissions.enabled) out.push({ name: PORT_NAME_SUBMISSIONS, port: SUBMISSIONS_CONTAINER_PORT, mode: 'implicit' });
  return out;
}

/**
 * The relay's worker processes for the pod's CPU: its CPU limit rounded up (the cgroup
 * quota the relay's own `workers: auto` would read), else its CPU request rounded up
 * (what the scheduler reserved), else 1. At most 64 (the relay's maximum).
 */
export function relayWorkers(resources: { requests?: Record<string, string | number>; limits?: Record<string, string | number> } | undefined): number {
  const cores = cpuCores(resources?.limits?.cpu) ?? cpuCores(resources?.requests?.cpu);
  if (cores === undefined || !(cores > 0)) return 1;
  return Math.min(64, Math.max(1, Math.ceil(cores - 1e-9)));
}

/** The DKIM entries the relay signs with, in spec order. */
export function usableDkim(relay: SmtpRelay, inputs: ConfigInputs = {}): DkimSpec[] {
  return relay.spec.dkim.filter((d) => !inputs.skipDkim?.has(dkimRecordName(d)));
}

export function buildRelayConfig(relay: SmtpRelay, inputs: ConfigInputs = {}): RelayConfig {
  const s = relay.spec;
  const upstream: RelayConfig['upstream'] = {
    host: s.upstream.host,
    port: s.upstream.port,
    tls: s.upstream.tls,
    maxConnections: s.upstream.maxConnections,
    timeout: s.upstream.timeout,
  };
  if (s.upstream.caSecretRef) upstream.caFile = UPSTREAM_CA_FILE;
  if (s.upstream.credentialsSecretRef) {
    upstream.usernameFile = UPSTREAM_USERNAME_FILE;
    upstream.passwordFile = UPSTREAM_PASSWORD_FILE;
  }
  if (s.upstream.oauth2) upstream.oauth2 = oauth2Config(s.upstream.oauth2);
  const config: RelayConfig = {
    version: 1,
    hostname: s.hostname,
    listeners: relayListeners(relay),
    tls: { certFile: TLS_CERT_FILE, keyFile: TLS_KEY_FILE, minVersion: s.tls.minVersion },
    auth: {
      usersFile: USERS_FILE,
      lockout: { maxFailures: s.auth.lockout.maxFailures, window: s.auth.lockout.window, duration: s.auth.lockout.duration },
      // only with ServiceAccount users (and the issuer known): other relays' config, and restart hash, stay as they were
      ...(inputs.serviceAccountIssuer && s.auth.users.some((u) => u.serviceAccount)
        ? { serviceAccountTokens: { issuer: inputs.serviceAccountIssuer, audience: tokenAudience(relay), jwksFile: JWKS_FILE } }
        : {}),
    },
    access: {
      allowedCidrs: [...s.access.allowedCidrs],
      proxyProtocol: { trustedCidrs: [...s.access.proxyProtocol.trustedCidrs] },
    },
    limits: {
      maxMessageSize: s.limits.maxMessageSize,
      maxRecipients: s.limits.maxRecipients,
      maxConnections: s.limits.maxConnections,
      maxConnectionsPerIp: s.limits.maxConnectionsPerIp,
      preAuthTimeout: s.limits.preAuthTimeout,
      ...(s.limits.maxUnauthenticated !== undefined ? { maxUnauthenticated: s.limits.maxUnauthenticated } : {}),
    },
    upstream,
    // The operator's control endpoints (drain, queue state) on the metrics port.
    metrics: { port: METRICS_PORT, controlTokenFile: CONTROL_TOKEN_FILE },
    shutdownGracePeriod: `${RELAY_SHUTDOWN_GRACE_SECONDS}s`,
  };
  // one worker per CPU the pod may use, always written: the relay's own default (`auto`)
  // would take every core of the node when the pod has no CPU limit
  config.workers = relayWorkers(s.resources);
  const dkim: DkimKeyConfig[] = usableDkim(relay, inputs).map((d) => ({
    domain: d.domain.toLowerCase(),
    selector: d.selector,
    keyFile: dkimKeyFile(d.domain, d.selector),
  }));
  if (dkim.length > 0) config.dkim = dkim;
  if (s.queue) config.queue = queueConfig(s.queue);
  // Always, whatever the replica count: the sibling channel carries lockout gossip and
  // queue hand-off, and a config that depended on spec.replicas would roll every pod
  // (peers.port is a restart field) on each scale, in the middle of a drain.
  config.peers = {
    port: PEER_PORT,
    tokenFile: PEER_TOKEN_FILE,
    service: `${childNames(relay).peersService}.${relay.metadata.namespace}.svc.${inputs.clusterDomain ?? 'cluster.local'}`,
  };
  return config;
}

/**
 * spec.queue → the relay's queue section, checked by the relay's own validator so that
 * what the CRD cannot compare (delayWarning against lifetime, the retry delays against
 * each other) is refused here with the relay's words instead of crash-looping the pods.
 */
export function queueConfig(q: QueueSpec): QueueConfig {
  const sizeBytes = parseStorageSize(q.storage.size);
  const out: QueueConfig = {
    directory: SPOOL_DIR,
    maxBytes: Math.floor(sizeBytes * SPOOL_FILL_RATIO),
    lifetime: q.lifetime,
    retry: { initialDelay: q.retry.initialDelay, maxDelay: q.retry.maxDelay },
    concurrency: q.concurrency,
    ...(q.delayWarning ? { delayWarning: q.delayWarning } : {}),
  };
  try {
    validateQueueConfig(out, 'spec.queue', SPOOL_DIR);
  } catch (err) {
    const problems = (err as { problems?: string[] }).problems;
    throw new Error(problems ? problems.map((p) => `spec.${p}`).join('; ') : String(err));
  }
  return out;
}

/** "<n>Mi|Gi|Ti" (the CRD's pattern for queue.storage.size) in bytes. */
function parseStorageSize(size: string): number {
  const m = /^([0-9]+)(Mi|Gi|Ti)$/.exec(size);
  if (!m) throw new Error(`spec.queue.storage.size ${JSON.stringify(size)} is not a size such as 1Gi`);
  return Number(m[1]) * 1024 ** { Mi: 2, Gi: 3, Ti: 4 }[m[2] as 'Mi' | 'Gi' | 'Ti'];
}

/** spec.upstream.oauth2 → the relay's upstream.oauth2, its secret at the fixed mount path. */
export function oauth2Config(o: UpstreamOAuth2Spec): OAuth2Config {
  const head = { user: o.user, ...(o.mechanism ? { mechanism: o.mechanism } : {}) };
  if (o.microsoft) {
    const m = o.microsoft;
    return { ...head, microsoft: { tenantId: m.tenantId, clientId: m.clientId, clientSecretFile: UPSTREAM_OAUTH2_CLIENT_SECRET_FILE, ...(m.tokenUrl ? { tokenUrl: m.tokenUrl } : {}) } };
  }
  if (o.google) return { ...head, google: { serviceAccountFile: UPSTREAM_OAUTH2_SERVICE_ACCOUNT_FILE } };
  if (o.generic) {
    const g = o.generic;
    return { ...head, generic: { tokenUrl: g.tokenUrl, clientId: g.clientId, clientSecretFile: UPSTREAM_OAUTH2_CLIENT_SECRET_FILE, ...(g.scope ? { scope: g.scope } : {}) } };
  }
  throw new Error('spec.upstream.oauth2 names no provider (microsoft, google or generic)');
}

/** YAML text of a value: the key order is the object's (fixed by the builders), no line folding. */
export function renderYaml(value: unknown): string {
  return YAML.stringify(value, { lineWidth: 0, indent: 2 });
}

/** The ConfigMap carrying `config` (built once per reconcile by buildRelayConfig). */
export function buildConfigMap(relay: SmtpRelay, config: RelayConfig): ConfigMap {
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: childMetadata(relay, childNames(relay).configMap),
    data: { [CONFIG_KEY]: `# Rendered by smtp-relay-operator from SmtpRelay ${relay.metadata.namespace}/${relay.metadata.name}; edits are overwritten.\n${renderYaml(config)}` },
  };
}
