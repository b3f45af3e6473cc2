// Kubernetes Events (core v1) about SmtpRelays, so `kubectl describe` shows
// what is wrong. The same (object, type, reason, message) is posted at most
// once per `repeatAfterMs`: a reconcile that finds the same problem again does
// not spam the API server. Callers pass messages that name objects and
// fields, never secret values.

import { createHash } from 'node:crypto';
import { type Clock, realClock } from './clock.js';
import { type Kube, type KubeObject, isConflict } from './kube.js';

export interface EventRecorderOptions {
  kube: Kube;
  component: string;
  /** Instance name shown as the event source host (the pod name). */
  instance?: string;
  repeatAfterMs?: number;
  clock?: Clock;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

export class EventRecorder {
  private readonly recent = new Map<string, number>();
  private readonly clock: Clock;

  constructor(private readonly o: EventRecorderOptions) {
    this.clock = o.clock ?? realClock;
  }

  warning(obj: KubeObject, reason: string, message: string): Promise<void> {
    return this.record(obj, 'Warning', reason, message);
  }

  normal(obj: KubeObject, reason: string, message: string): Promise<void> {
    return this.record(obj, 'Normal', reason, message);
  }

  /** Forget an object's recent events (e.g. once it is healthy again, so a relapse is reported). */
  forget(obj: KubeObject): void {
    const prefix = `${obj.metadata?.uid}/`;
    for (const k of this.recent.keys()) if (k.startsWith(prefix)) this.recent.delete(k);
  }

  async record(obj: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const uid = obj.metadata?.uid ?? '';
    const dedupKey = `${uid}/${type}/${reason}/${message}`;
    const now = this.clock.now();
    const last = this.recent.get(dedupKey);
    if (last !== undefined && now - last < (this.o.repeatAfterMs ?? 10 * 60_000)) return;
    this.recent.set(dedupKey, now);
    if (this.recent.size > 10_000) this.recent.delete(this.recent.keys().next().value as string);

    const ns = obj.metadata?.namespace ?? 'default';
    const digest = createHash('sha256').update(dedupKey).digest('hex').slice(0, 10);
    const name = `${obj.metadata?.name}.${digest}`.slice(0, 253);
    const ts = new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const path = `/api/v1/namespaces/${encodeURIComponent(ns)}/events`;
    try {
      try {
        await this.o.kube.request('POST', path, {
          body: {
            apiVersion: 'v1',
            kind: 'Event',
            metadata: { name, namespace: ns },
            involvedObject: {
              apiVersion: obj.apiVersion,
              kind: obj.kind,
              name: obj.metadata?.name,
              namespace: ns,
              uid,
              resourceVersion: obj.metadata?.resourceVersion,
            },
            type,
            reason,
            message: message.slice(0, 1024),
            source: { component: this.o.component, ...(this.o.instance ? { host: this.o.instance } : {}) },
            reportingComponent: this.o.component,
            reportingInstance: this.o.instance ?? this.o.component,
            firstTimestamp: ts,
            lastTimestamp: ts,
            count: 1,
          },
          discardResponse: true,
        });
      } catch (err) {
        if (!isConflict(err)) throw err;
        // Same event posted before (by us or a previous leader): bump it.
        const existing = await this.o.kube.get<{ count?: number }>(`${path}/${encodeURIComponent(name)}`);
        await this.o.kube.request('PATCH', `${path}/${encodeURIComponent(name)}`, {
          contentType: 'application/merge-patch+json',
          body: { count: (existing.count ?? 1) + 1, lastTimestamp: ts },
          discardResponse: true,
        });
      }
    } catch (err) {
      // Events are best effort; never fail a reconcile for one.
      this.o.log?.('event not recorded', { reason, err: String(err) });
    }
  }
}
