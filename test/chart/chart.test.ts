// The Helm chart without a cluster: helm lint --strict, values.schema.json, the copies of
// crds/ and operator/rbac/, least-privilege RBAC, the hardened Deployment, dashboards,
// every value documented. Needs the real helm (`make helm`).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { dashboardFiles, DASHBOARD_DIR } from './dashboards.js';
import { CHART, FULL_VALUES, ROOT, helm, template, type KObject } from './support.js';

const byKind = (objs: KObject[], kind: string) => objs.filter((o) => o.kind === kind);
const one = (objs: KObject[], kind: string, name?: string): KObject => {
  const found = objs.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  assert.equal(found.length, 1, `expected one ${kind}${name ? ` ${name}` : ''}, got ${found.length}`);
  return found[0]!;
};

test('helm lint --strict passes with the default values and with ci/full-values.yaml', async () => {
  for (const extra of [[], ['-f', FULL_VALUES]]) {
    const r = await helm(['lint', '--strict', CHART, ...extra]);
    assert.equal(r.code, 0, `helm lint --strict ${extra.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
  }
});

test('the chart is apiVersion v2 and its CRD and RBAC files are identical to crds/ and operator/rbac/ (run `make chart-sync`)', () => {
  const chart = YAML.parse(readFileSync(join(CHART, 'Chart.yaml'), 'utf8'));
  assert.equal(chart.apiVersion, 'v2');
  const pairs: Array<[string, string]> = [[join(ROOT, 'crds', 'smtprelay.yaml'), join(CHART, 'crds', 'smtprelay.yaml')]];
  for (const f of readdirSync(join(ROOT, 'operator', 'rbac')).filter((f) => f.endsWith('.yaml'))) {
    pairs.push([join(ROOT, 'operator', 'rbac', f), join(CHART, 'files', 'rbac', f)]);
  }
  for (const [src, copy] of pairs) {
    assert.ok(readFileSync(copy, 'utf8') === readFileSync(src, 'utf8'), `${copy} differs from ${src}: run \`make chart-sync\` and commit the copy`);
  }
  assert.deepEqual(readdirSync(join(CHART, 'crds')), ['smtprelay.yaml'], 'the chart ships only its own CRD (never cert-manager\'s or the Prometheus operator\'s)');
});

const schemaCases: Array<{ name: string; args: string[]; message: RegExp }> = [
  { name: 'zero replicas', args: ['--set', 'replicaCount=0'], message: /at '\/replicaCount': minimum: got 0, want 1/ },
  { name: 'a misspelt top-level key', args: ['--set', 'replicas=2'], message: /additional properties 'replicas' not allowed/ },
  { name: 'an unknown log level', args: ['--set', 'logLevel=verbose'], message: /at '\/logLevel': value must be one of 'trace', 'debug', 'info', 'warn', 'error'/ },
  { name: 'a writable root filesystem', args: ['--set', 'securityContext.readOnlyRootFilesystem=false'], message: /at '\/securityContext\/readOnlyRootFilesystem': value must be true/ },
  { name: 'running as root allowed', args: ['--set', 'podSecurityContext.runAsNonRoot=false'], message: /at '\/podSecurityContext\/runAsNonRoot': value must be true/ },
  { name: 'a namespace that is not a DNS label', args: ['--set', 'watchNamespaces[0]=Mail_NS'], message: /at '\/watchNamespaces\/0': 'Mail_NS' does not match pattern/ },
  { name: 'a bad pull policy', args: ['--set', 'image.pullPolicy=Sometimes'], message: /at '\/image\/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'/ },
  { name: 'workers as text', args: ['--set-string', 'workers=two'], message: /at '\/workers': got string, want integer/ },
  { name: 'a privileged metrics port', args: ['--set', 'metrics.port=80'], message: /at '\/metrics\/port': minimum: got 80, want 1,?024/ },
  { name: 'an unknown alert severity', args: ['--set', 'prometheusRule.severities.SmtpRelayDown=page'], message: /at '\/prometheusRule\/severities\/SmtpRelayDown': value must be one of 'critical', 'warning', 'info'/ },
  { name: 'a bad image digest', args: ['--set', 'image.digest=latest'], message: /at '\/image\/digest': 'latest' does not match pattern/ },
  { name: 'resources without requests', args: ['--set', 'resources.requests=null'], message: /at '\/resources'.*requests/ },
  // cross-field checks in templates/_helpers.tpl
  { name: 'renewDeadline not below leaseDuration', args: ['--set', 'leaderElection.renewDeadline=20'], message: /leaderElection.renewDeadline \(20\) must be less than leaderElection.leaseDuration \(15\)/ },
  { name: 'two replicas without leader election', args: ['--set', 'replicaCount=2', '--set', 'leaderElection.enabled=false'], message: /replicaCount > 1 needs leaderElection.enabled=true/ },
];

for (const c of schemaCases) {
  test(`the chart refuses ${c.name} with a clear message`, async () => {
    const r = await helm(['template', 't', CHART, ...c.args]);
    assert.notEqual(r.code, 0, `helm template ${c.args.join(' ')} should fail`);
    assert.match(r.stderr, c.message);
  });
}

function rulesOf(file: string): any[] {
  return YAML.parse(readFileSync(join(ROOT, 'operator', 'rbac', file), 'utf8')).rules;
}

/** {apiGroup/resource: sorted verbs} from a list of rules. */
function grants(rules: any[]): Map<string, string[]> {
  const m = new Map<string, Set<string>>();
  for (const r of rules) {
    assert.equal(r.resourceNames, undefined);
    // a URL of the API server (nonResourceURLs) is keyed by its path
    const keys: string[] = r.nonResourceURLs ? r.nonResourceURLs.map((u: string) => `url:${u}`) : r.apiGroups.flatMap((g: string) => r.resources.map((res: string) => `${g}/${res}`));
    for (const k of keys) {
      const s = m.get(k) ?? new Set<string>();
      for (const v of r.verbs) s.add(v);
      m.set(k, s);
    }
  }
  return new Map([...m].map(([k, v]) => [k, [...v].sort()]));
}

test('default RBAC: one ClusterRole with exactly the rules of operator/rbac/clusterrole.yaml, a leader-election Role, bindings to the chart ServiceAccount', async () => {
  const objs = await template();
  const sa = one(objs, 'ServiceAccount');
  const cr = one(objs, 'ClusterRole');
  assert.deepEqual(cr.rules, rulesOf('clusterrole.yaml'));
  const crb = one(objs, 'ClusterRoleBinding');
  assert.deepEqual(crb.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: cr.metadata.name });
  assert.deepEqual(crb.subjects, [{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: 'smtp-relay-system' }]);
  const role = one(objs, 'Role');
  assert.equal(role.metadata.namespace, 'smtp-relay-system');
  assert.deepEqual(role.rules, rulesOf('role-leader-election.yaml'));
  const rb = one(objs, 'RoleBinding');
  assert.equal(rb.roleRef.name, role.metadata.name);
  assert.equal(rb.subjects[0].name, sa.metadata.name);
  // Nothing else grants anything.
  assert.deepEqual(objs.map((o) => o.kind).filter((k) => /Role/.test(k)).sort(), ['ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding']);
});

test('watchNamespaces: the same grants as Roles in each watched namespace, only clusterissuers and the issuer keys cluster-wide, and --namespaces on the operator', async () => {
  const objs = await template(['--set', 'watchNamespaces={mail,billing}']);
  const want = grants(rulesOf('clusterrole.yaml'));
  const roles = byKind(objs, 'Role').filter((r) => !r.metadata.name.endsWith('leader-election'));
  assert.deepEqual(roles.map((r) => r.metadata.namespace).sort(), ['billing', 'mail']);
  const cr = one(objs, 'ClusterRole');
  assert.deepEqual(
    [...grants(cr.rules).keys()].sort(),
    ['cert-manager.io/clusterissuers', 'url:/.well-known/openid-configuration', 'url:/openid/v1/jwks'],
    'the only cluster-wide grants: reading ClusterIssuers and the service-account issuer keys',
  );
  for (const r of roles) {
    const union = new Map([...grants(r.rules), ...grants(cr.rules)]);
    assert.deepEqual(new Map([...union].sort()), new Map([...want].sort()), `Role in ${r.metadata.namespace} plus the ClusterRole = operator/rbac/clusterrole.yaml`);
    const rb = byKind(objs, 'RoleBinding').find((b) => b.metadata.namespace === r.metadata.namespace);
    assert.ok(rb, `RoleBinding in ${r.metadata.namespace}`);
    assert.equal(rb.subjects[0].namespace, 'smtp-relay-system');
  }
  assert.equal(byKind(objs, 'ClusterRoleBinding').length, 1);
  const args: string[] = one(objs, 'Deployment').spec.template.spec.containers[0].args;
  assert.ok(args.includes('--namespaces=mail,billing'), args.join(' '));
});

test('the operator Deployment is hardened and probes its health endpoints on the metrics port', async () => {
  const objs = await template();
  const d = one(objs, 'Deployment');
  const pod = d.spec.template.spec;
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.ok(pod.securityContext.runAsUser > 0);
  assert.deepEqual(pod.securityContext.seccompProfile, { type: 'RuntimeDefault' });
  assert.equal(pod.serviceAccountName, one(objs, 'ServiceAccount').metadata.name);
  assert.equal(pod.containers.length, 1);
  const c = pod.containers[0];
  assert.equal(c.securityContext.readOnlyRootFilesystem, true);
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'] });
  assert.ok(c.resources.requests.cpu && c.resources.requests.memory, 'resource requests');
  assert.ok(c.resources.limits.memory, 'memory limit');
  assert.equal(c.image, 'smtp-relay-operator:0.1.0');
  assert.equal(c.args[0], 'operator');
  assert.ok(c.args.includes('--relay-image=smtp-relay-operator:0.1.0'));
  assert.ok(c.args.includes('--leader-elect'));
  assert.ok(c.args.includes('--leader-election-namespace=$(POD_NAMESPACE)'));
  assert.ok(c.args.includes('--metrics-port=8080'));
  assert.equal(c.env.find((e: any) => e.name === 'POD_NAMESPACE').valueFrom.fieldRef.fieldPath, 'metadata.namespace');
  assert.deepEqual(c.ports, [{ name: 'http-metrics', containerPort: 8080, protocol: 'TCP' }]);
  assert.deepEqual(c.livenessProbe.httpGet, { path: '/healthz', port: 'http-metrics', scheme: 'HTTP' });
  assert.deepEqual(c.readinessProbe.httpGet, { path: '/readyz', port: 'http-metrics', scheme: 'HTTP' });
  assert.deepEqual(c.securityContext.seccompProfile, { type: 'RuntimeDefault' });
  assert.equal(c.securityContext.privileged, false);
  assert.equal(pod.enableServiceLinks, false);
  const svc = one(objs, 'Service');
  assert.deepEqual(svc.spec.ports, [{ name: 'http-metrics', port: 8080, targetPort: 'http-metrics', protocol: 'TCP' }]);
  for (const [k, v] of Object.entries(svc.spec.selector)) assert.equal(d.spec.template.metadata.labels[k], v);
  // Optional Prometheus-operator objects are off by default (no CRD needed to install).
  assert.equal(byKind(objs, 'ServiceMonitor').length, 0);
  assert.equal(byKind(objs, 'PrometheusRule').length, 0);
  assert.equal(byKind(objs, 'PodDisruptionBudget').length, 0, 'no PodDisruptionBudget for a single replica');
});

test('image references: tag defaults to appVersion, a digest pins the image, the relay image inherits only what belongs to its repository', async () => {
  const refs = async (args: string[]) => {
    const c = one(await template(args), 'Deployment').spec.template.spec.containers[0];
    return [c.image, c.args.find((a: string) => a.startsWith('--relay-image=')).slice('--relay-image='.length)];
  };
  const digest = `sha256:${'ab'.repeat(32)}`;
  assert.deepEqual(await refs([]), ['smtp-relay-operator:0.1.0', 'smtp-relay-operator:0.1.0']);
  assert.deepEqual(await refs(['--set', 'image.tag=dev']), ['smtp-relay-operator:dev', 'smtp-relay-operator:dev']);
  assert.deepEqual(await refs(['--set', `image.digest=${digest}`]), [`smtp-relay-operator@${digest}`, `smtp-relay-operator@${digest}`]);
  assert.deepEqual(await refs(['--set', `image.digest=${digest}`, '--set', 'relayImage.repository=mirror.example/relay']), [`smtp-relay-operator@${digest}`, 'mirror.example/relay:0.1.0']);
  assert.deepEqual(await refs(['--set', 'relayImage.repository=mirror.example/relay', '--set', 'relayImage.tag=1.2.3']), ['smtp-relay-operator:0.1.0', 'mirror.example/relay:1.2.3']);
});

test('ci/full-values.yaml turns every optional part on', async () => {
  const objs = await template(['-f', FULL_VALUES]);
  const kinds = new Set(objs.map((o) => o.kind));
  for (const k of ['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding', 'Deployment', 'Service', 'ServiceMonitor', 'PrometheusRule', 'ConfigMap', 'PodDisruptionBudget']) {
    assert.ok(kinds.has(k), `full values render a ${k}`);
  }
  const d = one(objs, 'Deployment');
  assert.equal(d.spec.replicas, 2);
  assert.deepEqual(d.spec.template.spec.imagePullSecrets, [{ name: 'registry-credentials' }]);
  const args: string[] = d.spec.template.spec.containers[0].args;
  assert.ok(args.includes('--image-pull-policy=IfNotPresent'));
  assert.ok(args.includes('--relay-image=localhost/smtp-relay-operator:dev'));
  assert.ok(args.includes('--metrics-address=0.0.0.0'));
  const sm = one(objs, 'ServiceMonitor');
  assert.equal(sm.spec.endpoints[0].port, 'http-metrics');
  assert.equal(sm.metadata.labels?.release, 'kube-prometheus-stack');
  const rule = one(objs, 'PrometheusRule');
  const alerts = rule.spec.groups.flatMap((g: any) => g.rules);
  for (const a of alerts) {
    assert.equal(a.labels.team, 'mail');
    assert.match(a.annotations.runbook_url, /^https:\/\/docs\.example\.com\/smtp-relay\/runbooks#smtprelay/);
  }
  for (const cm of byKind(objs, 'ConfigMap')) assert.equal(cm.metadata.namespace, 'monitoring');
});

test('every alert has a summary, a description, a severity and a runbook section in docs/runbooks.md', async () => {
  const objs = await template(['--set', 'prometheusRule.enabled=true']);
  const alerts = one(objs, 'PrometheusRule').spec.groups.flatMap((g: any) => g.rules);
  const runbooks = readFileSync(join(ROOT, 'docs', 'runbooks.md'), 'utf8');
  const sections = new Set([...runbooks.matchAll(/^## (\S+)$/gm)].map((m) => m[1]!.toLowerCase()));
  const required = ['AuthFailure', 'Lockouts', 'CertificateExpiringSoon', 'ReloadFailed', 'UpstreamErrors', 'Down', 'NotReady', 'ProtocolAbuse', 'ConnectionFlood', 'QueueGrowing', 'QueueOldMessages', 'QueueDeliveriesFailing', 'QueueFull', 'QueueQuarantined', 'OperatorReconcileErrors'];
  for (const r of required) assert.ok(alerts.some((a: any) => a.alert.includes(r)), `an alert about ${r}`);
  for (const a of alerts) {
    assert.ok(a.annotations.summary, `${a.alert} summary`);
    assert.ok(a.annotations.description, `${a.alert} description`);
    assert.match(a.labels.severity, /^(critical|warning|info)$/, `${a.alert} severity`);
    const anchor = a.annotations.runbook_url.split('#')[1];
    assert.equal(anchor, a.alert.toLowerCase());
    assert.ok(sections.has(anchor), `docs/runbooks.md has a "## ${a.alert}" section`);
  }
  // The certificate alert uses the 14-day default.
  assert.match(alerts.find((a: any) => a.alert === 'SmtpRelayCertificateExpiringSoon').expr, /\/ 86400 < 14 > 0/);
});

test('dashboards: generated from test/chart/dashboards.ts, shipped as ConfigMaps labelled grafana_dashboard "1", datasource variable, no datasource UID', async () => {
  const files = dashboardFiles();
  const dir = join(ROOT, ...DASHBOARD_DIR);
  assert.deepEqual(readdirSync(dir).sort(), Object.keys(files).sort());
  for (const [name, text] of Object.entries(files)) {
    assert.ok(readFileSync(join(dir, name), 'utf8') === text, `${name} differs from test/chart/dashboards.ts: run \`node dist/test/chart/dashboards.js --write\``);
  }
  const objs = await template();
  const cms = byKind(objs, 'ConfigMap');
  assert.equal(cms.length, 2);
  for (const cm of cms) {
    assert.equal(cm.metadata.labels?.grafana_dashboard, '1');
    const [key, json] = Object.entries(cm.data as Record<string, string>)[0]!;
    assert.ok(files[key], key);
    const dash = JSON.parse(json);
    assert.deepEqual(dash, JSON.parse(files[key]!));
    const vars = dash.templating.list;
    assert.equal(vars[0].name, 'datasource');
    assert.equal(vars[0].type, 'datasource');
    assert.ok(vars.some((v: any) => v.name === 'namespace'));
    const uids = new Set<string>();
    const walk = (x: any): void => {
      if (Array.isArray(x)) x.forEach(walk);
      else if (x && typeof x === 'object') {
        if (x.datasource && typeof x.datasource === 'object') uids.add(x.datasource.uid);
        if (typeof x.datasource === 'string') uids.add(x.datasource);
        Object.values(x).forEach(walk);
      }
    };
    walk(dash);
    assert.deepEqual([...uids], ['${datasource}'], `${key}: every datasource is the variable`);
    for (const p of dash.panels.filter((p: any) => p.type !== 'row')) {
      assert.ok(p.targets.length > 0, p.title);
      for (const t of p.targets) assert.match(t.expr, /\$namespace/, `${key} "${p.title}" filters by namespace`);
    }
  }
  const relay = JSON.parse(files['smtp-relay-overview.json']!);
  assert.ok(relay.templating.list.some((v: any) => v.name === 'relay'));
  for (const p of relay.panels.filter((p: any) => p.type !== 'row')) for (const t of p.targets) assert.match(t.expr, /\$relay/, `"${p.title}" filters by relay`);
});

test('the dashboards cover what the issue asks for, with the metric names the code registers', () => {
  const exprs = (file: string) => JSON.parse(dashboardFiles()[file]!).panels.flatMap((p: any) => (p.targets ?? []).map((t: any) => t.expr as string)).join('\n');
  const registered = (dir: string) =>
    new Set(
      readdirSync(join(ROOT, dir), { recursive: true })
        .map(String)
        .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'))
        .flatMap((f) => [...readFileSync(join(ROOT, dir, f), 'utf8').matchAll(/name: '(smtp_relay_[a-z_]+)'/g)].map((m) => m[1]!)),
    );
  const relayMetrics = registered('relay');
  const operatorMetrics = registered('operator');
  const relay = exprs('smtp-relay-overview.json');
  const operator = exprs('smtp-relay-operator.json');
  // traffic, bytes, rejections, auth, lockouts, TLS handshakes, TLS failures, certificate expiry,
  // upstream latency and errors, connections, reloads
  for (const m of ['messages_total', 'message_bytes_total', 'rejections_total', 'auth_attempts_total', 'lockouts_total', 'tls_handshakes_total', 'tls_failures_total', 'certificate_expiry_timestamp_seconds', 'upstream_duration_seconds', 'upstream_errors_total', 'connections_total', 'active_connections', 'config_reloads_total']) {
    assert.ok(relayMetrics.has(`smtp_relay_${m}`), `the relay registers smtp_relay_${m}`);
    assert.match(relay, new RegExp(`smtp_relay_${m}`), `the relay dashboard shows smtp_relay_${m}`);
  }
  // connection floods; queue mode (issue 12, "Metrics"): queued messages and bytes, oldest
  // message, held, deliveries by result, attempts, spool write latency, reports, full, quarantined
  for (const m of ['connections_shed_total', 'unauthenticated_connections', 'queue_messages', 'queue_bytes', 'queue_oldest_message_age_seconds', 'queue_held_messages', 'queue_deliveries_total', 'queue_delivery_attempts_total', 'queue_write_duration_seconds', 'queue_notifications_total', 'queue_full_total', 'queue_quarantined_total']) {
    assert.ok(relayMetrics.has(`smtp_relay_${m}`), `the relay registers smtp_relay_${m}`);
    assert.match(relay, new RegExp(`smtp_relay_${m}(_bucket|_count|_sum)?\\b`), `the relay dashboard shows smtp_relay_${m}`);
  }
  // reconciles by result, latency, queue depth, relays ready / not ready
  for (const m of ['reconcile_total', 'reconcile_errors_total', 'reconcile_duration_seconds', 'workqueue_depth', 'relays']) {
    assert.ok(operatorMetrics.has(`smtp_relay_operator_${m}`), `the operator registers smtp_relay_operator_${m}`);
    assert.match(operator, new RegExp(`smtp_relay_operator_${m}(_bucket|_count|_sum)?\\b`), `the operator dashboard shows smtp_relay_operator_${m}`);
  }
  // Every metric a dashboard reads is registered by the code (histograms add _bucket/_count/_sum).
  const known = new Set([...relayMetrics, ...operatorMetrics]);
  for (const name of new Set([...`${relay}\n${operator}`.matchAll(/\b(smtp_relay_[a-z_]+)/g)].map((m) => m[1]!))) {
    assert.ok(known.has(name.replace(/_(bucket|count|sum)$/, '')), `${name} is registered in relay/ or operator/`);
  }
});

test('the chart README documents every value in values.yaml', () => {
  const values = YAML.parse(readFileSync(join(CHART, 'values.yaml'), 'utf8'));
  const readme = readFileSync(join(CHART, 'README.md'), 'utf8');
  const opaque = new Set(['resources', 'podSecurityContext', 'securityContext', 'livenessProbe', 'readinessProbe', 'prometheusRule.severities']);
  const keys: string[] = [];
  const walk = (o: Record<string, unknown>, p: string): void => {
    for (const [k, v] of Object.entries(o)) {
      const key = p ? `${p}.${k}` : k;
      if (v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0 && !opaque.has(key)) walk(v as Record<string, unknown>, key);
      else keys.push(key);
    }
  };
  walk(values, '');
  assert.ok(keys.length > 40);
  const missing = keys.filter((k) => !readme.includes(`| \`${k}\` |`));
  assert.deepEqual(missing, [], 'values without a row in the README table');
});

test('NOTES.txt tells the user what to do next and warns when cert-manager is not there', async () => {
  const r = await helm(['install', 'notes', CHART, '--dry-run=client', '--namespace', 'smtp-relay-system']);
  assert.equal(r.code, 0, r.stderr);
  const notes = r.stdout.slice(r.stdout.indexOf('NOTES:'));
  assert.match(notes, /rollout status deployment\/notes-smtp-relay-operator/);
  assert.match(notes, /cert-manager is a PREREQUISITE/);
  assert.match(notes, /WARNING: this cluster did not report the cert-manager.io\/v1 API/);
  assert.match(notes, /kubectl get smtprelays -A/);
});
