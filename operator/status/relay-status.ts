// The SmtpRelay status one reconcile writes, from what its phases returned.

import { READY_DEPENDS_ON, type BindingStatus, type DnsRecord, type SmtpRelay, type SmtpRelayStatus } from '../api/v1alpha1.js';
import { setCondition, type ConditionInput } from './conditions.js';
import { summarizeReady } from './decisions.js';

/** What the readiness phase saw; absent when the reconcile stopped before it. */
export interface ObservedReadiness {
  endpoint: string;
  replicas?: number;
  readyReplicas?: number;
  certificate?: { notAfter?: string; secretName?: string };
  dnsRecords: readonly DnsRecord[];
  /** The binding Secrets written (credentials phase). */
  bindings?: readonly BindingStatus[];
}

/** "ready/desired" for the Replicas printer column. */
export function replicasSummary(ready: number | undefined, desired: number): string {
  return `${ready ?? 0}/${desired}`;
}

/**
 * The new status: the decided conditions set (READY_DEPENDS_ON first, then any
 * other in the order decided) and Ready summarised. A phase that threw decided
 * nothing, so its condition keeps what status said before.
 */
export function relayStatus(relay: SmtpRelay, decided: readonly ConditionInput[], observed: ObservedReadiness | undefined, now: () => Date): SmtpRelayStatus {
  const generation = relay.metadata.generation;
  const byType = new Map(decided.map((d) => [d.type, d]));
  const order = [...READY_DEPENDS_ON, ...[...byType.keys()].filter((t) => !READY_DEPENDS_ON.includes(t as never))];
  let conditions = [...(relay.status?.conditions ?? [])];
  for (const type of order) {
    const d = byType.get(type);
    if (d) conditions = setCondition(conditions, d, generation, now);
  }
  conditions = setCondition(conditions, summarizeReady(conditions), generation, now);
  const status: SmtpRelayStatus = { ...(relay.status ?? {}), conditions };
  if (generation !== undefined) status.observedGeneration = generation;
  if (observed) {
    status.endpoint = observed.endpoint;
    if (observed.replicas !== undefined) status.replicas = observed.replicas;
    else delete status.replicas;
    status.readyReplicas = observed.readyReplicas ?? 0;
    status.replicasSummary = replicasSummary(observed.readyReplicas, relay.spec.replicas);
    if (observed.certificate) status.certificate = observed.certificate;
    if (observed.dnsRecords.length > 0) status.dnsRecords = [...observed.dnsRecords];
    else delete status.dnsRecords;
    if (observed.bindings && observed.bindings.length > 0) status.bindings = observed.bindings.map((b) => ({ ...b }));
    else delete status.bindings;
  }
  return status;
}
