// The source of the Grafana dashboards shipped in charts/smtp-relay-operator/dashboards/.
// The JSON files there are generated from this file:
//   node dist/test/chart/dashboards.js --write
// and test/chart/chart.test.ts fails when they differ from what this file builds.
//
// Every query uses only metrics the relay (relay/metrics.ts, relay/upstream.ts,
// relay/spool/metrics.ts) and the operator (operator/metrics.ts) export;
// test/chart/prometheus.test.ts evaluates each one against a real Prometheus that scraped
// them. Relay series carry the labels the
// Prometheus operator gives ServiceMonitor targets: namespace, service ("<relay>-metrics"),
// pod, job, instance. No datasource UID is written anywhere: every panel uses the
// `datasource` template variable.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const DASHBOARD_DIR = ['charts', 'smtp-relay-operator', 'dashboards'];

const DS = { type: 'prometheus', uid: '${datasource}' };

interface Target {
  expr: string;
  legendFormat?: string;
  instant?: boolean;
}

interface PanelSpec {
  title: string;
  description: string;
  type?: 'timeseries' | 'stat';
  unit?: string;
  targets: Target[];
  w?: number;
  h?: number;
  decimals?: number;
  thresholds?: Array<{ color: string; value: number | null }>;
  stack?: boolean;
}

type Item = PanelSpec | { row: string };

function isRow(i: Item): i is { row: string } {
  return 'row' in i;
}

/** Lays panels out on Grafana's 24-column grid, rows full width. */
function layout(items: Item[]): object[] {
  const panels: object[] = [];
  let id = 1;
  let x = 0;
  let y = 0;
  let rowH = 0;
  for (const it of items) {
    if (isRow(it)) {
      if (x > 0) {
        y += rowH;
        x = 0;
        rowH = 0;
      }
      panels.push({ type: 'row', title: it.row, id: id++, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] });
      y += 1;
      continue;
    }
    const w = it.w ?? 12;
    const h = it.h ?? 8;
    if (x + w > 24) {
      y += rowH;
      x = 0;
      rowH = 0;
    }
    const type = it.type ?? 'timeseries';
    const fieldConfig: Record<string, unknown> = {
      defaults: {
        unit: it.unit ?? 'short',
        ...(it.decimals !== undefined ? { decimals: it.decimals } : {}),
        ...(type === 'timeseries'
          ? { custom: { drawStyle: 'line', lineWidth: 1, fillOpacity: it.stack ? 30 : 10, showPoints: 'never', stacking: { mode: it.stack ? 'normal' : 'none', group: 'A' } } }
          : {}),
        thresholds: { mode: 'absolute', steps: it.thresholds ?? [{ color: 'green', value: null }] },
        color: { mode: type === 'stat' ? 'thresholds' : 'palette-classic' },
      },
      overrides: [],
    };
    panels.push({
      id: id++,
      type,
      title: it.title,
      description: it.description,
      datasource: DS,
      gridPos: { h, w, x, y },
      fieldConfig,
      options:
        type === 'stat'
          ? { reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false }, colorMode: 'value', graphMode: 'area', justifyMode: 'auto', textMode: 'auto', orientation: 'auto' }
          : { legend: { displayMode: 'table', placement: 'bottom', showLegend: true, calcs: ['mean', 'max'] }, tooltip: { mode: 'multi', sort: 'desc' } },
      targets: it.targets.map((t, i) => ({
        datasource: DS,
        refId: String.fromCharCode(65 + i),
        expr: t.expr,
        legendFormat: t.legendFormat ?? '__auto',
        range: !t.instant,
        instant: t.instant === true,
      })),
    });
    x += w;
    rowH = Math.max(rowH, h);
  }
  return panels;
}

function datasourceVar(): object {
  return {
    name: 'datasource',
    label: 'Data source',
    type: 'datasource',
    query: 'prometheus',
    refresh: 1,
    regex: '',
    hide: 0,
    current: {},
    options: [],
  };
}

function queryVar(name: string, label: string, query: string, regex = ''): object {
  return {
    name,
    label,
    type: 'query',
    datasource: DS,
    definition: query,
    query: { query, refId: `${name}-var`, qryType: 1 },
    refresh: 2,
    regex,
    sort: 1,
    multi: true,
    includeAll: true,
    allValue: '.+',
    current: {},
    options: [],
    hide: 0,
  };
}

function dashboard(uid: string, title: string, description: string, vars: object[], items: Item[]): object {
  return {
    // Imported through the Grafana sidecar: no __inputs, the datasource is a variable.
    uid,
    title,
    description,
    tags: ['smtp-relay', 'smtp-relay-operator'],
    timezone: 'browser',
    editable: true,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    refresh: '30s',
    time: { from: 'now-6h', to: 'now' },
    templating: { list: vars },
    annotations: { list: [] },
    links: [],
    panels: layout(items),
  };
}

/** Selector of one relay's series: `relay` is the SmtpRelay name, the ServiceMonitor's service is "<relay>-metrics". */
const R = 'namespace=~"$namespace", service=~"$relay-metrics"';
const RATE = '$__rate_interval';

export function relayDashboard(): object {
  const vars = [
    datasourceVar(),
    queryVar('namespace', 'Namespace', 'label_values(smtp_relay_certificate_expiry_timestamp_seconds, namespace)'),
    queryVar('relay', 'Relay', 'label_values(smtp_relay_certificate_expiry_timestamp_seconds{namespace=~"$namespace"}, service)', '/^(.+)-metrics$/'),
  ];
  const items: Item[] = [
    { row: 'Overview' },
    {
      title: 'Relay pods up',
      description: 'Relay pods Prometheus scrapes successfully (up == 1).',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(up{${R}})`, instant: true }],
      thresholds: [{ color: 'red', value: null }, { color: 'green', value: 1 }],
    },
    {
      title: 'Messages relayed (range)',
      description: 'Messages the upstream accepted during the selected time range.',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(increase(smtp_relay_messages_total{${R}, result="accepted"}[$__range]))`, instant: true }],
    },
    {
      title: 'Days to certificate expiry',
      description: 'Days until the TLS certificate the relay serves expires (lowest over its pods). cert-manager renews long before 14 days.',
      type: 'stat',
      w: 6,
      h: 5,
      decimals: 1,
      unit: 'd',
      targets: [{ expr: `min by (service) ((smtp_relay_certificate_expiry_timestamp_seconds{${R}} - time()) / 86400)`, legendFormat: '{{service}}', instant: true }],
      thresholds: [{ color: 'red', value: null }, { color: 'orange', value: 7 }, { color: 'green', value: 14 }],
    },
    {
      title: 'Open sessions',
      description: 'SMTP sessions open now, all pods.',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(smtp_relay_active_connections{${R}})`, instant: true }],
    },
    { row: 'Traffic' },
    {
      title: 'Messages by result',
      description: 'Messages per second: accepted (the upstream took them), rejected (refused for good), deferred (4xx, the client retries).',
      unit: 'reqps',
      targets: [{ expr: `sum by (result) (rate(smtp_relay_messages_total{${R}}[${RATE}]))`, legendFormat: '{{result}}' }],
    },
    {
      title: 'Message bytes by result',
      description: 'Bytes of message data received from clients per second, by result.',
      unit: 'Bps',
      targets: [{ expr: `sum by (result) (rate(smtp_relay_message_bytes_total{${R}}[${RATE}]))`, legendFormat: '{{result}}' }],
    },
    {
      title: 'Rejections by reason',
      description: 'Refusals per second by reason (ip_not_allowed, tls_required, auth_required, sender_not_allowed, rate_limited, too_large, bare_lf, ...). See docs/relay-config.md.',
      unit: 'reqps',
      stack: true,
      targets: [{ expr: `sum by (reason) (rate(smtp_relay_rejections_total{${R}}[${RATE}]))`, legendFormat: '{{reason}}' }],
    },
    {
      title: 'Connections by listener and result',
      description: 'New SMTP connections per second, accepted or rejected (with the reason).',
      unit: 'cps',
      targets: [{ expr: `sum by (listener, result, reason) (rate(smtp_relay_connections_total{${R}}[${RATE}]))`, legendFormat: '{{listener}} {{result}} {{reason}}' }],
    },
    {
      title: 'Open sessions by listener',
      description: 'SMTP sessions open, by listener.',
      targets: [{ expr: `sum by (listener) (smtp_relay_active_connections{${R}})`, legendFormat: '{{listener}}' }],
    },
    {
      title: 'Protocol abuse refused',
      description: 'SMTP smuggling (bare LF/CR, NUL) and too many commands before STARTTLS, per second.',
      unit: 'reqps',
      targets: [
        {
          expr: `sum by (reason) (rate(smtp_relay_rejections_total{${R}, reason=~"bare_lf|bare_cr|nul_byte|too_many_plaintext_commands"}[${RATE}]))`,
          legendFormat: '{{reason}}',
        },
      ],
    },
    { row: 'Connection floods' },
    {
      title: 'Shed connections by reason',
      description: 'Unauthenticated connections the relay closed per second: pre_auth_timeout (no AUTH within limits.preAuthTimeout), unauthenticated_cap (the oldest, at limits.maxUnauthenticated) or relay_full (the oldest, to admit a newcomer at maxConnections). Authenticated sessions are never shed.',
      unit: 'cps',
      stack: true,
      targets: [{ expr: `sum by (listener, reason) (rate(smtp_relay_connections_shed_total{${R}}[${RATE}]))`, legendFormat: '{{listener}} {{reason}}' }],
    },
    {
      title: 'Unauthenticated connections',
      description: 'Connections open now that have not authenticated yet (TLS handshakes included), by pod. Capped at limits.maxUnauthenticated per pod.',
      targets: [{ expr: `sum by (pod) (smtp_relay_unauthenticated_connections{${R}})`, legendFormat: '{{pod}}' }],
    },
    { row: 'Authentication' },
    {
      title: 'AUTH attempts by mechanism and result',
      description: 'SMTP AUTH attempts per second: success, failure (wrong password or unknown user), locked (refused during a lockout).',
      unit: 'reqps',
      targets: [{ expr: `sum by (mechanism, result) (rate(smtp_relay_auth_attempts_total{${R}}[${RATE}]))`, legendFormat: '{{mechanism}} {{result}}' }],
    },
    {
      title: 'Lockouts started',
      description: 'Brute-force lockouts started, by scope (client IP or username).',
      targets: [{ expr: `sum by (scope) (increase(smtp_relay_lockouts_total{${R}}[${RATE}]))`, legendFormat: '{{scope}}' }],
    },
    { row: 'TLS' },
    {
      title: 'TLS handshakes by version and cipher',
      description: 'Completed TLS handshakes per second (STARTTLS and implicit TLS).',
      unit: 'reqps',
      targets: [{ expr: `sum by (version, cipher) (rate(smtp_relay_tls_handshakes_total{${R}}[${RATE}]))`, legendFormat: '{{version}} {{cipher}}' }],
    },
    {
      title: 'TLS failures',
      description: 'TLS handshakes that failed or were abandoned, per second, by listener.',
      unit: 'reqps',
      targets: [{ expr: `sum by (listener) (rate(smtp_relay_tls_failures_total{${R}}[${RATE}]))`, legendFormat: '{{listener}}' }],
    },
    { row: 'Upstream' },
    {
      title: 'Upstream hand-off latency',
      description: 'Time to hand a message to the upstream smarthost (quantiles over all pods).',
      unit: 's',
      targets: [0.5, 0.95, 0.99].map((q) => ({
        expr: `histogram_quantile(${q}, sum by (le) (rate(smtp_relay_upstream_duration_seconds_bucket{${R}}[${RATE}])))`,
        legendFormat: `p${Math.round(q * 100)}`,
      })),
    },
    {
      title: 'Upstream hand-offs by result',
      description: 'Hand-offs per second by result: accepted, temporary (4xx, deferred), permanent (5xx).',
      unit: 'reqps',
      targets: [{ expr: `sum by (result) (rate(smtp_relay_upstream_duration_seconds_count{${R}}[${RATE}]))`, legendFormat: '{{result}}' }],
    },
    {
      title: 'Upstream errors by kind',
      description: 'Upstream failures per second by kind (connection, tls, auth, timeout, overloaded, recipient_refused, ...).',
      unit: 'reqps',
      targets: [{ expr: `sum by (kind) (rate(smtp_relay_upstream_errors_total{${R}}[${RATE}]))`, legendFormat: '{{kind}}' }],
    },
    {
      title: 'Upstream in flight',
      description: 'Messages being handed to the upstream or waiting for an upstream connection.',
      targets: [{ expr: `sum(smtp_relay_upstream_in_flight{${R}})`, legendFormat: 'in flight' }],
    },
    {
      title: 'DKIM signatures by domain',
      description: 'DKIM signatures added to relayed messages per second, by signing domain.',
      unit: 'reqps',
      targets: [{ expr: `sum by (domain) (rate(smtp_relay_dkim_signatures_total{${R}}[${RATE}]))`, legendFormat: '{{domain}}' }],
    },
    { row: 'Queue' },
    {
      title: 'Queued messages',
      description: 'Messages in the spools of all pods now (queue mode; held ones included). Each pod delivers its own spool.',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(smtp_relay_queue_messages{${R}})`, instant: true }],
    },
    {
      title: 'Queued bytes',
      description: 'Bytes of the messages in the spools of all pods (queue.maxBytes is per pod).',
      type: 'stat',
      w: 6,
      h: 5,
      unit: 'bytes',
      targets: [{ expr: `sum(smtp_relay_queue_bytes{${R}})`, instant: true }],
    },
    {
      title: 'Oldest queued message',
      description: 'Age of the oldest message in any pod\'s spool (held ones included); 0 when the spools are empty. SmtpRelayQueueOldMessages fires at 1 hour by default.',
      type: 'stat',
      w: 6,
      h: 5,
      unit: 's',
      targets: [{ expr: `max(smtp_relay_queue_oldest_message_age_seconds{${R}})`, instant: true }],
      thresholds: [{ color: 'green', value: null }, { color: 'orange', value: 900 }, { color: 'red', value: 3600 }],
    },
    {
      title: 'Held messages',
      description: 'Messages on hold (smtp-relay queue hold): not delivered until released.',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(smtp_relay_queue_held_messages{${R}})`, instant: true }],
      thresholds: [{ color: 'green', value: null }, { color: 'orange', value: 1 }],
    },
    {
      title: 'Queued messages by pod',
      description: 'Messages in each pod\'s spool, and how many of them are on hold. A steady climb means deliveries do not keep up (SmtpRelayQueueGrowing).',
      targets: [
        { expr: `sum by (pod) (smtp_relay_queue_messages{${R}})`, legendFormat: '{{pod}}' },
        { expr: `sum by (pod) (smtp_relay_queue_held_messages{${R}})`, legendFormat: '{{pod}} held' },
      ],
    },
    {
      title: 'Queued bytes by pod',
      description: 'Bytes in each pod\'s spool; at queue.maxBytes new mail gets 452.',
      unit: 'bytes',
      targets: [{ expr: `sum by (pod) (smtp_relay_queue_bytes{${R}})`, legendFormat: '{{pod}}' }],
    },
    {
      title: 'Oldest queued message by pod',
      description: 'Age of the oldest message in each pod\'s spool (held ones included).',
      unit: 's',
      targets: [{ expr: `max by (pod) (smtp_relay_queue_oldest_message_age_seconds{${R}})`, legendFormat: '{{pod}}' }],
    },
    {
      title: 'Deliveries by result',
      description: 'Recipients per second by delivery result: delivered, deferred (temporary failure, retried later), bounced (refused for good, reported to the sender), expired (queue.lifetime over, reported).',
      unit: 'reqps',
      targets: [{ expr: `sum by (result) (rate(smtp_relay_queue_deliveries_total{${R}}[${RATE}]))`, legendFormat: '{{result}}' }],
    },
    {
      title: 'Delivery attempts by outcome',
      description: 'Upstream transactions of the queue per second: accepted, temporary (4xx or no connection), permanent (5xx).',
      unit: 'reqps',
      targets: [{ expr: `sum by (outcome) (rate(smtp_relay_queue_delivery_attempts_total{${R}}[${RATE}]))`, legendFormat: '{{outcome}}' }],
    },
    {
      title: 'Spool write latency',
      description: 'Time from a spool write until it is fsynced, by operation (enqueue is part of the time to 250; update and delete record deliveries).',
      unit: 's',
      targets: [0.5, 0.99].map((q) => ({
        expr: `histogram_quantile(${q}, sum by (le, operation) (rate(smtp_relay_queue_write_duration_seconds_bucket{${R}}[${RATE}])))`,
        legendFormat: `p${Math.round(q * 100)} {{operation}}`,
      })),
    },
    {
      title: 'Reports to senders by kind',
      description: 'Delivery status notifications queued to senders per second: failed (bounced or expired recipients), delayed (queue.delayWarning).',
      unit: 'reqps',
      targets: [{ expr: `sum by (kind) (rate(smtp_relay_queue_notifications_total{${R}}[${RATE}]))`, legendFormat: '{{kind}}' }],
    },
    {
      title: 'Refused: queue full',
      description: 'Messages refused with 452 4.3.1 because the spool was full: by reason (max_bytes, max_messages, disk_space, disk_full) when refused after DATA, and all of them, including those refused at MAIL by their SIZE=.',
      targets: [
        { expr: `sum by (reason) (increase(smtp_relay_queue_full_total{${R}}[${RATE}]))`, legendFormat: '{{reason}}' },
        { expr: `sum(increase(smtp_relay_rejections_total{${R}, reason="queue_full"}[${RATE}]))`, legendFormat: 'all 452 queue full' },
      ],
    },
    {
      title: 'Quarantined spool entries',
      description: 'Damaged spool entries (or a damaged database) each pod moved to quarantine/ since it started, at start or on read. Not zero: see the SmtpRelayQueueQuarantined runbook.',
      targets: [{ expr: `sum by (pod) (smtp_relay_queue_quarantined_total{${R}})`, legendFormat: '{{pod}}' }],
    },
    { row: 'Reloads' },
    {
      title: 'Reloads by kind and result',
      description: 'Reloads of the config, users and certificate files. A failure keeps the old state: fix the Secret or ConfigMap.',
      w: 24,
      targets: [{ expr: `sum by (kind, result) (increase(smtp_relay_config_reloads_total{${R}}[${RATE}]))`, legendFormat: '{{kind}} {{result}}' }],
    },
  ];
  return dashboard(
    'smtp-relay-overview',
    'SMTP relay overview',
    'Traffic, rejections, connection floods, authentication, TLS, certificate, upstream, queue and reloads of the relays an smtp-relay-operator runs.',
    vars,
    items,
  );
}

/** Selector of the operator's series. */
const O = 'namespace=~"$namespace", job=~"$job"';

export function operatorDashboard(): object {
  const vars = [
    datasourceVar(),
    queryVar('namespace', 'Namespace', 'label_values(smtp_relay_operator_relays, namespace)'),
    queryVar('job', 'Operator', 'label_values(smtp_relay_operator_relays{namespace=~"$namespace"}, job)'),
  ];
  const items: Item[] = [
    { row: 'Relays' },
    {
      title: 'Relays ready',
      description: 'SmtpRelays whose Ready condition is True (reported by the leader).',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `max(smtp_relay_operator_relays{${O}, ready="true"})`, instant: true }],
    },
    {
      title: 'Relays not ready',
      description: 'SmtpRelays whose Ready condition is not True. kubectl get smtprelays -A shows which and why.',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `max(smtp_relay_operator_relays{${O}, ready="false"})`, instant: true }],
      thresholds: [{ color: 'green', value: null }, { color: 'red', value: 1 }],
    },
    {
      title: 'Leader',
      description: 'Replicas holding the leader Lease (1 expected).',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(smtp_relay_operator_leader{${O}})`, instant: true }],
      thresholds: [{ color: 'red', value: null }, { color: 'green', value: 1 }, { color: 'red', value: 2 }],
    },
    {
      title: 'Work queue depth',
      description: 'SmtpRelay keys waiting to be reconciled.',
      type: 'stat',
      w: 6,
      h: 5,
      targets: [{ expr: `sum(smtp_relay_operator_workqueue_depth{${O}})`, instant: true }],
    },
    {
      title: 'Relays by readiness',
      description: 'Managed SmtpRelays, ready and not ready, over time.',
      targets: [{ expr: `max by (ready) (smtp_relay_operator_relays{${O}})`, legendFormat: 'ready={{ready}}' }],
    },
    {
      title: 'Work queue depth over time',
      description: 'SmtpRelay keys waiting in the work queue.',
      targets: [{ expr: `sum by (pod, instance) (smtp_relay_operator_workqueue_depth{${O}})`, legendFormat: '{{instance}}' }],
    },
    { row: 'Reconciles' },
    {
      title: 'Reconciles by result',
      description: 'Reconciles per second: success, error, requeue.',
      unit: 'ops',
      targets: [{ expr: `sum by (controller, result) (rate(smtp_relay_operator_reconcile_total{${O}}[${RATE}]))`, legendFormat: '{{controller}} {{result}}' }],
    },
    {
      title: 'Reconcile errors',
      description: 'Reconciles that ended in an error, per second.',
      unit: 'ops',
      targets: [{ expr: `sum by (controller) (rate(smtp_relay_operator_reconcile_errors_total{${O}}[${RATE}]))`, legendFormat: '{{controller}}' }],
    },
    {
      title: 'Reconcile latency',
      description: 'Time to reconcile one SmtpRelay (quantiles).',
      unit: 's',
      targets: [0.5, 0.95, 0.99].map((q) => ({
        expr: `histogram_quantile(${q}, sum by (le) (rate(smtp_relay_operator_reconcile_duration_seconds_bucket{${O}}[${RATE}])))`,
        legendFormat: `p${Math.round(q * 100)}`,
      })),
    },
    {
      title: 'Child writes by kind and outcome',
      description: 'Children created, applied or recreated per second (unchanged children are not written).',
      unit: 'ops',
      targets: [{ expr: `sum by (kind, outcome) (rate(smtp_relay_operator_apply_total{${O}}[${RATE}]))`, legendFormat: '{{kind}} {{outcome}}' }],
    },
  ];
  return dashboard(
    'smtp-relay-operator',
    'SMTP relay operator',
    'Reconciles, latency, work queue and relay readiness of smtp-relay-operator.',
    vars,
    items,
  );
}

/** File name -> JSON text (2-space indent, trailing newline). */
export function dashboardFiles(): Record<string, string> {
  return {
    'smtp-relay-overview.json': JSON.stringify(relayDashboard(), null, 2) + '\n',
    'smtp-relay-operator.json': JSON.stringify(operatorDashboard(), null, 2) + '\n',
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv.includes('--write')) {
  const root = join(fileURLToPath(import.meta.url), '..', '..', '..', '..');
  for (const [name, text] of Object.entries(dashboardFiles())) {
    const file = join(root, ...DASHBOARD_DIR, name);
    writeFileSync(file, text);
    process.stdout.write(`wrote ${file}\n`);
  }
}
