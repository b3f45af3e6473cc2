// The CRD's defaults, in TypeScript: what the API server fills in, so tests
// and tools can build a complete SmtpRelay from what a user writes.
// test/operator/crd.test.ts proves this equals the API server's defaulting.

import type {
  AccessSpec,
  AuthSpec,
  DkimSpec,
  LimitsSpec,
  ListenersSpec,
  MetricsSpec,
  QueueSpec,
  ResourceRequirements,
  ServiceSpec,
  SmtpRelaySpec,
  TlsSpec,
  UpstreamOAuth2Spec,
  UpstreamSpec,
  UserSpec,
} from '../../../operator/api/v1alpha1.js';

type DeepPartial<T> = T extends Array<infer U> ? Array<DeepPartial<U>> : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

/** An SmtpRelay spec as a user may write it: hostname, tls and upstream.host required, the rest optional. */
export type SmtpRelaySpecInput = DeepPartial<Omit<SmtpRelaySpec, 'hostname' | 'upstream' | 'tls'>> & {
  hostname: string;
  tls: DeepPartial<TlsSpec>;
  upstream: DeepPartial<UpstreamSpec> & { host: string };
};

export const DEFAULT_ALLOWED_CIDRS: readonly string[] = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fd00::/8'];

export function withDefaults(input: SmtpRelaySpecInput): SmtpRelaySpec {
  const l = input.listeners ?? {};
  const listeners: ListenersSpec = {
    submission: { enabled: l.submission?.enabled ?? true, port: l.submission?.port ?? 587 },
    submissions: { enabled: l.submissions?.enabled ?? true, port: l.submissions?.port ?? 465 },
  };
  const tls: TlsSpec = { minVersion: input.tls.minVersion ?? 'TLSv1.2' };
  if (input.tls.issuerRef) {
    tls.issuerRef = { name: input.tls.issuerRef.name ?? '', kind: input.tls.issuerRef.kind ?? 'Issuer', group: input.tls.issuerRef.group ?? 'cert-manager.io' };
  }
  if (input.tls.secretName !== undefined) tls.secretName = input.tls.secretName;
  const a = input.auth ?? {};
  const auth: AuthSpec = {
    users: (a.users ?? []).map((u) => {
      const user: UserSpec = { name: u.name ?? '', allowedSenders: [...((u.allowedSenders ?? []) as string[])] };
      if (u.secretRef) user.secretRef = { name: u.secretRef.name ?? '' };
      if (u.rateLimit) user.rateLimit = { messages: u.rateLimit.messages ?? 0, per: u.rateLimit.per ?? '' };
      return user;
    }),
    passwordPolicy: { minLength: a.passwordPolicy?.minLength ?? 16 },
    lockout: {
      maxFailures: a.lockout?.maxFailures ?? 5,
      window: a.lockout?.window ?? '10m',
      duration: a.lockout?.duration ?? '15m',
    },
  };
  const ac = input.access ?? {};
  const access: AccessSpec = {
    allowedCidrs: [...((ac.allowedCidrs ?? DEFAULT_ALLOWED_CIDRS) as string[])],
    proxyProtocol: { trustedCidrs: [...((ac.proxyProtocol?.trustedCidrs ?? []) as string[])] },
  };
  if (ac.allowedNamespaces) access.allowedNamespaces = structuredClone(ac.allowedNamespaces) as AccessSpec['allowedNamespaces'];
  const li = input.limits ?? {};
  const limits: LimitsSpec = {
    maxMessageSize: li.maxMessageSize ?? '10Mi',
    maxRecipients: li.maxRecipients ?? 100,
    maxConnections: li.maxConnections ?? 1000,
    maxConnectionsPerIp: li.maxConnectionsPerIp ?? 20,
    preAuthTimeout: li.preAuthTimeout ?? '10s',
  };
  if (li.maxUnauthenticated !== undefined) limits.maxUnauthenticated = li.maxUnauthenticated;
  const up = input.upstream;
  const upstream: UpstreamSpec = {
    host: up.host,
    port: up.port ?? 587,
    tls: up.tls ?? 'starttls',
    maxConnections: up.maxConnections ?? 5,
    timeout: up.timeout ?? '60s',
  };
  if (up.caSecretRef) upstream.caSecretRef = { name: up.caSecretRef.name ?? '', key: up.caSecretRef.key ?? 'ca.crt' };
  if (up.credentialsSecretRef) upstream.credentialsSecretRef = { name: up.credentialsSecretRef.name ?? '' };
  if (up.oauth2) {
    // Written without keys: the CRD defaults them.
    const o = up.oauth2 as DeepPartial<UpstreamOAuth2Spec>;
    const ref = (r: { name?: string; key?: string } | undefined, key: string) => ({ name: r?.name ?? '', key: r?.key ?? key });
    upstream.oauth2 = { user: o.user ?? '' };
    if (o.microsoft) {
      const m = o.microsoft;
      upstream.oauth2.microsoft = { tenantId: m.tenantId ?? '', clientId: m.clientId ?? '', clientSecretRef: ref(m.clientSecretRef, 'client-secret'), ...(m.tokenUrl ? { tokenUrl: m.tokenUrl } : {}) };
    }
    if (o.google) upstream.oauth2.google = { serviceAccountSecretRef: ref(o.google.serviceAccountSecretRef, 'service-account.json') };
    if (o.generic) {
      const g = o.generic;
      upstream.oauth2.generic = { tokenUrl: g.tokenUrl ?? '', clientId: g.clientId ?? '', clientSecretRef: ref(g.clientSecretRef, 'client-secret'), ...(g.scope ? { scope: g.scope } : {}) };
    }
  }
  const dkim: DkimSpec[] = (input.dkim ?? []).map((d) => {
    const entry: DkimSpec = { domain: d.domain ?? '', selector: d.selector ?? '' };
    if (d.secretRef) entry.secretRef = { name: d.secretRef.name ?? '', key: d.secretRef.key ?? 'private.key' };
    return entry;
  });
  const m = input.metrics ?? {};
  const metrics: MetricsSpec = {
    serviceMonitor: { enabled: m.serviceMonitor?.enabled ?? false, interval: m.serviceMonitor?.interval ?? '30s' },
    monitoringNamespaceSelector: (structuredClone(m.monitoringNamespaceSelector) as MetricsSpec['monitoringNamespaceSelector'] | undefined) ?? {
      matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' },
    },
  };
  if (m.serviceMonitor?.labels) metrics.serviceMonitor.labels = { ...(m.serviceMonitor.labels as Record<string, string>) };
  const sv = input.service ?? {};
  const service: ServiceSpec = { type: sv.type ?? 'ClusterIP' };
  if (sv.annotations) service.annotations = { ...(sv.annotations as Record<string, string>) };
  if (sv.externalTrafficPolicy) service.externalTrafficPolicy = sv.externalTrafficPolicy;
  const r = input.resources ?? {};
  const resources: ResourceRequirements = {
    requests: { ...((r.requests as Record<string, string | number> | undefined) ?? { cpu: '100m', memory: '128Mi' }) },
    limits: { ...((r.limits as Record<string, string | number> | undefined) ?? { cpu: '1', memory: '256Mi' }) },
  };
  const spec: SmtpRelaySpec = {
    replicas: input.replicas ?? 2,
    hostname: input.hostname,
    listeners,
    tls,
    auth,
    access,
    limits,
    upstream,
    dkim,
    metrics,
    service,
    resources,
  };
  if (input.queue) {
    const q = input.queue;
    const queue: QueueSpec = {
      storage: { size: q.storage?.size ?? '1Gi', ephemeral: q.storage?.ephemeral ?? false },
      lifetime: q.lifetime ?? '5d',
      retry: { initialDelay: q.retry?.initialDelay ?? '1m', maxDelay: q.retry?.maxDelay ?? '1h' },
      concurrency: q.concurrency ?? 20,
      drainTimeout: q.drainTimeout ?? '1h',
    };
    if (q.storage?.storageClassName) queue.storage.storageClassName = q.storage.storageClassName;
    if (q.delayWarning) queue.delayWarning = q.delayWarning;
    spec.queue = queue;
  }
  if (input.podAnnotations) spec.podAnnotations = { ...(input.podAnnotations as Record<string, string>) };
  if (input.nodeSelector) spec.nodeSelector = { ...(input.nodeSelector as Record<string, string>) };
  if (input.tolerations) spec.tolerations = structuredClone(input.tolerations) as SmtpRelaySpec['tolerations'];
  if (input.priorityClassName) spec.priorityClassName = input.priorityClassName;
  return spec;
}
