/**
 * The operator's NetworkPolicy, enforced by a real policy controller (kube-router v2.10.0's,
 * started by cluster.ts) on the one-node cluster, around a real relay pod, proved pod to pod
 * (traffic from the host to a pod is always allowed, so no proof connects from the host).
 *
 * The SmtpRelay is crds/examples/minimal.yaml with namespace access instead of client CIDRs,
 * one replica, and an IP literal as upstream (a pod of the upstream namespace running a node
 * TCP listener on the upstream port and on another port). It is created in the API server
 * (which defaults it; no operator runs), and its children come from the operator's own
 * builders (buildRelayConfig, buildChildren, buildUsersSecret) applied by the operator's own
 * Applier: the relay's Deployment runs `relay serve` of the project image with its ConfigMap,
 * users Secret and a TLS Secret made here (cert-manager is left out: its Certificate child is
 * not applied).
 *
 * Each path is first shown open without the policy (the same pods, the same ports), then shut
 * with it: a blocked connection is counted by the REJECT rule of the pod's KUBE-POD-FW-* chain
 * and never reaches the relay (its smtp_relay_connections_total, scraped from the host, does
 * not move) or the listener. Probes run in long-lived pods, the relay's own container
 * included, through `ctr tasks exec` (same uid, netns and seccomp as the container), so none
 * starts before kube-router has programmed the pod's chain. Needs root, `make cluster` and
 * `make image`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import YAML from 'yaml';
import { API_VERSION, FIELD_MANAGER, GROUP, KIND, METRICS_PORT, PLURAL, SUBMISSIONS_CONTAINER_PORT, VERSION, type SmtpRelay } from '../../../operator/api/v1alpha1.js';
import { buildChildren } from '../../../operator/builders/children.js';
import { childNames, selectorLabels } from '../../../operator/builders/meta.js';
import { buildRelayConfig, relayListeners } from '../../../operator/builders/relay-config.js';
import { buildUsersSecret } from '../../../operator/builders/users.js';
import { buildInternalSecret } from '../../../operator/builders/internal.js';
import { Applier } from '../../../operator/runtime/apply.js';
import { Kube, type KubeObject } from '../../../operator/runtime/kube.js';
import { resourceForKind } from '../../../operator/runtime/resources.js';
import { repoRoot } from '../controlplane/harness.js';
import type { SmtpRelaySpecInput } from '../smtprelay/defaults.js';
import { PROJECT_IMAGE, clusterIpsets, clusterLog, projectImageLayout, startCluster, type Cluster } from './cluster.js';
import { nodePod, until } from './testpods.js';

const log = process.env['CLUSTER_VERBOSE'] === '1' ? (l: string): void => console.log(l) : (): void => {};

/** A TCP listener on each port: greets with "220 stand-in <port>", logs {"accepted":port,"from":ip} per peer. */
const LISTENER = (ports: number[]): string => `
const net = require('net');
for (const port of ${JSON.stringify(ports)}) {
  net.createServer((s) => {
    console.log(JSON.stringify({ accepted: port, from: s.remoteAddress.replace(/^::ffff:/, '') }));
    s.on('error', () => {});
    s.end('220 stand-in ' + port + '\\r\\n');
  }).listen(port, '0.0.0.0');
}
`;

const IDLE = 'setInterval(() => {}, 60000);';

/**
 * One TCP connection (TLS from the start with tls: true, certificate not verified): connected
 * or the error code, the first line the server sent (after `send`, if given), the time taken.
 */
const PROBE = (host: string, port: number, timeoutMs: number, o: { tls?: boolean; send?: string } = {}): string => `
const net = require('net'), tls = require('tls'); const t0 = Date.now();
const done = (r) => { console.log(JSON.stringify({ ...r, ms: Date.now() - t0 })); process.exit(0); };
const opts = { host: ${JSON.stringify(host)}, port: ${port}, rejectUnauthorized: false };
const s = ${o.tls ? 'tls.connect(opts)' : 'net.connect(opts)'};
s.setTimeout(${timeoutMs});
let connected = false, banner = '';
s.on('${o.tls ? 'secureConnect' : 'connect'}', () => { connected = true; ${o.send ? `s.write(${JSON.stringify(o.send)});` : ''} setTimeout(() => { s.destroy(); done({ connected, banner }); }, 2000); });
s.on('data', (d) => { banner += d; if (banner.includes('\\n')) { s.destroy(); done({ connected, banner: banner.split('\\n')[0].trim() }); } });
s.on('timeout', () => { s.destroy(); done(connected ? { connected, banner } : { connected, error: 'timeout' }); });
s.on('error', (e) => done({ connected, error: e.code || e.message }));
`;

/** A DNS lookup through the pod's resolver (the cluster DNS Service). */
const LOOKUP = (name: string): string => `
require('dns').promises.lookup(${JSON.stringify(name)}, 4).then((a) => console.log(JSON.stringify({ address: a.address })), (e) => console.log(JSON.stringify({ error: e.code })));
`;

/** A jump to a policy's own chain (not kube-router's KUBE-NWPLCY-DEFAULT, -COMMON or -TAIL, which every pod chain has). */
const POLICY_CHAIN = 'KUBE-NWPLCY-(?!DEFAULT|COMMON|TAIL)';

interface ProbeResult {
  connected: boolean;
  banner?: string;
  error?: string;
  ms: number;
}

describe('NetworkPolicy of the operator around a real relay pod, enforced by kube-router, pod to pod', { timeout: 900_000 }, () => {
  let c: Cluster;
  let core: k8s.CoreV1Api;
  let applier: Applier;
  let stopped = false;
  const ips: Record<string, string> = {};
  const cids: Record<string, string> = {};
  let relay: SmtpRelay;
  let children: KubeObject[];
  let smtpPorts: number[];
  let RELAY = '';
  const UPSTREAM_PORT = 2525;
  const OTHER_UPSTREAM_PORT = 2526;
  let execSeq = 0;

  /** Runs `node -e script` inside the running container of pod ns/name (ctr tasks exec) and parses its JSON line. */
  async function inPod<T>(pod: string, script: string): Promise<T> {
    const out = await c.ctr(['tasks', 'exec', '--exec-id', `probe-${process.pid}-${++execSeq}`, cids[pod]!, 'node', '-e', script]);
    const line = out.trim().split('\n').pop() ?? '';
    try {
      return JSON.parse(line) as T;
    } catch {
      throw new Error(`probe in ${pod} printed no JSON: ${out}`);
    }
  }

  const probe = (from: string, to: string, port: number, o: { tls?: boolean; send?: string } = {}): Promise<ProbeResult> => inPod<ProbeResult>(from, PROBE(ips[to] ?? to, port, 5000, o));
  /** What a client of the relay sees first on this port: the SMTP greeting (in TLS on the implicit-TLS port) or, on the metrics port, the status line of GET /readyz. */
  const relayProbe = (from: string, port: number): Promise<ProbeResult> =>
    probe(from, RELAY, port, port === METRICS_PORT ? { send: 'GET /readyz HTTP/1.0\r\n\r\n' } : { tls: port === SUBMISSIONS_CONTAINER_PORT });
  const SMTP_GREETING = /^220 relay\.example\.com\b/;
  const READY = /^HTTP\/1\.[01] 200\b/;

  /** The relay's smtp_relay_connections_total (all series), scraped from the host (host to pod is always allowed). */
  async function relayConnections(): Promise<number> {
    const text = await (await fetch(`http://${ips[RELAY]}:${METRICS_PORT}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
    return text.split('\n').filter((l) => l.startsWith('smtp_relay_connections_total')).reduce((n, l) => n + Number(l.split(' ').pop()), 0);
  }

  /** The lines {"accepted":port,"from":ip} the listener pod logged, read from the kubelet's log file (the API server cannot reach the kubelet by the node's name here). */
  function accepted(pod: string, port: number, fromPod: string): number {
    const [ns, name] = pod.split('/') as [string, string];
    const logs = join(c.dir, 'pod-logs');
    const podDir = readdirSync(logs).find((d) => d.startsWith(`${ns}_${name}_`));
    assert.ok(podDir, `no log folder for ${pod} in ${logs}`);
    const text = readdirSync(join(logs, podDir, 'main')).map((f) => readFileSync(join(logs, podDir, 'main', f), 'utf8')).join('\n');
    return text.split('\n').filter((l) => l.includes(`"accepted":${port},`) && l.includes(`"from":"${ips[fromPod]}"`)).length;
  }

  /** The KUBE-POD-FW-* chain kube-router jumps to for this pod's address, or undefined. */
  function podChain(filter: string, pod: string): string | undefined {
    const re = new RegExp(`^-A KUBE-ROUTER-FORWARD .*-[sd] ${ips[pod]!.replace(/\./g, '\\.')}/32 .*-j (KUBE-POD-FW-\\S+)`, 'm');
    return re.exec(filter)?.[1];
  }

  /** Packets counted by the REJECT rules of the pod's firewall chain (iptables-save -c). */
  function rejected(pod: string): number {
    const filter = execFileSync('iptables-save', ['-c', '-t', 'filter'], { encoding: 'utf8' });
    const chain = podChain(filter.replace(/^\[\d+:\d+\] /gm, ''), pod);
    assert.ok(chain, `no kube-router chain for ${pod} (${ips[pod]})`);
    let n = 0;
    for (const l of filter.split('\n')) {
      const m = /^\[(\d+):\d+\] -A (\S+) .*-j REJECT/.exec(l);
      if (m && m[2] === chain) n += Number(m[1]);
    }
    return n;
  }

  /** Waits until kube-router has put the pod's chain in place and it runs through a policy's chain. */
  async function enforced(pod: string): Promise<void> {
    await until(`kube-router's policy chain for ${pod}`, 60_000, async () => {
      const filter = execFileSync('iptables-save', ['-t', 'filter'], { encoding: 'utf8' });
      const chain = podChain(filter, pod);
      return chain && new RegExp(`^-A ${chain} .*-j ${POLICY_CHAIN}`, 'm').test(filter) ? true : undefined;
    }, async () => `kube-router:\n${await clusterLog('kube-router', 40)}`);
  }

  async function readyPod(ns: string, name: string): Promise<k8s.V1Pod> {
    return until(`pod ${ns}/${name} Ready`, 180_000, async () => {
      const r = await core.readNamespacedPod({ name, namespace: ns });
      return r.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? r : undefined;
    }, async () => {
      const p = await core.readNamespacedPod({ name, namespace: ns }).catch((e: Error) => e.message);
      return `pod: ${JSON.stringify(typeof p === 'string' ? p : p.status)}\nkubelet:\n${await clusterLog('kubelet', 20)}`;
    });
  }

  const remember = (key: string, p: k8s.V1Pod): void => {
    ips[key] = p.status!.podIP!;
    cids[key] = p.status!.containerStatuses![0]!.containerID!.replace('containerd://', '');
  };

  const apply = async (o: KubeObject): Promise<void> => {
    const r = resourceForKind(o.kind!);
    assert.ok(r, `no resource for ${o.kind}`);
    await applier.apply(r, o, undefined);
  };

  before(async () => {
    c = await startCluster({ log, certManager: false });
    core = c.kubeconfig.makeApiClient(k8s.CoreV1Api);
    applier = new Applier({ kube: new Kube(c.kubeconfig), fieldManager: FIELD_MANAGER });
    await c.importImage(projectImageLayout());

    const example = YAML.parse(readFileSync(join(repoRoot(), 'crds', 'examples', 'minimal.yaml'), 'utf8')) as { metadata: { name: string; namespace: string }; spec: SmtpRelaySpecInput };
    const ns = example.metadata.namespace;
    // The API server, as pods reach it: the `kubernetes` Service, whose EndpointSlice (made by
    // cluster.ts) leads to the API server's port on the node address.
    const kubernetes = await core.readNamespacedService({ name: 'kubernetes', namespace: 'default' });
    ips['api'] = kubernetes.spec!.clusterIP!;

    // Namespaces: the relay's, one allowed by label, one whose client is allowed by its address
    // (allowedCidrs), one allowed neither way, the monitoring one, the upstream's.
    const namespaces: Record<string, Record<string, string>> = { [ns]: {}, apps: { 'smtp-relay/client': 'true' }, cidr: {}, other: {}, monitoring: {}, upstream: {} };
    for (const [name, labels] of Object.entries(namespaces)) await core.createNamespace({ body: { metadata: { name, labels } } });

    // The clients and the upstream first: the relay's allowedCidrs and upstream are their addresses.
    const others: k8s.V1Pod[] = [
      nodePod(ns, 'plain-probe', IDLE, { labels: { app: 'plain' } }),
      nodePod('apps', 'client', IDLE),
      nodePod('cidr', 'client', IDLE),
      nodePod('other', 'client', IDLE),
      nodePod('monitoring', 'client', IDLE),
    ];
    for (const body of others) await core.createNamespacedPod({ namespace: body.metadata!.namespace!, body });
    for (const body of others) remember(`${body.metadata!.namespace!}/${body.metadata!.name!}`, await readyPod(body.metadata!.namespace!, body.metadata!.name!));
    await core.createNamespacedPod({ namespace: 'upstream', body: nodePod('upstream', 'smtp', LISTENER([UPSTREAM_PORT, OTHER_UPSTREAM_PORT]), { port: UPSTREAM_PORT }) });
    remember('upstream/smtp', await readyPod('upstream', 'smtp'));

    // The SmtpRelay exists in the API (no operator runs): the children's owner reference must
    // name a live object, or the garbage collector deletes them at once. The builders get the
    // object as the API server stored and defaulted it.
    const spec: SmtpRelaySpecInput = {
      ...structuredClone(example.spec),
      replicas: 1,
      access: { allowedCidrs: [`${ips['cidr/client']!}/32`], allowedNamespaces: { matchLabels: { 'smtp-relay/client': 'true' } } },
      upstream: { ...example.spec.upstream, host: ips['upstream/smtp']!, port: UPSTREAM_PORT },
    };
    relay = (await c.kubeconfig.makeApiClient(k8s.CustomObjectsApi).createNamespacedCustomObject({
      group: GROUP, version: VERSION, namespace: ns, plural: PLURAL,
      body: { apiVersion: API_VERSION, kind: KIND, metadata: { name: example.metadata.name, namespace: ns }, spec },
    })) as SmtpRelay;
    assert.deepEqual(relay.spec.access.allowedCidrs, [`${ips['cidr/client']!}/32`]);
    smtpPorts = relayListeners(relay).map((l) => l.port);
    assert.ok(smtpPorts.length > 0);

    // What the operator would make: the users Secret (no users: no login is tried here), the
    // internal Secret, the TLS Secret (cert-manager's part, made here with openssl), then every child but the
    // NetworkPolicy (applied by a test below, after the open paths are shown) and the
    // Certificate.
    await apply(buildUsersSecret(relay, { users: [] }) as unknown as KubeObject);
    // The operator's internal Secret (control and peer tokens), which the relay pod mounts.
    await apply(buildInternalSecret(relay) as unknown as KubeObject);
    const tmp = mkdtempSync(join(tmpdir(), 'netpol-tls-'));
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(tmp, 'tls.key'), '-out', join(tmp, 'tls.crt'),
        '-days', '2', '-subj', `/CN=${relay.spec.hostname}`, '-addext', `subjectAltName=DNS:${relay.spec.hostname}`], { stdio: 'pipe' });
      await core.createNamespacedSecret({
        namespace: ns,
        body: { metadata: { name: childNames(relay).tlsSecret }, type: 'kubernetes.io/tls', stringData: { 'tls.crt': readFileSync(join(tmp, 'tls.crt'), 'utf8'), 'tls.key': readFileSync(join(tmp, 'tls.key'), 'utf8') } },
      });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    children = buildChildren(relay, buildRelayConfig(relay), { image: PROJECT_IMAGE, imagePullPolicy: 'Never' }) as unknown as KubeObject[];
    for (const child of children) if (child.kind !== 'NetworkPolicy' && child.kind !== 'Certificate') await apply(child);

    // The relay pod of the Deployment.
    const selector = Object.entries(selectorLabels(relay)).map(([k, v]) => `${k}=${v}`).join(',');
    const relayPod = await until('the relay pod of the Deployment Ready', 180_000, async () => {
      const pods = (await core.listNamespacedPod({ namespace: ns, labelSelector: selector })).items;
      return pods.length === 1 && pods[0]!.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? pods[0] : undefined;
    }, async () => {
      const pods = (await core.listNamespacedPod({ namespace: ns, labelSelector: selector })).items;
      return `relay pods: ${JSON.stringify(pods.map((p) => p.status))}\nkubelet:\n${await clusterLog('kubelet', 20)}`;
    });
    RELAY = `${ns}/${relayPod.metadata!.name!}`;
    remember(RELAY, relayPod);
    log(`pods: ${JSON.stringify(ips)}`);
  });

  after(async () => {
    if (c && !stopped) await c.stop();
  });

  it('without the policy every path is open, pod to pod: SMTP and metrics from any namespace, the relay pod to any port and the API server', async () => {
    for (const port of smtpPorts) {
      const r = await relayProbe('cidr/client', port);
      assert.match(r.banner ?? '', SMTP_GREETING, `cidr/client -> relay:${port} ${JSON.stringify(r)}`);
      // The relay itself answers a client outside allowedCidrs, with its refusal (554 on the
      // STARTTLS port, a reset before the TLS handshake on the implicit-TLS port).
      const before = await relayConnections();
      const o = await relayProbe('other/client', port);
      assert.notEqual(o.error, 'ECONNREFUSED', `other/client -> relay:${port} ${JSON.stringify(o)}`);
      assert.ok((await relayConnections()) > before, `the relay did not count other/client's connection on ${port}`);
    }
    const m = await relayProbe('other/client', METRICS_PORT);
    assert.match(m.banner ?? '', READY, `other/client -> relay:${METRICS_PORT} ${JSON.stringify(m)}`);
    const other = await probe(RELAY, 'upstream/smtp', OTHER_UPSTREAM_PORT);
    assert.equal(other.banner, `220 stand-in ${OTHER_UPSTREAM_PORT}`, JSON.stringify(other));
    const api = await probe(RELAY, 'api', 443, { tls: true });
    assert.equal(api.connected, true, `relay -> kubernetes Service ${ips['api']}:443 (a TLS handshake with the API server) ${JSON.stringify(api)}`);
  });

  it('the operator\'s NetworkPolicy, applied with its Applier, is programmed by kube-router for the relay pod only', async () => {
    const np = children.find((o) => o.kind === 'NetworkPolicy');
    assert.ok(np);
    await apply(np);
    await enforced(RELAY);
    // The pod without the relay's labels is selected by no policy: no policy chain for it.
    const filter = execFileSync('iptables-save', ['-t', 'filter'], { encoding: 'utf8' });
    const plain = podChain(filter, `${relay.metadata.namespace}/plain-probe`);
    assert.ok(!plain || !new RegExp(`^-A ${plain} .*-j ${POLICY_CHAIN}`, 'm').test(filter), 'the unlabelled pod runs through a policy chain');
  });

  it('a client pod from an allowed CIDR gets the relay\'s SMTP greeting on each listener; one of an allowed namespace reaches the relay, which then applies its own address check', async () => {
    for (const port of smtpPorts) {
      const r = await relayProbe('cidr/client', port);
      assert.match(r.banner ?? '', SMTP_GREETING, `cidr/client -> relay:${port} ${JSON.stringify(r)}`);
      // Admitted by the policy's namespaceSelector: the relay counts the connection (and, as
      // docs/api.md says, refuses an address outside allowedCidrs: 554 before the greeting, a
      // reset before the TLS handshake on the implicit-TLS port).
      const before = await relayConnections();
      const rejectsBefore = rejected(RELAY);
      const a = await relayProbe('apps/client', port);
      assert.notEqual(a.error, 'ECONNREFUSED', `apps/client -> relay:${port} ${JSON.stringify(a)}`);
      assert.ok((await relayConnections()) > before, `the relay did not count apps/client's connection on ${port}`);
      assert.equal(rejected(RELAY), rejectsBefore, 'kube-router rejected a packet of the allowed namespace');
      if (port !== SUBMISSIONS_CONTAINER_PORT) assert.match(a.banner ?? '', /^554 /, JSON.stringify(a));
    }
  });

  it('a pod in another namespace cannot connect: its SYN never reaches the relay, kube-router rejects it (ICMP port unreachable: it fails at once, it does not time out)', async () => {
    for (const port of smtpPorts) {
      const seen = await relayConnections();
      const rejectsBefore = rejected(RELAY);
      const r = await relayProbe('other/client', port);
      assert.equal(r.connected, false, `other/client -> relay:${port} connected: ${JSON.stringify(r)}`);
      // kube-router v2.10.0 ends each pod chain with `-j REJECT` (pod.go), not DROP: the
      // client's kernel turns the ICMP port-unreachable into ECONNREFUSED.
      assert.equal(r.error, 'ECONNREFUSED', JSON.stringify(r));
      assert.ok(rejected(RELAY) > rejectsBefore, 'kube-router\'s REJECT rule of the relay pod counted nothing');
      assert.equal(await relayConnections(), seen, 'the relay counted a connection from the blocked client');
    }
  });

  it('the metrics port answers only pods of the monitoring namespace', async () => {
    const mon = await relayProbe('monitoring/client', METRICS_PORT);
    assert.match(mon.banner ?? '', READY, `monitoring/client -> relay:${METRICS_PORT} ${JSON.stringify(mon)}`);
    for (const from of ['apps/client', 'cidr/client', 'other/client']) {
      const rejectsBefore = rejected(RELAY);
      const r = await relayProbe(from, METRICS_PORT);
      assert.equal(r.connected, false, `${from} -> relay:${METRICS_PORT} ${JSON.stringify(r)}`);
      assert.ok(rejected(RELAY) > rejectsBefore, `kube-router's REJECT rule did not count ${from}`);
    }
    // And the monitoring namespace gets no SMTP.
    const smtp = await relayProbe('monitoring/client', smtpPorts[0]!);
    assert.equal(smtp.connected, false, JSON.stringify(smtp));
  });

  it('the relay pod reaches DNS (CoreDNS through the kube-dns Service) and the upstream port, and nothing else: not the API server, not another port of the upstream host', async () => {
    const dns = await inPod<{ address?: string; error?: string }>(RELAY, LOOKUP('kube-dns.kube-system.svc.cluster.local'));
    assert.equal(dns.address, c.dnsIP, `DNS lookup from the relay pod: ${JSON.stringify(dns)}`);
    const svc = await inPod<{ address?: string; error?: string }>(RELAY, LOOKUP('kubernetes.default.svc.cluster.local'));
    assert.equal(svc.address, ips['api'], JSON.stringify(svc));

    const up = await probe(RELAY, 'upstream/smtp', UPSTREAM_PORT);
    assert.equal(up.banner, `220 stand-in ${UPSTREAM_PORT}`, `relay -> upstream:${UPSTREAM_PORT} ${JSON.stringify(up)}`);

    const seen = accepted('upstream/smtp', OTHER_UPSTREAM_PORT, RELAY);
    const rejectsBefore = rejected(RELAY);
    const other = await probe(RELAY, 'upstream/smtp', OTHER_UPSTREAM_PORT);
    assert.equal(other.connected, false, `relay -> upstream:${OTHER_UPSTREAM_PORT} ${JSON.stringify(other)}`);
    assert.equal(accepted('upstream/smtp', OTHER_UPSTREAM_PORT, RELAY), seen, 'the upstream accepted a connection on its other port');

    const api = await probe(RELAY, 'api', 443);
    assert.equal(api.connected, false, `relay -> API server ${JSON.stringify(api)}`);
    assert.ok(rejected(RELAY) >= rejectsBefore + 2, 'kube-router\'s REJECT rule of the relay pod did not count both blocked connections');

    // The same paths from a pod of the same namespace without the relay's labels stay open.
    const plainOther = await probe(`${relay.metadata.namespace}/plain-probe`, 'upstream/smtp', OTHER_UPSTREAM_PORT);
    assert.equal(plainOther.banner, `220 stand-in ${OTHER_UPSTREAM_PORT}`, JSON.stringify(plainOther));
    const plainApi = await probe(`${relay.metadata.namespace}/plain-probe`, 'api', 443, { tls: true });
    assert.equal(plainApi.connected, true, JSON.stringify(plainApi));
  });

  it('stop() removes kube-router\'s chains, the jumps to them and its ipsets', async () => {
    assert.ok((await clusterIpsets()).length > 0, `kube-router made no ipset (nothing to prove): ipset list -n: ${execFileSync('ipset', ['list', '-n'], { encoding: 'utf8' })}`);
    stopped = true;
    await c.stop();
    for (const cmd of ['iptables-save', 'ip6tables-save']) {
      const left = execFileSync(cmd, { encoding: 'utf8' }).split('\n').filter((l) => /KUBE-|kube-router|SROP-CLUSTER/.test(l));
      assert.deepEqual(left, [], `${cmd}: left`);
    }
    assert.deepEqual(await clusterIpsets(), [], 'kube-router ipsets left');
  });
});
