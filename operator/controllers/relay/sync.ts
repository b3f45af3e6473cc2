// The relay's children: ServiceAccount, ConfigMap, NetworkPolicy, Certificate,
// Services, Deployment, PodDisruptionBudget, ServiceMonitor, built by the pure
// builders and applied when they differ from the cache.
// Condition owned here: Reconciled.

import { ConditionType, Reason } from '../../api/v1alpha1.js';
import { buildChildren } from '../../builders/children.js';
import { childNames } from '../../builders/meta.js';
import { isNotFound, resourcePath } from '../../runtime/kube.js';
import { resourceForKind } from '../../runtime/resources.js';
import { applyChild, cachedChild, decide, type ReconcileState, type SyncContext } from '../context.js';

export const CONTROLLER = 'relay';

/** Applies every child; returns the errors (the caller writes status, then retries with backoff). */
export async function syncChildren(ctx: SyncContext, st: ReconcileState): Promise<Error[]> {
  const relay = st.relay;
  const names = childNames(relay);
  st.referencedSecrets.add(`${relay.metadata.namespace}/${names.tlsSecret}`);
  let children: ReturnType<typeof buildChildren>;
  try {
    children = buildChildren(relay, {
      image: ctx.options.relayImage,
      ...(ctx.options.imagePullPolicy ? { imagePullPolicy: ctx.options.imagePullPolicy } : {}),
      skipDkim: st.skipDkim,
      serviceMonitorCrd: ctx.features.serviceMonitor,
    });
  } catch (err) {
    // Something the CRD's validation let through: retrying will not help, a spec change will.
    const message = `the spec cannot be turned into a relay: ${err instanceof Error ? err.message : String(err)}; fix the SmtpRelay`;
    decide(st, ConditionType.Reconciled, 'False', Reason.InvalidSpec, message);
    await ctx.events.warning(relay, Reason.InvalidSpec, message);
    return [];
  }
  const errors: Error[] = [];
  const failed: string[] = [];
  let applied = 0;
  // Without cert-manager there is no Certificate kind to write; CertificateReady says so.
  const all = [...(st.usersSecret ? [st.usersSecret] : []), ...children].filter((c) => c.kind !== 'Certificate' || ctx.features.certManager);
  // Two phases, each in parallel (a new relay's children are ~10 round trips to the
  // API server; one after another they made the first reconcile the slowest part of
  // converging): first what the pods use or are fenced by (Secrets, ServiceAccount,
  // ConfigMap, NetworkPolicy, Certificate, Services), then the Deployment and what
  // follows it in the builders' order.
  const deploymentAt = all.findIndex((c) => c.kind === 'Deployment');
  const phases = deploymentAt < 0 ? [all] : [all.slice(0, deploymentAt), all.slice(deploymentAt)];
  for (const phase of phases) {
    const results = await Promise.allSettled(phase.map((child) => applyChild(ctx, st, child)));
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
      st.log.info({ kind, child: name }, 'child no longer wanted; deleted');
    } catch (err) {
      if (isNotFound(err)) continue;
      errors.push(err instanceof Error ? err : new Error(String(err)));
      failed.push(`${kind} ${name} (delete): ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (failed.length === 0) {
    // The relay works without it, but the user asked for one: say why there is none.
    const noServiceMonitor = relay.spec.metrics.serviceMonitor.enabled && !ctx.features.serviceMonitor;
    const why = 'spec.metrics.serviceMonitor.enabled is set, but the monitoring.coreos.com/v1 ServiceMonitor API is not served: install the prometheus-operator CRDs';
    decide(st, ConditionType.Reconciled, 'True', Reason.Applied, `${applied} child objects up to date${noServiceMonitor ? `; no ServiceMonitor: ${why}` : ''}`);
    if (noServiceMonitor) await ctx.events.warning(relay, 'ServiceMonitorUnavailable', why);
  } else {
    decide(st, ConditionType.Reconciled, 'False', Reason.ApplyFailed, `could not apply ${failed.join('; ')}`.slice(0, 2000));
    await ctx.events.warning(relay, Reason.ApplyFailed, `could not apply ${failed.map((f) => f.split(':')[0]).join(', ')}; see the operator log`);
  }
  return errors;
}
