// One reconcile of one SmtpRelay, in cert-manager's shape: read from the
// cache → stop if gone or being deleted → the per-concern syncs compute and
// apply what differs → status is written once, and only if it changed.
//
// The concerns run in order because each feeds the next: credentials decide
// which users and DKIM keys the config carries; the children need that; the
// readiness of the certificate and the Deployment comes last.

import type { Logger } from 'pino';
import { ConditionType, READY_DEPENDS_ON, type Condition, type SmtpRelay, type SmtpRelayStatus } from '../api/v1alpha1.js';
import { replicasSummary, setCondition, summarizeReady } from '../builders/status.js';
import type { SyncResult } from '../runtime/queue.js';
import type { KubeObject } from '../runtime/kube.js';
import { isNotFound, splitKey } from '../runtime/kube.js';
import { SmtpRelays } from '../runtime/resources.js';
import { RESULT_ERROR, RESULT_SUCCESS } from '../metrics.js';
import type { ReconcileState, SyncContext } from './context.js';
import { syncCredentials, CONTROLLER as CREDENTIALS } from './credentials/sync.js';
import { syncReadiness, CONTROLLER as READINESS } from './readiness/sync.js';
import { syncChildren, CONTROLLER as RELAY } from './relay/sync.js';

type Relay = SmtpRelay & KubeObject;

export class RelayReconciler {
  /** Readiness of each relay, for the smtp_relay_operator_relays gauge. */
  private readonly readiness = new Map<string, boolean>();

  constructor(
    private readonly ctx: SyncContext,
    private readonly log: Logger,
    /**
     * Called after each reconcile with the Secrets the relay reads (for the
     * Secret → relay index); `complete` false when the reconcile stopped early,
     * so the list may lack some and must be added, not substituted.
     */
    private readonly onReferences: (key: string, secrets: Set<string>, complete: boolean) => void,
  ) {}

  async reconcile(key: string): Promise<SyncResult> {
    const { namespace, name } = splitKey(key);
    const relay = this.ctx.caches.relays.get(namespace, name) as Relay | undefined;
    const log = this.log.child({ key });
    if (!relay || relay.metadata.deletionTimestamp) {
      // Children go with it (ownerReferences, garbage collector).
      this.readiness.delete(key);
      this.onReferences(key, new Set(), true);
      this.updateRelayGauge();
      log.debug('relay gone or being deleted');
      return {};
    }
    const st: ReconcileState = {
      relay,
      log,
      conditions: new Map(),
      passwords: new Map(),
      skipDkim: new Set(),
      dnsRecords: [],
      referencedSecrets: new Set(),
    };
    const errors: unknown[] = [];
    let readiness: Awaited<ReturnType<typeof syncReadiness>> | undefined;
    try {
      await this.timed(CREDENTIALS, () => syncCredentials(this.ctx, st));
      const applyErrors = await this.timed(RELAY, () => syncChildren(this.ctx, st));
      errors.push(...applyErrors);
      readiness = await this.timed(READINESS, () => syncReadiness(this.ctx, st));
    } catch (err) {
      errors.push(err);
    } finally {
      st.passwords.clear();
      this.onReferences(key, st.referencedSecrets, errors.length === 0);
    }

    // A sync that threw left its condition undecided; keep what status said before.
    const status = this.buildStatus(relay, st, readiness);
    let written: boolean;
    try {
      written = await this.ctx.applier.patchStatus(SmtpRelays, namespace, name, relay.status as Record<string, unknown> | undefined, status as Record<string, unknown>);
    } catch (err) {
      // Deleted while we worked (the cache had not seen it yet): nothing left to report on.
      if (isNotFound(err)) {
        log.debug('relay deleted during reconcile');
        return {};
      }
      throw err;
    }
    const ready = status.conditions?.find((c) => c.type === ConditionType.Ready)?.status === 'True';
    this.readiness.set(key, ready);
    this.updateRelayGauge();

    if (errors.length > 0) {
      log.warn({ errors: errors.map(String) }, 'reconcile failed');
      throw errors[0];
    }
    log.info({ statusWritten: written, ready, requeueAfterMs: st.requeueAfterMs }, 'reconciled');
    return st.requeueAfterMs !== undefined ? { requeueAfterMs: st.requeueAfterMs } : {};
  }

  private buildStatus(relay: Relay, st: ReconcileState, readiness: Awaited<ReturnType<typeof syncReadiness>> | undefined): SmtpRelayStatus {
    const generation = relay.metadata.generation;
    const now = () => new Date(this.ctx.clock.now());
    let conditions: Condition[] = [...(relay.status?.conditions ?? [])];
    const order = [...READY_DEPENDS_ON, ...[...st.conditions.keys()].filter((t) => !READY_DEPENDS_ON.includes(t as never))];
    for (const type of order) {
      const d = st.conditions.get(type);
      if (d) conditions = setCondition(conditions, { type, ...d }, generation, now);
    }
    conditions = setCondition(conditions, summarizeReady(conditions), generation, now);
    const status: SmtpRelayStatus = { ...(relay.status ?? {}), conditions };
    if (generation !== undefined) status.observedGeneration = generation;
    if (readiness) {
      status.endpoint = readiness.endpoint;
      if (readiness.replicas !== undefined) status.replicas = readiness.replicas;
      else delete status.replicas;
      status.readyReplicas = readiness.readyReplicas ?? 0;
      status.replicasSummary = replicasSummary(readiness.readyReplicas, relay.spec.replicas);
      if (st.certificate) status.certificate = st.certificate;
      if (st.dnsRecords.length > 0) status.dnsRecords = st.dnsRecords;
      else delete status.dnsRecords;
    }
    return status;
  }

  private async timed<T>(controller: string, fn: () => Promise<T>): Promise<T> {
    const end = this.ctx.metrics.reconcileDuration.startTimer({ controller });
    try {
      const out = await fn();
      this.ctx.metrics.reconcileTotal.inc({ controller, result: RESULT_SUCCESS });
      return out;
    } catch (err) {
      this.ctx.metrics.reconcileTotal.inc({ controller, result: RESULT_ERROR });
      this.ctx.metrics.reconcileErrors.inc({ controller });
      throw err;
    } finally {
      end();
    }
  }

  /** Records the whole reconcile's result under controller="smtprelay". */
  recordResult(result: 'success' | 'error' | 'requeue'): void {
    this.ctx.metrics.reconcileTotal.inc({ controller: 'smtprelay', result });
    if (result === RESULT_ERROR) this.ctx.metrics.reconcileErrors.inc({ controller: 'smtprelay' });
  }

  private updateRelayGauge(): void {
    let t = 0;
    let f = 0;
    for (const r of this.readiness.values()) (r ? t++ : f++);
    this.ctx.metrics.relays.set({ ready: 'true' }, t);
    this.ctx.metrics.relays.set({ ready: 'false' }, f);
  }
}

