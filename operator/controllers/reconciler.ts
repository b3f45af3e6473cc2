// One reconcile of one SmtpRelay, in cert-manager's shape: read from the
// cache → stop if gone or being deleted → the phases compute and apply what
// differs → status is written once, and only if it changed.
//
// The phases run in order because each feeds the next, and each returns what
// the next needs (nothing is shared between them):
//   credentials  syncUsers → usersSecret, bindingSecrets, serviceAccountIssuer; syncUpstream, syncDkim → skipDkim, dnsRecords
//   relay        syncChildren(usersSecret, bindingSecrets, skipDkim, serviceAccountIssuer): the relay config, built once, and every child
//   readiness    syncReadiness: certificate, Deployment availability, endpoint, when to look again
// Each returns its conditions; operator/status/relay-status.ts turns them into status.

import type { Logger } from 'pino';
import { ConditionType, FINALIZER_DRAIN, type SmtpRelay } from '../api/v1alpha1.js';
import type { ConditionInput } from '../status/conditions.js';
import { relayStatus, type ObservedReadiness } from '../status/relay-status.js';
import type { SyncResult } from '../runtime/queue.js';
import type { KubeObject } from '../runtime/kube.js';
import { isNotFound, resourcePath, splitKey } from '../runtime/kube.js';
import { SmtpRelays } from '../runtime/resources.js';
import { RESULT_ERROR, RESULT_SUCCESS } from '../metrics.js';
import type { ReconcileScope, SyncContext } from './context.js';
import { syncDkim } from './credentials/dkim.js';
import { syncUpstream, syncUsers, CONTROLLER as CREDENTIALS } from './credentials/sync.js';
import { syncReadiness, CONTROLLER as READINESS, type ReadinessResult } from './readiness/sync.js';
import { syncChildren, CONTROLLER as RELAY } from './relay/sync.js';
import { finalizeDrain, syncDrain, syncFinalizer, type DrainResult } from './relay/drain.js';

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
    let relay = this.ctx.caches.relays.get(namespace, name) as Relay | undefined;
    const log = this.log.child({ key });
    if (relay?.status?.queue) {
      // A drain in progress is looked at every few seconds, sooner than the cache may have
      // seen our own last status write; a status computed from an older copy would put
      // back what that write changed (a finished drain shown as draining again). One read
      // per poll, only while pods drain.
      relay = await this.ctx.kube.getOrUndefined<Relay>(resourcePath(SmtpRelays, namespace, name));
    }
    if (relay?.metadata.deletionTimestamp && relay.metadata.finalizers?.includes(FINALIZER_DRAIN)) {
      // A persistent queue: drain every pod (drain.ts) before the deletion goes on.
      return this.timed(RELAY, () => finalizeDrain(this.ctx, { relay, log, reads: new Set() }));
    }
    if (!relay || relay.metadata.deletionTimestamp) {
      // Children go with it (ownerReferences, garbage collector).
      this.readiness.delete(key);
      this.onReferences(key, new Set(), true);
      this.updateRelayGauge();
      log.debug('relay gone or being deleted');
      return {};
    }
    const scope: ReconcileScope = { relay, log, reads: new Set() };
    // Conditions in the order decided; a phase that throws decides nothing.
    const decided: ConditionInput[] = [];
    const errors: unknown[] = [];
    let observed: ObservedReadiness | undefined;
    let requeueAfterMs: number | undefined;
    let drain: DrainResult | undefined;
    try {
      const credentials = await this.timed(CREDENTIALS, async () => {
        const users = await syncUsers(this.ctx, scope);
        decided.push(users.credentialsReady);
        decided.push(await syncUpstream(this.ctx, scope));
        const dkim = await syncDkim(this.ctx, scope);
        decided.push(dkim.dkimReady);
        return { users, dkim };
      });
      const { users, dkim } = credentials;
      drain = await this.timed(RELAY, async () => {
        await syncFinalizer(this.ctx, scope);
        return syncDrain(this.ctx, scope);
      });
      if (drain.condition) decided.push(drain.condition);
      const children = await this.timed(RELAY, () =>
        syncChildren(this.ctx, scope, {
          ...(drain?.workloadReplicas !== undefined ? { workloadReplicas: drain.workloadReplicas } : {}),
          usersSecret: users.usersSecret,
          bindingSecrets: users.bindingSecrets,
          skipDkim: dkim.skipDkim,
          ...(users.serviceAccountIssuer ? { serviceAccountIssuer: users.serviceAccountIssuer } : {}),
        }),
      );
      decided.push(children.reconciled);
      errors.push(...children.errors);
      const readiness = await this.timed(READINESS, () => syncReadiness(this.ctx, scope));
      decided.push(readiness.certificateReady, readiness.available);
      observed = { ...readinessFields(readiness), dnsRecords: dkim.dnsRecords, bindings: users.bindings };
      requeueAfterMs = readiness.requeueAfterMs;
      if (drain.requeueAfterMs !== undefined) requeueAfterMs = Math.min(requeueAfterMs ?? Infinity, drain.requeueAfterMs);
    } catch (err) {
      errors.push(err);
    } finally {
      this.onReferences(key, scope.reads, errors.length === 0);
    }

    const status = relayStatus(relay, decided, observed, () => new Date(this.ctx.clock.now()));
    // status.queue only while pods drain; a reconcile that did not reach the drain phase keeps it.
    if (drain) {
      if (drain.queue) status.queue = drain.queue;
      else delete status.queue;
    }
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
    log.info({ statusWritten: written, ready, requeueAfterMs }, 'reconciled');
    return requeueAfterMs !== undefined ? { requeueAfterMs } : {};
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

/** What status shows of the readiness phase's result. */
function readinessFields(r: ReadinessResult): Omit<ObservedReadiness, 'dnsRecords' | 'bindings'> {
  return {
    endpoint: r.endpoint,
    ...(r.replicas !== undefined ? { replicas: r.replicas } : {}),
    readyReplicas: r.readyReplicas ?? 0,
    ...(r.certificate ? { certificate: r.certificate } : {}),
  };
}
