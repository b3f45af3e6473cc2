// The relay's config file format (YAML), version 1: the interface between the
// operator (which renders it into a ConfigMap) and the relay (which loads it).
// docs/relay-config.md documents every field; relay/config.ts validates it.
// Durations are strings like "30s", "10m", "1h"; sizes are integers of bytes
// or strings with a binary suffix ("10Mi", "512Ki").

import type { QueueConfig } from './spool/settings.js';

export type Duration = string;
export type Size = number | string;

export type ListenerMode = 'starttls' | 'implicit';
export type TlsVersion = 'TLSv1.2' | 'TLSv1.3';

export interface ListenerConfig {
  /** Unique name, used as the `listener` metric label (e.g. "submission"). */
  name: string;
  /** Bind address; default "::" (all IPv4 and IPv6 addresses). */
  address?: string;
  port: number;
  mode: ListenerMode;
}

export interface TlsConfig {
  /** PEM certificate chain and key; watched and hot-reloaded. */
  certFile: string;
  keyFile: string;
  /** Default TLSv1.2. */
  minVersion?: TlsVersion;
  /** OpenSSL cipher list for TLS 1.2; a strong AEAD-only default applies. */
  ciphers?: string;
}

export interface LockoutConfig {
  /** Failures within `window` that trigger a lockout; default 5. */
  maxFailures?: number;
  /** Default "10m". */
  window?: Duration;
  /** Default "15m". */
  duration?: Duration;
}

export interface AuthConfig {
  /** The users file (see UsersFile); watched and hot-reloaded. */
  usersFile: string;
  lockout?: LockoutConfig;
  /** ServiceAccount-token logins (users with `serviceAccount`); absent = none accepted. */
  serviceAccountTokens?: ServiceAccountTokensConfig;
}

/** How projected ServiceAccount tokens are verified, offline (relay/sa-token.ts). */
export interface ServiceAccountTokensConfig {
  /** The cluster's service-account issuer: the token's `iss` (the API server's --service-account-issuer). */
  issuer: string;
  /** The audience tokens must be requested for (the token's `aud`), e.g. "smtprelay.dev/<namespace>/<relay>". */
  audience: string;
  /** The issuer's public keys as a JSON Web Key Set; watched and hot-reloaded with the users file. */
  jwksFile: string;
}

export interface AccessConfig {
  /** Clients allowed to connect; IPv4 and IPv6 CIDRs. Empty list refuses everyone. */
  allowedCidrs: string[];
  /** PROXY protocol (v1 or v2) is honoured only from these peers; empty = off. */
  proxyProtocol?: { trustedCidrs: string[] };
}

export interface LimitsConfig {
  /** Default "10Mi". Advertised in EHLO SIZE. */
  maxMessageSize?: Size;
  /** Default 100. */
  maxRecipients?: number;
  /** Default 1000. */
  maxConnections?: number;
  /** Default 20. */
  maxConnectionsPerIp?: number;
  /** Idle/command timeout; default "60s". */
  idleTimeout?: Duration;
  /**
   * Time from TCP accept to a successful AUTH (TLS handshake, EHLO, STARTTLS and AUTH);
   * default "10s". A connection that takes longer gets 421 and is closed.
   */
  preAuthTimeout?: Duration;
  /**
   * Connections not yet authenticated (TLS handshakes included); default half of
   * maxConnections. When full, the oldest is closed to admit a newcomer; authenticated
   * sessions are never closed for that.
   */
  maxUnauthenticated?: number;
}

export interface UpstreamConfig {
  host: string;
  port: number;
  /** How TLS is reached upstream; certificate always verified. */
  tls: 'starttls' | 'implicit';
  /** Extra PEM CA bundle to trust (besides the system CAs). */
  caFile?: string;
  /** Files holding the upstream AUTH username and password (basic-auth Secret keys). */
  usernameFile?: string;
  passwordFile?: string;
  /** Log in upstream with OAUTHBEARER or XOAUTH2 and a token from an OAuth2 provider (excludes usernameFile/passwordFile). */
  oauth2?: OAuth2Config;
  /** Pooled connections to the smarthost; default 5. */
  maxConnections?: number;
  /** Per-message upstream timeout; default "60s". */
  timeout?: Duration;
  /** Name used in EHLO to the upstream; default the relay hostname. */
  ehloName?: string;
}

/**
 * Upstream OAuth2: `user` is the mailbox the relay logs in as (XOAUTH2 `user=`, OAUTHBEARER
 * `a=`), and exactly one provider says how its access token is obtained (relay/upstream-oauth2.ts).
 */
export interface OAuth2Config {
  user: string;
  /**
   * The SASL mechanism: `auto` (default) uses OAUTHBEARER (RFC 7628) when the upstream's
   * EHLO advertises it, else XOAUTH2; the other two force one.
   */
  mechanism?: OAuth2Mechanism;
  microsoft?: MicrosoftOAuth2Config;
  google?: GoogleOAuth2Config;
  generic?: GenericOAuth2Config;
}

/** upstream.oauth2.mechanism (the CRD's enum of spec.upstream.oauth2.mechanism says the same). */
export const OAUTH2_MECHANISMS = ['auto', 'XOAUTH2', 'OAUTHBEARER'] as const;
export type OAuth2Mechanism = (typeof OAUTH2_MECHANISMS)[number];

/** Client credentials grant against Microsoft Entra ID, scope https://outlook.office365.com/.default. */
export interface MicrosoftOAuth2Config {
  tenantId: string;
  clientId: string;
  /** File holding the client secret. */
  clientSecretFile: string;
  /** Default https://login.microsoftonline.com/<tenantId>/oauth2/v2.0/token; override for sovereign clouds. */
  tokenUrl?: string;
}

/** Service account JWT bearer grant with domain-wide delegation, scope https://mail.google.com/. */
export interface GoogleOAuth2Config {
  /** The service account's JSON key file (client_email, private_key, token_uri). */
  serviceAccountFile: string;
}

/** Client credentials grant against any token endpoint. */
export interface GenericOAuth2Config {
  tokenUrl: string;
  clientId: string;
  clientSecretFile: string;
  scope?: string;
}

export interface DkimKeyConfig {
  domain: string;
  selector: string;
  /** PEM private key (RSA or Ed25519). */
  keyFile: string;
}

export interface MetricsConfig {
  /** Default "::". Serves /metrics, /healthz, /readyz. */
  address?: string;
  /** Default 9090. */
  port?: number;
  /**
   * The operator's control endpoints on the metrics port (relay/control.ts): GET /queue,
   * POST /drain, DELETE /drain, each with `Authorization: Bearer <the file's content>`.
   * Absent = those endpoints answer 404. The token is generated by the operator.
   */
  controlTokenFile?: string;
}

/**
 * The channel between sibling replicas (relay/peers.ts): HTTPS with the relay's own
 * certificate (tls.certFile/keyFile), a client accepts a peer only if it presents the
 * same public key as its own certificate (current or previous); the client sends
 * `Authorization: Bearer <tokenFile's content>`. Carries queue hand-off (relay/handoff.ts)
 * and lockout gossip (relay/limits-gossip.ts).
 */
export interface PeersConfig {
  /** Default "::". */
  address?: string;
  /** Required: the peer listener's port (the operator uses 9091). */
  port: number;
  /** Required: the shared peer token, generated by the operator. */
  tokenFile: string;
  /** A DNS name whose A/AAAA records are the sibling pods (a headless Service); re-resolved every refreshInterval. Own addresses are left out. */
  service?: string;
  /** Static sibling addresses "host:port" (tests, or outside Kubernetes); used with or without `service`. */
  addresses?: string[];
  /** How often `service` is re-resolved; default "10s". */
  refreshInterval?: Duration;
}

export interface RelayConfig {
  /** Config format version; must be 1. */
  version: 1;
  /** Banner / EHLO name. */
  hostname: string;
  listeners: ListenerConfig[];
  tls: TlsConfig;
  auth: AuthConfig;
  access: AccessConfig;
  limits?: LimitsConfig;
  upstream: UpstreamConfig;
  dkim?: DkimKeyConfig[];
  metrics?: MetricsConfig;
  /** Grace period for in-flight transactions on SIGTERM; default "25s". */
  shutdownGracePeriod?: Duration;
  /**
   * Worker processes that serve SMTP (relay/workers.ts): a number (1 = a single process,
   * as before), or "auto" = one per CPU the container may use (its cgroup CPU quota,
   * else the host's cores). Default 1.
   */
  workers?: number | 'auto';
  /**
   * Queue mode (relay/spool/settings.ts, docs/spool.md): present = a 250 once the message
   * is on stable storage in the spool, delivered later with retries. Absent = inline mode:
   * a 250 only once the upstream accepted.
   */
  queue?: QueueConfig;
  /** Sibling replicas (hand-off on drain, lockout across replicas); absent = none. */
  peers?: PeersConfig;
}

/** The users file (YAML), hot-reloaded. */
export interface UsersFile {
  users: UserEntry[];
}

export interface UserEntry {
  name: string;
  /**
   * Output of `smtp-relay hash-password`: "scrypt$<N>$<r>$<p>$<salt b64>$<hash b64>".
   * Exactly one of passwordHash and serviceAccount.
   */
  passwordHash?: string;
  /** The user logs in with a projected token of this ServiceAccount as the password (auth.serviceAccountTokens). */
  serviceAccount?: {
    namespace: string;
    name: string;
    /** The ServiceAccount's metadata.uid; when given, a token must carry it (the tokens of a deleted and re-created account are refused). The operator writes it. */
    uid?: string;
  };
  /** Sender patterns: "user@domain" or "*@domain" (case-insensitive). */
  allowedSenders: string[];
  /** Messages per period; absent = unlimited. */
  rateLimit?: { messages: number; per: Duration };
}
