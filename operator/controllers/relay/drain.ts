// Draining a persistent queue before its pods go (issue 14): on scale-down the
// StatefulSet is held at its current size while each leaving pod drains (stops
// taking mail, delivers its queue or hands it to the pods that stay); once every
// leaving pod reports an empty queue its claim is marked confirmed empty, the
// StatefulSet is lowered, and the marked claims are deleted once their pods are
// gone. On deletion (finalizer smtprelay.dev/drain) every pod drains the same
// way. spec.queue.drainTimeout bounds both: past it the pods go anyway and the
// claims that may hold mail are kept, labelled, with a Warning Event and the
// QueueDrained condition. A claim is deleted only when marked confirmed empty.
//
// The pods are asked over their control endpoints (control.ts) at pod IP and
// metrics port, with the control token from the relay's internal Secret.

import {
  ANNOTATION_QUEUE_EMPTY,
  ANNOTATION_QUEUE_MESSAGES,
  ConditionType,
  FINALIZER_DRAIN,
  LABEL_INSTANCE,
  LABEL_QUEUE_KEPT,
  PEER_PORT,
  persistentQueue,
  Reason,
  type Condition,
  type QueueStatus,
  type SmtpRelay,
} from '../../api/v1alpha1.js';
import { childNames } from '../../builders/meta.js';
import { SPOOL_CLAIM_TEMPLATE } from '../../builders/deployment.js';
import { controlToken } from '../../builders/internal.js';
import { parseDuration } from '../../../relay/units.js';
import { isConflict, isNotFound, KubeError, MEDIA_MERGE_PATCH, resourcePath, type KubeObject } from '../../runtime/kube.js';
import { SmtpRelays, StatefulSets } from '../../runtime/resources.js';
import { setCondition, type ConditionInput } from '../../status/conditions.js';
import { cachedChild, type ReconcileScope, type SyncContext } from '../context.js';
import { controlAddress, getQueue, hostPort, startDrain, stopDrain, type QueueState } from './control.js';

/** How often a drain in progress is looked at again. */
export const DRAIN_POLL_MS = 3_000;
/** status.queue.messagesLeft is refreshed at most this often: a drain does not churn the status. */
export const MESSAGES_REFRESH_MS = 30_000;
export const DEFAULT_DRAIN_TIMEOUT = '1h';

export interface Pod {
  metadata: { name: string; namespace: string; uid?: string; deletionTimestamp?: string };
  status?: { podIP?: string };
}

interface Claim extends KubeObject {
  metadata: KubeObject['metadata'] & { name: string; uid: string; resourceVersion: string; labels?: Record<string, string>; annotations?: Record<string, string> };
}

export interface DrainResult {
  /** The StatefulSet's replicas while a scale-down drain holds them; undefined = spec.replicas. */
  workloadReplicas?: number;
  /** QueueDrained, when there is something new to say. */
  condition?: ConditionInput;
  /** status.queue: set while draining, undefined = absent. */
  queue?: QueueStatus;
  requeueAfterMs?: number;
}

/** The relay accepts at most this many hand-off targets. */
const MAX_HANDOFF_TARGETS = 256;
/** The hand-off list last sent to each draining pod (namespace/name), so a changed list is sent again; dropped when its drain ends. */
const handoffSent = new Map<string, string>();
/** When messagesLeft was last written, per relay uid (in memory: a restart costs one extra write). */
const messagesWrittenAt = new Map<string, number>();

const claimName = (sts: string, ordinal: number) => `${SPOOL_CLAIM_TEMPLATE}-${sts}-${ordinal}`;
const podName = (sts: string, ordinal: number) => `${sts}-${ordinal}`;
const pollMs = (ctx: SyncContext) => ctx.options.drainPollMs ?? DRAIN_POLL_MS;

function drainTimeoutMs(relay: SmtpRelay): number {
  return parseDuration(relay.spec.queue?.drainTimeout ?? DEFAULT_DRAIN_TIMEOUT) ?? 3_600_000;
}

function ordinalOf(sts: string, claim: string): number | undefined {
  const prefix = `${SPOOL_CLAIM_TEMPLATE}-${sts}-`;
  if (!claim.startsWith(prefix)) return undefined;
  const rest = claim.slice(prefix.length);
  return /^(0|[1-9][0-9]{0,5})$/.test(rest) ? Number(rest) : undefined;
}

/** Where the operator reaches a pod's control endpoints (a test may map pods to loopback servers). */
function podAddress(ctx: SyncContext, pod: Pod): string | undefined {
  const override = ctx.options.podAddress?.(pod);
  if (override) return override;
  return pod.status?.podIP ? controlAddress(pod.status.podIP) : undefined;
}

async function getPod(ctx: SyncContext, ns: string, name: string): Promise<Pod | undefined> {
  return ctx.kube.getOrUndefined<Pod>(`/api/v1/namespaces/${ns}/pods/${name}`);
}

async function listClaims(ctx: SyncContext, relay: SmtpRelay): Promise<Claim[]> {
  const list = await ctx.kube.get<{ items: Claim[] }>(`/api/v1/namespaces/${relay.metadata.namespace}/persistentvolumeclaims`, {
    query: { labelSelector: `${LABEL_INSTANCE}=${relay.metadata.name}` },
  });
  const sts = childNames(relay).deployment;
  return list.items.filter((c) => ordinalOf(sts, c.metadata.name) !== undefined);
}

async function patchClaim(ctx: SyncContext, ns: string, name: string, metadata: Record<string, unknown>): Promise<void> {
  try {
    await ctx.kube.request('PATCH', `/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`, { contentType: MEDIA_MERGE_PATCH, body: { metadata }, discardResponse: true });
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

interface Asked {
  pod: string;
  ordinal: number;
  /** Undefined: the pod could not be asked (absent, no IP, no answer). */
  state?: QueueState;
  why?: string;
}

/**
 * Asks each pod for its queue; one not yet draining is told to drain (handoff = the
 * peer addresses of the pods that stay) and asked again next round.
 */
async function askPods(ctx: SyncContext, scope: ReconcileScope, token: string | undefined, ordinals: number[], handoff: string[]): Promise<Asked[]> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const sts = childNames(relay).deployment;
  return Promise.all(
    ordinals.map(async (ordinal): Promise<Asked> => {
      const name = podName(sts, ordinal);
      if (!token) return { pod: name, ordinal, why: 'no control token yet' };
      const pod = await getPod(ctx, ns, name);
      const address = pod && podAddress(ctx, pod);
      if (!address) return { pod: name, ordinal, why: pod ? 'no pod IP' : 'pod not found' };
      try {
        let state = await getQueue(address, token);
        // Told again when the hand-off targets changed (a staying pod restarted with a new
        // IP), or once after an operator restart: POST /drain updates a drain in progress.
        const key = `${ns}/${name}`;
        const targets = handoff.slice(0, MAX_HANDOFF_TARGETS);
        if (!state.draining || handoffSent.get(key) !== targets.join(',')) {
          await startDrain(address, token, targets);
          handoffSent.set(key, targets.join(','));
          scope.log.info({ pod: name, handoff: targets }, state.draining ? 'updated the pod\'s hand-off targets' : 'told the pod to drain');
          state = await getQueue(address, token);
        }
        return { pod: name, ordinal, state };
      } catch (err) {
        scope.log.info({ pod: name, err: (err as Error).message }, 'could not reach the pod\'s control endpoint');
        return { pod: name, ordinal, why: unreachableReason(err) };
      }
    }),
  );
}

/** A stable reason for the condition (a message that varied with each poll's error text would rewrite status). */
function unreachableReason(err: unknown): string {
  const e = err as Error;
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return 'no answer within 3 s';
  if (/^(GET|POST|DELETE) \/\w+: /.test(e.message)) return e.message;
  return 'connection failed';
}

function summary(draining: number, messages: number | undefined): string {
  return `draining ${draining} pod${draining === 1 ? '' : 's'}${messages !== undefined ? `, ${messages} left` : ''}`;
}

/** status.queue for a drain in progress, keeping messagesLeft unless it is due for a refresh. */
function queueStatus(relay: SmtpRelay, asked: Asked[], since: string, now: number): QueueStatus {
  const prev = relay.status?.queue;
  const draining = asked.map((a) => a.pod);
  const unreachable = asked.filter((a) => !a.state).map((a) => a.pod);
  const counted = asked.every((a) => a.state) ? asked.reduce((n, a) => n + a.state!.messages, 0) : undefined;
  let messagesLeft = counted;
  const sameSet = prev && prev.draining.join(',') === draining.join(',');
  const writtenAt = messagesWrittenAt.get(relay.metadata.uid) ?? 0;
  if (sameSet && prev.messagesLeft !== undefined && counted !== undefined && counted !== prev.messagesLeft && now - writtenAt < MESSAGES_REFRESH_MS) {
    messagesLeft = prev.messagesLeft;
  }
  if (messagesLeft === undefined && sameSet) messagesLeft = prev.messagesLeft;
  if (messagesLeft !== prev?.messagesLeft) messagesWrittenAt.set(relay.metadata.uid, now);
  const out: QueueStatus = { draining, since, summary: summary(draining.length, messagesLeft) };
  if (messagesLeft !== undefined) out.messagesLeft = messagesLeft;
  if (unreachable.length > 0) out.unreachable = unreachable;
  return out;
}

function drainingCondition(asked: Asked[], what: string): ConditionInput {
  const unreachable = asked.filter((a) => !a.state);
  if (unreachable.length > 0) {
    return {
      type: ConditionType.QueueDrained,
      status: 'False',
      reason: Reason.DrainUnreachable,
      message: `${what}: waiting for ${asked.map((a) => a.pod).join(', ')} to empty their queue; cannot reach ${unreachable.map((a) => `${a.pod} (${a.why})`).join(', ')}`,
    };
  }
  return { type: ConditionType.QueueDrained, status: 'False', reason: Reason.Draining, message: `${what}: waiting for ${asked.map((a) => a.pod).join(', ')} to empty their queue` };
}

/**
 * The claims of drained pods are marked confirmed empty; the others (mail left, or not
 * asked) are labelled kept with the count. Returns "claim (n messages)" for the kept ones.
 */
async function markClaims(ctx: SyncContext, relay: SmtpRelay, asked: Asked[], nowIso: string): Promise<{ kept: string[]; keptMessages: number; unknown: number }> {
  const ns = relay.metadata.namespace;
  for (const a of asked) handoffSent.delete(`${ns}/${a.pod}`);
  const sts = childNames(relay).deployment;
  const kept: string[] = [];
  let keptMessages = 0;
  let unknown = 0;
  for (const a of asked) {
    const claim = claimName(sts, a.ordinal);
    if (a.state?.draining && a.state.messages === 0) {
      await patchClaim(ctx, ns, claim, { annotations: { [ANNOTATION_QUEUE_EMPTY]: nowIso, [ANNOTATION_QUEUE_MESSAGES]: null }, labels: { [LABEL_QUEUE_KEPT]: null } });
      continue;
    }
    const count = a.state ? String(a.state.messages) : 'unknown';
    if (a.state) keptMessages += a.state.messages;
    else unknown++;
    await patchClaim(ctx, ns, claim, { labels: { [LABEL_QUEUE_KEPT]: 'true' }, annotations: { [ANNOTATION_QUEUE_MESSAGES]: count, [ANNOTATION_QUEUE_EMPTY]: null } });
    kept.push(`${claim} (${a.state ? `${a.state.messages} messages` : `messages unknown: ${a.why}`})`);
  }
  return { kept, keptMessages, unknown };
}

/**
 * Claims: a claim whose ordinal is served again (below spec.replicas) loses any
 * confirmed-empty mark or kept label (its pod may take mail); a claim marked confirmed
 * empty whose ordinal is above the StatefulSet (read fresh) and whose pod is gone is
 * deleted. Returns whether some marked claim still waits for its pod to go, and the
 * ordinals at or above spec.replicas that need no (more) drain: their claim is marked
 * (confirmed empty, or kept at the bound) or absent (no pod ever wrote there).
 */
async function tidyClaims(ctx: SyncContext, scope: ReconcileScope): Promise<{ waiting: boolean; unsettled: Set<number> }> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const sts = childNames(relay).deployment;
  const claims = await listClaims(ctx, relay);
  const unsettled = new Set<number>();
  let waiting = false;
  let fresh: { spec?: { replicas?: number } } | undefined;
  for (const c of claims) {
    const ordinal = ordinalOf(sts, c.metadata.name)!;
    const marked = c.metadata.annotations?.[ANNOTATION_QUEUE_EMPTY] !== undefined;
    if (ordinal < relay.spec.replicas) {
      if (marked || c.metadata.labels?.[LABEL_QUEUE_KEPT] !== undefined) {
        await patchClaim(ctx, ns, c.metadata.name, { annotations: { [ANNOTATION_QUEUE_EMPTY]: null, [ANNOTATION_QUEUE_MESSAGES]: null }, labels: { [LABEL_QUEUE_KEPT]: null } });
        scope.log.info({ claim: c.metadata.name }, 'claim in service again; its drain marks removed');
      }
      continue;
    }
    if (!marked) {
      if (c.metadata.labels?.[LABEL_QUEUE_KEPT] === undefined && !c.metadata.deletionTimestamp) unsettled.add(ordinal);
      continue;
    }
    fresh ??= await ctx.kube.getOrUndefined<{ spec?: { replicas?: number } }>(resourcePath(StatefulSets, ns, sts));
    if (fresh && ordinal < (fresh.spec?.replicas ?? 1)) {
      waiting = true;
      continue;
    }
    if (await getPod(ctx, ns, podName(sts, ordinal))) {
      waiting = true;
      continue;
    }
    try {
      // The preconditions: exactly the claim that was marked, unchanged since.
      await ctx.kube.request('DELETE', `/api/v1/namespaces/${ns}/persistentvolumeclaims/${c.metadata.name}`, {
        body: { preconditions: { uid: c.metadata.uid, resourceVersion: c.metadata.resourceVersion } },
        discardResponse: true,
      });
      ctx.metrics.applyTotal.inc({ kind: 'PersistentVolumeClaim', outcome: 'deleted' });
      scope.log.info({ claim: c.metadata.name }, 'drained claim deleted');
      await ctx.events.normal(relay as SmtpRelay & KubeObject, 'QueueVolumeDeleted', `Deleted PersistentVolumeClaim ${c.metadata.name}: its pod reported an empty queue and is gone`);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
  return { waiting, unsettled };
}

/**
 * The scale-down drain, before the children are applied: what the StatefulSet's replicas
 * must be, status.queue and QueueDrained. Only for a persistent queue whose StatefulSet
 * exists; otherwise nothing (and any status.queue goes).
 */
export async function syncDrain(ctx: SyncContext, scope: ReconcileScope): Promise<DrainResult> {
  const relay = scope.relay;
  if (!persistentQueue(relay.spec)) return {};
  const ns = relay.metadata.namespace;
  const names = childNames(relay);
  const sts = cachedChild(ctx, 'StatefulSet', ns, names.deployment) as (KubeObject & { spec?: { replicas?: number } }) | undefined;
  if (!sts || sts.metadata?.ownerReferences?.find((r) => r.controller)?.uid !== relay.metadata.uid) return {};
  const now = ctx.clock.now();
  const nowIso = new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const current = sts.spec?.replicas ?? 1;
  const want = relay.spec.replicas;
  const token = controlToken(cachedChild(ctx, 'Secret', ns, names.internalSecret) as { data?: Record<string, string> } | undefined);
  const prev = relay.status?.queue;

  // Pods that drained for a scale-down now undone go back into service.
  const ordinalOfPod = (p: string) => (p.startsWith(`${names.deployment}-`) ? Number(p.slice(names.deployment.length + 1)) : NaN);
  const back = (prev?.draining ?? []).filter((p) => ordinalOfPod(p) < want);
  let requeue = false;
  if (back.length > 0 && token) {
    for (const p of back) {
      const pod = await getPod(ctx, ns, p);
      const address = pod && podAddress(ctx, pod);
      try {
        if (address) await stopDrain(address, token);
        handoffSent.delete(`${ns}/${p}`);
        scope.log.info({ pod: p }, 'scale-down undone: the pod is back in service');
      } catch (err) {
        scope.log.warn({ pod: p, err: (err as Error).message }, 'could not take the pod out of drain; retrying');
        requeue = true;
      }
    }
  }

  const claims = await tidyClaims(ctx, scope);
  const again = claims.waiting || requeue ? { requeueAfterMs: pollMs(ctx) } : {};

  // Only pods whose claim is neither marked nor absent drain: after the StatefulSet was
  // lowered (drained, or the bound passed) a reconcile that still sees the old count in
  // its cache must not raise it again, and neither must an operator restart.
  const leaving: number[] = [];
  for (let i = want; i < current; i++) if (claims.unsettled.has(i)) leaving.push(i);
  if (want < current && leaving.length === 0) return { ...again, workloadReplicas: want };

  if (want >= current) {
    // A drain that ended (its pods gone) whose status.queue this reconcile's copy of the
    // relay still shows (the cache is behind our status write): clear it, keep the condition.
    if (back.length === 0) return again;
    // A drain ended by a scale back up: say so once, and clear status.queue.
    return { ...again, condition: { type: ConditionType.QueueDrained, status: 'True', reason: Reason.Drained, message: `No pod is draining (the scale-down to ${want} was undone)` } };
  }

  const staying: string[] = [];
  for (let i = 0; i < want; i++) {
    const pod = await getPod(ctx, ns, podName(names.deployment, i));
    if (pod?.status?.podIP) staying.push(hostPort(pod.status.podIP, PEER_PORT));
  }
  const since = prev?.since ?? nowIso;
  if (!prev) await ctx.events.normal(relay as SmtpRelay & KubeObject, 'Draining', `Scaling down from ${current} to ${want}: draining ${leaving.map((i) => podName(names.deployment, i)).join(', ')} before removing them`);
  const asked = await askPods(ctx, scope, token, leaving, staying);
  const what = `scale-down from ${current} to ${want}`;

  if (asked.every((a) => a.state?.draining && a.state.messages === 0)) {
    await markClaims(ctx, relay, asked, nowIso);
    messagesWrittenAt.delete(relay.metadata.uid);
    await ctx.events.normal(relay as SmtpRelay & KubeObject, 'QueueDrained', `${asked.map((a) => a.pod).join(', ')} reported an empty queue; scaling down to ${want}, their claims are deleted once the pods are gone`);
    return {
      workloadReplicas: want,
      condition: { type: ConditionType.QueueDrained, status: 'True', reason: Reason.Drained, message: `${what}: ${asked.map((a) => a.pod).join(', ')} drained; their claims are deleted once the pods are gone` },
      requeueAfterMs: pollMs(ctx),
    };
  }

  if (now - Date.parse(since) >= drainTimeoutMs(relay)) {
    const marks = await markClaims(ctx, relay, asked, nowIso);
    messagesWrittenAt.delete(relay.metadata.uid);
    const message = `${what}: spec.queue.drainTimeout (${relay.spec.queue?.drainTimeout ?? DEFAULT_DRAIN_TIMEOUT}) passed with ${marks.keptMessages} messages${marks.unknown > 0 ? ` (and ${marks.unknown} pods not asked)` : ''} left; the pods are removed and these claims kept (label ${LABEL_QUEUE_KEPT}=true): ${marks.kept.join(', ')}. Scale back to ${current} to deliver that mail, or start a relay on a kept claim (docs/operator.md)`;
    await ctx.events.warning(relay as SmtpRelay & KubeObject, Reason.DrainTimedOut, message);
    return { workloadReplicas: want, condition: { type: ConditionType.QueueDrained, status: 'False', reason: Reason.DrainTimedOut, message }, requeueAfterMs: pollMs(ctx) };
  }

  return {
    workloadReplicas: current,
    queue: queueStatus(relay, asked, since, now),
    condition: drainingCondition(asked, what),
    requeueAfterMs: pollMs(ctx),
  };
}

/** Adds or removes the drain finalizer as spec.queue wants it; true when the relay was patched. */
export async function syncFinalizer(ctx: SyncContext, scope: ReconcileScope): Promise<boolean> {
  const relay = scope.relay;
  const finalizers = relay.metadata.finalizers ?? [];
  const has = finalizers.includes(FINALIZER_DRAIN);
  const wanted = persistentQueue(relay.spec);
  if (has === wanted) return false;
  const next = wanted ? [...finalizers, FINALIZER_DRAIN] : finalizers.filter((f) => f !== FINALIZER_DRAIN);
  try {
    await patchFinalizers(ctx, relay, next);
  } catch (err) {
    // The cache is behind our own earlier patch (or someone else's): the watch brings the
    // new version, and that reconcile decides again. Nothing to retry here.
    if (isConflict(err) || (err instanceof KubeError && err.code === 422)) {
      scope.log.debug('finalizer patch conflicted with a newer relay version; the next reconcile decides');
      return false;
    }
    throw err;
  }
  scope.log.info({ finalizer: FINALIZER_DRAIN, added: wanted }, 'finalizer updated');
  return true;
}

async function patchFinalizers(ctx: SyncContext, relay: SmtpRelay, finalizers: string[]): Promise<void> {
  // A JSON patch whose "test" makes it a compare-and-swap on the list alone (not the whole
  // object's resourceVersion, which our own status write has just moved): a list someone
  // else changed meanwhile fails with 422 and the reconcile is retried.
  const current = relay.metadata.finalizers;
  const ops = current
    ? [
        { op: 'test', path: '/metadata/finalizers', value: current },
        { op: 'replace', path: '/metadata/finalizers', value: finalizers },
      ]
    : [{ op: 'add', path: '/metadata/finalizers', value: finalizers }];
  await ctx.kube.request('PATCH', resourcePath(SmtpRelays, relay.metadata.namespace, relay.metadata.name), {
    contentType: 'application/json-patch+json',
    body: ops,
    discardResponse: true,
  });
}

/**
 * The deleted relay's drain (finalizer smtprelay.dev/drain): every pod is told to drain
 * with no hand-off target (they all go); once all report an empty queue, or
 * spec.queue.drainTimeout after the deletionTimestamp, the claims are marked (empty ones
 * deleted, the others kept and labelled), and the finalizer is removed so the deletion
 * finishes. Returns when to look again, or undefined once the finalizer is gone.
 */
export async function finalizeDrain(ctx: SyncContext, scope: ReconcileScope): Promise<{ requeueAfterMs?: number }> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const names = childNames(relay);
  const sts = cachedChild(ctx, 'StatefulSet', ns, names.deployment) as (KubeObject & { spec?: { replicas?: number } }) | undefined;
  const count = sts && sts.metadata?.ownerReferences?.find((r) => r.controller)?.uid === relay.metadata.uid ? (sts.spec?.replicas ?? 1) : 0;
  const now = ctx.clock.now();
  const nowIso = new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const since = relay.metadata.deletionTimestamp ?? nowIso;
  const ordinals = Array.from({ length: count }, (_, i) => i);
  const token = controlToken(cachedChild(ctx, 'Secret', ns, names.internalSecret) as { data?: Record<string, string> } | undefined);
  const asked = await askPods(ctx, scope, token, ordinals, []);
  const what = 'SmtpRelay deleted';
  const done = asked.every((a) => a.state?.draining && a.state.messages === 0);
  const timedOut = now - Date.parse(since) >= drainTimeoutMs(relay);
  let condition: ConditionInput;
  if (done) {
    await markClaims(ctx, relay, asked, nowIso);
    await deleteMarkedClaims(ctx, scope, asked);
    condition = { type: ConditionType.QueueDrained, status: 'True', reason: Reason.Drained, message: `${what}: every pod reported an empty queue` };
    if (asked.length > 0) await ctx.events.normal(relay as SmtpRelay & KubeObject, 'QueueDrained', `${what}: ${asked.map((a) => a.pod).join(', ')} reported an empty queue; their claims are deleted`);
  } else if (timedOut) {
    const marks = await markClaims(ctx, relay, asked, nowIso);
    await deleteMarkedClaims(ctx, scope, asked);
    const message = `${what}: spec.queue.drainTimeout (${relay.spec.queue?.drainTimeout ?? DEFAULT_DRAIN_TIMEOUT}) passed with ${marks.keptMessages} messages${marks.unknown > 0 ? ` (and ${marks.unknown} pods not asked)` : ''} left; these claims are kept (label ${LABEL_QUEUE_KEPT}=true): ${marks.kept.join(', ')}. Start a relay on a kept claim to deliver that mail (docs/operator.md)`;
    condition = { type: ConditionType.QueueDrained, status: 'False', reason: Reason.DrainTimedOut, message };
    await ctx.events.warning(relay as SmtpRelay & KubeObject, Reason.DrainTimedOut, message);
  } else {
    const status = { ...(relay.status ?? {}), queue: queueStatus(relay, asked, since, now) };
    status.conditions = setQueueCondition(relay, drainingCondition(asked, what), now);
    await writeStatus(ctx, relay, status);
    return { requeueAfterMs: pollMs(ctx) };
  }
  messagesWrittenAt.delete(relay.metadata.uid);
  const status: Record<string, unknown> = { ...(relay.status ?? {}), conditions: setQueueCondition(relay, condition, now) };
  delete status['queue'];
  await writeStatus(ctx, relay, status);
  await patchFinalizers(ctx, relay, (relay.metadata.finalizers ?? []).filter((f) => f !== FINALIZER_DRAIN));
  scope.log.info({ drained: done }, 'drain finalizer removed; the deletion goes on');
  return {};
}

async function deleteMarkedClaims(ctx: SyncContext, scope: ReconcileScope, asked: Asked[]): Promise<void> {
  const ns = scope.relay.metadata.namespace;
  const sts = childNames(scope.relay).deployment;
  for (const a of asked) {
    if (!(a.state?.draining && a.state.messages === 0)) continue;
    // The pod still mounts it: the API server's pvc-protection finalizer keeps the claim until the pod is gone.
    try {
      await ctx.kube.request('DELETE', `/api/v1/namespaces/${ns}/persistentvolumeclaims/${claimName(sts, a.ordinal)}`, { discardResponse: true });
      ctx.metrics.applyTotal.inc({ kind: 'PersistentVolumeClaim', outcome: 'deleted' });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}

function setQueueCondition(relay: SmtpRelay, c: ConditionInput, now: number): Condition[] {
  return setCondition([...(relay.status?.conditions ?? [])], c, relay.metadata.generation, () => new Date(now));
}

async function writeStatus(ctx: SyncContext, relay: SmtpRelay, status: Record<string, unknown>): Promise<void> {
  try {
    await ctx.applier.patchStatus(SmtpRelays, relay.metadata.namespace, relay.metadata.name, relay.status as Record<string, unknown> | undefined, status);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}
