/**
 * The operator's NetworkPolicy, enforced by a real policy controller (kube-router v2.10.0's,
 * started by cluster.ts) on the one-node cluster, proved pod to pod (traffic from the host to
 * a pod is always allowed, so nothing here connects from the host).
 *
 * The relay pods are stand-ins: a pod of the project image labelled as the operator labels
 * relay pods (selectorLabels) and running a small node TCP listener on the relay's container
 * ports (SMTP 2587 and 2465, metrics 9090) that greets with "220 stand-in <port>" and logs
 * every accepted peer. The policy itself is the operator's: buildNetworkPolicy() for an
 * SmtpRelay made from crds/examples/minimal.yaml (allowed namespaces by label, no client
 * CIDRs, upstream an IP literal: another pod's address), created in the API server (which
 * defaults it), and the policy applied by the operator's own Applier (server-side apply,
 * field manager smtp-relay-operator); no operator runs.
 *
 * Each path is first shown open without the policy (the same pods, the same ports), then
 * shown shut with it: a blocked connection never reaches the listener and is counted by the
 * REJECT rule of the pod's KUBE-POD-FW-* chain. Probes run inside long-lived pods through
 * `ctr tasks exec` (same uid, netns and seccomp as the container), so they start only once
 * kube-router has programmed the pod's chain. Needs root, `make cluster` and `make image`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import YAML from 'yaml';
import { API_VERSION, FIELD_MANAGER, GROUP, KIND, METRICS_PORT, PLURAL, VERSION, type SmtpRelay } from '../../../operator/api/v1alpha1.js';
import { selectorLabels } from '../../../operator/builders/meta.js';
import { buildNetworkPolicy } from '../../../operator/builders/networkpolicy.js';
import { relayListeners } from '../../../operator/builders/relay-config.js';
import { Applier } from '../../../operator/runtime/apply.js';
import { Kube } from '../../../operator/runtime/kube.js';
import { NetworkPolicies } from '../../../operator/runtime/resources.js';
import { repoRoot } from '../controlplane/harness.js';
import type { SmtpRelaySpecInput } from '../smtprelay/defaults.js';
import { NODE_IP, clusterIpsets, clusterLog, projectImageLayout, startCluster, type Cluster } from './cluster.js';
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

/** One TCP connection: connected or the error code, the first line the server sent, the time taken. */
const PROBE = (host: string, port: number, timeoutMs: number): string => `
const net = require('net'); const t0 = Date.now();
const done = (r) => { console.log(JSON.stringify({ ...r, ms: Date.now() - t0 })); process.exit(0); };
const s = net.connect({ host: ${JSON.stringify(host)}, port: ${port} });
s.setTimeout(${timeoutMs});
let connected = false, banner = '';
s.on('connect', () => { connected = true; setTimeout(() => { s.destroy(); done({ connected, banner }); }, 1000); });
s.on('data', (d) => { banner += d; if (banner.includes('\\n')) { s.destroy(); done({ connected, banner: banner.trim() }); } });
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

describe('NetworkPolicy of the operator, enforced by kube-router, pod to pod (relay pods are node TCP listener stand-ins)', { timeout: 900_000 }, () => {
  let c: Cluster;
  let core: k8s.CoreV1Api;
  let stopped = false;
  let apiForwarder: Server | undefined;
  let apiForwarded = 0;
  const ips: Record<string, string> = {};
  const cids: Record<string, string> = {};
  let relay: SmtpRelay;
  let smtpPorts: number[];
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

  const probe = (from: string, to: string, port: number, timeoutMs = 5000): Promise<ProbeResult> => inPod<ProbeResult>(from, PROBE(ips[to] ?? to, port, timeoutMs));

  /**
   * The lines {"accepted":port,"from":ip} the listener pod logged for this peer and port, read
   * from the kubelet's log file (<dir>/pod-logs/<ns>_<pod>_<uid>/main/*.log: the API server
   * cannot reach the kubelet by the node's name here).
   */
  async function accepted(pod: string, port: number, fromPod: string): Promise<number> {
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

  /** Waits until kube-router has put the pod's chain in place and it runs through a policy chain. */
  async function enforced(pod: string): Promise<void> {
    await until(`kube-router's policy chain for ${pod}`, 60_000, async () => {
      const filter = execFileSync('iptables-save', ['-t', 'filter'], { encoding: 'utf8' });
      const chain = podChain(filter, pod);
      return chain && new RegExp(`^-A ${chain} .*-j ${POLICY_CHAIN}`, 'm').test(filter) ? true : undefined;
    }, async () => `kube-router:\n${await clusterLog('kube-router', 40)}`);
  }

  before(async () => {
    c = await startCluster({ log, certManager: false });
    core = c.kubeconfig.makeApiClient(k8s.CoreV1Api);
    await c.importImage(projectImageLayout());

    // The operator's NetworkPolicy for the minimal example, with namespace access instead of CIDRs.
    const example = YAML.parse(readFileSync(join(repoRoot(), 'crds', 'examples', 'minimal.yaml'), 'utf8')) as { metadata: { name: string; namespace: string }; spec: SmtpRelaySpecInput };
    const ns = example.metadata.namespace;
    // A real cluster's API server, as pods reach it: the `kubernetes` Service, here forwarded
    // from the node address to the API server's loopback port (it listens on 127.0.0.1 only).
    const api = new URL(c.cp.server);
    apiForwarder = createServer((s) => {
      apiForwarded++;
      const up = createConnection({ host: '127.0.0.1', port: Number(api.port) });
      s.pipe(up).pipe(s);
      s.on('error', () => up.destroy());
      up.on('error', () => s.destroy());
    });
    // Not in the NodePort range: kube-router lets pods reach node addresses there whatever their egress policy.
    let apiPort = 0;
    for (let i = 0; i < 10 && !(apiPort > 32767 || (apiPort > 0 && apiPort < 30000)); i++) {
      if (apiPort) await new Promise<void>((res) => apiForwarder!.close(() => res()));
      await new Promise<void>((res) => apiForwarder!.listen(0, NODE_IP, res));
      apiPort = (apiForwarder.address() as AddressInfo).port;
    }
    assert.ok(apiPort > 32767 || apiPort < 30000, `no port outside the NodePort range for the API forwarder (${apiPort})`);
    const kubernetes = await core.readNamespacedService({ name: 'kubernetes', namespace: 'default' });
    await c.kubeconfig.makeApiClient(k8s.DiscoveryV1Api).createNamespacedEndpointSlice({
      namespace: 'default',
      body: {
        metadata: { name: 'kubernetes-node', labels: { 'kubernetes.io/service-name': 'kubernetes', 'endpointslice.kubernetes.io/managed-by': 'smtp-relay-operator-test-harness' } },
        addressType: 'IPv4',
        endpoints: [{ addresses: [NODE_IP], conditions: { ready: true } }],
        ports: [{ name: kubernetes.spec!.ports![0]!.name!, port: apiPort, protocol: 'TCP' }],
      },
    });
    ips['api'] = kubernetes.spec!.clusterIP!;

    // Namespaces: the relay's, one allowed by label, one not, the monitoring one, the upstream's.
    const namespaces: Record<string, Record<string, string>> = { [ns]: {}, apps: { 'smtp-relay/client': 'true' }, other: {}, monitoring: {}, upstream: {} };
    for (const [name, labels] of Object.entries(namespaces)) await core.createNamespace({ body: { metadata: { name, labels } } });

    // The upstream first: the relay's upstream is its address.
    const up = nodePod('upstream', 'smtp', LISTENER([UPSTREAM_PORT, OTHER_UPSTREAM_PORT]), { port: UPSTREAM_PORT });
    await core.createNamespacedPod({ namespace: 'upstream', body: up });
    const upPod = await until('upstream pod Ready', 120_000, async () => {
      const p = await core.readNamespacedPod({ name: 'smtp', namespace: 'upstream' });
      return p.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? p : undefined;
    });
    ips['upstream/smtp'] = upPod.status!.podIP!;

    // The SmtpRelay exists in the API (no operator runs): the policy's owner reference must
    // name a live object, or the garbage collector deletes the policy at once. The builder
    // gets the object as the API server stored and defaulted it.
    const spec: SmtpRelaySpecInput = {
      ...structuredClone(example.spec),
      access: { allowedCidrs: [], allowedNamespaces: { matchLabels: { 'smtp-relay/client': 'true' } } },
      upstream: { ...example.spec.upstream, host: ips['upstream/smtp'], port: UPSTREAM_PORT },
    };
    relay = (await c.kubeconfig.makeApiClient(k8s.CustomObjectsApi).createNamespacedCustomObject({
      group: GROUP, version: VERSION, namespace: ns, plural: PLURAL,
      body: { apiVersion: API_VERSION, kind: KIND, metadata: { name: example.metadata.name, namespace: ns }, spec },
    })) as SmtpRelay;
    assert.deepEqual(relay.spec.access.allowedCidrs, []);
    smtpPorts = relayListeners(relay).map((l) => l.port);
    assert.ok(smtpPorts.length > 0);

    const relayLabels = selectorLabels(relay);
    const pods: Array<[string, k8s.V1Pod]> = [
      [`${ns}/relay`, nodePod(ns, 'relay', LISTENER([...smtpPorts, METRICS_PORT]), { labels: relayLabels, port: smtpPorts[0] })],
      [`${ns}/relay-probe`, nodePod(ns, 'relay-probe', IDLE, { labels: relayLabels })],
      [`${ns}/plain-probe`, nodePod(ns, 'plain-probe', IDLE, { labels: { app: 'plain' } })],
      ['apps/client', nodePod('apps', 'client', IDLE)],
      ['other/client', nodePod('other', 'client', IDLE)],
      ['monitoring/client', nodePod('monitoring', 'client', IDLE)],
    ];
    for (const [, body] of pods) await core.createNamespacedPod({ namespace: body.metadata!.namespace!, body });
    for (const [key, body] of [...pods, ['upstream/smtp', up] as [string, k8s.V1Pod]]) {
      const p = await until(`pod ${key} running`, 120_000, async () => {
        const r = await core.readNamespacedPod({ name: body.metadata!.name!, namespace: body.metadata!.namespace! });
        return r.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? r : undefined;
      });
      ips[key] = p.status!.podIP!;
      cids[key] = p.status!.containerStatuses![0]!.containerID!.replace('containerd://', '');
    }
    log(`pods: ${JSON.stringify(ips)}`);
  });

  after(async () => {
    apiForwarder?.close();
    if (c && !stopped) await c.stop();
  });

  const NS = (): string => relay.metadata.namespace;

  it('without the policy every path is open, pod to pod: SMTP and metrics from any namespace, the relay pod to any port and the API server', async () => {
    for (const port of [...smtpPorts, METRICS_PORT]) {
      const r = await probe('other/client', `${NS()}/relay`, port);
      assert.equal(r.banner, `220 stand-in ${port}`, `other/client -> relay:${port} ${JSON.stringify(r)}`);
    }
    const other = await probe(`${NS()}/relay-probe`, 'upstream/smtp', OTHER_UPSTREAM_PORT);
    assert.equal(other.banner, `220 stand-in ${OTHER_UPSTREAM_PORT}`, JSON.stringify(other));
    const before = apiForwarded;
    const api = await probe(`${NS()}/relay-probe`, 'api', 443);
    assert.equal(api.connected, true, `relay-probe -> kubernetes Service ${ips['api']}:443 ${JSON.stringify(api)}`);
    assert.ok(apiForwarded > before, 'the connection did not reach the API server forwarder');
  });

  it('the operator\'s NetworkPolicy, applied with its Applier, is programmed by kube-router for the relay-labelled pods', async () => {
    const np = buildNetworkPolicy(relay);
    const outcome = await new Applier({ kube: new Kube(c.kubeconfig), fieldManager: FIELD_MANAGER }).apply(NetworkPolicies, np as never, undefined);
    assert.equal(outcome, 'created');
    await enforced(`${NS()}/relay`);
    await enforced(`${NS()}/relay-probe`);
    // The pod without the relay's labels is selected by no policy: no policy chain for it.
    const filter = execFileSync('iptables-save', ['-t', 'filter'], { encoding: 'utf8' });
    const plain = podChain(filter, `${NS()}/plain-probe`);
    assert.ok(!plain || !new RegExp(`^-A ${plain} .*-j ${POLICY_CHAIN}`, 'm').test(filter), 'the unlabelled pod runs through a policy chain');
  });

  it('a client pod in an allowed namespace connects to the relay pod\'s SMTP ports', async () => {
    for (const port of smtpPorts) {
      const r = await probe('apps/client', `${NS()}/relay`, port);
      assert.equal(r.banner, `220 stand-in ${port}`, `apps/client -> relay:${port} ${JSON.stringify(r)}`);
    }
  });

  it('a pod in another namespace cannot connect: its SYN never reaches the relay pod, kube-router rejects it (ICMP port unreachable, so it fails at once rather than timing out)', async () => {
    for (const port of smtpPorts) {
      const seen = await accepted(`${NS()}/relay`, port, 'other/client');
      const rejectsBefore = rejected(`${NS()}/relay`);
      const r = await probe('other/client', `${NS()}/relay`, port);
      assert.equal(r.connected, false, `other/client -> relay:${port} connected: ${JSON.stringify(r)}`);
      // kube-router v2.10.0 ends each pod chain with `-j REJECT` (pod.go), not DROP: the
      // client's kernel turns the ICMP port-unreachable into ECONNREFUSED.
      assert.equal(r.error, 'ECONNREFUSED', JSON.stringify(r));
      assert.ok(rejected(`${NS()}/relay`) > rejectsBefore, 'kube-router\'s REJECT rule of the relay pod counted nothing');
      assert.equal(await accepted(`${NS()}/relay`, port, 'other/client'), seen, 'the listener accepted the blocked client');
    }
  });

  it('the metrics port answers only pods of the monitoring namespace', async () => {
    const mon = await probe('monitoring/client', `${NS()}/relay`, METRICS_PORT);
    assert.equal(mon.banner, `220 stand-in ${METRICS_PORT}`, `monitoring/client -> relay:${METRICS_PORT} ${JSON.stringify(mon)}`);
    for (const from of ['apps/client', 'other/client']) {
      const seen = await accepted(`${NS()}/relay`, METRICS_PORT, from);
      const r = await probe(from, `${NS()}/relay`, METRICS_PORT);
      assert.equal(r.connected, false, `${from} -> relay:${METRICS_PORT} ${JSON.stringify(r)}`);
      assert.equal(await accepted(`${NS()}/relay`, METRICS_PORT, from), seen);
    }
    // And the monitoring namespace gets no SMTP.
    const smtp = await probe('monitoring/client', `${NS()}/relay`, smtpPorts[0]!);
    assert.equal(smtp.connected, false, JSON.stringify(smtp));
  });

  it('a relay-labelled pod reaches DNS (CoreDNS through the kube-dns Service) and the upstream port, and nothing else: not the API server, not another port of the upstream host', async () => {
    const probePod = `${NS()}/relay-probe`;
    const dns = await inPod<{ address?: string; error?: string }>(probePod, LOOKUP('kube-dns.kube-system.svc.cluster.local'));
    assert.equal(dns.address, c.dnsIP, `DNS lookup from the relay pod: ${JSON.stringify(dns)}`);
    const svc = await inPod<{ address?: string; error?: string }>(probePod, LOOKUP('kubernetes.default.svc.cluster.local'));
    assert.equal(svc.address, ips['api'], JSON.stringify(svc));

    const up = await probe(probePod, 'upstream/smtp', UPSTREAM_PORT);
    assert.equal(up.banner, `220 stand-in ${UPSTREAM_PORT}`, `relay-probe -> upstream:${UPSTREAM_PORT} ${JSON.stringify(up)}`);

    const seen = await accepted('upstream/smtp', OTHER_UPSTREAM_PORT, probePod);
    const rejectsBefore = rejected(probePod);
    const other = await probe(probePod, 'upstream/smtp', OTHER_UPSTREAM_PORT);
    assert.equal(other.connected, false, `relay-probe -> upstream:${OTHER_UPSTREAM_PORT} ${JSON.stringify(other)}`);
    assert.equal(await accepted('upstream/smtp', OTHER_UPSTREAM_PORT, probePod), seen, 'the upstream accepted a connection on its other port');

    const apiBefore = apiForwarded;
    const api = await probe(probePod, 'api', 443);
    assert.equal(api.connected, false, `relay-probe -> API server ${JSON.stringify(api)}`);
    assert.equal(apiForwarded, apiBefore, 'a connection reached the API server');
    assert.ok(rejected(probePod) >= rejectsBefore + 2, 'kube-router\'s REJECT rule of the relay-probe pod did not count both blocked connections');

    // The same paths from a pod of the same namespace without the relay's labels stay open.
    const plainOther = await probe(`${NS()}/plain-probe`, 'upstream/smtp', OTHER_UPSTREAM_PORT);
    assert.equal(plainOther.banner, `220 stand-in ${OTHER_UPSTREAM_PORT}`, JSON.stringify(plainOther));
    const plainApi = await probe(`${NS()}/plain-probe`, 'api', 443);
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
