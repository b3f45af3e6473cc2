// Status helpers: one function sets conditions (keeping lastTransitionTime
// when the status did not change), one summarises Ready, and small pure
// decisions turn observations into conditions.

import { X509Certificate } from 'node:crypto';
import {
  ConditionType,
  READY_DEPENDS_ON,
  Reason,
  type Condition,
  type ConditionStatus,
  type SmtpRelay,
} from '../api/v1alpha1.js';
import type { Problem } from './credentials.js';

/** A condition as decided, before timestamps and generation are added. */
export interface ConditionInput {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

/** RFC 3339 at second precision, as metav1.Time serialises. */
export function rfc3339(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * `conditions` with `input` set: lastTransitionTime moves only when the status
 * changes; reason, message and observedGeneration always follow the input.
 * Returns a new array (order kept, new types appended); the input is not mutated.
 */
export function setCondition(conditions: readonly Condition[] | undefined, input: ConditionInput, generation: number | undefined, now: () => Date): Condition[] {
  const list = [...(conditions ?? [])];
  const i = list.findIndex((c) => c.type === input.type);
  const old = i >= 0 ? list[i] : undefined;
  const next: Condition = {
    type: input.type,
    status: input.status,
    lastTransitionTime: old && old.status === input.status ? old.lastTransitionTime : rfc3339(now()),
    reason: input.reason,
    message: input.message,
  };
  if (generation !== undefined) next.observedGeneration = generation;
  if (i >= 0) list[i] = next;
  else list.push(next);
  return list;
}

/** The condition of a type, if present. */
export function findCondition(conditions: readonly Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

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

/** Whether two condition lists say the same thing (ignoring order), so status is written only on change. */
export function conditionsEqual(a: readonly Condition[] | undefined, b: readonly Condition[] | undefined): boolean {
  const x = a ?? [];
  const y = b ?? [];
  if (x.length !== y.length) return false;
  return x.every((c) => {
    const d = findCondition(y, c.type);
    return (
      !!d &&
      d.status === c.status &&
      d.reason === c.reason &&
      d.message === c.message &&
      d.lastTransitionTime === c.lastTransitionTime &&
      d.observedGeneration === c.observedGeneration
    );
  });
}

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
  const refused = problems.some((p) => p.reason !== Reason.UserSecretInvalid);
  return {
    type: ConditionType.CredentialsReady,
    status: 'False',
    reason: refused ? Reason.PasswordRefused : Reason.UserSecretInvalid,
    message: `${problems.length} of ${total} users left out: ${problems.map((p) => `${p.user}: ${p.message}`).join('; ')}`,
  };
}

/** A condition of `type` from a list of problems: True with `okReason` when none, else False with the first. */
export function conditionFromProblems(type: ConditionType, problems: readonly Problem[], ok: { reason: string; message: string }): ConditionInput {
  const first = problems[0];
  if (!first) return { type, status: 'True', reason: ok.reason, message: ok.message };
  return { type, status: 'False', reason: first.reason, message: problems.map((p) => p.message).join('; ') };
}

/** Available from the Deployment's status. */
export function availableCondition(
  relay: SmtpRelay,
  deployment: { status?: { availableReplicas?: number; readyReplicas?: number } } | undefined,
): ConditionInput {
  if (!deployment) {
    return { type: ConditionType.Available, status: 'False', reason: Reason.DeploymentNotFound, message: 'the relay Deployment does not exist yet' };
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

/** "ready/desired" for the Replicas printer column. */
export function replicasSummary(ready: number | undefined, desired: number): string {
  return `${ready ?? 0}/${desired}`;
}

/** notAfter (RFC 3339) of the first certificate in a PEM chain, or undefined when unreadable. */
export function certificateNotAfter(pem: string): string | undefined {
  try {
    return rfc3339(new Date(new X509Certificate(pem).validTo));
  } catch {
    return undefined;
  }
}

/** cert-manager Certificate → CertificateReady. `issuerFound` false when the referenced issuer does not exist. */
export function certificateCondition(
  relay: SmtpRelay,
  certificate: { status?: { conditions?: Array<{ type: string; status: string; reason?: string; message?: string }>; notAfter?: string } } | undefined,
  opts: { issuerFound?: boolean; now: () => Date },
): ConditionInput {
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
