// Readiness: the serving certificate (cert-manager's Certificate Ready
// condition, or the given TLS Secret) and its notAfter, the Deployment's
// availability, the endpoint. Conditions owned here: CertificateReady, Available.

import { ConditionType, Reason } from '../../api/v1alpha1.js';
import { checkTlsSecret, type Problem } from '../../builders/credentials.js';
import { childNames } from '../../builders/meta.js';
import { relayEndpoint } from '../../builders/service.js';
import { availableCondition, certificateCondition, certificateNotAfter, type ConditionInput } from '../../builders/status.js';
import { FROM_WATCH_CACHE, KubeError, isNotFound, resourcePath } from '../../runtime/kube.js';
import { ClusterIssuers, Issuers } from '../../runtime/resources.js';
import { cachedChild, decide, requeueAfter, type ReconcileState, type SyncContext } from '../context.js';
import { readSecretDerived, type SecretObject } from '../secrets.js';

export const CONTROLLER = 'readiness';

/** How often to look again while waiting for a certificate (events usually come first). */
export const CERTIFICATE_POLL_MS = 30_000;
/** Look again at least this often once issued, to notice expiry. */
export const CERTIFICATE_RECHECK_MS = 6 * 3600_000;

export interface ReadinessResult {
  endpoint: string;
  replicas?: number;
  readyReplicas?: number;
}

export async function syncReadiness(ctx: SyncContext, st: ReconcileState): Promise<ReadinessResult> {
  const relay = st.relay;
  const ns = relay.metadata.namespace;
  const names = childNames(relay);
  const now = () => new Date(ctx.clock.now());

  let cert: ConditionInput;
  // Only what is derived from the TLS Secret (not its key), remembered per resourceVersion.
  const tls = await readSecretDerived(ctx, st, ns, names.tlsSecret, 'tls', (s) => summarizeTlsSecret(s, names.tlsSecret));
  const tlsPem = tls.hasCertificate;
  const secretNotAfter = tls.notAfter;

  if (relay.spec.tls.issuerRef) {
    const ref = relay.spec.tls.issuerRef;
    if (!ctx.features.certManager) {
      cert = { type: ConditionType.CertificateReady, status: 'False', reason: Reason.IssuerNotFound, message: `spec.tls.issuerRef needs cert-manager, but the cert-manager.io/v1 API is not served; install cert-manager or use spec.tls.secretName` };
    } else {
      // External issuers (other groups) cannot be looked up here; cert-manager's own can.
      const ownIssuer = !ref.group || ref.group === 'cert-manager.io';
      const certificate = cachedChild(ctx, 'Certificate', ns, names.certificate) as Parameters<typeof certificateCondition>[1];
      // The issuer matters while the certificate is not issued (it explains why);
      // an issued, valid certificate is served whatever became of its issuer, and
      // cert-manager reports a failing renewal on the Certificate. So no GET per reconcile.
      const issued = certificate?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
      cert = ownIssuer && !issued
        ? certificateCondition(relay, certificate, { issuerFound: await issuerExists(ctx, st, ns, ref.kind, ref.name), now })
        : certificateCondition(relay, certificate, { now });
      if (cert.status === 'True' && !tlsPem) {
        cert = { type: ConditionType.CertificateReady, status: 'False', reason: Reason.TlsSecretNotFound, message: `the Certificate is Ready but its Secret ${names.tlsSecret} has no tls.crt yet` };
      }
      // What the relay serves is the Secret; the Certificate's notAfter is the fallback.
      const notAfter = secretNotAfter ?? certificate?.status?.notAfter;
      st.certificate = { secretName: names.tlsSecret, ...(notAfter ? { notAfter } : {}) };
    }
  } else {
    const problem = tls.problem;
    if (problem) cert = { type: ConditionType.CertificateReady, ...problem, status: 'False' };
    else if (secretNotAfter && Date.parse(secretNotAfter) <= ctx.clock.now())
      cert = { type: ConditionType.CertificateReady, status: 'False', reason: Reason.CertificateExpired, message: `the certificate in Secret ${names.tlsSecret} expired at ${secretNotAfter}; replace it` };
    else cert = { type: ConditionType.CertificateReady, status: 'True', reason: Reason.TlsSecretValid, message: `Secret ${names.tlsSecret} holds a valid certificate${secretNotAfter ? ` until ${secretNotAfter}` : ''}` };
    st.certificate = { secretName: names.tlsSecret, ...(secretNotAfter ? { notAfter: secretNotAfter } : {}) };
  }
  decide(st, cert.type, cert.status, cert.reason, cert.message);
  if (cert.status !== 'True') {
    requeueAfter(st, CERTIFICATE_POLL_MS);
    if (cert.reason !== Reason.Issuing) await ctx.events.warning(relay, cert.reason, cert.message);
  } else {
    const left = st.certificate?.notAfter ? Date.parse(st.certificate.notAfter) - ctx.clock.now() : CERTIFICATE_RECHECK_MS;
    requeueAfter(st, Math.max(1000, Math.min(left, CERTIFICATE_RECHECK_MS)));
  }

  const deployment = cachedChild(ctx, 'Deployment', ns, names.deployment) as { status?: { replicas?: number; readyReplicas?: number; availableReplicas?: number } } | undefined;
  const avail = availableCondition(relay, deployment);
  decide(st, avail.type, avail.status, avail.reason, avail.message);

  const out: ReadinessResult = { endpoint: relayEndpoint(relay) };
  // status.replicas is the desired count (as the CRD documents it), not the pods the
  // Deployment has created so far: that count follows the controller-manager's
  // progress and made every step of it a status write.
  if (deployment) out.replicas = relay.spec.replicas;
  out.readyReplicas = deployment?.status?.readyReplicas ?? 0;
  return out;
}

/** Whether the issuer exists; undefined when we may not look (e.g. ClusterIssuers under namespaced Roles). */
async function issuerExists(ctx: SyncContext, st: ReconcileState, namespace: string, kind: string, name: string): Promise<boolean | undefined> {
  const path = kind === 'ClusterIssuer' ? resourcePath(ClusterIssuers, undefined, name) : resourcePath(Issuers, namespace, name);
  try {
    // From the API server's watch cache: this runs on every reconcile while a certificate is pending.
    await ctx.kube.get(path, { query: FROM_WATCH_CACHE });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    if (err instanceof KubeError && err.code === 403) {
      st.log.debug({ issuer: `${kind}/${name}` }, 'not allowed to read the issuer; relying on the Certificate alone');
      return undefined;
    }
    throw err;
  }
}

/** What readiness needs from the TLS Secret: no key material, only facts about it. */
export interface TlsSecretSummary {
  hasCertificate: boolean;
  notAfter?: string;
  /** Why it cannot be served as spec.tls.secretName, if so. */
  problem?: Problem;
}

export function summarizeTlsSecret(secret: SecretObject | undefined, name: string): TlsSecretSummary {
  const crt = secret?.data?.['tls.crt'];
  const pem = typeof crt === 'string' ? Buffer.from(crt, 'base64').toString('utf8') : undefined;
  const notAfter = pem ? certificateNotAfter(pem) : undefined;
  const problem = checkTlsSecret(secret, name);
  return { hasCertificate: !!pem, ...(notAfter ? { notAfter } : {}), ...(problem ? { problem } : {}) };
}
