/**
 * The one-node cluster (cluster.ts) does what a real cluster does for the parts the e2e suite
 * will lean on: the scheduler places a pod of the project's image, the real kubelet runs it
 * under containerd + runc, a client pod resolves a Service name through CoreDNS and reaches
 * it through kube-proxy, cert-manager issues a Certificate from a CA ClusterIssuer, cert-manager's
 * webhook refuses an invalid Certificate and admits the one the operator writes, and
 * stop() leaves nothing behind. Every wait is bounded. Needs root, `make cluster` and
 * `make image`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import YAML from 'yaml';
import { API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION, type SmtpRelay } from '../../../operator/api/v1alpha1.js';
import { buildChildren } from '../../../operator/builders/children.js';
import { buildRelayConfig } from '../../../operator/builders/relay-config.js';
import { Applier } from '../../../operator/runtime/apply.js';
import { Kube, type KubeObject } from '../../../operator/runtime/kube.js';
import { resourceForKind } from '../../../operator/runtime/resources.js';
import { repoRoot } from '../controlplane/harness.js';
import type { SmtpRelaySpecInput } from '../smtprelay/defaults.js';
import { CERT_MANAGER_WEBHOOK, CLUSTER_DIR, apiErrorMessage, NODE_IP, NODE_NAME, PROJECT_IMAGE, clusterIpsets, clusterLog, projectImageLayout, startCluster, type Cluster } from './cluster.js';
import { nodePod, until } from './testpods.js';

const log = process.env['CLUSTER_VERBOSE'] === '1' ? (l: string): void => console.log(l) : (): void => {};
const SERVER = `
const http = require('http');
http.createServer((q, s) => s.end('hello from ' + require('os').hostname())).listen(8080, '0.0.0.0');
`;

/** Resolves and fetches each target, writes the results as JSON to the termination log, exits 0. */
const CLIENT = (targets: { name?: string; url?: string; connect?: string }[]): string => `
const dns = require('dns'), http = require('http'), net = require('net'), fs = require('fs');
const targets = ${JSON.stringify(targets)};
const out = [];
const get = (url) => new Promise((res) => {
  const r = http.get(url, { timeout: 5000 }, (s) => { let b = ''; s.on('data', (d) => b += d); s.on('end', () => res({ status: s.statusCode, body: b })); });
  r.on('timeout', () => { r.destroy(); res({ error: 'timeout' }); });
  r.on('error', (e) => res({ error: e.code || e.message }));
});
const connect = (hp) => new Promise((res) => {
  const [host, port] = hp.split(':'); const t0 = Date.now();
  const s = net.connect({ host, port: Number(port), timeout: 4000 });
  s.on('connect', () => { s.destroy(); res({ connected: true, ms: Date.now() - t0 }); });
  s.on('timeout', () => { s.destroy(); res({ error: 'timeout', ms: Date.now() - t0 }); });
  s.on('error', (e) => res({ error: e.code || e.message, ms: Date.now() - t0 }));
});
// A new Service reaches CoreDNS and kube-proxy's rules within their sync, as in any cluster:
// a lookup or GET that fails is tried again, 1 s apart, for at most 20 s (a wrong answer is not).
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const retry = async (fn, failed) => {
  let v;
  for (let i = 0; i < 20; i++) {
    v = await fn();
    if (!failed(v)) break;
    await sleep(1000);
  }
  return v;
};
(async () => {
  for (const t of targets) {
    const r = { ...t };
    if (t.name) r.lookup = await retry(() => dns.promises.lookup(t.name, 4).then((a) => a.address, (e) => 'error ' + e.code), (v) => v.startsWith('error '));
    if (t.url) r.get = await retry(() => get(t.url), (v) => v.error !== undefined);
    if (t.connect) r.connect = await connect(t.connect);
    out.push(r);
  }
  fs.writeFileSync('/dev/termination-log', JSON.stringify(out));
})();
`;

describe('one-node cluster from the real parts', { timeout: 900_000 }, () => {
  let c: Cluster;
  let core: k8s.CoreV1Api;
  let custom: k8s.CustomObjectsApi;
  let stopped = false;

  before(async () => {
    const layout = projectImageLayout();
    assert.ok(existsSync(join(layout, 'index.json')), `the project's image is missing at ${layout}: run \`make image\``);
    c = await startCluster({ log });
    core = c.kubeconfig.makeApiClient(k8s.CoreV1Api);
    custom = c.kubeconfig.makeApiClient(k8s.CustomObjectsApi);
    const names = await c.importImage(layout);
    log(`imported ${names.join(', ')}`);
    const images = await c.ctr(['images', 'list', '-q']);
    assert.match(images, new RegExp(PROJECT_IMAGE.replace(/[.:/]/g, '\\$&')), `ctr import did not name the image ${PROJECT_IMAGE}: ${images}`);
    for (const ns of ['srv', 'cli']) await core.createNamespace({ body: { metadata: { name: ns } } });
  });

  after(async () => {
    if (c && !stopped) await c.stop();
  });

  const podDiag = (ns: string, name: string) => async (): Promise<string> => {
    const p = await core.readNamespacedPod({ name, namespace: ns }).catch((e: Error) => e.message);
    const events = await core.listNamespacedEvent({ namespace: ns }).then((l) => l.items.map((e) => `${e.involvedObject.name}: ${e.reason} ${e.message}`).join('\n'), () => '');
    return `pod ${ns}/${name}: ${JSON.stringify(typeof p === 'string' ? p : p.status)}\nevents:\n${events}\nkubelet:\n${await clusterLog('kubelet', 30)}\ncontainerd:\n${await clusterLog('containerd', 20)}`;
  };

  async function runningPod(ns: string, name: string, timeoutMs = 120_000): Promise<k8s.V1Pod> {
    return until(`pod ${ns}/${name} Ready`, timeoutMs, async () => {
      const p = await core.readNamespacedPod({ name, namespace: ns });
      return p.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? p : undefined;
    }, podDiag(ns, name));
  }

  async function clientResult(ns: string, name: string, targets: Parameters<typeof CLIENT>[0], timeoutMs = 120_000): Promise<Array<Record<string, unknown>>> {
    await core.createNamespacedPod({ namespace: ns, body: nodePod(ns, name, CLIENT(targets), { restartPolicy: 'Never' }) });
    const msg = await until(`client pod ${ns}/${name} to finish`, timeoutMs, async () => {
      const p = await core.readNamespacedPod({ name, namespace: ns });
      const term = p.status?.containerStatuses?.[0]?.state?.terminated;
      if (!term) return undefined;
      assert.equal(term.exitCode, 0, `client exited ${term.exitCode}: ${term.message ?? ''} ${term.reason ?? ''}`);
      return term.message ?? '';
    }, podDiag(ns, name));
    return JSON.parse(msg) as Array<Record<string, unknown>>;
  }

  let webIP = '';
  let webClusterIP = '';

  it('the scheduler places a pod of the project image, the kubelet runs it under containerd and runc', async () => {
    const webPod = nodePod('srv', 'web', SERVER, { labels: { app: 'web' }, port: 8080 });
    const nodePodSpecNodeName = webPod.spec?.nodeName;
    await core.createNamespacedPod({ namespace: 'srv', body: webPod });
    const svc = await core.createNamespacedService({ namespace: 'srv', body: { metadata: { name: 'web' }, spec: { selector: { app: 'web' }, ports: [{ port: 80, targetPort: 8080 }] } } });
    webClusterIP = svc.spec!.clusterIP!;
    const pod = await runningPod('srv', 'web');
    assert.equal(pod.spec?.nodeName, NODE_NAME);
    // The scheduler, not a preset nodeName, put it there (its events are recorded asynchronously).
    assert.equal(nodePodSpecNodeName, undefined);
    await until('the Scheduled event of default-scheduler', 20_000, async () => {
      const scheduled = await core.listNamespacedEvent({ namespace: 'srv', fieldSelector: 'involvedObject.name=web,reason=Scheduled' });
      return scheduled.items.some((e) => (e.reportingComponent || e.source?.component) === 'default-scheduler') ? true : undefined;
    });
    webIP = pod.status!.podIP!;
    assert.match(webIP, /^198\.19\.(1[6-9]|2\d|3[01])\.\d+$/, `pod IP ${webIP} is not in the pod range`);
    // The container runs in containerd's k8s.io namespace through our runc, as uid 65532.
    const containers = await c.ctr(['containers', 'list']);
    assert.match(containers, /smtp-relay-operator:dev/);
    const cid = pod.status!.containerStatuses![0]!.containerID!.replace('containerd://', '');
    const task = await c.ctr(['tasks', 'list']);
    const pid = Number(new RegExp(`${cid}\\s+(\\d+)\\s+RUNNING`).exec(task)?.[1]);
    assert.ok(pid > 0, `no running task for ${cid}: ${task}`);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    assert.match(status, /^Uid:\s+65532\s+65532\s+65532\s+65532$/m);
    assert.match(status, /^CapEff:\s+0000000000000000$/m);
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    assert.match(status, /^Seccomp:\s+2$/m);
  });

  it('a client pod resolves the Service by name through CoreDNS and reaches it through kube-proxy', async () => {
    assert.ok(webIP, 'needs the web pod');
    const [short, full] = await clientResult('cli', 'dns-client', [
      { name: 'web.srv', url: 'http://web.srv/' },
      { name: 'web.srv.svc.cluster.local', url: 'http://web.srv.svc.cluster.local/' },
    ]);
    assert.equal(short!['lookup'], webClusterIP, `web.srv resolved to ${String(short!['lookup'])}, not the Service's ${webClusterIP}`);
    assert.equal(full!['lookup'], webClusterIP);
    assert.deepEqual(short!['get'], { status: 200, body: 'hello from web' });
    assert.deepEqual(full!['get'], { status: 200, body: 'hello from web' });
  });

  // kube-router enforces NetworkPolicy here, but no policy selects these pods (netpol.check.ts
  // proves the operator's policy): plain pod-to-pod routing.
  it('pod to pod traffic flows through the CNI routes (no NetworkPolicy selects these pods)', async () => {
    const [direct] = await clientResult('cli', 'direct-client', [{ connect: `${webIP}:8080` }]);
    assert.equal((direct!['connect'] as { connected?: boolean }).connected, true, JSON.stringify(direct));
  });

  it('cert-manager issues a Certificate from a CA ClusterIssuer', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'cluster-ca-'));
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(tmp, 'ca.key'), '-out', join(tmp, 'ca.crt'),
        '-days', '2', '-subj', '/CN=cluster-test-ca', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'pipe' });
      const caPem = readFileSync(join(tmp, 'ca.crt'), 'utf8');
      await core.createNamespacedSecret({
        namespace: 'cert-manager',
        body: { metadata: { name: 'test-ca' }, type: 'kubernetes.io/tls', stringData: { 'tls.crt': caPem, 'tls.key': readFileSync(join(tmp, 'ca.key'), 'utf8') } },
      });
      await custom.createClusterCustomObject({ group: 'cert-manager.io', version: 'v1', plural: 'clusterissuers', body: { apiVersion: 'cert-manager.io/v1', kind: 'ClusterIssuer', metadata: { name: 'test-ca' }, spec: { ca: { secretName: 'test-ca' } } } });
      await custom.createNamespacedCustomObject({
        group: 'cert-manager.io', version: 'v1', namespace: 'srv', plural: 'certificates',
        body: {
          apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'web-tls' },
          spec: { secretName: 'web-tls', dnsNames: ['web.srv.svc'], usages: ['server auth'], privateKey: { algorithm: 'ECDSA', size: 256 }, issuerRef: { name: 'test-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' } },
        },
      });
      const diag = async (): Promise<string> => {
        const cert = await custom.getNamespacedCustomObject({ group: 'cert-manager.io', version: 'v1', namespace: 'srv', plural: 'certificates', name: 'web-tls' }).catch((e: Error) => e.message);
        const iss = await custom.getClusterCustomObject({ group: 'cert-manager.io', version: 'v1', plural: 'clusterissuers', name: 'test-ca' }).catch((e: Error) => e.message);
        return `certificate: ${JSON.stringify((cert as { status?: unknown }).status ?? cert)}\nclusterissuer: ${JSON.stringify((iss as { status?: unknown }).status ?? iss)}\ncert-manager:\n${await clusterLog('cert-manager', 40)}`;
      };
      await until('Certificate srv/web-tls Ready', 120_000, async () => {
        const cert = (await custom.getNamespacedCustomObject({ group: 'cert-manager.io', version: 'v1', namespace: 'srv', plural: 'certificates', name: 'web-tls' })) as { status?: { conditions?: Array<{ type: string; status: string }> } };
        return cert.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? true : undefined;
      }, diag);
      const secret = await core.readNamespacedSecret({ name: 'web-tls', namespace: 'srv' });
      const leaf = new X509Certificate(Buffer.from(secret.data!['tls.crt']!, 'base64'));
      const ca = new X509Certificate(caPem);
      assert.ok(leaf.checkIssued(ca) && leaf.verify(ca.publicKey), 'the issued certificate is not signed by the ClusterIssuer CA');
      assert.equal(leaf.subjectAltName, 'DNS:web.srv.svc');
      assert.equal(secret.metadata?.annotations?.['cert-manager.io/issuer-kind'], 'ClusterIssuer');
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('cert-manager\'s webhook refuses an invalid Certificate with cert-manager\'s own message, and admits the Certificate the operator writes for a relay', async () => {
    const cm = { group: 'cert-manager.io', version: 'v1' };
    // (1) Valid for the CRD's schema (issuerRef.name is present, ECDSA is in the enum, size is
    //     any integer), invalid for cert-manager's validation: only the webhook can refuse it.
    const refusal = await custom.createNamespacedCustomObject({
      ...cm, namespace: 'srv', plural: 'certificates',
      body: {
        apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'invalid' },
        spec: { secretName: 'invalid', dnsNames: ['invalid.srv.svc'], issuerRef: { name: '' }, privateKey: { algorithm: 'ECDSA', size: 300 } },
      },
    }).then(() => undefined, (e: unknown) => e as k8s.ApiException<unknown>);
    assert.ok(refusal, 'the API server admitted an invalid Certificate: cert-manager\'s webhook did not validate it');
    const message = apiErrorMessage(refusal);
    log(`refusal ${refusal.code}: ${message}`);
    assert.ok(refusal.code >= 400 && refusal.code < 500, `status ${refusal.code}: ${message}`);
    assert.ok(message.includes(`admission webhook "${CERT_MANAGER_WEBHOOK}" denied the request`), message);
    assert.ok(message.includes('spec.issuerRef.name: Required value: must be specified'), message);
    assert.ok(message.includes('spec.privateKey.size: Unsupported value: 300: supported values: "256", "384", "521"'), message);
    await assert.rejects(custom.getNamespacedCustomObject({ ...cm, namespace: 'srv', plural: 'certificates', name: 'invalid' }), (e: k8s.ApiException<unknown>) => e.code === 404);

    // (2) The Certificate of crds/examples/minimal.yaml's relay, built by the operator's builders
    //     and applied by its Applier (server-side apply), issued by the CA ClusterIssuer of the
    //     test above. The SmtpRelay exists in the API (the Certificate's owner), defaulted by it.
    const example = YAML.parse(readFileSync(join(repoRoot(), 'crds', 'examples', 'minimal.yaml'), 'utf8')) as { metadata: { name: string; namespace: string }; spec: SmtpRelaySpecInput };
    const ns = example.metadata.namespace;
    await core.createNamespace({ body: { metadata: { name: ns } } });
    const relay = (await custom.createNamespacedCustomObject({
      group: GROUP, version: VERSION, namespace: ns, plural: PLURAL,
      body: { apiVersion: API_VERSION, kind: KIND, metadata: { name: example.metadata.name, namespace: ns }, spec: { ...structuredClone(example.spec), tls: { issuerRef: { name: 'test-ca', kind: 'ClusterIssuer' } } } },
    })) as SmtpRelay;
    const cert = (buildChildren(relay, buildRelayConfig(relay), { image: PROJECT_IMAGE, imagePullPolicy: 'Never' }) as unknown as KubeObject[]).find((o) => o.kind === 'Certificate');
    assert.ok(cert, 'the operator builds no Certificate for a relay with tls.issuerRef');
    const name = cert.metadata!.name!;
    await new Applier({ kube: new Kube(c.kubeconfig), fieldManager: FIELD_MANAGER }).apply(resourceForKind('Certificate')!, cert, undefined);
    const webhookLog = async (): Promise<string> => clusterLog('cert-manager-webhook', 100_000);
    const diag = async (): Promise<string> => {
      const got = await custom.getNamespacedCustomObject({ ...cm, namespace: ns, plural: 'certificates', name }).catch((e: Error) => e.message);
      return `certificate: ${JSON.stringify((got as { status?: unknown }).status ?? got)}\ncert-manager:\n${await clusterLog('cert-manager', 30)}\nwebhook:\n${await clusterLog('cert-manager-webhook', 30)}`;
    };
    // Issued through the whole admission chain: the CertificateRequest cert-manager made got its
    // requester's identity from the mutating webhook and passed validation and the approval check.
    await until(`Certificate ${ns}/${name} Ready`, 120_000, async () => {
      const got = (await custom.getNamespacedCustomObject({ ...cm, namespace: ns, plural: 'certificates', name })) as { status?: { conditions?: Array<{ type: string; status: string }> } };
      return got.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? true : undefined;
    }, diag);
    const secret = await core.readNamespacedSecret({ name: (cert as unknown as { spec: { secretName: string } }).spec.secretName, namespace: ns });
    assert.ok(secret.data?.['tls.crt'], 'no tls.crt in the relay\'s TLS Secret');
    const requests = (await custom.listNamespacedCustomObject({ ...cm, namespace: ns, plural: 'certificaterequests' })) as { items: Array<{ metadata: { name: string }; spec: { username?: string; groups?: string[] } }> };
    assert.ok(requests.items.length > 0, 'no CertificateRequest');
    for (const r of requests.items) assert.ok(r.spec.username, `CertificateRequest ${r.metadata.name} has no spec.username: the mutating webhook did not set it`);
    // The webhook saw each of them (its log names every decision).
    const lines = (await webhookLog()).split('\n');
    for (const l of lines.filter((x) => x.includes(`namespace="${ns}"`) || x.includes('name="invalid"'))) log(`webhook: ${l}`);
    const saw = (what: string, resource: string, n: string): boolean =>
      lines.some((l) => l.includes(`"${what}"`) && l.includes(`resource="${resource}"`) && l.includes(`namespace="${ns}"`) && l.includes(`name="${n}"`));
    assert.ok(saw('validate allowed', 'certificates', name), `the webhook did not log admitting Certificate ${ns}/${name}:\n${lines.filter((l) => l.includes('certificates')).slice(-10).join('\n')}`);
    assert.ok(lines.some((l) => l.includes('"validate denied"') && l.includes('name="invalid"')), 'the webhook did not log refusing srv/invalid');
    // (A CertificateRequest is created with generateName: the log line may not name it.)
    const sawRequest = (what: string): boolean => lines.some((l) => l.includes(`"${what}"`) && l.includes('resource="certificaterequests"') && l.includes(`namespace="${ns}"`));
    assert.ok(sawRequest('mutate allowed'), `the webhook did not mutate a CertificateRequest of ${ns}`);
    assert.ok(sawRequest('validate allowed'), `the webhook did not validate a CertificateRequest of ${ns}`);
  });

  it('a claim of the local StorageClass binds to a local PersistentVolume when its pod is scheduled; the pod writes to it', async () => {
    const hostPath = await c.localVolume('spool-0', { size: '1Gi' });
    await core.createNamespacedPersistentVolumeClaim({
      namespace: 'srv',
      body: { metadata: { name: 'spool' }, spec: { accessModes: ['ReadWriteOnce'], storageClassName: 'local', resources: { requests: { storage: '100Mi' } } } },
    });
    const pod = nodePod('srv', 'writer', `require('fs').writeFileSync('/spool/hello', 'from the pod'); setInterval(() => {}, 1000);`, { labels: { app: 'writer' } });
    pod.spec!.volumes = [{ name: 'spool', persistentVolumeClaim: { claimName: 'spool' } }];
    pod.spec!.containers[0]!.volumeMounts = [{ name: 'spool', mountPath: '/spool' }];
    await core.createNamespacedPod({ namespace: 'srv', body: pod });
    await runningPod('srv', 'writer');
    const pvc = await core.readNamespacedPersistentVolumeClaim({ name: 'spool', namespace: 'srv' });
    assert.equal(pvc.status?.phase, 'Bound');
    assert.equal(pvc.spec?.volumeName, 'spool-0');
    await until('the file the pod wrote', 20_000, async () => (existsSync(join(hostPath, 'hello')) ? true : undefined));
    assert.equal(readFileSync(join(hostPath, 'hello'), 'utf8'), 'from the pod');
  });

  it('stop() leaves no process, mount, network namespace, iptables chain, cgroup or interface behind', async () => {
    stopped = true;
    await c.stop();
    const procs = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
      try {
        return readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(CLUSTER_DIR + '/');
      } catch {
        return false;
      }
    });
    assert.deepEqual(procs, [], 'cluster processes left');
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(CLUSTER_DIR), 'mounts left under the cluster folder');
    assert.ok(!existsSync(CLUSTER_DIR), 'cluster folder left');
    const netns = existsSync('/run/netns') ? readdirSync('/run/netns').filter((n) => n.startsWith('cni-')) : [];
    assert.deepEqual(netns, [], 'CNI network namespaces left');
    for (const cmd of ['iptables-save', 'ip6tables-save']) {
      const chains = execFileSync(cmd, { encoding: 'utf8' }).split('\n').filter((l) => /^:(KUBE-|SROP-CLUSTER)/.test(l));
      assert.deepEqual(chains, [], `${cmd}: chains left`);
    }
    assert.deepEqual(await clusterIpsets(), [], 'kube-router ipsets left');
    for (const ctl of ['cpu', 'memory', 'pids', 'freezer']) assert.ok(!existsSync(`/sys/fs/cgroup/${ctl}/srop-cluster`), `cgroup ${ctl}/srop-cluster left`);
    assert.ok(!execFileSync('ip', ['-o', 'addr'], { encoding: 'utf8' }).includes(NODE_IP), `node address ${NODE_IP} left`);
    assert.ok(!execFileSync('ip', ['route', 'show', 'table', 'all'], { encoding: 'utf8' }).includes('198.19.'), 'cluster routes left');
    for (const [k, v] of Object.entries(c.kernelSettingsBefore)) assert.equal(readFileSync(`/proc/sys/${k}`, 'utf8').trim(), v, `${k} not restored`);
    assert.ok(!existsSync('/var/lib/kubelet/device-plugins/kubelet.sock'), 'kubelet device-plugin socket left');
  });
});
