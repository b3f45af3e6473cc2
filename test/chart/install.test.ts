// The chart against the local control plane (real kube-apiserver, etcd,
// kube-controller-manager): server-side dry run of everything it renders, `helm install`,
// then the operator runs as a PROCESS (node dist/entrypoint.js operator, the image's
// entrypoint) with the flags of the installed Deployment and a TokenRequest kubeconfig of
// the chart's ServiceAccount, so it has exactly the chart's RBAC, and reconciles an
// SmtpRelay. There is no kubelet yet to run the Deployment's pod, so the test plays it by
// starting the process (the issue allows this). A copy of the chart's ClusterRole with
// one verb removed makes the operator fail, proving the RBAC is what is exercised.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { Kube, isNotFound } from '../../operator/runtime/kube.js';
import { freePort, startControlPlane, type ControlPlane } from '../harness/controlplane/harness.js';
import { CertManagerStandIn, condition, createIssuer, eventually, get, getRelay, relayManifest, createRelay, sleep } from '../operator/support.js';
import { CHART, FULL_VALUES, ROOT, helm, parseDocs, withParentDeathSignal, type KObject } from './support.js';

const CERT_MANAGER_CRDS = join(ROOT, '..', 'shared', 'cert-manager-crds');
const PROM_CRDS = join(ROOT, 'test', 'chart', 'fixtures', 'prometheus-operator-crds.yaml');
const IMAGE = ['--set', 'image.repository=localhost/smtp-relay-operator', '--set', 'image.tag=dev'];

let cp: ControlPlane;
let kube: Kube;
const procs: ChildProcess[] = [];

before(async () => {
  const certManager = readdirSync(CERT_MANAGER_CRDS)
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => join(CERT_MANAGER_CRDS, f));
  // No default CRDs: the SmtpRelay CRD must come from the chart's crds/.
  cp = await startControlPlane({ defaultCrds: false, crdFiles: [...certManager, PROM_CRDS] });
  kube = new Kube(cp.kubeconfig);
});

after(async () => {
  for (const p of procs) await stopProcess(p);
  await cp?.stop();
});

async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

const PLURALS: Record<string, { prefix: string; plural: string; namespaced: boolean }> = {
  CustomResourceDefinition: { prefix: '/apis/apiextensions.k8s.io/v1', plural: 'customresourcedefinitions', namespaced: false },
  ServiceAccount: { prefix: '/api/v1', plural: 'serviceaccounts', namespaced: true },
  Service: { prefix: '/api/v1', plural: 'services', namespaced: true },
  ConfigMap: { prefix: '/api/v1', plural: 'configmaps', namespaced: true },
  Deployment: { prefix: '/apis/apps/v1', plural: 'deployments', namespaced: true },
  ClusterRole: { prefix: '/apis/rbac.authorization.k8s.io/v1', plural: 'clusterroles', namespaced: false },
  ClusterRoleBinding: { prefix: '/apis/rbac.authorization.k8s.io/v1', plural: 'clusterrolebindings', namespaced: false },
  Role: { prefix: '/apis/rbac.authorization.k8s.io/v1', plural: 'roles', namespaced: true },
  RoleBinding: { prefix: '/apis/rbac.authorization.k8s.io/v1', plural: 'rolebindings', namespaced: true },
  ServiceMonitor: { prefix: '/apis/monitoring.coreos.com/v1', plural: 'servicemonitors', namespaced: true },
  PrometheusRule: { prefix: '/apis/monitoring.coreos.com/v1', plural: 'prometheusrules', namespaced: true },
  PodDisruptionBudget: { prefix: '/apis/policy/v1', plural: 'poddisruptionbudgets', namespaced: true },
};

function objectPath(o: KObject, defaultNs: string): string {
  const p = PLURALS[o.kind];
  assert.ok(p, `the test knows where ${o.kind} lives`);
  const ns = p.namespaced ? `/namespaces/${o.metadata.namespace ?? defaultNs}` : '';
  return `${p.prefix}${ns}/${p.plural}/${o.metadata.name}`;
}

async function ensureNamespace(name: string): Promise<void> {
  try {
    await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name } } });
  } catch (err) {
    if (!/AlreadyExists|already exists/.test(String(err))) throw err;
  }
}

async function renderAll(release: string, namespace: string, args: string[]): Promise<KObject[]> {
  const r = await helm(['template', release, CHART, '--namespace', namespace, '--include-crds', ...args]);
  assert.equal(r.code, 0, r.stderr);
  return parseDocs(r.stdout);
}

test('everything helm template renders (default and full values) passes a strict server-side dry run; the Prometheus objects pass the upstream schemas', async () => {
  for (const ns of ['smtp-relay-system', 'mail', 'mail-staging', 'monitoring']) await ensureNamespace(ns);
  for (const args of [[], ['-f', FULL_VALUES]]) {
    const objs = await renderAll('dry', 'smtp-relay-system', args);
    assert.ok(objs.some((o) => o.kind === 'CustomResourceDefinition'), 'the CRD is rendered with --include-crds');
    for (const o of objs) {
      try {
        await kube.request('PATCH', objectPath(o, 'smtp-relay-system'), {
          query: { dryRun: 'All', fieldManager: 'chart-test', fieldValidation: 'Strict', force: true },
          contentType: 'application/apply-patch+yaml',
          body: o,
        });
      } catch (err) {
        assert.fail(`server-side dry run of ${o.kind} ${o.metadata.name} (${args.join(' ') || 'defaults'}) failed: ${String(err)}`);
      }
      if (o.kind === 'ServiceMonitor') new ServiceMonitor(structuredClone(o) as never).validate();
      if (o.kind === 'PrometheusRule') new PrometheusRule(structuredClone(o) as never).validate();
    }
  }
  // A dry run stores nothing.
  assert.equal(await get(kube, '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/smtprelays.smtprelay.dev'), undefined);
  assert.equal(await get(kube, '/apis/apps/v1/namespaces/smtp-relay-system/deployments/dry-smtp-relay-operator'), undefined);
});

/** Env and args the Deployment's container would get, for running it as a process. */
async function containerCommand(namespace: string, deployment: string, metricsPort: number, kubeconfig: string): Promise<string[]> {
  const d = await kube.get<any>(`/apis/apps/v1/namespaces/${namespace}/deployments/${deployment}`);
  const c = d.spec.template.spec.containers[0];
  // The kubelet's part: expand $(POD_NAMESPACE); the test's: a free loopback port.
  const args: string[] = c.args
    .filter((a: string) => !a.startsWith('--metrics-address='))
    .map((a: string) => a.replace('$(POD_NAMESPACE)', namespace).replace(/^--metrics-port=.*/, `--metrics-port=${metricsPort}`));
  assert.equal(args[0], 'operator', 'the image entrypoint subcommand');
  return [...args, `--kubeconfig=${kubeconfig}`, '--metrics-address=127.0.0.1'];
}

function startOperatorProcess(args: string[], namespace: string, logName: string): ChildProcess {
  const fd = openSync(join(cp.dir, 'logs', `${logName}.log`), 'a');
  try {
    const [cmd, argv] = withParentDeathSignal(process.execPath, [join(ROOT, 'dist', 'entrypoint.js'), ...args]);
    const p = spawn(cmd, argv, {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, POD_NAMESPACE: namespace, POD_NAME: `${logName}-pod` },
    });
    procs.push(p);
    return p;
  } finally {
    closeSync(fd);
  }
}

function logOf(name: string): string {
  try {
    return readFileSync(join(cp.dir, 'logs', `${name}.log`), 'utf8').split('\n').slice(-30).join('\n');
  } catch {
    return '(no log)';
  }
}

async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

const CHILD_PATHS = (ns: string, n: string) => [
  `/api/v1/namespaces/${ns}/serviceaccounts/${n}`,
  `/api/v1/namespaces/${ns}/configmaps/${n}-config`,
  `/api/v1/namespaces/${ns}/secrets/${n}-users`,
  `/api/v1/namespaces/${ns}/secrets/${n}-user-app`,
  `/api/v1/namespaces/${ns}/services/${n}`,
  `/apis/apps/v1/namespaces/${ns}/deployments/${n}`,
  `/apis/cert-manager.io/v1/namespaces/${ns}/certificates/${n}-tls`,
  `/apis/networking.k8s.io/v1/namespaces/${ns}/networkpolicies/${n}`,
  `/apis/policy/v1/namespaces/${ns}/poddisruptionbudgets/${n}`,
];

async function provesReconcile(op: ChildProcess, logName: string, port: number, ns: string, name: string, opts: { serviceMonitor?: boolean } = {}): Promise<void> {
  const cm = await CertManagerStandIn.create(kube);
  await ensureNamespace(ns);
  await createIssuer(kube, ns);
  await createRelay(kube, relayManifest(ns, name, opts.serviceMonitor ? { metrics: { serviceMonitor: { enabled: true } } } : {}));
  const alive = async <T>(what: string, fn: () => Promise<T | undefined | false | null>, ms = 60_000): Promise<T> =>
    eventually(what, async () => {
      if (op.exitCode !== null) throw new Error(`operator exited with ${op.exitCode}:\n${logOf(logName)}`);
      return fn();
    }, ms);
  const children = CHILD_PATHS(ns, name);
  // The ServiceMonitor child exercises the chart's monitoring.coreos.com rule.
  if (opts.serviceMonitor) children.push(`/apis/monitoring.coreos.com/v1/namespaces/${ns}/servicemonitors/${name}`);
  for (const path of children) await alive(path, () => get(kube, path));
  await cm.issue(ns, `${name}-tls`);
  const relay = await alive('CertificateReady=True in the status', async () => {
    const r = await getRelay(kube, ns, name);
    return condition(r, 'CertificateReady')?.status === 'True' ? r : undefined;
  });
  assert.equal(relay.status.observedGeneration, relay.metadata.generation);
  assert.equal(await metric(port, 'smtp_relay_operator_reconcile_errors_total'), 0, `no reconcile failed for lack of permission:\n${logOf(logName)}`);
  assert.ok((await metric(port, 'smtp_relay_operator_reconcile_total')) > 0);
}

test('helm install (full values minus watched namespaces) installs the CRD and every object; the operator with the chart ServiceAccount token reconciles an SmtpRelay', async () => {
  const ns = 'smtp-relay-system';
  // Pod Security admission enforces the "restricted" standard on the release namespace:
  // the ReplicaSet controller's pod for the chart's Deployment must pass it.
  await kube.request('PATCH', `/api/v1/namespaces/${ns}`, {
    contentType: 'application/merge-patch+json',
    body: { metadata: { labels: { 'pod-security.kubernetes.io/enforce': 'restricted', 'pod-security.kubernetes.io/enforce-version': 'latest' } } },
  });
  const r = await helm([
    'install', 'relays', CHART, '--namespace', ns, '--create-namespace', '--kubeconfig', cp.kubeconfigPath,
    '-f', FULL_VALUES, '--set', 'watchNamespaces=null', '--set', 'dashboards.namespace=', '--set', 'replicaCount=1', ...IMAGE,
  ]);
  assert.equal(r.code, 0, `helm install failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /STATUS: deployed/);
  assert.match(r.stdout, /cert-manager is a PREREQUISITE/);
  assert.doesNotMatch(r.stdout, /WARNING/, 'the cluster serves cert-manager.io/v1, so NOTES does not warn');
  const status = await helm(['status', 'relays', '--namespace', ns, '--kubeconfig', cp.kubeconfigPath, '-o', 'json']);
  assert.equal(JSON.parse(status.stdout).info.status, 'deployed');
  // The CRD came from the chart (the control plane was started without it).
  const crd = await kube.get<any>('/apis/apiextensions.k8s.io/v1/customresourcedefinitions/smtprelays.smtprelay.dev');
  assert.ok(crd.status.conditions.some((c: any) => c.type === 'Established' && c.status === 'True'));
  for (const path of [
    `/api/v1/namespaces/${ns}/serviceaccounts/smtp-relay-operator-ci`,
    `/apis/apps/v1/namespaces/${ns}/deployments/relays-smtp-relay-operator`,
    `/api/v1/namespaces/${ns}/services/relays-smtp-relay-operator-metrics`,
    `/apis/rbac.authorization.k8s.io/v1/clusterroles/relays-smtp-relay-operator`,
    `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles/relays-smtp-relay-operator-leader-election`,
    `/apis/monitoring.coreos.com/v1/namespaces/${ns}/servicemonitors/relays-smtp-relay-operator`,
    `/apis/monitoring.coreos.com/v1/namespaces/${ns}/prometheusrules/relays-smtp-relay-operator`,
    `/api/v1/namespaces/${ns}/configmaps/relays-smtp-relay-operator-dashboard-smtp-relay-overview`,
  ]) {
    assert.ok(await get(kube, path), `${path} exists after helm install`);
  }

  const pod = await eventually('the Deployment\'s pod, admitted under the restricted Pod Security Standard', async () => {
    const pods = await kube.get<any>(`/api/v1/namespaces/${ns}/pods`, { query: { labelSelector: 'app.kubernetes.io/instance=relays' } });
    if (pods.items.length > 0) return pods.items[0];
    const events = await kube.get<any>(`/api/v1/namespaces/${ns}/events`);
    const refused = events.items.find((e: any) => e.reason === 'FailedCreate');
    if (refused) throw new Error(`pod refused: ${refused.message}`);
    return undefined;
  });
  assert.equal(pod.spec.serviceAccountName, 'smtp-relay-operator-ci');
  // ... and that standard is really enforced there: a pod without the hardening is refused.
  await assert.rejects(
    kube.request('POST', `/api/v1/namespaces/${ns}/pods`, {
      query: { dryRun: 'All' },
      body: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'unhardened' }, spec: { containers: [{ name: 'c', image: 'localhost/smtp-relay-operator:dev' }] } },
    }),
    /violates PodSecurity "restricted/,
  );

  const sa = await cp.serviceAccountKubeconfig(ns, 'smtp-relay-operator-ci', { create: false });
  const port = await freePort();
  const args = await containerCommand(ns, 'relays-smtp-relay-operator', port, sa.path);
  const op = startOperatorProcess(args, ns, 'chart-operator');
  await provesReconcile(op, 'chart-operator', port, 'mail', 'outbound', { serviceMonitor: true });
  // It holds the Lease the chart's Role lets it manage.
  const lease = await kube.get<any>(`/apis/coordination.k8s.io/v1/namespaces/${ns}/leases/smtp-relay-operator-ci`);
  assert.ok(lease.spec.holderIdentity);
  assert.equal(await metric(port, 'smtp_relay_operator_leader'), 1);
  await stopProcess(op);
});

test('with watchNamespaces the namespaced Roles are enough: a second release reconciles its namespace; helm upgrade and uninstall work, the CRD stays', async () => {
  const ns = 'smtp-relay-scoped';
  // The Roles go into the watched namespaces, so they must exist first (README, NOTES).
  await ensureNamespace('mail-scoped');
  const r = await helm([
    'install', 'scoped', CHART, '--namespace', ns, '--create-namespace', '--kubeconfig', cp.kubeconfigPath,
    '--set', 'watchNamespaces={mail-scoped}', ...IMAGE,
  ]);
  assert.equal(r.code, 0, `helm install failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /The operator only watches: mail-scoped/);
  assert.ok(await get(kube, '/apis/rbac.authorization.k8s.io/v1/namespaces/mail-scoped/rolebindings/scoped-smtp-relay-operator'));
  assert.equal(await get(kube, '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/scoped-smtp-relay-operator'), undefined, 'no cluster-wide binding of the main rules');
  const sa = await cp.serviceAccountKubeconfig(ns, 'scoped-smtp-relay-operator', { create: false });
  const port = await freePort();
  const args = await containerCommand(ns, 'scoped-smtp-relay-operator', port, sa.path);
  assert.ok(args.includes('--namespaces=mail-scoped'));
  const op = startOperatorProcess(args, ns, 'scoped-operator');
  await provesReconcile(op, 'scoped-operator', port, 'mail-scoped', 'scoped');
  await stopProcess(op);

  // helm upgrade with changed values, then uninstall: the chart's objects go, the CRD and
  // the SmtpRelays stay (Helm never deletes crds/).
  const up = await helm(['upgrade', 'scoped', CHART, '--namespace', ns, '--kubeconfig', cp.kubeconfigPath, '--reuse-values', '--set', 'workers=3']);
  assert.equal(up.code, 0, up.stderr);
  const d = await kube.get<any>(`/apis/apps/v1/namespaces/${ns}/deployments/scoped-smtp-relay-operator`);
  assert.ok(d.spec.template.spec.containers[0].args.includes('--workers=3'));
  const un = await helm(['uninstall', 'scoped', '--namespace', ns, '--kubeconfig', cp.kubeconfigPath]);
  assert.equal(un.code, 0, un.stderr);
  for (const path of [
    `/apis/apps/v1/namespaces/${ns}/deployments/scoped-smtp-relay-operator`,
    '/apis/rbac.authorization.k8s.io/v1/namespaces/mail-scoped/roles/scoped-smtp-relay-operator',
    '/apis/rbac.authorization.k8s.io/v1/clusterroles/scoped-smtp-relay-operator-cluster',
  ]) {
    await eventually(`${path} deleted by helm uninstall`, async () => (await get(kube, path)) === undefined);
  }
  assert.ok(await get(kube, '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/smtprelays.smtprelay.dev'));
  assert.ok(await getRelay(kube, 'mail-scoped', 'scoped'));
});

test('the same ClusterRole without one verb (create on apps/deployments) leaves the operator unable to reconcile', async () => {
  const ns = 'smtp-relay-system';
  const chartRole = await kube.get<any>('/apis/rbac.authorization.k8s.io/v1/clusterroles/relays-smtp-relay-operator');
  const rules = chartRole.rules.flatMap((r: any) => {
    if (!(r.apiGroups?.includes('apps') && r.resources?.includes('deployments'))) return [r];
    return [{ ...r, verbs: r.verbs.filter((v: string) => v !== 'create') }];
  });
  assert.notDeepEqual(rules, chartRole.rules);
  await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', { body: { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: 'weak-operator' }, rules } });
  await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
    body: {
      apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: 'weak-operator' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'weak-operator' },
      subjects: [{ kind: 'ServiceAccount', name: 'weak-operator', namespace: ns }],
    },
  });
  const sa = await cp.serviceAccountKubeconfig(ns, 'weak-operator');
  const port = await freePort();
  const target = 'mail-weak';
  await ensureNamespace(target);
  await createIssuer(kube, target);
  const op = startOperatorProcess(['operator', '--relay-image=localhost/smtp-relay-operator:dev', `--namespaces=${target}`, `--metrics-port=${port}`, '--metrics-address=127.0.0.1', `--kubeconfig=${sa.path}`], ns, 'weak-operator');
  await createRelay(kube, relayManifest(target, 'weak'));
  await eventually('reconcile errors', async () => {
    if (op.exitCode !== null) throw new Error(`operator exited:\n${logOf('weak-operator')}`);
    return (await metric(port, 'smtp_relay_operator_reconcile_errors_total').catch(() => 0)) > 0;
  }, 60_000);
  await sleep(500);
  try {
    await kube.get(`/apis/apps/v1/namespaces/${target}/deployments/weak`);
    assert.fail('the Deployment must not exist without the create verb');
  } catch (err) {
    assert.ok(isNotFound(err), String(err));
  }
  await stopProcess(op);
});
