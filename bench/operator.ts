// Scenario 4: the operator (node dist/operator/main.js, its own process) on the local
// control plane (test/harness/controlplane/harness.ts: etcd, kube-apiserver, kube-controller-manager):
//   - apply -> every child exists: p50/p99 over N SmtpRelays created one after another;
//   - 1,000 SmtpRelays across 10 namespaces: time to converge (every status written for
//     the current generation, every child Deployment there, work queue empty), operator RSS,
//     and API write requests during the following quiet period, from the apiserver's
//     apiserver_request_total (verb POST|PUT|PATCH|DELETE), by resource, and the operator's
//     own apply/reconcile counters.
// cert-manager is not running (its CRDs are installed), so Certificates stay un-issued and
// relays not Ready: that is a steady state too, and it must be quiet.

import { request } from 'node:https';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { KubeConfig } from '@kubernetes/client-node';
import { programs } from '../entrypoint.js';
import { API_VERSION, KIND } from '../operator/api/v1alpha1.js';
import { Kube, resourcePath } from '../operator/runtime/kube.js';
import { Certificates, SmtpRelays } from '../operator/runtime/resources.js';
import { Informer } from '../operator/runtime/informer.js';
import { createPki } from '../test/harness/support/pki.js';
import { startControlPlane, type ControlPlane } from '../test/harness/controlplane/harness.js';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import { cpuSeconds, fmt, freePort, log, percentile, rssKiB, sleep, startProcess, stopProcess, table } from './common.js';
import { summarize } from './profile.js';

const OPERATOR_MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../entrypoint.js');

function manifest(namespace: string, name: string) {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: {
      hostname: `${name}.example.com`,
      tls: { issuerRef: { name: 'ca-issuer' } },
      auth: { users: [{ name: 'app', allowedSenders: ['noreply@example.com'] }] },
      upstream: { host: 'smtp.example.net' },
    },
  };
}

const CANDIDATE_CHILDREN = (ns: string, name: string): Record<string, string> => ({
  serviceAccount: `/api/v1/namespaces/${ns}/serviceaccounts/${name}`,
  configMap: `/api/v1/namespaces/${ns}/configmaps/${name}-config`,
  usersSecret: `/api/v1/namespaces/${ns}/secrets/${name}-users`,
  deployment: `/apis/apps/v1/namespaces/${ns}/deployments/${name}`,
  service: `/api/v1/namespaces/${ns}/services/${name}`,
  metricsService: `/api/v1/namespaces/${ns}/services/${name}-metrics`,
  certificate: `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/${name}-tls`,
  networkPolicy: `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/${name}`,
  pdb: `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${name}`,
});

/** GET a text endpoint of the apiserver with the admin credentials. */
function getText(kc: KubeConfig, server: string, p: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const u = new URL(server + p);
    const opts: Record<string, unknown> = { hostname: u.hostname, port: u.port, path: u.pathname, method: 'GET' };
    kc.applyToHTTPSOptions(opts as never);
    const req = request(opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${p}: ${res.statusCode} ${body.slice(0, 200)}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

/** apiserver_request_total write requests, summed by resource (subresource appended). */
function writesByResource(metrics: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('apiserver_request_total{')) continue;
    const verb = /verb="([A-Z]+)"/.exec(line)?.[1];
    if (!verb || !['POST', 'PUT', 'PATCH', 'DELETE'].includes(verb)) continue;
    const resource = /[{,]resource="([^"]*)"/.exec(line)?.[1] ?? '';
    const sub = /subresource="([^"]*)"/.exec(line)?.[1] ?? '';
    const key = sub ? `${resource}/${sub}` : resource;
    out.set(key, (out.get(key) ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1)));
  }
  return out;
}

function sumMetric(text: string, name: string): number {
  let s = 0;
  // name may carry the start of a label set: 'metric{label="x"'
  const open = name.includes('{') ? name : name + '{';
  for (const line of text.split('\n')) if (line.startsWith(open) || line.startsWith(name + ' ')) s += Number(line.slice(line.lastIndexOf(' ') + 1));
  return s;
}

/**
 * cert-manager's part, at scale (no cert-manager controller runs here): every Certificate
 * the operator creates gets its Secret (one real certificate, shared) and Ready=True with
 * notAfter, as cert-manager would write them. Polls every second until stopped.
 */
function certManagerStandIn(kube: Kube, pem: { chain: string; key: string; ca: string; notAfter: string }): { stop: () => Promise<void>; issued: () => number } {
  const b64 = (x: string) => Buffer.from(x).toString('base64');
  const done = new Set<string>();
  let stopped = false;
  // A watch-fed cache, not a LIST of every Certificate each second: the instrument must
  // not be a large part of the API server's load (cert-manager itself uses informers).
  const certs = new Informer<any>({ kube, resource: Certificates });
  certs.start();
  const loop = (async () => {
    while (!stopped) {
      const todo = certs.list().filter((c) => !done.has(`${c.metadata.namespace}/${c.metadata.name}`) && !c.status?.conditions?.some((x: any) => x.type === 'Ready' && x.status === 'True'));
      await withConcurrency(todo, 8, async (c) => {
        const ns = c.metadata.namespace as string;
        const secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: c.spec.secretName, namespace: ns }, type: 'kubernetes.io/tls', data: { 'tls.crt': b64(pem.chain), 'tls.key': b64(pem.key), 'ca.crt': b64(pem.ca) } };
        try {
          await kube.request('POST', `/api/v1/namespaces/${ns}/secrets`, { body: secret });
        } catch {
          /* exists */
        }
        const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
        await kube
          .request('PATCH', resourcePath(Certificates, ns, c.metadata.name, 'status'), {
            contentType: 'application/merge-patch+json',
            body: { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'Certificate is up to date and has not expired', lastTransitionTime: now }], notAfter: pem.notAfter } },
          })
          .then(() => done.add(`${ns}/${c.metadata.name}`))
          .catch(() => undefined);
      });
      await sleep(1000);
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await loop;
      await certs.stop();
    },
    issued: () => done.size,
  };
}

/** RSS of a process by kind of mapping (from /proc/PID/smaps), largest first: where native memory sits. */
function rssByMapping(pid: number): string {
  let text = '';
  try {
    text = readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return 'n/a';
  }
  const by = new Map<string, number>();
  let name = '';
  for (const line of text.split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      const n = head[1] ?? '';
      name = n === '' ? '[anon]' : n.startsWith('/') ? (n.includes('/node') ? 'node binary' : 'files') : n;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) by.set(name, (by.get(name) ?? 0) + Number(rss[1]));
  }
  return [...by.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => `${k} ${(v / 1024).toFixed(0)}`).join(', ');
}

const SETTLE_LIMIT_MS = 180_000;

/**
 * The operator runs as the image runs it: `node dist/entrypoint.js operator ...`, which adds
 * the operator's node flags (entrypoint.ts `programs`: --max-semi-space-size=2
 * --max-old-space-size=256). Started as `node main.js` without them, V8 sizes the young
 * generation for this 23.5 GiB machine (64 MiB semi-spaces) and the RSS says more about V8's
 * defaults than about the operator. BENCH_OPERATOR_NODE_FLAGS gives other values for them (an
 * option it does not name keeps the entrypoint's value).
 */
const OPERATOR_NODE_FLAGS = (process.env['BENCH_OPERATOR_NODE_FLAGS'] ?? programs['operator']!.nodeFlags.join(' ')).split(' ').filter(Boolean);

async function withConcurrency<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}

export async function operatorAtScale(o: { applies: number; relays: number; namespaces: number; quietMs: number }): Promise<string> {
  // The harness's Service range is a /24 (254 ClusterIPs): 1,051 relays need 2,102 Services
  // (relay + metrics). With it, 90% of the relays failed with "failed to allocate a serviceIP:
  // range is full" (Reconciled=False ApplyFailed), which earlier runs did not notice.
  const cp: ControlPlane = await startControlPlane({ apiserverArgs: ['--service-cluster-ip-range=10.96.0.0/16'] });
  const kube = new Kube(cp.kubeconfig);
  const metricsPort = await freePort();
  // BENCH_PROFILE=1: the operator runs with --cpu-prof and the report gets its top costs.
  const profDir = process.env['BENCH_PROFILE'] ? mkdtempSync(path.join(os.tmpdir(), 'bench-opprof-')) : undefined;
  // BENCH_HEAPSNAPSHOT=DIR: a heap snapshot of the operator at the end of the quiet period, written to DIR.
  const snapDir = process.env['BENCH_HEAPSNAPSHOT'];
  const op = startProcess(
    process.execPath,
    [
      ...OPERATOR_NODE_FLAGS,
      ...(profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`] : []), ...(snapDir ? ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapDir}`] : []), OPERATOR_MAIN, 'operator', '--kubeconfig', cp.kubeconfigPath, '--relay-image', 'registry.invalid/smtp-relay:bench', '--metrics-port', String(metricsPort), '--metrics-address', '127.0.0.1', '--log-level', 'warn'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let opErr = '';
  op.stderr?.on('data', (d: Buffer) => (opErr = (opErr + d.toString()).slice(-4000)));
  let stopCertManager: (() => Promise<void>) | undefined;
  let relayCache: Informer<any> | undefined;
  const opMetrics = async () => (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  try {
    const t0 = Date.now();
    for (;;) {
      try {
        if ((await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status === 200) break;
      } catch {
        /* not yet */
      }
      if (op.exitCode !== null) throw new Error(`operator exited with ${op.exitCode}: ${opErr}`);
      if (Date.now() - t0 > 30_000) throw new Error(`operator not ready after 30 s: ${opErr}`);
      await sleep(200);
    }
    const pki = await createPki({ caName: 'bench cert-manager stand-in' });
    const leaf = await pki.issue({ name: 'relays', dnsNames: ['relay.example.com'] });
    const { X509Certificate } = await import('node:crypto');
    const notAfter = new Date(new X509Certificate(leaf.certPem).validTo).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const certManager = certManagerStandIn(kube, { chain: leaf.chainPem, key: leaf.keyPem, ca: leaf.caPem, notAfter });
    stopCertManager = certManager.stop;
    await pki.cleanup();
    const namespaces = Array.from({ length: o.namespaces }, (_, i) => `bench-${i}`);
    for (const ns of [...namespaces, 'apply']) {
      await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } } });
      await kube.request('POST', resourcePath({ group: 'cert-manager.io', version: 'v1', plural: 'issuers', kind: 'Issuer', namespaced: true }, ns), {
        body: { apiVersion: 'cert-manager.io/v1', kind: 'Issuer', metadata: { name: 'ca-issuer', namespace: ns }, spec: { selfSigned: {} } },
      });
    }

    // which children does an SmtpRelay get? (those that exist once the first one reconciled)
    await kube.request('POST', resourcePath(SmtpRelays, 'apply'), { body: manifest('apply', 'probe') });
    const probeDeadline = Date.now() + 30_000;
    for (;;) {
      const r = await kube.get<any>(resourcePath(SmtpRelays, 'apply', 'probe'));
      if (r.status?.observedGeneration === r.metadata.generation) break;
      if (Date.now() > probeDeadline) throw new Error(`first SmtpRelay not reconciled in 30 s: ${opErr}`);
      await sleep(100);
    }
    const kinds: string[] = [];
    for (const [k, p] of Object.entries(CANDIDATE_CHILDREN('apply', 'probe'))) if (await kube.getOrUndefined(p)) kinds.push(k);

    // apply -> all children, one at a time
    const lat: number[] = [];
    for (let i = 0; i < o.applies; i++) {
      const name = `r${i}`;
      const paths = Object.entries(CANDIDATE_CHILDREN('apply', name)).filter(([k]) => kinds.includes(k)).map(([, p]) => p);
      const s = performance.now();
      await kube.request('POST', resourcePath(SmtpRelays, 'apply'), { body: manifest('apply', name) });
      const missing = new Set(paths);
      while (missing.size && performance.now() - s < 30_000) {
        await Promise.all([...missing].map(async (p) => ((await kube.getOrUndefined(p)) ? missing.delete(p) : undefined)));
        if (missing.size) await sleep(20);
      }
      if (missing.size) throw new Error(`children of apply/${name} missing after 30 s: ${[...missing].join(', ')}`);
      lat.push(performance.now() - s);
    }
    log(`apply -> children: p50 ${percentile(lat, 50).toFixed(0)} ms, p99 ${percentile(lat, 99).toFixed(0)} ms`);

    // 1,000 SmtpRelays across the namespaces
    const items = Array.from({ length: o.relays }, (_, i) => ({ ns: namespaces[i % namespaces.length]!, name: `relay-${i}` }));
    const total = o.relays + o.applies + 1;
    const c0 = performance.now();
    await withConcurrency(items, 16, async ({ ns, name }) => {
      await kube.request('POST', resourcePath(SmtpRelays, ns), { body: manifest(ns, name) });
    });
    const createdS = (performance.now() - c0) / 1000;
    const opCpu0 = cpuSeconds(op.pid!);
    // Convergence is read from a watch-fed cache (the operator's own Informer), not by
    // listing 1,000 SmtpRelays every second, which loaded the API server (earlier runs did that).
    relayCache = new Informer<any>({ kube, resource: SmtpRelays });
    relayCache.start();
    await relayCache.waitForSync();
    let convergedS = NaN;
    let peakRss = 0;
    let pending = 0;
    let depthAtConvergence = NaN;
    let pendingExample = '';
    let polls = 0;
    const deadline = performance.now() + 240_000;
    while (performance.now() < deadline) {
      peakRss = Math.max(peakRss, rssKiB(op.pid!));
      const relays = { items: relayCache.list() as any[] };
      const pendingItems = relays.items.filter(
        (r) =>
          r.status?.observedGeneration !== r.metadata.generation ||
          !['CertificateReady', 'Reconciled'].every((t) => r.status?.conditions?.some((c: any) => c.type === t && c.status === 'True')),
      );
      pending = pendingItems.length;
      if (++polls % 5 === 0) {
        const m = await opMetrics().catch(() => '');
        log(
          `t=${((performance.now() - c0) / 1000).toFixed(0)}s pending ${pending}/${relays.items.length}, certificates issued ${certManager.issued()}, ` +
            `operator queue ${sumMetric(m, 'smtp_relay_operator_workqueue_depth')}, reconciles ${sumMetric(m, 'smtp_relay_operator_reconcile_total{controller="smtprelay"')}, ` +
            `applies ${sumMetric(m, 'smtp_relay_operator_apply_total')}, RSS ${(rssKiB(op.pid!) / 1024).toFixed(0)} MiB`,
        );
      }
      if (pending) {
        const r = pendingItems[0];
        const c = (r.status?.conditions ?? []).filter((x: any) => x.status !== 'True').map((x: any) => `${x.type}=${x.status} ${x.reason}`);
        const first = (r.status?.conditions ?? []).find((x: any) => x.status !== 'True');
        pendingExample = `${r.metadata.namespace}/${r.metadata.name}: observedGeneration ${r.status?.observedGeneration ?? 'none'} of ${r.metadata.generation}; ${c.join(', ') || 'no conditions'}${first?.message ? `; "${String(first.message).slice(0, 240)}"` : ''}`;
      }
      if (pending === 0 && relays.items.length === total) {
        const deps = await kube.get<{ items: unknown[] }>('/apis/apps/v1/deployments', { accept: 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1' });
        if (deps.items.length >= total) {
          convergedS = (performance.now() - c0) / 1000;
          depthAtConvergence = sumMetric(await opMetrics(), 'smtp_relay_operator_workqueue_depth');
          break;
        }
      }
      await sleep(1000);
    }
    const convergeCpu = cpuSeconds(op.pid!) - opCpu0;
    log(`${o.relays} SmtpRelays: converged in ${convergedS.toFixed(1)} s (${pending} pending), operator RSS peak ${peakRss} KiB`);

    // quiet period: writes at rest (the stand-in has nothing left to do and is stopped).
    // First let the controller-manager finish its own work on the new Deployments (ReplicaSets,
    // Pods, status): until it does, Deployment status changes are real input to the operator.
    await certManager.stop();
    const s0 = performance.now();
    let settledS = NaN;
    let prev = writesByResource(await getText(cp.kubeconfig, cp.server, '/metrics'));
    // kube-controller-manager writes at its default 20 requests/s per controller: for 1,000
    // Deployments (ReplicaSets, 2 Pods each, their status) that takes minutes after convergence.
    while (performance.now() - s0 < SETTLE_LIMIT_MS) {
      await sleep(5000);
      const cur = writesByResource(await getText(cp.kubeconfig, cp.server, '/metrics'));
      // Events are not input to the operator (kube-controller-manager's trail behind for minutes); the operator's own are counted below.
      const busy = [...cur.entries()].filter(([k]) => k !== 'leases' && k !== 'events').reduce((a, [k, v]) => a + v - (prev.get(k) ?? 0), 0);
      prev = cur;
      if (busy === 0) {
        settledS = (performance.now() - s0) / 1000;
        break;
      }
    }
    log(`control plane settled after ${settledS} s`);
    const api0 = writesByResource(await getText(cp.kubeconfig, cp.server, '/metrics'));
    const op0 = await opMetrics();
    const rssStart = rssKiB(op.pid!);
    const q0 = performance.now();
    while (performance.now() - q0 < o.quietMs) {
      peakRss = Math.max(peakRss, rssKiB(op.pid!));
      await sleep(1000);
    }
    const api1 = writesByResource(await getText(cp.kubeconfig, cp.server, '/metrics'));
    const op1 = await opMetrics();
    const rssEnd = rssKiB(op.pid!);
    const mappings = rssByMapping(op.pid!);
    log(`operator RSS by mapping (MiB): ${mappings}`);
    if (snapDir) {
      op.kill('SIGUSR2');
      const t = Date.now();
      while (Date.now() - t < 60_000 && !readdirSync(snapDir).some((f) => f.endsWith('.heapsnapshot'))) await sleep(500);
      await sleep(5000); // the file appears before it is complete
      log(`heap snapshot in ${snapDir}`);
    }
    // Where the RSS is: the V8 heap (JS objects: caches, queues) vs the rest (native, allocator).
    const mib = (name: string) => fmt(sumMetric(op1, `smtp_relay_operator_${name}`) / 1048576, 1);
    const memoryBreakdown = `${mib('nodejs_heap_size_used_bytes')} / ${mib('nodejs_heap_size_total_bytes')} / ${mib('nodejs_external_memory_bytes')}`;
    // which Events were written while at rest (by reason), to name what keeps writing
    const events = await kube.get<{ items: any[] }>('/api/v1/events');
    const quietStart = Date.now() - (performance.now() - q0);
    const reasons = new Map<string, number>();
    let operatorEvents = 0;
    for (const e of events.items) {
      const t = Math.max(...[e.lastTimestamp, e.eventTime, e.series?.lastObservedTime, e.metadata?.creationTimestamp].map((x) => (x ? Date.parse(x) : 0)));
      if (t < quietStart - 1000) continue;
      const who = e.reportingComponent || e.source?.component || '?';
      if (/operator/i.test(who)) operatorEvents++;
      const key = `${who} ${e.reason}`;
      reasons.set(key, (reasons.get(key) ?? 0) + 1);
    }
    const topReasons = [...reasons.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, n]) => `${n}x ${k}`).join('; ');
    const deltas = [...api1.entries()].map(([k, v]) => [k, v - (api0.get(k) ?? 0)] as const).filter(([, d]) => d > 0);
    // Resources only the operator writes here (Events are counted by their reporting component below).
    const OPERATOR_OWNED = new Set(['smtprelays', 'smtprelays/status', 'configmaps', 'secrets', 'services', 'deployments', 'certificates', 'networkpolicies', 'poddisruptionbudgets', 'serviceaccounts', 'servicemonitors']);
    const ownedWrites = deltas.filter(([k]) => OPERATOR_OWNED.has(k)).reduce((a, [, d]) => a + d, 0) + operatorEvents;
    const allWrites = deltas.reduce((a, [, d]) => a + d, 0);
    const applies = sumMetric(op1, 'smtp_relay_operator_apply_total') - sumMetric(op0, 'smtp_relay_operator_apply_total');
    const reconciles = sumMetric(op1, 'smtp_relay_operator_reconcile_total') - sumMetric(op0, 'smtp_relay_operator_reconcile_total');

    return (
      `### Scenario 4: operator on the local control plane (etcd + kube-apiserver + kube-controller-manager on the same 2 cores)\n\n` +
      `Children per SmtpRelay: ${kinds.join(', ')} (${kinds.length}). cert-manager is played by a stand-in that issues every Certificate (its Secret + Ready=True) within about a second; no kubelet runs, so relay pods never become ready (Available=False is the steady state).\n\n` +
      table(
        ['measure', 'value', 'goal'],
        [
          [`apply -> all children exist, p50 over ${o.applies} (ms)`, fmt(percentile(lat, 50)), '< 1,000'],
          [`apply -> all children exist, p99 over ${o.applies} (ms)`, fmt(percentile(lat, 99)), ''],
          [`${o.relays} SmtpRelays in ${o.namespaces} namespaces: created by the client in (s)`, fmt(createdS, 1), ''],
          [`${o.relays} SmtpRelays: converged (status for every generation with Reconciled=True and CertificateReady=True, all ${total} Deployments) after (s)`, Number.isNaN(convergedS) ? `not within 240 s (${pending} pending, e.g. ${pendingExample})` : fmt(convergedS, 1), '< 60'],
          ['operator work queue depth at convergence', fmt(depthAtConvergence), ''],
          ['then: until no writes but Events and Leases for 5 s (controller-manager done with ReplicaSets/Pods) (s)', Number.isNaN(settledS) ? `not within ${SETTLE_LIMIT_MS / 1000} s` : fmt(settledS), ''],
          ['operator CPU from the first create to convergence (s, all threads incl. the scrypt pool)', fmt(convergeCpu, 1), ''],
          [`operator RSS peak (MiB; node flags: ${OPERATOR_NODE_FLAGS.join(' ') || 'none'})`, fmt(peakRss / 1024, 1), '< 300'],
          [`operator RSS at rest, start/end of the quiet period (MiB)`, `${fmt(rssStart / 1024, 1)} / ${fmt(rssEnd / 1024, 1)}`, ''],
          ['operator memory at rest: V8 heap used / heap total / external (MiB)', memoryBreakdown, ''],
          ['operator RSS at rest by mapping (MiB; [heap] and [anon] hold malloc and the V8 heap)', mappings, ''],
          [`API writes in the next ${o.quietMs / 1000} s (at rest)${Number.isNaN(convergedS) ? ' (NOT converged)' : ''}, by the operator (apiserver_request_total on the resources it owns + Events it reported)`, fmt(ownedWrites), '0'],
          [`API writes in that period, all (incl. controller-manager and apiserver leases)`, `${fmt(allWrites)}${deltas.length ? ' (' + deltas.map(([k, d]) => `${k}: ${d}`).join(', ') + ')' : ''}`, ''],
          ['operator child applies / reconciles in that period (own counters)', `${fmt(applies)} / ${fmt(reconciles)}`, '0 applies'],
          ['Events touched in that period, by reporting component and reason', topReasons || 'none', ''],
        ],
      ) +
      '\n'
    );
  } finally {
    await relayCache?.stop();
    await stopCertManager?.();
    await stopProcess(op);
    await cp.stop();
    if (profDir) {
      const f = readdirSync(profDir).find((x) => x.endsWith('.cpuprofile'));
      if (f) process.stderr.write(summarize(path.join(profDir, f), 20) + '\n');
    }
  }
}
