// The relay's children: ServiceAccount, ConfigMap, NetworkPolicy, Certificate,
// Services, the workload (Deployment or StatefulSet), PodDisruptionBudget,
// ServiceMonitor, built by the pure builders and applied when they differ from
// the cache; the workload of the other kind is removed once the wanted one serves.
// Condition owned here: Reconciled.

import type { RelayConfig } from '../../../relay/config-types.js';
import { Reason } from '../../api/v1alpha1.js';
import { buildChildren, type Child } from '../../builders/children.js';
import { WORKLOAD_KINDS, workloadKind } from '../../builders/deployment.js';
import { buildRelayConfig } from '../../builders/relay-config.js';
import { childNames } from '../../builders/meta.js';
import type { Secret } from '../../builders/users.js';
import { isNotFound, resourcePath } from '../../runtime/kube.js';
import { resourceForKind } from '../../runtime/resources.js';
import type { ConditionInput } from '../../status/conditions.js';
import { invalidSpecCondition, reconciledCondition, SERVICE_MONITOR_UNAVAILABLE } from '../../status/decisions.js';
import { applyChild, cachedChild, notOurs, type ReconcileScope, type SyncContext } from '../context.js';
import { createSecretIfAbsent } from '../secrets.js';
import { buildInternalSecret } from '../../builders/internal.js';

export const CONTROLLER = 'relay';

/** What the credentials phase hands to this one. */
export interface ChildrenInputs {
  /** The hashed users Secret (credentials/sync.ts syncUsers). */
  usersSecret: Secret;
  /** Each user's binding Secret (credentials/sync.ts syncUsers); absent in callers that predate them. */
  bindingSecrets?: Secret[];
  /** The ServiceAccount token issuer, when ServiceAccount users can log in (credentials/sync.ts). */
  serviceAccountIssuer?: string;
  /** DKIM entries whose key is unusable, left out of the config (credentials/dkim.ts syncDkim). */
  skipDkim: ReadonlySet<string>;
  /** The StatefulSet's replicas while a scale-down drain holds them (drain.ts syncDrain); absent = spec.replicas. */
  workloadReplicas?: number;
}

export interface ChildrenResult {
  reconciled: ConditionInput;
  /** Apply errors; the reconciler writes status first, then retries with backoff. */
  errors: Error[];
}

export async function syncChildren(ctx: SyncContext, scope: ReconcileScope, inputs: ChildrenInputs): Promise<ChildrenResult> {
  const relay = scope.relay;
  const names = childNames(relay);
  scope.reads.add(`${relay.metadata.namespace}/${names.tlsSecret}`);
  let children: Child[];
  try {
    // Built once per reconcile: the ConfigMap carries it and the Deployment hashes it.
    const config: RelayConfig = buildRelayConfig(relay, {
      skipDkim: inputs.skipDkim,
      ...(inputs.serviceAccountIssuer ? { serviceAccountIssuer: inputs.serviceAccountIssuer } : {}),
    });
    children = buildChildren(relay, config, {
      image: ctx.options.relayImage,
      ...(inputs.workloadReplicas !== undefined ? { replicas: inputs.workloadReplicas } : {}),
      ...(ctx.options.operatorPods ? { operatorPods: ctx.options.operatorPods } : {}),
      ...(ctx.options.imagePullPolicy ? { imagePullPolicy: ctx.options.imagePullPolicy } : {}),
      serviceMonitorCrd: ctx.features.serviceMonitor,
    });
  } catch (err) {
    // Something the CRD's validation let through: retrying will not help, a spec change will.
    const reconciled = invalidSpecCondition(err);
    await ctx.events.warning(relay, Reason.InvalidSpec, reconciled.message);
    return { reconciled, errors: [] };
  }
  const errors: Error[] = [];
  const failed: string[] = [];
  let applied = 0;
  try {
    await ensureInternalSecret(ctx, scope);
  } catch (err) {
    errors.push(err instanceof Error ? err : new Error(String(err)));
    failed.push(`Secret ${names.internalSecret}: ${err instanceof Error ? err.message : String(err)}`);
  }
  // Without cert-manager there is no Certificate kind to write; CertificateReady says so.
  const all = [inputs.usersSecret, ...(inputs.bindingSecrets ?? []), ...children].filter((c) => c.kind !== 'Certificate' || ctx.features.certManager);
  // Two phases, each in parallel (a new relay's children are ~10 round trips to the
  // API server; one after another they made the first reconcile the slowest part of
  // converging): first what the pods use or are fenced by (Secrets, ServiceAccount,
  // ConfigMap, NetworkPolicy, Certificate, Services), then the Deployment and what
  // follows it in the builders' order.
  const deploymentAt = all.findIndex((c) => c.kind === 'Deployment' || c.kind === 'StatefulSet');
  const phases = deploymentAt < 0 ? [all] : [all.slice(0, deploymentAt), all.slice(deploymentAt)];
  for (const phase of phases) {
    const results = await Promise.allSettled(phase.map((child) => applyChild(ctx, scope, child)));
    results.forEach((r, i) => {
      const child = phase[i]!;
      if (r.status === 'fulfilled') {
        applied++;
        return;
      }
      const err: unknown = r.reason;
      errors.push(err instanceof Error ? err : new Error(String(err)));
      failed.push(`${child.kind} ${child.metadata?.name}: ${err instanceof Error ? err.message : String(err)}`);
    });
  }
  // Optional children this relay no longer wants (spec.tls switched to secretName,
  // the ServiceMonitor disabled): delete ours, or cert-manager keeps issuing and
  // Prometheus keeps scraping for nothing. Secrets are never pruned (keys, passwords).
  const wanted = new Set(children.map((c) => `${c.kind}/${c.metadata.name}`));
  for (const [kind, name] of [
    ['Certificate', names.certificate],
    ['ServiceMonitor', names.serviceMonitor],
  ] as const) {
    const cached = cachedChild(ctx, kind, relay.metadata.namespace, name);
    if (wanted.has(`${kind}/${name}`) || !cached) continue;
    if (cached.metadata?.ownerReferences?.find((r) => r.controller)?.uid !== relay.metadata.uid) continue;
    try {
      await ctx.kube.request('DELETE', resourcePath(resourceForKind(kind)!, relay.metadata.namespace, name), {
        body: { preconditions: { uid: cached.metadata?.uid } },
      });
      ctx.metrics.applyTotal.inc({ kind, outcome: 'deleted' });
      scope.log.info({ kind, child: name }, 'child no longer wanted; deleted');
    } catch (err) {
      if (isNotFound(err)) continue;
      errors.push(err instanceof Error ? err : new Error(String(err)));
      failed.push(`${kind} ${name} (delete): ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  try {
    await retireOtherWorkload(ctx, scope);
  } catch (err) {
    errors.push(err instanceof Error ? err : new Error(String(err)));
    failed.push(`workload migration: ${err instanceof Error ? err.message : String(err)}`);
  }
  const serviceMonitorUnavailable = relay.spec.metrics.serviceMonitor.enabled && !ctx.features.serviceMonitor;
  const reconciled = reconciledCondition({ applied, failed, serviceMonitorUnavailable });
  if (failed.length > 0) {
    await ctx.events.warning(relay, Reason.ApplyFailed, `could not apply ${failed.map((f) => f.split(':')[0]).join(', ')}; see the operator log`);
  } else if (serviceMonitorUnavailable) {
    await ctx.events.warning(relay, 'ServiceMonitorUnavailable', SERVICE_MONITOR_UNAVAILABLE);
  }
  return { reconciled, errors };
}

/**
 * The internal Secret (control and peer tokens) is generated once, when absent: applying
 * it like the other children would replace the tokens on every reconcile.
 */
async function ensureInternalSecret(ctx: SyncContext, scope: ReconcileScope): Promise<void> {
  const relay = scope.relay;
  const name = childNames(relay).internalSecret;
  const cached = cachedChild(ctx, 'Secret', relay.metadata.namespace, name);
  if (cached) {
    const foreign = notOurs(ctx, relay, cached);
    if (foreign) throw new Error(`Secret ${name} exists and is not managed by this SmtpRelay (${foreign})`);
    return;
  }
  const { secret, created } = await createSecretIfAbsent(ctx, buildInternalSecret(relay));
  const foreign = notOurs(ctx, relay, secret);
  if (foreign) throw new Error(`Secret ${name} exists and is not managed by this SmtpRelay (${foreign}); delete or rename it`);
  if (created) {
    ctx.metrics.applyTotal.inc({ kind: 'Secret', outcome: 'created' });
    scope.log.info({ secret: name }, 'generated the internal Secret (control and peer tokens)');
  }
}

/**
 * A relay moves between a Deployment and a StatefulSet when spec.queue's storage turns
 * persistent or the queue is removed. Both select the same pods' labels, so the Service
 * sends mail to both while the new one starts; the old one is deleted only once the new
 * one has every replica ready, so the move costs no availability. An old StatefulSet's
 * claims stay (Retain): they may hold queued mail, and a Warning Event says so.
 */
async function retireOtherWorkload(ctx: SyncContext, scope: ReconcileScope): Promise<void> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const name = childNames(relay).deployment;
  const wanted = workloadKind(relay);
  const other = WORKLOAD_KINDS.find((k) => k !== wanted)!;
  const old = cachedChild(ctx, other, ns, name);
  if (!old || old.metadata?.ownerReferences?.find((r) => r.controller)?.uid !== relay.metadata.uid) return;
  const current = cachedChild(ctx, wanted, ns, name) as { status?: { readyReplicas?: number } } | undefined;
  const ready = current?.status?.readyReplicas ?? 0;
  if (ready < relay.spec.replicas) {
    scope.log.info({ from: other, to: wanted, ready, want: relay.spec.replicas }, 'moving the relay to a new workload; the old one serves until every new pod is ready');
    return;
  }
  try {
    await ctx.kube.request('DELETE', resourcePath(resourceForKind(other)!, ns, name), { body: { preconditions: { uid: old.metadata?.uid } } });
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  ctx.metrics.applyTotal.inc({ kind: other, outcome: 'deleted' });
  scope.log.info({ from: other, to: wanted }, 'relay moved to its new workload; old one deleted');
  if (other === 'StatefulSet') {
    await ctx.events.warning(
      relay,
      'QueueVolumesKept',
      `The relay now runs as a Deployment; the PersistentVolumeClaims spool-${name}-<n> of its StatefulSet were kept and may hold queued mail: start a relay on them to deliver it, then delete them`,
    );
  } else {
    await ctx.events.normal(relay, 'WorkloadMoved', `The relay now runs as a ${wanted} with its queue on PersistentVolumeClaims; the ${other} was deleted once every new pod was ready`);
  }
}
