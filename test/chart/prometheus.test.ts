// Every PromQL expression of the chart's dashboards and alerts against a REAL Prometheus
// (Debian's /usr/bin/prometheus, loopback, temp storage) that scrapes
//   - a real relay process (test/relay/harness.ts) that handled traffic: successes
//     (nodemailer, PLAIN and LOGIN, STARTTLS and implicit TLS), rejections (sender not
//     allowed, auth/TLS required, IP not allowed, smuggling), deferrals by the upstream,
//     AUTH failures and lockouts, TLS failures, reloads that succeed and fail;
//   - a second relay in queue mode (`queue:`, relay/spool/), started on a spool with a
//     damaged entry (quarantined at start), whose queue delivers, defers (the upstream
//     answers 450 for one recipient, so those messages stay queued and the queue grows),
//     bounces (550) and reports to the sender, refuses mail when full (452 at MAIL by SIZE=
//     and after DATA), and sheds unauthenticated connections over limits.maxUnauthenticated;
//   - the operator's metrics endpoint (in-process startOperator on the local control plane),
//     watching two namespaces: one where its Role has every rule of operator/rbac/ (it
//     reconciles) and one where the Role lacks `create` on deployments (reconciles fail).
// Targets carry the labels the Prometheus operator gives ServiceMonitor targets
// (namespace, service, pod, job = service name), as the dashboards and alerts expect.
//
// A dashboard or alert that queries a metric or label the relay/operator does not export
// returns no series and fails the test. Counters are driven in two phases so that
// Prometheus sees them increase (a series first seen at its final value has increase 0).
// Queries and alerts about the queue and shed connections are checked against the
// queue-mode relay, all others against the inline one (relayOf).
// The rules loaded into Prometheus and queried here are the chart's, rendered with the
// thresholds lowered (authFailuresPerSecond, upstreamErrorsPerSecond,
// shedConnectionsPerSecond: 0.001/s; queueGrowthMessages: 1; queueOldestMessageSeconds: 1;
// queueBouncedRatio, queueDeferredRatio: 0.01): a few seconds of test traffic cannot reach
// 0.1 failures/s over 5 minutes or a one-hour-old message, and the thresholds are values,
// not the expressions under test (test/chart/alerts.test.yaml tests them at their defaults). Three alerts need the world to break and
// are checked after it does: SmtpRelayCertificateExpired (an expired certificate is
// loaded), SmtpRelayDown (the relay is stopped) and SmtpRelayOperatorDown (the operator
// is stopped).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import pino from 'pino';
import { Registry } from 'prom-client';
import YAML from 'yaml';
import { Kube } from '../../operator/runtime/kube.js';
import type { RunningOperator } from '../../operator/operator.js';
import { startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { createIssuer, createNamespace, createRelay, eventually, relayManifest, runOperator, sleep } from '../operator/support.js';
import { RawSmtp, freePort, message, startRelay, tempDir, usersYaml, type RelayProcess, type TestUser } from '../relay/harness.js';
import { createPki, DAY, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { testMessage } from '../harness/spool/messages.js';
import { createSpoolMetrics } from '../../relay/spool/metrics.js';
import { Spool } from '../../relay/spool/store.js';
import { dashboardFiles } from './dashboards.js';
import { ROOT, prometheusBin, renderRuleFile, withParentDeathSignal } from './support.js';

const RELAY_NS = 'mail';
const RELAY = 'outbound';
const QUEUED = 'queued'; // the relay in queue mode
const MAX_UNAUTHENTICATED = 3; // the queued relay's limits.maxUnauthenticated
const OP_NS = 'monitoring';
const OP_JOB = 't-smtp-relay-operator-metrics'; // the chart's metrics Service for release "t"

const APP: TestUser = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const VICTIMS: TestUser[] = [1, 2].map((i) => ({ name: `victim${i}`, password: `victim-password-${i}-abcdefgh`, allowedSenders: [`v${i}@example.com`] }));

let cp: ControlPlane;
let pki: Pki;
let sink: Sink;
let relay: RelayProcess;
let queued: RelayProcess;
let op: RunningOperator;
let prom: ChildProcess;
let promUrl = '';
let dir = '';
let rules: { groups: Array<{ name: string; rules: any[] }> };

// ---------------------------------------------------------------------------
// Prometheus

async function query(expr: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>> {
  const res = await fetch(`${promUrl}/api/v1/query`, { method: 'POST', body: new URLSearchParams({ query: expr }) });
  const body = (await res.json()) as any;
  if (body.status !== 'success') throw new Error(`Prometheus refused ${JSON.stringify(expr)}: ${body.errorType}: ${body.error}`);
  assert.equal(body.data.resultType, 'vector', expr);
  return body.data.result;
}

async function api(path: string): Promise<any> {
  const body = (await (await fetch(`${promUrl}${path}`)).json()) as any;
  assert.equal(body.status, 'success', `${path}: ${body.error}`);
  return body.data;
}

async function waitScrapes(n = 3): Promise<void> {
  // scrape_interval is 1s; wait for n more scrapes of every target
  await sleep(n * 1000 + 300);
}

async function startPrometheus(relayMetricsPort: number, queuedMetricsPort: number, operatorPort: number): Promise<void> {
  const bin = prometheusBin('prometheus');
  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  writeFileSync(join(dir, 'rules.yaml'), YAML.stringify(rules));
  writeFileSync(
    join(dir, 'prometheus.yml'),
    YAML.stringify({
      global: { scrape_interval: '1s', scrape_timeout: '900ms', evaluation_interval: '1s' },
      rule_files: [join(dir, 'rules.yaml')],
      scrape_configs: [
        {
          job_name: `${RELAY}-metrics`,
          static_configs: [{ targets: [`127.0.0.1:${relayMetricsPort}`], labels: { namespace: RELAY_NS, service: `${RELAY}-metrics`, pod: `${RELAY}-7d9f-abcde`, endpoint: 'metrics' } }],
        },
        {
          job_name: `${QUEUED}-metrics`,
          static_configs: [{ targets: [`127.0.0.1:${queuedMetricsPort}`], labels: { namespace: RELAY_NS, service: `${QUEUED}-metrics`, pod: `${QUEUED}-0`, endpoint: 'metrics' } }],
        },
        {
          job_name: OP_JOB,
          static_configs: [{ targets: [`127.0.0.1:${operatorPort}`], labels: { namespace: OP_NS, service: OP_JOB, pod: 't-smtp-relay-operator-5c4b-xyz', endpoint: 'http-metrics' } }],
        },
      ],
    }),
  );
  const fd = openSync(join(dir, 'prometheus.log'), 'a');
  try {
    const [cmd, argv] = withParentDeathSignal(bin, [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--storage.tsdb.retention.time=1h',
      '--log.level=warn',
    ]);
    prom = spawn(cmd, argv, { stdio: ['ignore', fd, fd], detached: true });
  } finally {
    closeSync(fd);
  }
  await eventually('Prometheus ready', async () => {
    if (prom.exitCode !== null) throw new Error(`prometheus exited: ${readFileSync(join(dir, 'prometheus.log'), 'utf8').slice(-2000)}`);
    return (await fetch(`${promUrl}/-/ready`).catch(() => undefined))?.status === 200;
  });
  await eventually('all three targets scraped', async () => {
    const up = await query('up == 1');
    return up.length === 3;
  });
}

async function stopChild(p: ChildProcess | undefined): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  try {
    process.kill(-p.pid!, 'SIGTERM');
  } catch {
    p.kill('SIGTERM');
  }
  const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

// ---------------------------------------------------------------------------
// the operator: namespaced Roles, one complete and one without create on deployments

async function bindRole(kube: Kube, ns: string, sa: { ns: string; name: string }, rules: any[]): Promise<void> {
  await kube.request('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles`, { body: { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: { name: 'operator', namespace: ns }, rules } });
  await kube.request('POST', `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings`, {
    body: {
      apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', metadata: { name: 'operator', namespace: ns },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'operator' },
      subjects: [{ kind: 'ServiceAccount', name: sa.name, namespace: sa.ns }],
    },
  });
}

async function startOperatorWithErrors(): Promise<void> {
  cp = await startControlPlane();
  const admin = new Kube(cp.kubeconfig);
  // namespaced rules only (no clusterissuers, no nonResourceURLs: a Role cannot hold them)
  const full = (YAML.parse(readFileSync(join(ROOT, 'operator', 'rbac', 'clusterrole.yaml'), 'utf8')).rules as any[])
    .filter((r) => r.resources)
    .map((r) => ({ ...r, resources: r.resources.filter((x: string) => x !== 'clusterissuers') }))
    .filter((r) => r.resources.length > 0);
  const weak = full.map((r) => (r.apiGroups.includes('apps') ? { ...r, verbs: r.verbs.filter((v: string) => v !== 'create') } : r));
  for (const ns of ['ok', 'broken']) {
    await createNamespace(admin, ns);
    await createIssuer(admin, ns);
  }
  const sa = await cp.serviceAccountKubeconfig('default', 'prom-operator');
  await bindRole(admin, 'ok', { ns: 'default', name: 'prom-operator' }, full);
  await bindRole(admin, 'broken', { ns: 'default', name: 'prom-operator' }, weak);
  op = await runOperator(cp, 'prom-operator', { kube: new Kube(sa.kubeconfig), namespaces: ['ok', 'broken'], metricsPort: 0, metricsHost: '127.0.0.1' });
  await op.whenRunning();
  await createRelay(admin, relayManifest('ok', 'fine'));
}

// ---------------------------------------------------------------------------
// relay traffic

async function ehloTls(c: RawSmtp): Promise<void> {
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  await c.starttls();
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
}

function transport(user: TestUser, implicit: boolean, method: 'PLAIN' | 'LOGIN') {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port: implicit ? relay.ports.submissions : relay.ports.submission,
    secure: implicit,
    requireTLS: !implicit,
    tls: { rejectUnauthorized: false },
    auth: { user: user.name, pass: user.password },
    authMethod: method,
  });
}

/** One round of every kind of traffic. `round` makes lockouts use fresh IPs and users. */
async function traffic(round: number): Promise<void> {
  // successes: STARTTLS + PLAIN, implicit TLS + LOGIN
  for (const [implicit, method] of [[false, 'PLAIN'], [true, 'LOGIN'], [false, 'LOGIN']] as const) {
    const t = transport(APP, implicit, method);
    const info = await t.sendMail({ from: 'app@example.com', to: 'rcpt@example.net', subject: `ok ${round}`, text: 'Hello.' });
    assert.match(info.response, /^250 /);
    t.close();
  }
  // the upstream defers a recipient: 451 to the client, an upstream error
  {
    const t = transport(APP, false, 'PLAIN');
    await assert.rejects(t.sendMail({ from: 'app@example.com', to: 'defer@example.net', subject: 'deferred', text: 'x' }), /451/);
    t.close();
  }
  // a sender the user may not use
  {
    const t = transport(APP, false, 'PLAIN');
    await assert.rejects(t.sendMail({ from: 'ceo@example.com', to: 'rcpt@example.net', subject: 'spoof', text: 'x' }), /553|550/);
    t.close();
  }
  // MAIL without TLS, MAIL without AUTH
  {
    const c = await RawSmtp.connect(relay.ports.submission);
    assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
    assert.equal((await c.cmd('MAIL FROM:<app@example.com>'))?.code, 530);
    c.close();
    const d = await RawSmtp.connect(relay.ports.submission);
    await ehloTls(d);
    assert.equal((await d.cmd('MAIL FROM:<app@example.com>'))?.code, 530);
    d.close();
  }
  // SMTP smuggling: a bare LF in the data
  {
    const c = await RawSmtp.connect(relay.ports.submission);
    await ehloTls(c);
    assert.equal((await c.login(APP.name, APP.password))?.code, 235);
    assert.equal((await c.cmd('MAIL FROM:<app@example.com>'))?.code, 250);
    assert.equal((await c.cmd('RCPT TO:<rcpt@example.net>'))?.code, 250);
    assert.equal((await c.cmd('DATA'))?.code, 354);
    c.write('From: app@example.com\r\nSubject: smuggle\r\n\r\nfirst\n.\nMAIL FROM:<ceo@example.com>\r\n.\r\n');
    assert.equal((await c.read())?.code, 550);
    c.close();
  }
  // a client address outside allowedCidrs
  {
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.0.9', greeting: false });
    assert.equal((await c.read())?.code, 554);
    c.close();
  }
  // a TLS handshake abandoned half way
  for (let i = 0; i < 2; i++) {
    const { connect } = await import('node:net');
    const s = connect({ host: '127.0.0.1', port: relay.ports.submissions });
    s.on('error', () => undefined);
    await new Promise((r) => s.once('connect', r));
    s.write(Buffer.from('16030100c4010000c00303', 'hex'));
    await sleep(50);
    s.destroy();
  }
  // brute force: wrong passwords from a fresh IP until the lockout (maxFailures 3), then a locked attempt
  {
    const victim = VICTIMS[round - 1]!;
    const ip = `127.0.0.${round + 1}`;
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: ip });
    await ehloTls(c);
    assert.equal((await c.login(victim.name, 'guess-1'))?.code, 535);
    assert.equal((await c.login(victim.name, 'guess-2'))?.code, 535);
    assert.equal((await c.login(victim.name, 'guess-3'))?.code, 421);
    await c.closedP;
    const d = await RawSmtp.connect(relay.ports.submissions, { implicitTls: true, localAddress: ip });
    assert.equal((await d.cmd('EHLO client.test'))?.code, 250);
    assert.equal((await d.login(victim.name, victim.password))?.code, 421);
    d.close();
  }
  // reloads: the users file (succeeds), a certificate whose key does not match (fails)
  {
    const seen = relay.logs.length;
    await relay.usersDir.update({ 'users.yaml': await usersYaml([APP, ...VICTIMS]) });
    await relay.waitForLog((l) => l.event === 'reload' && l.kind === 'users' && relay.logs.indexOf(l) >= seen);
    const a = await pki.issue({ name: `mismatch-cert-${round}` });
    const b = await pki.issue({ name: `mismatch-key-${round}` });
    await relay.tlsDir.update({ 'tls.crt': a.chainPem, 'tls.key': b.keyPem });
    await relay.waitForLog((l) => l.event === 'reload_failed' && relay.logs.indexOf(l) >= seen);
  }
}

// ---------------------------------------------------------------------------
// the relay in queue mode

/** A spool with two messages, one of them damaged: the relay quarantines it at start. */
async function damagedSpool(directory: string): Promise<void> {
  const spool = await Spool.open({
    directory,
    limits: { maxBytes: 1 << 30, maxMessages: 1000, minFreeBytes: 0 },
    logger: pino({ level: 'silent' }),
    metrics: createSpoolMetrics(new Registry()),
  });
  const ids: string[] = [];
  for (let i = 0; i < 2; i++) ids.push(await spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['rcpt@example.net'] }, testMessage('prom', i)));
  await spool.close();
  const db = new DatabaseSync(join(directory, 'spool.db'));
  const row = db.prepare('SELECT body FROM message WHERE id = ?').get(ids[1]!) as { body: Uint8Array };
  db.prepare('UPDATE message SET body = ? WHERE id = ?').run(Buffer.from(row.body).subarray(0, 100), ids[1]!);
  db.close();
}

/** One round of queue traffic: delivered, deferred (stays queued), bounced; queue full; a small connection flood. */
async function queueTraffic(round: number): Promise<void> {
  const before = { bounced: await queued.metric('smtp_relay_queue_deliveries_total', { result: 'bounced' }), shed: await queued.metric('smtp_relay_connections_shed_total') };
  const t = nodemailer.createTransport({ host: '127.0.0.1', port: queued.ports.submission, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user: APP.name, pass: APP.password } });
  // each round leaves more deferred messages than the last: the queue grows
  for (const to of ['rcpt@example.net', 'bounce@example.net', ...Array.from({ length: round }, () => 'defer@example.net')]) {
    const info = await t.sendMail({ from: 'app@example.com', to, subject: `queued ${round}`, text: 'Hello.' });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
  }
  t.close();
  // queue full (queue.maxBytes 1Mi): refused at MAIL by its SIZE=, and after DATA without one
  {
    const c = await RawSmtp.connect(queued.ports.submission);
    await ehloTls(c);
    assert.equal((await c.login(APP.name, APP.password))?.code, 235);
    assert.equal((await c.cmd('MAIL FROM:<app@example.com> SIZE=1200000'))?.code, 452);
    assert.equal((await c.cmd('MAIL FROM:<app@example.com>'))?.code, 250);
    assert.equal((await c.cmd('RCPT TO:<rcpt@example.net>'))?.code, 250);
    assert.equal((await c.cmd('DATA'))?.code, 354);
    c.write(`From: app@example.com\r\nSubject: big\r\n\r\n${'x'.repeat(998).concat('\r\n').repeat(1200)}.\r\n`);
    assert.equal((await c.read())?.code, 452);
    c.close();
  }
  // more connections that do not authenticate than limits.maxUnauthenticated: the oldest are shed
  {
    const conns: RawSmtp[] = [];
    for (let i = 0; i < MAX_UNAUTHENTICATED + 2; i++) conns.push(await RawSmtp.connect(queued.ports.submission));
    for (const c of conns) c.close();
    await sleep(200);
  }
  await eventually('the queue bounced and shed', async () =>
    (await queued.metric('smtp_relay_queue_deliveries_total', { result: 'bounced' })) > before.bounced && (await queued.metric('smtp_relay_connections_shed_total')) >= before.shed + 2,
  );
}

// ---------------------------------------------------------------------------

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'chart-prometheus-'));
  // --set-json: helm's --set passes 0.001 as a string, which the schema refuses.
  const lowered = {
    authFailuresPerSecond: 0.001,
    upstreamErrorsPerSecond: 0.001,
    shedConnectionsPerSecond: 0.001,
    queueGrowthMessages: 1,
    queueOldestMessageSeconds: 1,
    queueBouncedRatio: 0.01,
    queueDeferredRatio: 0.01,
  };
  rules = await renderRuleFile(Object.entries(lowered).flatMap(([k, v]) => ['--set-json', `prometheusRule.thresholds.${k}=${v}`]));
  pki = await createPki();
  sink = await startSink({ pki, behaviour: { tempFailRecipients: ['defer@example.net'], refuseRecipients: ['bounce@example.net'] } });
  // The relay's certificate expires in 10 days: SmtpRelayCertificateExpiringSoon (14 days).
  const cert = await pki.issue({ name: 'relay', notAfter: 10 * DAY });
  const relayDir = await tempDir('chart-prom-relay-');
  const dkimKey = join(relayDir, 'example.com.key');
  writeFileSync(dkimKey, generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  relay = await startRelay({
    dir: relayDir,
    dkim: `dkim:\n  - {domain: example.com, selector: relay1, keyFile: ${dkimKey}}`,
    cert,
    users: [APP, ...VICTIMS],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    lockout: '{maxFailures: 3, window: 10m, duration: 15m}',
    access: '  allowedCidrs: ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32", "::1/128"]',
  });
  const queuedDir = await tempDir('chart-prom-queued-');
  await damagedSpool(join(queuedDir, 'spool'));
  queued = await startRelay({
    dir: queuedDir,
    cert: await pki.issue({ name: 'queued' }),
    users: [APP],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    limits: `{maxMessageSize: 2Mi, maxRecipients: 5, maxConnections: 200, maxConnectionsPerIp: 50, idleTimeout: 30s, maxUnauthenticated: ${MAX_UNAUTHENTICATED}}`,
    queue: `{directory: ${join(queuedDir, 'spool')}, maxBytes: 1Mi, retry: {initialDelay: 1s, maxDelay: 2s}}`,
  });
  assert.equal(await queued.metric('smtp_relay_queue_quarantined_total'), 1, 'the damaged entry was quarantined at start');
  await startOperatorWithErrors();
  await startPrometheus(relay.ports.metrics, queued.ports.metrics, op.metricsPort!);
  // Phase 1 creates every series; phase 2, a few scrapes later, makes them increase.
  await createRelay(new Kube(cp.kubeconfig), relayManifest('broken', 'denied'));
  await traffic(1);
  await queueTraffic(1);
  await waitScrapes(3);
  await createRelay(new Kube(cp.kubeconfig), relayManifest('broken', 'denied-too'));
  await traffic(2);
  await queueTraffic(2);
  await waitScrapes(4);
});

after(async () => {
  await op?.stop().catch(() => undefined);
  await relay?.stop().catch(() => undefined);
  await queued?.stop().catch(() => undefined);
  await stopChild(prom);
  await sink?.stop().catch(() => undefined);
  await pki?.cleanup().catch(() => undefined);
  await cp?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/**
 * Labels an expression groups or joins by (`by (...)`, `on (...)`) that none of the metrics
 * it reads carries: a typo there still returns series, so it is checked on its own.
 */
async function unknownGroupingLabels(expr: string): Promise<string[]> {
  const metrics = [...new Set([...expr.matchAll(/\b(smtp_relay_[a-z0-9_]+|up)\b(?!\s*\()/g)].map((m) => m[1]!))];
  const labels = [...new Set([...expr.matchAll(/\b(?:by|on)\s*\(([^)]*)\)/g)].flatMap((m) => m[1]!.split(',').map((l) => l.trim()).filter(Boolean)))];
  const missing: string[] = [];
  for (const l of labels) {
    const r = await query(`count({__name__=~"${metrics.join('|')}", ${l}!=""})`);
    if (r.length === 0) missing.push(`${l} (on none of ${metrics.join(', ')})`);
  }
  return missing;
}

/** Grafana's variables and built-ins, as the dashboards use them. */
function substitute(expr: string, vars: Record<string, string>): string {
  return expr
    .replace(/\$__rate_interval/g, '1m')
    .replace(/\$__range/g, '5m')
    .replace(/\$__interval/g, '15s')
    .replace(/\$\{?(\w+)\}?/g, (m, name: string) => {
      const v = vars[name];
      if (v === undefined) throw new Error(`unknown dashboard variable ${m} in ${expr}`);
      return v;
    });
}

/** The scraped relay a query or an alert is about: the queue-mode one for the queue and shed connections. */
function relayOf(expr: string): string {
  return /smtp_relay_queue_|smtp_relay_connections_shed|queue_full/.test(expr) ? QUEUED : RELAY;
}

const DASHBOARD_VARS: Record<string, Record<string, string>> = {
  'smtp-relay-overview.json': { namespace: RELAY_NS, relay: RELAY },
  'smtp-relay-operator.json': { namespace: OP_NS, job: OP_JOB },
};

test('every dashboard panel query parses and returns series from the scraped relay and operator', async () => {
  const empty: string[] = [];
  let count = 0;
  for (const [file, text] of Object.entries(dashboardFiles())) {
    const dash = JSON.parse(text);
    for (const panel of dash.panels.filter((p: any) => p.type !== 'row')) {
      for (const t of panel.targets) {
        const vars = { ...DASHBOARD_VARS[file]!, ...(file === 'smtp-relay-overview.json' ? { relay: relayOf(t.expr) } : {}) };
        const expr = substitute(t.expr, vars);
        const result = await query(expr);
        count++;
        if (result.length === 0) empty.push(`${file} "${panel.title}": ${expr}`);
        for (const l of await unknownGroupingLabels(expr)) empty.push(`${file} "${panel.title}": label ${l}`);
      }
    }
  }
  assert.ok(count >= 25, `${count} queries`);
  assert.deepEqual(empty, [], 'dashboard queries without data, or grouping by labels the metrics lack');
});

test('the dashboards\' template variables find the scraped namespace, relay and operator', async () => {
  for (const [file, text] of Object.entries(dashboardFiles())) {
    const dash = JSON.parse(text);
    for (const v of dash.templating.list.filter((v: any) => v.type === 'query')) {
      // label_values(selector, label) is what Grafana sends as /api/v1/label/<label>/values?match[]=selector
      const m = /^label_values\((.+), (\w+)\)$/.exec(v.query.query);
      assert.ok(m, `${file} ${v.name}: ${v.query.query}`);
      const selector = substitute(m[1]!, { namespace: DASHBOARD_VARS[file]!.namespace! });
      const values: string[] = await api(`/api/v1/label/${m[2]}/values?${new URLSearchParams({ 'match[]': selector })}`);
      const regex = v.regex ? new RegExp(v.regex.slice(1, -1)) : undefined;
      const shown = values.map((x) => (regex ? regex.exec(x)?.[1] : x)).filter(Boolean);
      assert.ok(shown.includes(DASHBOARD_VARS[file]![v.name]!), `${file} variable ${v.name} offers ${JSON.stringify(shown)}`);
    }
  }
});

const AFTER_BREAKAGE = new Set(['SmtpRelayCertificateExpired', 'SmtpRelayDown', 'SmtpRelayOperatorDown']);
/**
 * Alerts no scraped relay here triggers: an upstream refusing the relay's login needs a
 * relay with upstream credentials and a refusing upstream of its own. Prometheus still
 * loads and evaluates them (rule health below); test/chart/alerts.test.yaml (promtool)
 * proves when they fire, test/relay/oauth2-upstream.test.ts that the relay sets the gauge.
 */
const NOT_TRIGGERED_HERE = new Set(['SmtpRelayUpstreamAuthRefused']);

test('every alert expression parses and returns series for the traffic that should trigger it; Prometheus evaluates every rule without error', async () => {
  const alerts = rules.groups.flatMap((g) => g.rules);
  assert.equal(alerts.length, 18);
  const empty: string[] = [];
  for (const a of alerts.filter((a) => !AFTER_BREAKAGE.has(a.alert) && !NOT_TRIGGERED_HERE.has(a.alert))) {
    const result = await query(a.expr);
    for (const l of await unknownGroupingLabels(a.expr)) empty.push(`${a.alert}: label ${l}`);
    if (result.length === 0) empty.push(`${a.alert}: ${a.expr}`);
    else if (a.alert !== 'SmtpRelayNotReady' && a.alert !== 'SmtpRelayOperatorReconcileErrors') {
      for (const r of result) assert.ok(r.metric.relay, `${a.alert} names the relay: ${JSON.stringify(r.metric)}`);
      assert.ok(result.some((r) => r.metric.relay === relayOf(a.expr)), `${a.alert} fires for ${relayOf(a.expr)}: ${JSON.stringify(result.map((r) => r.metric))}`);
    }
    // both halves of the deliveries alert: bounced (permanent) and deferred (temporary)
    if (a.alert === 'SmtpRelayQueueDeliveriesFailing') assert.deepEqual(result.map((r) => r.metric.failure).sort(), ['permanent', 'temporary']);
  }
  assert.deepEqual(empty, [], 'alerts that did not trigger, or grouping by labels the metrics lack');
  // The broken namespace's reconciles fail; both relays there and the one in "ok" are not Ready.
  assert.ok(Number((await query('max(smtp_relay_operator_relays{ready="false"})'))[0]!.value[1]) >= 2);
  // Prometheus itself loaded and evaluates the rules: all healthy, and the alerts above are pending or firing.
  const groups = (await api('/api/v1/rules')).groups as any[];
  const loaded = groups.flatMap((g) => g.rules);
  assert.equal(loaded.length, 18);
  for (const r of loaded) assert.equal(r.health, 'ok', `${r.name}: ${r.lastError}`);
  const active = new Set(((await api('/api/v1/alerts')).alerts as any[]).map((a) => a.labels.alertname));
  for (const a of alerts.filter((a) => !AFTER_BREAKAGE.has(a.alert) && !NOT_TRIGGERED_HERE.has(a.alert))) assert.ok(active.has(a.alert), `${a.alert} is pending or firing in Prometheus`);
});

test('SmtpRelayCertificateExpired: the relay loads an expired certificate', async () => {
  const expired = await pki.issue({ name: 'expired', notBefore: -2 * DAY, notAfter: -3600_000 });
  const seen = relay.logs.length;
  await relay.tlsDir.update({ 'tls.crt': expired.chainPem, 'tls.key': expired.keyPem });
  await relay.waitForLog((l) => l.event === 'reload' && l.kind === 'certificate' && relay.logs.indexOf(l) >= seen);
  await waitScrapes(2);
  const expr = rules.groups.flatMap((g) => g.rules).find((r) => r.alert === 'SmtpRelayCertificateExpired')!.expr;
  const result = await query(expr);
  assert.equal(result.length, 1, expr);
  assert.equal(result[0]!.metric.relay, RELAY);
  assert.ok(Number(result[0]!.value[1]) < 0);
  // The dashboard's days-to-expiry stat goes negative too.
  const days = await query(`min((smtp_relay_certificate_expiry_timestamp_seconds{namespace="${RELAY_NS}"} - time()) / 86400)`);
  assert.ok(Number(days[0]!.value[1]) < 0);
});

test('SmtpRelayDown and SmtpRelayOperatorDown: the relay and the operator stop', async () => {
  const byName = (n: string) => rules.groups.flatMap((g) => g.rules).find((r) => r.alert === n)!.expr as string;
  assert.deepEqual(await query(byName('SmtpRelayDown')), [], 'no relay is down yet');
  assert.deepEqual(await query(byName('SmtpRelayOperatorDown')), [], 'the operator is not down yet');
  await relay.stop();
  await op.stop();
  await waitScrapes(3);
  const down = await query(byName('SmtpRelayDown'));
  assert.equal(down.length, 1);
  assert.deepEqual([down[0]!.metric.relay, down[0]!.metric.namespace, down[0]!.metric.job], [RELAY, RELAY_NS, `${RELAY}-metrics`]);
  const opDown = await query(byName('SmtpRelayOperatorDown'));
  assert.equal(opDown.length, 1);
  assert.equal(opDown[0]!.metric.job, OP_JOB);
});
