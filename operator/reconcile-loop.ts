// The reconcile loop: a work queue of SmtpRelay keys whose workers run
// RelayReconciler (controllers/reconciler.ts), retrying failures with backoff,
// and the whole reconcile's result counted under controller="smtprelay".

import type { Logger } from 'pino';
import { RESULT_ERROR, RESULT_REQUEUE, RESULT_SUCCESS } from './metrics.js';
import { CERTIFICATE_POLL_MS } from './controllers/readiness/sync.js';
import type { RelayReconciler } from './controllers/reconciler.js';
import type { Clock } from './runtime/clock.js';
import { WorkQueue } from './runtime/queue.js';

export function reconcileQueue(reconciler: RelayReconciler, o: { workers: number; clock: Clock; log: Logger }): WorkQueue {
  return new WorkQueue({
    workers: o.workers,
    clock: o.clock,
    onError: (key, err, retryInMs) => o.log.warn({ key, err: String(err), retryInMs }, 'reconcile failed; retrying'),
    handler: async (key) => {
      try {
        const r = await reconciler.reconcile(key);
        // "requeue": waiting for something outside our control (a certificate being issued).
        reconciler.recordResult(r.requeueAfterMs !== undefined && r.requeueAfterMs <= CERTIFICATE_POLL_MS ? RESULT_REQUEUE : RESULT_SUCCESS);
        return r;
      } catch (err) {
        reconciler.recordResult(RESULT_ERROR);
        throw err;
      }
    },
  });
}
