// The operator's own metrics and health endpoints, on their own port.
// Names follow DESIGN.md: prefix smtp_relay_operator_, the controller as a label.

import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const RESULT_SUCCESS = 'success';
export const RESULT_ERROR = 'error';
export const RESULT_REQUEUE = 'requeue';

export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconcileTotal: Counter<'controller' | 'result'>;
  readonly reconcileErrors: Counter<'controller'>;
  readonly reconcileDuration: Histogram<'controller'>;
  readonly queueDepth: Gauge;
  readonly relays: Gauge<'ready'>;
  readonly recreateTotal: Counter<'kind'>;
  readonly applyTotal: Counter<'kind' | 'outcome'>;
  readonly informerLists: Counter<'resource' | 'reason'>;
  readonly leader: Gauge;

  constructor(opts: { defaultMetrics?: boolean; queueDepth?: () => number } = {}) {
    const registers = [this.registry];
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'smtp_relay_operator_' });
    this.reconcileTotal = new Counter({
      name: 'smtp_relay_operator_reconcile_total',
      help: 'Reconciles by controller and result (success, error, requeue).',
      labelNames: ['controller', 'result'],
      registers,
    });
    this.reconcileErrors = new Counter({
      name: 'smtp_relay_operator_reconcile_errors_total',
      help: 'Reconciles that ended in an error, by controller.',
      labelNames: ['controller'],
      registers,
    });
    this.reconcileDuration = new Histogram({
      name: 'smtp_relay_operator_reconcile_duration_seconds',
      help: 'Time to reconcile one SmtpRelay, by controller.',
      labelNames: ['controller'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    const depth = opts.queueDepth;
    this.queueDepth = new Gauge({
      name: 'smtp_relay_operator_workqueue_depth',
      help: 'SmtpRelay keys waiting in the work queue.',
      registers,
      ...(depth
        ? {
            collect(this: Gauge) {
              this.set(depth());
            },
          }
        : {}),
    });
    this.relays = new Gauge({
      name: 'smtp_relay_operator_relays',
      help: 'Managed SmtpRelays by readiness (their Ready condition).',
      labelNames: ['ready'],
      registers,
    });
    this.recreateTotal = new Counter({
      name: 'smtp_relay_operator_recreate_total',
      help: 'Children deleted and created again because an update touched an immutable field.',
      labelNames: ['kind'],
      registers,
    });
    this.applyTotal = new Counter({
      name: 'smtp_relay_operator_apply_total',
      help: 'Child applies by kind and outcome (created, applied, recreated); unchanged children are not written.',
      labelNames: ['kind', 'outcome'],
      registers,
    });
    this.informerLists = new Counter({
      name: 'smtp_relay_operator_informer_lists_total',
      help: 'Full lists of a watched resource by reason: initial, expired (410 Gone: the watch resumed from a compacted resourceVersion), watchdog (a watch silent past the watchdog), requested.',
      labelNames: ['resource', 'reason'],
      registers,
    });
    this.leader = new Gauge({
      name: 'smtp_relay_operator_leader',
      help: '1 while this replica holds the leader Lease (or runs without leader election).',
      registers,
    });
    this.relays.set({ ready: 'true' }, 0);
    this.relays.set({ ready: 'false' }, 0);
  }
}

export interface HealthState {
  /** Process is alive (always true while the event loop runs). */
  live(): boolean;
  /** Caches synced (leader) or waiting as a standby candidate. */
  ready(): boolean;
}

/** Serves /metrics, /healthz and /readyz. Resolves with the server once it listens. */
export function serveMetrics(metrics: OperatorMetrics, health: HealthState, port: number, host = '::'): Promise<Server> {
  const server = createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    if (url === '/metrics') {
      metrics.registry.metrics().then(
        (body) => {
          res.writeHead(200, { 'Content-Type': metrics.registry.contentType });
          res.end(body);
        },
        () => res.writeHead(500).end(),
      );
      return;
    }
    if (url === '/healthz' || url === '/livez') {
      const ok = health.live();
      res.writeHead(ok ? 200 : 503, { 'Content-Type': 'text/plain' }).end(ok ? 'ok\n' : 'not live\n');
      return;
    }
    if (url === '/readyz') {
      const ok = health.ready();
      res.writeHead(ok ? 200 : 503, { 'Content-Type': 'text/plain' }).end(ok ? 'ok\n' : 'not ready\n');
      return;
    }
    res.writeHead(404).end();
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
