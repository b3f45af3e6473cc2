// Readiness: the serving certificate (cert-manager's Certificate Ready
// condition, or the given TLS Secret) and its notAfter, the Deployment's
// availability, the endpoint. Conditions owned here: CertificateReady, Available
// (decided in operator/status/decisions.ts).

import { Reason } from '../../api/v1alpha1.js';
import { childNames } from '../../builders/meta.js';
import { WORKLOAD_KINDS, workloadKind } from '../../builders/deployment.js';
import { relayEndpoint } from '../../builders/service.js';
import type { ConditionInput } from '../../status/conditions.js';
import { availableCondition, certManagerMissingCondition, givenSecretCondition, issuedCertificateCondition, type CertificateView } from '../../status/decisions.js';
import { FROM_WATCH_CACHE, KubeError, isNotFound, resourcePath } from '../../runtime/kube.js';
import { ClusterIssuers, Issuers } from '../../runtime/resources.js';
import { cachedChild, type ReconcileScope, type SyncContext } from '../context.js';
import { readSecretDerived } from '../secrets.js';
import { summarizeTlsSecret } from './tls-secret.js';

export const CONTROLLER = 'readiness';

/** How often to look again while waiting for a certificate (events usually come first). */
export const CERTIFICATE_POLL_MS = 30_000;
/** Look again at least this often once issued, to notice expiry. */
export const CERTIFICATE_RECHECK_MS = 6 * 3600_000;

export interface ReadinessResult {
  certificateReady: ConditionInput;
  available: ConditionInput;
  endpoint: string;
  replicas?: number;
  readyReplicas?: number;
  /** The Secret served and its notAfter; absent when nothing can issue one (no cert-manager). */
  certificate?: { notAfter?: string; secretName?: string };
  /** When to look again (certificate pending or nearing expiry). */
  requeueAfterMs: number;
}

export async function syncReadiness(ctx: SyncContext, scope: ReconcileScope): Promise<ReadinessResult> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const names = childNames(relay);
  const now = () => new Date(ctx.clock.now());

  let cert: ConditionInput;
  let certificate: ReadinessResult['certificate'];
  // Only what is derived from the TLS Secret (not its key), remembered per resourceVersion.
  const tls = await readSecretDerived(ctx, scope, ns, names.tlsSecret, 'tls', (s) => summarizeTlsSecret(s, names.tlsSecret));

  if (relay.spec.tls.issuerRef) {
    const ref = relay.spec.tls.issuerRef;
    if (!ctx.features.certManager) {
      cert = certManagerMissingCondition();
    } else {
      // External issuers (other groups) cannot be looked up here; cert-manager's own can.
      const ownIssuer = !ref.group || ref.group === 'cert-manager.io';
      const cached = cachedChild(ctx, 'Certificate', ns, names.certificate) as CertificateView | undefined;
      // The issuer matters while the certificate is not issued (it explains why);
      // an issued, valid certificate is served whatever became of its issuer, and
      // cert-manager reports a failing renewal on the Certificate. So no GET per reconcile.
      const issued = cached?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
      const issuerFound = ownIssuer && !issued ? await issuerExists(ctx, scope, ns, ref.kind, ref.name) : undefined;
      cert = issuedCertificateCondition(relay, cached, tls, names.tlsSecret, { issuerFound, now });
      // What the relay serves is the Secret; the Certificate's notAfter is the fallback.
      const notAfter = tls.notAfter ?? cached?.status?.notAfter;
      certificate = { secretName: names.tlsSecret, ...(notAfter ? { notAfter } : {}) };
    }
  } else {
    cert = givenSecretCondition(tls, names.tlsSecret, now);
    certificate = { secretName: names.tlsSecret, ...(tls.notAfter ? { notAfter: tls.notAfter } : {}) };
  }
  if (cert.status !== 'True' && cert.reason !== Reason.Issuing) await ctx.events.warning(relay, cert.reason, cert.message);

  // The wanted workload; while the relay moves from the other kind (relay/sync.ts
  // retireOtherWorkload) the old one's pods serve too, and count.
  type WorkloadView = { kind?: string; status?: { replicas?: number; readyReplicas?: number; availableReplicas?: number } };
  const wanted = cachedChild(ctx, workloadKind(relay), ns, names.deployment) as WorkloadView | undefined;
  const other = cachedChild(ctx, WORKLOAD_KINDS.find((k) => k !== workloadKind(relay))!, ns, names.deployment) as WorkloadView | undefined;
  const deployment: WorkloadView | undefined =
    wanted && other
      ? {
          kind: workloadKind(relay),
          status: {
            readyReplicas: (wanted.status?.readyReplicas ?? 0) + (other.status?.readyReplicas ?? 0),
            availableReplicas: (wanted.status?.availableReplicas ?? 0) + (other.status?.availableReplicas ?? 0),
          },
        }
      : (wanted ?? other);
  const out: ReadinessResult = {
    certificateReady: cert,
    available: availableCondition(relay, deployment),
    endpoint: relayEndpoint(relay),
    ...(certificate ? { certificate } : {}),
    requeueAfterMs: certificateRequeueMs(cert, certificate?.notAfter, ctx.clock.now()),
  };
  // status.replicas is the desired count (as the CRD documents it), not the pods the
  // Deployment has created so far: that count follows the controller-manager's
  // progress and made every step of it a status write.
  if (deployment) out.replicas = relay.spec.replicas;
  out.readyReplicas = deployment?.status?.readyReplicas ?? 0;
  return out;
}

/** Poll while the certificate is not ready; once it is, look again before it expires (at least every CERTIFICATE_RECHECK_MS). */
export function certificateRequeueMs(cert: ConditionInput, notAfter: string | undefined, nowMs: number): number {
  if (cert.status !== 'True') return CERTIFICATE_POLL_MS;
  const left = notAfter ? Date.parse(notAfter) - nowMs : CERTIFICATE_RECHECK_MS;
  return Math.max(1000, Math.min(left, CERTIFICATE_RECHECK_MS));
}

/** Whether the issuer exists; undefined when we may not look (e.g. ClusterIssuers under namespaced Roles). */
async function issuerExists(ctx: SyncContext, scope: ReconcileScope, namespace: string, kind: string, name: string): Promise<boolean | undefined> {
  const path = kind === 'ClusterIssuer' ? resourcePath(ClusterIssuers, undefined, name) : resourcePath(Issuers, namespace, name);
  try {
    // From the API server's watch cache: this runs on every reconcile while a certificate is pending.
    await ctx.kube.get(path, { query: FROM_WATCH_CACHE });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    if (err instanceof KubeError && err.code === 403) {
      scope.log.debug({ issuer: `${kind}/${name}` }, 'not allowed to read the issuer; relying on the Certificate alone');
      return undefined;
    }
    throw err;
  }
}
