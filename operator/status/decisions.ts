// Every condition decision of a reconcile, in one place: small pure functions
// that turn what a phase observed into (type, status, reason, message). The
// phases in operator/controllers/ do the reading, writing and events; the
// reasons are the named constants of the API (Reason in operator/api/v1alpha1.ts).
// One section per condition, in the order Ready reports them.

import { ConditionType, READY_DEPENDS_ON, Reason, persistentQueue, type Condition, type SmtpRelay } from '../api/v1alpha1.js';
import { findCondition, type ConditionInput, type Problem } from './conditions.js';

// ---------------------------------------------------------------------------
// Ready

/**
 * Ready from the other conditions: True when all of READY_DEPENDS_ON are True;
 * else False with the first False one's reason and message (prefixed with its
 * type), else Unknown (Pending) naming what has not been reported.
 */
export function summarizeReady(conditions: readonly Condition[] | undefined): ConditionInput {
  const missing: string[] = [];
  const unknown: Condition[] = [];
  for (const type of READY_DEPENDS_ON) {
    const c = findCondition(conditions, type);
    if (!c) missing.push(type);
    else if (c.status === 'False') return { type: ConditionType.Ready, status: 'False', reason: c.reason, message: `${type}: ${c.message}` };
    else if (c.status === 'Unknown') unknown.push(c);
  }
  if (missing.length > 0 || unknown.length > 0) {
    const waiting = [...missing.map((t) => `${t} not yet reported`), ...unknown.map((c) => `${c.type}: ${c.message}`)];
    return { type: ConditionType.Ready, status: 'Unknown', reason: Reason.Pending, message: waiting.join('; ') };
  }
  return { type: ConditionType.Ready, status: 'True', reason: Reason.Ready, message: 'The relay is serving mail' };
}

// ---------------------------------------------------------------------------
// Reconciled

/** The builders refused the spec: something the CRD's validation let through; a spec change, not a retry, fixes it. */
export function invalidSpecCondition(err: unknown): ConditionInput {
  const message = `the spec cannot be turned into a relay: ${err instanceof Error ? err.message : String(err)}; fix the SmtpRelay`;
  return { type: ConditionType.Reconciled, status: 'False', reason: Reason.InvalidSpec, message };
}

/** Why a relay that asks for a ServiceMonitor has none. */
export const SERVICE_MONITOR_UNAVAILABLE =
  'spec.metrics.serviceMonitor.enabled is set, but the monitoring.coreos.com/v1 ServiceMonitor API is not served: install the prometheus-operator CRDs';

/** Longest Reconciled message: one line per failed child can grow without bound. */
const MAX_APPLY_MESSAGE = 2000;

export interface ApplyOutcome {
  /** Children written or found up to date. */
  applied: number;
  /** "<kind> <name>: <error>" for each child that could not be written or deleted. */
  failed: readonly string[];
  /** The relay asks for a ServiceMonitor, but its API is not served. */
  serviceMonitorUnavailable: boolean;
}

/** Reconciled from what applying the children did. */
export function reconciledCondition(outcome: ApplyOutcome): ConditionInput {
  if (outcome.failed.length > 0) {
    return { type: ConditionType.Reconciled, status: 'False', reason: Reason.ApplyFailed, message: `could not apply ${outcome.failed.join('; ')}`.slice(0, MAX_APPLY_MESSAGE) };
  }
  // The relay works without it, but the user asked for one: say why there is none.
  const note = outcome.serviceMonitorUnavailable ? `; no ServiceMonitor: ${SERVICE_MONITOR_UNAVAILABLE}` : '';
  return { type: ConditionType.Reconciled, status: 'True', reason: Reason.Applied, message: `${outcome.applied} child objects up to date${note}` };
}

// ---------------------------------------------------------------------------
// CertificateReady

/** A cert-manager Certificate as the children cache keeps it (operator/caches.ts trimChild). */
export interface CertificateView {
  status?: { conditions?: Array<{ type: string; status: string; reason?: string; message?: string }>; notAfter?: string };
}

/** What readiness learnt from the TLS Secret: no key material, only facts about it. */
export interface TlsSecretSummary {
  hasCertificate: boolean;
  notAfter?: string;
  /** Why it cannot be served as spec.tls.secretName, if so. */
  problem?: Problem;
}

/** spec.tls.issuerRef without cert-manager: nothing will ever issue the certificate. */
export function certManagerMissingCondition(): ConditionInput {
  return {
    type: ConditionType.CertificateReady,
    status: 'False',
    reason: Reason.IssuerNotFound,
    message: 'spec.tls.issuerRef needs cert-manager, but the cert-manager.io/v1 API is not served; install cert-manager or use spec.tls.secretName',
  };
}

/** cert-manager Certificate → CertificateReady. `issuerFound` false when the referenced issuer does not exist. */
export function certificateCondition(relay: SmtpRelay, certificate: CertificateView | undefined, opts: { issuerFound?: boolean | undefined; now: () => Date }): ConditionInput {
  const type = ConditionType.CertificateReady;
  const ref = relay.spec.tls.issuerRef;
  if (ref && opts.issuerFound === false) {
    return { type, status: 'False', reason: Reason.IssuerNotFound, message: `${ref.kind} ${ref.name} (spec.tls.issuerRef) does not exist; create it or point issuerRef at an existing issuer` };
  }
  const ready = certificate?.status?.conditions?.find((c) => c.type === 'Ready');
  const notAfter = certificate?.status?.notAfter;
  if (notAfter && Date.parse(notAfter) <= opts.now().getTime()) {
    return { type, status: 'False', reason: Reason.CertificateExpired, message: `the serving certificate expired at ${notAfter}; check the Certificate's events` };
  }
  if (ready?.status === 'True') return { type, status: 'True', reason: Reason.Issued, message: `certificate issued${notAfter ? `, valid until ${notAfter}` : ''}` };
  // cert-manager reports a failed issuance attempt as Issuing=False/Failed (it retries with backoff).
  const issuing = certificate?.status?.conditions?.find((c) => c.type === 'Issuing');
  if (issuing?.status === 'False' && issuing.reason === 'Failed') {
    return { type, status: 'False', reason: Reason.CertificateFailed, message: `cert-manager could not issue the certificate: ${issuing.message ?? 'see the Certificate and CertificateRequest events'}` };
  }
  return { type, status: 'False', reason: Reason.Issuing, message: `waiting for cert-manager to issue the certificate${ready?.message ? `: ${ready.message}` : ''}` };
}

/** An issued Certificate is served only once its Secret holds the certificate. */
export function issuedCertificateCondition(
  relay: SmtpRelay,
  certificate: CertificateView | undefined,
  tls: TlsSecretSummary,
  secretName: string,
  opts: { issuerFound?: boolean | undefined; now: () => Date },
): ConditionInput {
  const c = certificateCondition(relay, certificate, opts);
  if (c.status === 'True' && !tls.hasCertificate) {
    return { type: ConditionType.CertificateReady, status: 'False', reason: Reason.TlsSecretNotFound, message: `the Certificate is Ready but its Secret ${secretName} has no tls.crt yet` };
  }
  return c;
}

/** spec.tls.secretName: the given Secret must be well formed and not expired. */
export function givenSecretCondition(tls: TlsSecretSummary, secretName: string, now: () => Date): ConditionInput {
  const type = ConditionType.CertificateReady;
  if (tls.problem) return { type, ...tls.problem, status: 'False' };
  if (tls.notAfter && Date.parse(tls.notAfter) <= now().getTime()) {
    return { type, status: 'False', reason: Reason.CertificateExpired, message: `the certificate in Secret ${secretName} expired at ${tls.notAfter}; replace it` };
  }
  return { type, status: 'True', reason: Reason.TlsSecretValid, message: `Secret ${secretName} holds a valid certificate${tls.notAfter ? ` until ${tls.notAfter}` : ''}` };
}

// ---------------------------------------------------------------------------
// CredentialsReady

/** A user left out of the relay, and why. */
export interface UserProblem extends Problem {
  user: string;
}

/** CredentialsReady from the users that were refused (empty: all usable). */
export function credentialsCondition(relay: SmtpRelay, problems: readonly UserProblem[]): ConditionInput {
  const total = relay.spec.auth.users.length;
  if (problems.length === 0) {
    return { type: ConditionType.CredentialsReady, status: 'True', reason: Reason.CredentialsValid, message: `${total} user${total === 1 ? '' : 's'} can authenticate` };
  }
  // A password problem names the reason first; else a ServiceAccount user's
  const passwordProblems = problems.filter((p) => p.reason !== Reason.IssuerKeysUnavailable && p.reason !== Reason.ServiceAccountNotFound);
  const refused = passwordProblems.some((p) => p.reason !== Reason.UserSecretInvalid);
  const tokenReason = problems.some((p) => p.reason === Reason.ServiceAccountNotFound) ? Reason.ServiceAccountNotFound : Reason.IssuerKeysUnavailable;
  return {
    type: ConditionType.CredentialsReady,
    status: 'False',
    reason: passwordProblems.length === 0 ? tokenReason : refused ? Reason.PasswordRefused : Reason.UserSecretInvalid,
    message: `${problems.length} of ${total} users left out: ${problems.map((p) => `${p.user}: ${p.message}`).join('; ')}`,
  };
}

// ---------------------------------------------------------------------------
// UpstreamReady

/**
 * UpstreamReady from the problems with the upstream's credentials and CA Secrets, then
 * from what the relay pods report of their logins (`refusal`: the message naming the pods
 * and the upstream's words, operator/upstream-logins.ts refusalSummary). A Secret problem
 * wins: it is the cause of the refusal, and fixing it is the first thing to do.
 */
export function upstreamCondition(relay: SmtpRelay, problems: readonly Problem[], refusal?: string): ConditionInput {
  const up = relay.spec.upstream;
  if (problems.length === 0 && refusal) return { type: ConditionType.UpstreamReady, status: 'False', reason: Reason.UpstreamAuthRefused, message: refusal };
  return conditionFromProblems(ConditionType.UpstreamReady, problems, {
    reason: Reason.UpstreamConfigured,
    message: `upstream ${up.host}:${up.port} (${up.tls})${up.credentialsSecretRef ? ' with credentials' : ''}${up.oauth2 ? ` with OAuth2 (${oauth2Provider(up.oauth2)}) as ${up.oauth2.user}` : ''}`,
  });
}

function oauth2Provider(o: NonNullable<SmtpRelay['spec']['upstream']['oauth2']>): string {
  return o.microsoft ? 'microsoft' : o.google ? 'google' : 'generic';
}

// ---------------------------------------------------------------------------
// DkimReady

/** DkimReady from the problems with the DKIM keys. */
export function dkimCondition(relay: SmtpRelay, problems: readonly Problem[]): ConditionInput {
  const domains = relay.spec.dkim.map((d) => d.domain);
  return conditionFromProblems(ConditionType.DkimReady, problems, {
    reason: Reason.DkimKeysReady,
    message: domains.length === 0 ? 'no DKIM signing configured' : `DKIM keys ready for ${domains.join(', ')}; publish the TXT records in status.dnsRecords`,
  });
}

// ---------------------------------------------------------------------------
// Available

/** Available from the workload's status (Deployment or StatefulSet). */
export function availableCondition(relay: SmtpRelay, deployment: { kind?: string; status?: { availableReplicas?: number; readyReplicas?: number } } | undefined): ConditionInput {
  if (!deployment) {
    const kind = persistentQueue(relay.spec) ? 'StatefulSet' : 'Deployment';
    return { type: ConditionType.Available, status: 'False', reason: Reason.DeploymentNotFound, message: `the relay ${kind} does not exist yet` };
  }
  const available = deployment.status?.availableReplicas ?? 0;
  const want = relay.spec.replicas;
  // Same rule as the PodDisruptionBudget: all but one.
  const minimum = Math.max(1, want - 1);
  if (available >= minimum) {
    return { type: ConditionType.Available, status: 'True', reason: Reason.MinimumReplicasAvailable, message: `${available} of ${want} relay pods available` };
  }
  return {
    type: ConditionType.Available,
    status: 'False',
    reason: Reason.MinimumReplicasUnavailable,
    message: `${available} of ${want} relay pods available, at least ${minimum} needed; see the pods' events and logs`,
  };
}

// ---------------------------------------------------------------------------

/** A condition of `type` from a list of problems: True with `ok` when none, else False with the first reason and every message. */
export function conditionFromProblems(type: ConditionType, problems: readonly Problem[], ok: { reason: string; message: string }): ConditionInput {
  const first = problems[0];
  if (!first) return { type, status: 'True', reason: ok.reason, message: ok.message };
  return { type, status: 'False', reason: first.reason, message: problems.map((p) => p.message).join('; ') };
}
