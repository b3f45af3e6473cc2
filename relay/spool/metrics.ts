// The spool's metrics (prefix smtp_relay_queue_, as relay/metrics.ts names the rest).
import prom from 'prom-client';

/** Read at scrape time: counting held and oldest entries on every change would be O(n). */
export interface SpoolGaugeSource {
  scan(): { held: number; oldestAgeSeconds: number };
}

export function createSpoolMetrics(registry: prom.Registry) {
  const r = [registry];
  const source: { current?: SpoolGaugeSource } = {};
  return {
    source,
    messages: new prom.Gauge({ name: 'smtp_relay_queue_messages', help: 'Messages in the spool (held ones included).', registers: r }),
    bytes: new prom.Gauge({ name: 'smtp_relay_queue_bytes', help: 'Bytes of the messages in the spool.', registers: r }),
    held: new prom.Gauge({
      name: 'smtp_relay_queue_held_messages',
      help: 'Messages on hold (smtp-relay queue hold).',
      registers: r,
      collect() {
        if (source.current) this.set(source.current.scan().held);
      },
    }),
    oldestAge: new prom.Gauge({
      name: 'smtp_relay_queue_oldest_message_age_seconds',
      help: 'Age of the oldest message in the spool; 0 when empty.',
      registers: r,
      collect() {
        if (source.current) this.set(source.current.scan().oldestAgeSeconds);
      },
    }),
    deliveries: new prom.Counter({
      name: 'smtp_relay_queue_deliveries_total',
      help: 'Recipients by delivery result: delivered, deferred (temporary failure, retried), bounced (refused permanently), expired (lifetime over).',
      labelNames: ['result'] as const,
      registers: r,
    }),
    attempts: new prom.Counter({
      name: 'smtp_relay_queue_delivery_attempts_total',
      help: 'Delivery attempts (one upstream transaction each) by outcome: accepted, temporary, permanent.',
      labelNames: ['outcome'] as const,
      registers: r,
    }),
    notifications: new prom.Counter({
      name: 'smtp_relay_queue_notifications_total',
      help: 'Delivery status notifications queued to senders, by kind (failed, delayed, relayed).',
      labelNames: ['kind'] as const,
      registers: r,
    }),
    writeSeconds: new prom.Histogram({
      name: 'smtp_relay_queue_write_duration_seconds',
      help: 'Time from a spool write request until it is on stable storage (fsynced), by operation (enqueue, update, delete).',
      labelNames: ['operation'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: r,
    }),
    refused: new prom.Counter({
      name: 'smtp_relay_queue_full_total',
      help: 'Messages refused because the spool was full, by reason (max_bytes, max_messages, disk_space, disk_full).',
      labelNames: ['reason'] as const,
      registers: r,
    }),
    quarantined: new prom.Counter({
      name: 'smtp_relay_queue_quarantined_total',
      help: 'Damaged spool entries (or a whole damaged database) moved to quarantine/ at start or on read.',
      registers: r,
    }),
  };
}

export type SpoolMetrics = ReturnType<typeof createSpoolMetrics>;
