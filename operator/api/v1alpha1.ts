// The SmtpRelay API, version v1alpha1: the one place for the CRD's TypeScript
// types and for the names both the CRD (crds/smtprelay.yaml) and the operator
// depend on. crds/smtprelay.yaml is the contract users see; these types mirror
// it after the API server has applied its defaults (so defaulted fields are
// required here, and optional fields are the ones without a default).

import type { OAuth2Mechanism } from '../../relay/config-types.js';

export const GROUP = 'smtprelay.dev';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'SmtpRelay';
export const LIST_KIND = 'SmtpRelayList';
export const PLURAL = 'smtprelays';
export const SINGULAR = 'smtprelay';
export const SHORT_NAMES: readonly string[] = ['smtpr'];
export const CRD_NAME = `${PLURAL}.${GROUP}`;

/** The one field manager for every server-side apply the operator makes. */
export const FIELD_MANAGER = 'smtp-relay-operator';

// ---------------------------------------------------------------------------
// Labels and annotations on children.

export const LABEL_NAME = 'app.kubernetes.io/name';
export const LABEL_INSTANCE = 'app.kubernetes.io/instance';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const LABEL_COMPONENT = 'app.kubernetes.io/component';
export const APP_NAME = 'smtp-relay';
export const MANAGED_BY = 'smtp-relay-operator';

/**
 * On per-user credential Secrets the operator generated: the SmtpRelay user
 * name (an annotation: user names may hold '@', which label values may not).
 * Together with the controller ownerReference this tells a generated Secret
 * (owned, deleted with the relay) from a user-supplied one (only ever read).
 */
export const ANNOTATION_GENERATED_FOR_USER = 'smtprelay.dev/user';
/**
 * On per-user credential Secrets the operator generated: the SHA-256 (hex) of
 * the password it generated. While the Secret's password still has this digest,
 * the password is the operator's ~190-bit random one, and the users file hashes
 * it with the low scrypt cost (a slow KDF adds nothing against guessing 190
 * bits); a password the user has since put there, or one from a Secret the user
 * supplied, gets the relay's full production cost. The digest of a 190-bit
 * random value reveals nothing, and whoever can read the annotation can read
 * the Secret's data anyway.
 */
export const ANNOTATION_GENERATED_PASSWORD_SHA256 = 'smtprelay.dev/generated-password-sha256';
/** On generated DKIM key Secrets: the DNS name "<selector>._domainkey.<domain>" (an annotation: too long for a label value). */
export const ANNOTATION_DKIM_RECORD = 'smtprelay.dev/dkim-record';
/**
 * Pod-template annotation: hash of only what the relay cannot hot-reload.
 * Changing it rolls the Deployment; user, certificate, limit and sender-rule
 * changes leave it alone.
 */
export const ANNOTATION_RESTART_HASH = 'smtprelay.dev/restart-hash';
/** On every child: hash of the desired object, so the sync can skip no-op applies. */
export const ANNOTATION_SPEC_HASH = 'smtprelay.dev/spec-hash';
/**
 * Finalizer on an SmtpRelay with a persistent queue: on deletion the operator drains
 * every pod (within spec.queue.drainTimeout) before the pods and the relay go.
 */
export const FINALIZER_DRAIN = 'smtprelay.dev/drain';
/**
 * On a queue claim (spool-<relay>-<ordinal>): the pod that used it reported an empty
 * queue while draining, at this time (RFC 3339). Only a claim carrying it is ever deleted
 * by the operator, and only while no pod uses it.
 */
export const ANNOTATION_QUEUE_EMPTY = 'smtprelay.dev/queue-confirmed-empty';
/** On a queue claim kept because it may still hold mail (drain bound passed): "true". */
export const LABEL_QUEUE_KEPT = 'smtprelay.dev/queue-kept';
/** On a kept queue claim: the messages its pod last reported ("unknown" when it could not be asked). */
export const ANNOTATION_QUEUE_MESSAGES = 'smtprelay.dev/queue-messages';

// ---------------------------------------------------------------------------
// The relay pod's contract: where files are mounted and which ports it opens.
// The ConfigMap builder writes these paths into config.yaml and the Deployment
// builder mounts the volumes there, so both always agree.

export const MOUNT_ROOT = '/etc/smtp-relay';
export const CONFIG_DIR = `${MOUNT_ROOT}/config`;
export const CONFIG_KEY = 'config.yaml';
export const CONFIG_FILE = `${CONFIG_DIR}/${CONFIG_KEY}`;
export const USERS_DIR = `${MOUNT_ROOT}/users`;
export const USERS_KEY = 'users.yaml';
export const USERS_FILE = `${USERS_DIR}/${USERS_KEY}`;
/** The cluster's ServiceAccount issuer keys (JWKS), in the users Secret beside the users file, when a user logs in with a ServiceAccount token. */
export const JWKS_KEY = 'jwks.json';
export const JWKS_FILE = `${USERS_DIR}/${JWKS_KEY}`;

/**
 * The audience a ServiceAccount token must be requested for to log in to this
 * relay (serviceAccountToken.audience of a projected volume). One per relay, so
 * a token for one relay is no use at another, nor at the API server.
 */
export function tokenAudience(relay: { metadata: { namespace: string; name: string } }): string {
  return `${GROUP}/${relay.metadata.namespace}/${relay.metadata.name}`;
}

/** Binding Secrets (servicebinding.io well-known entries): what an app mounts or takes with envFrom. */
export const BINDING_TYPE = 'smtp';
export const BINDING_PROVIDER = MANAGED_BY;
export const BINDING_SECRET_TYPE = `servicebinding.io/${BINDING_TYPE}`;
export const TLS_DIR = `${MOUNT_ROOT}/tls`;
export const TLS_CERT_FILE = `${TLS_DIR}/tls.crt`;
export const TLS_KEY_FILE = `${TLS_DIR}/tls.key`;
export const UPSTREAM_CREDENTIALS_DIR = `${MOUNT_ROOT}/upstream/credentials`;
export const UPSTREAM_USERNAME_FILE = `${UPSTREAM_CREDENTIALS_DIR}/username`;
export const UPSTREAM_PASSWORD_FILE = `${UPSTREAM_CREDENTIALS_DIR}/password`;
/** The upstream OAuth2 secret (client secret or service account key), one file. */
export const UPSTREAM_OAUTH2_DIR = `${MOUNT_ROOT}/upstream/oauth2`;
export const UPSTREAM_OAUTH2_CLIENT_SECRET_FILE = `${UPSTREAM_OAUTH2_DIR}/client-secret`;
export const UPSTREAM_OAUTH2_SERVICE_ACCOUNT_FILE = `${UPSTREAM_OAUTH2_DIR}/service-account.json`;
export const UPSTREAM_CA_DIR = `${MOUNT_ROOT}/upstream/ca`;
export const UPSTREAM_CA_FILE = `${UPSTREAM_CA_DIR}/ca.crt`;
export const DKIM_DIR = `${MOUNT_ROOT}/dkim`;
/** The operator-generated internal Secret (<relay>-internal): the control and peer tokens. */
export const INTERNAL_DIR = `${MOUNT_ROOT}/internal`;
export const CONTROL_TOKEN_KEY = 'control-token';
export const PEER_TOKEN_KEY = 'peer-token';
export const CONTROL_TOKEN_FILE = `${INTERNAL_DIR}/${CONTROL_TOKEN_KEY}`;
export const PEER_TOKEN_FILE = `${INTERNAL_DIR}/${PEER_TOKEN_KEY}`;
/** The spool (spec.queue): a PersistentVolumeClaim per pod, or an emptyDir. */
export const SPOOL_DIR = '/var/spool/smtp-relay';
/** The share of spec.queue.storage.size the relay fills before it answers 452 (the rest is SQLite's WAL and headroom). */
export const SPOOL_FILL_RATIO = 0.8;
/** DKIM private key of one (domain, selector): `${DKIM_DIR}/<domain>/<selector>.key`. */
export function dkimKeyFile(domain: string, selector: string): string {
  return `${DKIM_DIR}/${domain.toLowerCase()}/${selector}.key`;
}

/** Container ports: unprivileged, so the relay runs as non-root; the Service maps spec ports onto them. */
export const SUBMISSION_CONTAINER_PORT = 2587;
export const SUBMISSIONS_CONTAINER_PORT = 2465;
/** /metrics, /healthz, /readyz. Also the Service's metrics port. */
export const METRICS_PORT = 9090;
/** The sibling channel (hand-off, lockout gossip): HTTPS with the relay's certificate and the peer token. */
export const PEER_PORT = 9091;
export const PORT_NAME_PEERS = 'peers';
export const PORT_NAME_SUBMISSION = 'submission';
export const PORT_NAME_SUBMISSIONS = 'submissions';
export const PORT_NAME_METRICS = 'metrics';
export const HEALTH_PATH_LIVE = '/healthz';
export const HEALTH_PATH_READY = '/readyz';

/** Non-root identity of the relay container (distroless "nonroot"). */
export const RELAY_UID = 65532;
export const RELAY_GID = 65532;
export const RELAY_CONTAINER_NAME = 'relay';
/** The relay's own drain period on SIGTERM (config shutdownGracePeriod); the pod's grace period is longer. */
export const RELAY_SHUTDOWN_GRACE_SECONDS = 25;
export const POD_TERMINATION_GRACE_SECONDS = 40;

/** Keys of a kubernetes.io/basic-auth Secret. */
export const BASIC_AUTH_USERNAME_KEY = 'username';
export const BASIC_AUTH_PASSWORD_KEY = 'password';
/** Key of a DKIM private key (PEM, PKCS#8 or PKCS#1) in its Secret, unless the spec names another. */
export const DKIM_PRIVATE_KEY_KEY = 'private.key';
/** Key of the OAuth2 client secret in its Secret, unless the spec names another. */
export const OAUTH2_CLIENT_SECRET_KEY = 'client-secret';
/** Key of the Google service account JSON key in its Secret, unless the spec names another. */
export const OAUTH2_SERVICE_ACCOUNT_KEY = 'service-account.json';
/** Key of the PEM CA bundle in the upstream CA Secret, unless the spec names another. */
export const UPSTREAM_CA_KEY = 'ca.crt';

// ---------------------------------------------------------------------------
// Conditions.

export const ConditionType = {
  /** Summary: True when every other condition is True. */
  Ready: 'Ready',
  /** Every child object applied. */
  Reconciled: 'Reconciled',
  /** The serving certificate is issued and valid (cert-manager) or the given TLS Secret is usable. */
  CertificateReady: 'CertificateReady',
  /** Every user has a usable password; users left out are named in the message. */
  CredentialsReady: 'CredentialsReady',
  /**
   * Upstream credentials (password or OAuth2) and CA Secrets, when referenced, exist and are
   * well formed, and no relay pod reports that the upstream refused its login (the operator
   * asks each pod's GET /upstream every minute: operator/upstream-logins.ts). A Secret
   * problem is reported first: it is the cause.
   */
  UpstreamReady: 'UpstreamReady',
  /** Every DKIM key exists (given or generated) and is usable. */
  DkimReady: 'DkimReady',
  /** The relay's workload (Deployment, or StatefulSet with a persistent queue) has its minimum of available replicas. */
  Available: 'Available',
  /**
   * Set once a drain happened (scale-down of a persistent queue, or deletion): False while
   * pods drain (the message says which, how many messages are left, which pods cannot be
   * reached) or after the bound passed with mail left (which claims were kept); True once
   * the leaving pods reported an empty queue. Not part of Ready: the relay serves meanwhile.
   */
  QueueDrained: 'QueueDrained',
} as const;
export type ConditionType = (typeof ConditionType)[keyof typeof ConditionType];

/** The conditions Ready summarises, in the order their problems are reported. */
export const READY_DEPENDS_ON: readonly ConditionType[] = [
  ConditionType.Reconciled,
  ConditionType.CertificateReady,
  ConditionType.CredentialsReady,
  ConditionType.UpstreamReady,
  ConditionType.DkimReady,
  ConditionType.Available,
];

/** Condition reasons (UpperCamelCase, as metav1.Condition requires). */
export const Reason = {
  // Ready
  Ready: 'Ready',
  /** Some condition Ready depends on has not been reported yet. */
  Pending: 'Pending',
  // Reconciled
  Applied: 'Applied',
  ApplyFailed: 'ApplyFailed',
  InvalidSpec: 'InvalidSpec',
  // CertificateReady
  Issued: 'Issued',
  Issuing: 'Issuing',
  IssuerNotFound: 'IssuerNotFound',
  CertificateFailed: 'CertificateFailed',
  CertificateExpired: 'CertificateExpired',
  TlsSecretNotFound: 'TlsSecretNotFound',
  TlsSecretInvalid: 'TlsSecretInvalid',
  TlsSecretValid: 'TlsSecretValid',
  // CredentialsReady
  CredentialsValid: 'CredentialsValid',
  PasswordRefused: 'PasswordRefused',
  UserSecretInvalid: 'UserSecretInvalid',
  /** A ServiceAccount user is left out: the cluster's token issuer keys could not be fetched yet. */
  IssuerKeysUnavailable: 'IssuerKeysUnavailable',
  /** A ServiceAccount user is left out: its ServiceAccount does not exist (or cannot be read). */
  ServiceAccountNotFound: 'ServiceAccountNotFound',
  // UpstreamReady
  UpstreamConfigured: 'UpstreamConfigured',
  UpstreamCredentialsNotFound: 'UpstreamCredentialsNotFound',
  UpstreamCredentialsInvalid: 'UpstreamCredentialsInvalid',
  UpstreamCaNotFound: 'UpstreamCaNotFound',
  UpstreamCaInvalid: 'UpstreamCaInvalid',
  UpstreamOAuth2SecretNotFound: 'UpstreamOAuth2SecretNotFound',
  UpstreamOAuth2SecretInvalid: 'UpstreamOAuth2SecretInvalid',
  /** A relay pod reports that the upstream refused its login (535, 5.7.139, 5.7.8 ...); also the Warning Event's reason. */
  UpstreamAuthRefused: 'UpstreamAuthRefused',
  // DkimReady
  DkimKeysReady: 'DkimKeysReady',
  DkimSecretNotFound: 'DkimSecretNotFound',
  DkimKeyInvalid: 'DkimKeyInvalid',
  // Available
  MinimumReplicasAvailable: 'MinimumReplicasAvailable',
  MinimumReplicasUnavailable: 'MinimumReplicasUnavailable',
  DeploymentNotFound: 'DeploymentNotFound',
  // QueueDrained
  Draining: 'Draining',
  Drained: 'Drained',
  DrainUnreachable: 'DrainUnreachable',
  DrainTimedOut: 'DrainTimedOut',
} as const;
export type Reason = (typeof Reason)[keyof typeof Reason];

export type ConditionStatus = 'True' | 'False' | 'Unknown';

/** metav1.Condition, with the timestamp as the RFC 3339 string the API server stores. */
export interface Condition {
  type: string;
  status: ConditionStatus;
  observedGeneration?: number;
  /** RFC 3339, second precision. */
  lastTransitionTime: string;
  reason: string;
  message: string;
}

// ---------------------------------------------------------------------------
// Spec.

export interface LocalObjectReference {
  name: string;
}

export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export interface ListenerSpec {
  enabled: boolean;
  /** The Service port clients connect to. */
  port: number;
}

export interface ListenersSpec {
  /** STARTTLS, default port 587. */
  submission: ListenerSpec;
  /** Implicit TLS, default port 465. */
  submissions: ListenerSpec;
}

export interface IssuerRef {
  name: string;
  kind: 'Issuer' | 'ClusterIssuer' | string;
  group: string;
}

export type TlsVersion = 'TLSv1.2' | 'TLSv1.3';

export interface TlsSpec {
  /** cert-manager issues the serving certificate. Exactly one of issuerRef / secretName. */
  issuerRef?: IssuerRef;
  /** An existing kubernetes.io/tls Secret in the relay's namespace. */
  secretName?: string;
  minVersion: TlsVersion;
}

export interface RateLimitSpec {
  messages: number;
  /** Duration, e.g. "1h". */
  per: string;
}

export interface UserSpec {
  /** The SMTP AUTH login name. */
  name: string;
  /**
   * kubernetes.io/basic-auth Secret holding the password (key `password`).
   * Absent: "<relay>-user-<name>" (see userSecretName in operator/builders).
   * Generated when it does not exist.
   */
  secretRef?: LocalObjectReference;
  /**
   * Logs in with a projected token of this ServiceAccount (audience tokenAudience)
   * as the password, instead of a password Secret. Not together with secretRef.
   */
  serviceAccount?: ServiceAccountReference;
  /** "local@domain" or "*@domain". */
  allowedSenders: string[];
  rateLimit?: RateLimitSpec;
}

export interface ServiceAccountReference {
  namespace: string;
  name: string;
}

export interface PasswordPolicySpec {
  minLength: number;
}

export interface LockoutSpec {
  maxFailures: number;
  window: string;
  duration: string;
}

export interface AuthSpec {
  users: UserSpec[];
  passwordPolicy: PasswordPolicySpec;
  lockout: LockoutSpec;
}

export interface ProxyProtocolSpec {
  trustedCidrs: string[];
}

export interface AccessSpec {
  allowedCidrs: string[];
  /** Namespaces whose pods may reach the SMTP ports (NetworkPolicy only). */
  allowedNamespaces?: LabelSelector;
  proxyProtocol: ProxyProtocolSpec;
}

export interface LimitsSpec {
  /** Size string: bytes or with Ki/Mi/Gi. */
  maxMessageSize: string;
  maxRecipients: number;
  maxConnections: number;
  maxConnectionsPerIp: number;
  /** Duration string; default 10s. */
  preAuthTimeout: string;
  /** Absent: the relay's default, half of maxConnections. */
  maxUnauthenticated?: number;
}

export interface SecretKeyReference {
  name: string;
  key: string;
}

export interface UpstreamSpec {
  host: string;
  port: number;
  tls: 'starttls' | 'implicit';
  /** PEM CA bundle to trust in addition to the system CAs. */
  caSecretRef?: SecretKeyReference;
  /** kubernetes.io/basic-auth Secret with `username` and `password`. */
  credentialsSecretRef?: LocalObjectReference;
  /** Log in with OAUTHBEARER or XOAUTH2 and a token from an OAuth2 provider; excludes credentialsSecretRef. */
  oauth2?: UpstreamOAuth2Spec;
  maxConnections: number;
  timeout: string;
}

/** Exactly one of microsoft, google, generic (the CRD's CEL rule says so). */
export interface UpstreamOAuth2Spec {
  /** The mailbox the relay logs in as and sends as (XOAUTH2 user, OAUTHBEARER a=). */
  user: string;
  /** SASL mechanism; absent or auto: OAUTHBEARER when the upstream offers it, else XOAUTH2. */
  mechanism?: OAuth2Mechanism;
  microsoft?: MicrosoftOAuth2Spec;
  google?: GoogleOAuth2Spec;
  generic?: GenericOAuth2Spec;
}

export interface MicrosoftOAuth2Spec {
  /** Directory (tenant) ID or a verified domain of the tenant. */
  tenantId: string;
  /** Application (client) ID of the app registration. */
  clientId: string;
  /** The client secret; key defaults to "client-secret". */
  clientSecretRef: SecretKeyReference;
  /** Token endpoint; absent: https://login.microsoftonline.com/<tenantId>/oauth2/v2.0/token. */
  tokenUrl?: string;
}

export interface GoogleOAuth2Spec {
  /** The service account's JSON key; key defaults to "service-account.json". */
  serviceAccountSecretRef: SecretKeyReference;
}

export interface GenericOAuth2Spec {
  tokenUrl: string;
  clientId: string;
  /** The client secret; key defaults to "client-secret". */
  clientSecretRef: SecretKeyReference;
  scope?: string;
}

/** The Secret key an oauth2 spec mounts, and the file it is mounted as. */
export function oauth2SecretSource(o: UpstreamOAuth2Spec): { ref: SecretKeyReference; file: string; field: string } | undefined {
  if (o.microsoft) return { ref: o.microsoft.clientSecretRef, file: UPSTREAM_OAUTH2_CLIENT_SECRET_FILE, field: 'spec.upstream.oauth2.microsoft.clientSecretRef' };
  if (o.generic) return { ref: o.generic.clientSecretRef, file: UPSTREAM_OAUTH2_CLIENT_SECRET_FILE, field: 'spec.upstream.oauth2.generic.clientSecretRef' };
  if (o.google) return { ref: o.google.serviceAccountSecretRef, file: UPSTREAM_OAUTH2_SERVICE_ACCOUNT_FILE, field: 'spec.upstream.oauth2.google.serviceAccountSecretRef' };
  return undefined;
}

export interface DkimSpec {
  domain: string;
  selector: string;
  /** Secret holding the private key; absent: generated into "<relay>-dkim-<selector>-<domain>". */
  secretRef?: SecretKeyReference;
}

export interface ServiceMonitorSpec {
  enabled: boolean;
  interval: string;
  /** Extra labels on the ServiceMonitor, e.g. for a Prometheus serviceMonitorSelector. */
  labels?: Record<string, string>;
}

export interface MetricsSpec {
  serviceMonitor: ServiceMonitorSpec;
  /** Namespaces allowed to scrape the metrics port (NetworkPolicy). */
  monitoringNamespaceSelector: LabelSelector;
}

export interface ServiceSpec {
  type: 'ClusterIP' | 'NodePort' | 'LoadBalancer';
  annotations?: Record<string, string>;
  externalTrafficPolicy?: 'Cluster' | 'Local';
}

/** Quantities; the CRD accepts strings ("100m", "128Mi") and integers. */
export interface ResourceRequirements {
  requests?: Record<string, string | number>;
  limits?: Record<string, string | number>;
}

export interface Toleration {
  key?: string;
  operator?: 'Exists' | 'Equal';
  value?: string;
  effect?: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
  tolerationSeconds?: number;
}

/** spec.queue: present = queue mode. Defaults as the CRD applies them. */
export interface QueueSpec {
  storage: QueueStorageSpec;
  /** Duration, default 5d. */
  lifetime: string;
  retry: { initialDelay: string; maxDelay: string };
  concurrency: number;
  /** Duration; absent no delay warnings. */
  delayWarning?: string;
  /** Duration, default 1h: how long a scale-down or deletion drain may take before the claims are kept. */
  drainTimeout: string;
}

export interface QueueStorageSpec {
  /** "<n>Mi|Gi|Ti", default 1Gi. */
  size: string;
  storageClassName?: string;
  /** true: an emptyDir (lost with the pod) and a Deployment; false (default): a PVC per pod and a StatefulSet. */
  ephemeral: boolean;
}

/** Whether the relay keeps its queue on PersistentVolumeClaims (and so runs as a StatefulSet). */
export function persistentQueue(spec: Pick<SmtpRelaySpec, 'queue'>): boolean {
  return spec.queue !== undefined && !spec.queue.storage.ephemeral;
}

export interface SmtpRelaySpec {
  replicas: number;
  hostname: string;
  listeners: ListenersSpec;
  tls: TlsSpec;
  auth: AuthSpec;
  access: AccessSpec;
  limits: LimitsSpec;
  upstream: UpstreamSpec;
  /** Absent: inline mode (each message passed upstream before the 250). */
  queue?: QueueSpec;
  dkim: DkimSpec[];
  metrics: MetricsSpec;
  service: ServiceSpec;
  resources: ResourceRequirements;
  podAnnotations?: Record<string, string>;
  nodeSelector?: Record<string, string>;
  tolerations?: Toleration[];
  priorityClassName?: string;
}

// ---------------------------------------------------------------------------
// Status.

export interface DnsRecord {
  type: 'TXT';
  /** Fully qualified, without the trailing dot, e.g. "relay1._domainkey.example.com". */
  name: string;
  value: string;
}

export interface CertificateStatus {
  /** RFC 3339. */
  notAfter?: string;
  /** The kubernetes.io/tls Secret the relay serves. */
  secretName?: string;
}

export interface SmtpRelayStatus {
  observedGeneration?: number;
  conditions?: Condition[];
  /** "<name>.<namespace>.svc:<port>" of the first enabled listener. */
  endpoint?: string;
  replicas?: number;
  readyReplicas?: number;
  /** "ready/desired", for the printer column. */
  replicasSummary?: string;
  certificate?: CertificateStatus;
  dnsRecords?: DnsRecord[];
  /** Each user's binding Secret (servicebinding.io), in spec order. */
  bindings?: BindingStatus[];
  /** Only while pods drain (scale-down or deletion); absent at rest. */
  queue?: QueueStatus;
}

export interface QueueStatus {
  /** The pods draining, by name. */
  draining: string[];
  /** When this drain began (RFC 3339); spec.queue.drainTimeout counts from here. */
  since: string;
  /** Messages the draining pods last reported, summed (refreshed at most every 30 s). */
  messagesLeft?: number;
  /** Draining pods the operator could not ask. */
  unreachable?: string[];
  /** For the Queue printer column, e.g. "draining 2 pods, 340 left". */
  summary: string;
}

export interface BindingStatus {
  user: string;
  secretName: string;
}

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  generation?: number;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  finalizers?: string[];
}

export interface SmtpRelay {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: ObjectMeta;
  spec: SmtpRelaySpec;
  status?: SmtpRelayStatus;
}
