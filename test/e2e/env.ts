/**
 * The whole system on a real one-node Kubernetes (test/harness/cluster/cluster.ts: the control
 * plane, kubelet, containerd + runc, CNI, kube-proxy, kube-scheduler, CoreDNS, cert-manager's
 * controllers and kube-router's NetworkPolicy controller, built from their Go modules), for
 * `make demo` (test/demo/) and the end-to-end tests (test/e2e/):
 *   - the image `make image` built, imported into the node's containerd;
 *   - cert-manager with a CA ClusterIssuer (its CA made here) that issues the relays' certificates;
 *   - an upstream SMTP sink on the host, on the node address, that pods reach as the Service
 *     smtp.upstream.svc.cluster.local (a Service without selector and an EndpointSlice to it);
 *   - the operator installed with the project's Helm chart (`helm install`, its real RBAC),
 *     scheduled and run as a pod by the real kubelet with its ServiceAccount token, talking to
 *     the API server through the `kubernetes` Service;
 *   - clients on the host send to a relay's Service (its ClusterIP, through kube-proxy), or to
 *     one pod's address when a test means one replica.
 *
 *   const env = await startEnvironment({ log });
 *   const relay = await env.applyRelay({ name: 'outbound', replicas: 2 });
 *   await env.waitRelayReady('outbound');
 *   const info = await env.send({ relay: 'outbound', ... });
 *   await env.stop();   // the cluster's stop(): nothing is left running
 */
import { execFile } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { repoRoot, type ControlPlane } from '../harness/controlplane/harness.js';
import { NODE_IP, NODE_NAME, clusterLog, projectImageLayout, startCluster, type Cluster } from '../harness/cluster/cluster.js';
import { Kube, KubeError, MEDIA_MERGE_PATCH } from '../../operator/runtime/kube.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { createPki, type Pki } from '../harness/support/pki.js';

const run = promisify(execFile);

/** The upstream sink as pods reach it: a Service (no selector) of the namespace `upstream`. */
export const UPSTREAM_HOSTNAME = 'smtp.upstream.svc.cluster.local';
export const UPSTREAM_NAMESPACE = 'upstream';
export const CLUSTER_ISSUER = 'e2e-ca';
export const OPERATOR_NAMESPACE = 'smtp-relay-system';
export const RELAY_NAMESPACE = 'mail';
export const RELAY_HOSTNAME = 'relay.example.com';
/** The image `make image` built, as imported into the node's containerd (never pulled). */
export const IMAGE_REPOSITORY = 'localhost/smtp-relay-operator';
export const IMAGE_TAG = 'dev';
/** Clients of the relays: the host (its connections to Services are masqueraded to its pod-side address) and pods. */
export const CLIENT_CIDRS = ['198.19.0.0/16'];

export type Log = (line: string) => void;

/** The relays' resources unless a test gives its own: two workers per pod (see RelayOptions.resources). */
export const E2E_RESOURCES = { requests: { cpu: '100m', memory: '128Mi' }, limits: { cpu: '2', memory: '512Mi' } };

export interface RelayOptions {
  name: string;
  replicas?: number;
  /** spec.auth.users as written; a user names a password Secret (default) or a ServiceAccount. */
  users?: { name: string; allowedSenders: string[]; serviceAccount?: { namespace: string; name: string } }[];
  /** spec.auth.lockout as written (absent: the CRD's defaults). */
  lockout?: { maxFailures: number; window: string; duration: string };
  dkim?: boolean;
  /** spec.queue as written (absent: inline mode). */
  queue?: Record<string, unknown>;
  /**
   * spec.resources as written (absent: E2E_RESOURCES, a 2-CPU limit, so the operator
   * writes `workers: 2` and every relay of the suite runs two worker processes, as a relay
   * given two cores does in production; issue 17).
   */
  resources?: Record<string, unknown>;
}

export interface Endpoint { ip: string; port: number; pod?: string }

export interface SendOptions {
  relay: string;
  user: string;
  password: string;
  from: string;
  to: string;
  subject?: string;
  text?: string;
  /** A particular endpoint (a pod's address); default the relay's Service (ClusterIP, through kube-proxy). */
  endpoint?: Endpoint;
  /** Retries (a new connection) on a connection-level or 4xx failure. */
  retries?: number;
}

interface Relay { metadata: { name: string; generation?: number }; status?: { observedGeneration?: number; conditions?: { type: string; status: string; reason?: string; message?: string }[]; dnsRecords?: { type: string; name: string; value: string }[] } }

export function helmBin(): string {
  return process.env['HELM'] ?? join(repoRoot(), '.cache', 'bin', 'helm');
}

import { waitFor } from '../harness/support/poll.js';
export { waitFor };

import { httpGet } from '../harness/support/http.js';
export { httpGet };

/** A running pod of the node as the runtime sees it: its containers' main process ids (from containerd). */
export interface NodePod {
  namespace: string;
  name: string;
  uid: string;
  podIP?: string;
  ready: boolean;
  /** The host pid of each running container's main process, in the pod's container order. */
  pids: number[];
  /** containerd ids of the running containers, by container name. */
  containerIds: Record<string, string>;
}

interface PodObj {
  metadata: { name: string; namespace: string; uid: string; deletionTimestamp?: string };
  spec?: { nodeName?: string; containers: { name: string }[] };
  status?: { podIP?: string; conditions?: { type: string; status: string }[]; containerStatuses?: { name: string; containerID?: string; state?: { running?: unknown } }[] };
}

/**
 * What the node runs, read from the real kubelet's and containerd's own records: the pods of
 * the node (API) with their containers' pids (`ctr tasks ls`), and the containers' logs from
 * the kubelet's pod log folder (CRI log format). Each log file is kept open from the moment it
 * is seen, so the lines of a container whose pod was deleted (the kubelet removes its folder)
 * stay readable.
 */
export class NodeView {
  private readonly files = new Map<string, { key: string; fd: number; pos: number; partial: string }>();
  private readonly text = new Map<string, string>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly cluster: Cluster, private readonly kube: Kube) {
    this.timer = setInterval(() => this.scan(), 250);
    this.timer.unref();
  }

  /** Reads what was appended to every container log file of the node since the last scan. */
  scan(): void {
    const root = join(this.cluster.dir, 'pod-logs');
    if (!existsSync(root)) return;
    let podDirs: string[] = [];
    try { podDirs = readdirSync(root); } catch { return; }
    for (const podDir of podDirs) {
      // <namespace>_<pod>_<uid>/<container>/<restart>.log
      const [ns, pod] = podDir.split('_');
      let containers: string[] = [];
      try { containers = readdirSync(join(root, podDir)); } catch { continue; }
      for (const container of containers) {
        let logs: string[] = [];
        try { logs = readdirSync(join(root, podDir, container)).filter((f) => /^\d+\.log$/.test(f)); } catch { continue; }
        for (const f of logs.sort((a, b) => parseInt(a) - parseInt(b))) {
          const path = join(root, podDir, container, f);
          if (this.files.has(path)) continue;
          try {
            this.files.set(path, { key: `${ns}/${pod}/${container}`, fd: openSync(path, 'r'), pos: 0, partial: '' });
          } catch { /* gone already */ }
        }
      }
    }
    const buf = Buffer.alloc(1 << 16);
    for (const f of this.files.values()) {
      for (let i = 0; i < 1000; i++) {
        let n = 0;
        try { n = readSync(f.fd, buf, 0, buf.length, f.pos); } catch { break; }
        if (n <= 0) break;
        f.pos += n;
        const chunk = f.partial + buf.subarray(0, n).toString('utf8');
        const lines = chunk.split('\n');
        f.partial = lines.pop() ?? '';
        let out = '';
        for (const l of lines) {
          // CRI: <time> <stream> <P|F> <text>; P: a partial line continued by the next entry
          const m = /^\S+ (?:stdout|stderr) ([PF]) ?(.*)$/.exec(l);
          if (m) out += m[2]! + (m[1] === 'F' ? '\n' : '');
        }
        this.text.set(f.key, (this.text.get(f.key) ?? '') + out);
      }
    }
  }

  /** Everything container `container` (default: the pod's first container seen) of pod ns/name wrote, every restart included. */
  logs(namespace: string, pod: string, container?: string): string {
    this.scan();
    if (container) return this.text.get(`${namespace}/${pod}/${container}`) ?? '';
    const key = [...this.text.keys()].find((k) => k.startsWith(`${namespace}/${pod}/`));
    return key ? this.text.get(key)! : '';
  }

  /** Every container that logged, as namespace/pod/container. */
  loggedContainers(): string[] {
    this.scan();
    return [...this.text.keys()].sort();
  }

  /** containerd task pid by container id. */
  async taskPids(): Promise<Map<string, number>> {
    const out = await this.cluster.ctr(['tasks', 'ls']);
    const m = new Map<string, number>();
    for (const l of out.split('\n').slice(1)) {
      const [id, pid, status] = l.trim().split(/\s+/);
      if (id && pid && status === 'RUNNING') m.set(id, Number(pid));
    }
    return m;
  }

  /** The node's pods (not being deleted) with their running containers' pids. */
  async runningPods(): Promise<NodePod[]> {
    const list = await this.kube.get<{ items: PodObj[] }>('/api/v1/pods', { query: { fieldSelector: `spec.nodeName=${NODE_NAME}` } });
    const tasks = await this.taskPids();
    const out: NodePod[] = [];
    for (const p of list.items) {
      if (p.metadata.deletionTimestamp) continue;
      const containerIds: Record<string, string> = {};
      const pids: number[] = [];
      for (const c of p.spec?.containers ?? []) {
        const st = p.status?.containerStatuses?.find((x) => x.name === c.name);
        const id = st?.containerID?.replace(/^containerd:\/\//, '');
        if (!id || !st?.state?.running) continue;
        containerIds[c.name] = id;
        const pid = tasks.get(id);
        if (pid) pids.push(pid);
      }
      if (pids.length === 0) continue;
      out.push({
        namespace: p.metadata.namespace, name: p.metadata.name, uid: p.metadata.uid,
        ...(p.status?.podIP ? { podIP: p.status.podIP } : {}),
        ready: p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
        pids, containerIds,
      });
    }
    return out;
  }

  /** Every running container task's pid (pause sandboxes included). */
  async containerPids(): Promise<number[]> {
    return [...(await this.taskPids()).values()];
  }

  /** Signals a container's main process through containerd (as a crash or the OOM killer would end it). */
  async killContainer(namespace: string, pod: string, container: string, signal = 'SIGKILL'): Promise<void> {
    const p = (await this.runningPods()).find((x) => x.namespace === namespace && x.name === pod);
    const id = p?.containerIds[container];
    if (!id) throw new Error(`no running container ${container} in pod ${namespace}/${pod}`);
    await this.cluster.ctr(['tasks', 'kill', '-s', signal, id]);
  }

  close(): void {
    clearInterval(this.timer);
    this.scan();
    for (const f of this.files.values()) {
      try { closeSync(f.fd); } catch { /* closed */ }
    }
    this.files.clear();
  }
}

/**
 * cert-manager's CA ClusterIssuer of the environment (a CA made here, its key pair in a
 * Secret of the cert-manager namespace) and the renewal `cmctl renew` does.
 */
export class CertManagerCa {
  constructor(private readonly kube: Kube, readonly caPem: string) {}

  static async create(kube: Kube, pki: Pki, name: string): Promise<CertManagerCa> {
    await kube.request('POST', '/api/v1/namespaces/cert-manager/secrets', {
      body: { metadata: { name }, type: 'kubernetes.io/tls', stringData: { 'tls.crt': pki.ca.certPem, 'tls.key': pki.ca.keyPem } },
    });
    await kube.request('POST', '/apis/cert-manager.io/v1/clusterissuers', {
      body: { apiVersion: 'cert-manager.io/v1', kind: 'ClusterIssuer', metadata: { name }, spec: { ca: { secretName: name } } },
    });
    await waitFor(`ClusterIssuer ${name} Ready`, async () => {
      const i = await kube.get<{ status?: { conditions?: { type: string; status: string }[] } }>(`/apis/cert-manager.io/v1/clusterissuers/${name}`);
      return i.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined;
    }, 60_000);
    return new CertManagerCa(kube, pki.ca.certPem);
  }

  /** As `cmctl renew`: the Certificate's Issuing condition set to True (reason ManuallyTriggered) on its status. */
  async renew(namespace: string, name: string): Promise<void> {
    const path = `/apis/cert-manager.io/v1/namespaces/${namespace}/certificates/${name}`;
    const c = await this.kube.get<{ metadata: { generation?: number }; status?: { conditions?: { type: string }[] } }>(path);
    const conditions = (c.status?.conditions ?? []).filter((x) => x.type !== 'Issuing');
    conditions.push({ type: 'Issuing', status: 'True', reason: 'ManuallyTriggered', message: 'Certificate re-issuance manually triggered', lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, 'Z'), observedGeneration: c.metadata.generation } as { type: string });
    await this.kube.request('PATCH', `${path}/status`, { contentType: MEDIA_MERGE_PATCH, body: { status: { conditions } } });
  }

  /** Waits for the Certificate's status.revision to reach `revision` with Ready=True. */
  async waitForRevision(namespace: string, name: string, revision: number, ms = 120_000): Promise<{ status?: { revision?: number } }> {
    return waitFor(`Certificate ${namespace}/${name} revision ${revision}`, async () => {
      const c = await this.kube.get<{ status?: { revision?: number; conditions?: { type: string; status: string }[] } }>(`/apis/cert-manager.io/v1/namespaces/${namespace}/certificates/${name}`);
      return (c.status?.revision ?? 0) >= revision && c.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True') ? c : undefined;
    }, ms);
  }
}

export class Environment {
  readonly kube: Kube;
  readonly cp: ControlPlane;
  readonly node: NodeView;
  private stopped = false;
  /** Relays applied with E2E_RESOURCES: waitRelayReady checks they run two workers. */
  private readonly twoWorkers = new Set<string>();

  constructor(
    readonly cluster: Cluster,
    readonly issuer: CertManagerCa,
    readonly sink: Sink,
    private readonly pkis: Pki[],
    private readonly log: Log,
  ) {
    this.cp = cluster.cp;
    this.kube = new Kube(cluster.kubeconfig);
    this.node = new NodeView(cluster, this.kube);
  }

  /** `helm install` of charts/smtp-relay-operator; waits for the operator Deployment to be available. */
  async installOperator(): Promise<void> {
    const chart = join(repoRoot(), 'charts', 'smtp-relay-operator');
    try {
      await run(helmBin(), [
        'install', 'smtp-relay-operator', chart, '--namespace', OPERATOR_NAMESPACE, '--create-namespace',
        '--kubeconfig', this.cp.kubeconfigPath,
        '--set', `image.repository=${IMAGE_REPOSITORY}`, '--set', `image.tag=${IMAGE_TAG}`,
        // Imported into containerd, never pulled (no registry here).
        '--set', 'image.pullPolicy=Never', '--set', 'relayImage.pullPolicy=Never',
        // Shorter probe periods make the demo quicker.
        '--set', 'readinessProbe.initialDelaySeconds=1', '--set', 'readinessProbe.periodSeconds=2',
      ], { maxBuffer: 16 << 20, env: { ...process.env, HELM_CACHE_HOME: join(this.cluster.dir, 'helm-cache'), HELM_CONFIG_HOME: join(this.cluster.dir, 'helm-config'), HELM_DATA_HOME: join(this.cluster.dir, 'helm-data') } });
    } catch (err) {
      const e = err as { code?: string; stderr?: string };
      if (e.code === 'ENOENT') throw new Error(`helm not found at ${helmBin()}: run 'make helm'`);
      throw new Error(`helm install failed: ${e.stderr ?? String(err)}`);
    }
    await waitFor('the operator Deployment to be available', async () => {
      const d = await this.kube.get<{ status?: { availableReplicas?: number } }>(`/apis/apps/v1/namespaces/${OPERATOR_NAMESPACE}/deployments/smtp-relay-operator`);
      return (d.status?.availableReplicas ?? 0) >= 1;
    }, 180_000).catch(async (err: Error) => {
      const pods = await this.kube.get<{ items: PodObj[] }>(`/api/v1/namespaces/${OPERATOR_NAMESPACE}/pods`).catch(() => ({ items: [] }));
      throw new Error(`${err.message}\npods: ${JSON.stringify(pods.items.map((p) => p.status))}\noperator log:\n${pods.items.map((p) => this.node.logs(OPERATOR_NAMESPACE, p.metadata.name).slice(-3000)).join('\n')}\nkubelet:\n${await clusterLog('kubelet', 20)}`);
    });
  }

  /** Creates the namespace, the upstream CA Secret and an SmtpRelay pointing at the sink. */
  async applyRelay(o: RelayOptions): Promise<void> {
    if (!o.resources || o.resources === E2E_RESOURCES) this.twoWorkers.add(o.name);
    await this.kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: RELAY_NAMESPACE } } }).catch((err) => {
      if (!(err instanceof KubeError && err.code === 409)) throw err;
    });
    await this.kube.request('POST', `/api/v1/namespaces/${RELAY_NAMESPACE}/secrets`, {
      body: { metadata: { name: 'upstream-ca' }, stringData: { 'ca.crt': this.sink.caPem } },
    }).catch((err) => {
      if (!(err instanceof KubeError && err.code === 409)) throw err;
    });
    await this.kube.request('POST', `/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays`, {
      body: {
        apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay',
        metadata: { name: o.name, namespace: RELAY_NAMESPACE },
        spec: {
          replicas: o.replicas ?? 2,
          hostname: RELAY_HOSTNAME,
          tls: { issuerRef: { name: CLUSTER_ISSUER, kind: 'ClusterIssuer' } },
          auth: { users: o.users ?? [{ name: 'app', allowedSenders: ['app@example.com'] }], ...(o.lockout ? { lockout: o.lockout } : {}) },
          access: { allowedCidrs: CLIENT_CIDRS },
          upstream: { host: UPSTREAM_HOSTNAME, port: this.sink.port, tls: 'starttls', caSecretRef: { name: 'upstream-ca', key: 'ca.crt' } },
          ...(o.dkim === false ? {} : { dkim: [{ domain: 'example.com', selector: 'relay1' }] }),
          ...(o.queue ? { queue: o.queue } : {}),
          resources: o.resources ?? E2E_RESOURCES,
        },
      },
    });
  }

  async relay(name: string): Promise<Relay> {
    return this.kube.get<Relay>(`/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${name}`);
  }

  async waitRelayReady(name: string, ms = 180_000): Promise<Relay> {
    const relay = await waitFor(`SmtpRelay ${name} Ready`, async () => {
      const r = await this.relay(name);
      const ready = r.status?.conditions?.find((c) => c.type === 'Ready');
      return ready?.status === 'True' && r.status?.observedGeneration === r.metadata.generation ? r : undefined;
    }, ms);
    if (this.twoWorkers.has(name)) {
      const config = await this.kube.get<{ data?: Record<string, string> }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/configmaps/${name}-config`);
      if (!/^workers: 2$/m.test(Object.values(config.data ?? {}).join('\n'))) throw new Error(`SmtpRelay ${name}: the operator did not write workers: 2 for a 2-CPU limit`);
    }
    return relay;
  }

  /** The password of a user Secret (kubernetes.io/basic-auth). */
  async userPassword(relay: string, user: string): Promise<string> {
    const s = await this.kube.get<{ data?: Record<string, string> }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/${relay}-user-${user}`);
    const p = s.data?.['password'];
    if (!p) throw new Error(`Secret ${relay}-user-${user} has no password`);
    return Buffer.from(p, 'base64').toString('utf8');
  }

  /** Ready endpoints of the relay Service's submission port, from its EndpointSlices. */
  async endpoints(relay: string, portName = 'submission'): Promise<Endpoint[]> {
    const sl = await this.kube.get<{ items: { endpoints?: { addresses: string[]; conditions?: { ready?: boolean }; targetRef?: { name?: string } }[]; ports?: { name?: string; port?: number }[] }[] }>(
      `/apis/discovery.k8s.io/v1/namespaces/${RELAY_NAMESPACE}/endpointslices`, { query: { labelSelector: `kubernetes.io/service-name=${relay}` } });
    const out: Endpoint[] = [];
    for (const s of sl.items) {
      const port = s.ports?.find((p) => p.name === portName)?.port;
      if (port === undefined) continue;
      for (const e of s.endpoints ?? []) {
        if (!e.conditions?.ready) continue;
        for (const ip of e.addresses) out.push({ ip, port, ...(e.targetRef?.name ? { pod: e.targetRef.name } : {}) });
      }
    }
    return out.sort((a, b) => a.ip.localeCompare(b.ip));
  }

  async waitEndpoints(relay: string, n: number, ms = 120_000): Promise<Endpoint[]> {
    return waitFor(`${n} ready endpoints of Service ${relay}`, async () => {
      const e = await this.endpoints(relay);
      return e.length === n ? e : undefined;
    }, ms);
  }

  /** Per relay pod, how many times its relay logged a reload of its users file (`"event":"reload","kind":"users"`). */
  async usersReloads(relay: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const p of await this.relayPods(relay)) {
      const n = this.node.logs(RELAY_NAMESPACE, p.name, 'relay').split('\n').filter((l) => l.includes('"event":"reload"') && l.includes('"kind":"users"')).length;
      out.set(p.name, n);
    }
    return out;
  }

  /**
   * Waits until every relay pod of `before` reloaded its users file again: a changed password
   * reaches the pods through the kubelet's Secret volume update (its sync period, ~10 s here),
   * and trying the new password until then would trip the relay's failed-login lockout.
   */
  async waitUsersReloaded(relay: string, before: Map<string, number>, ms = 120_000): Promise<void> {
    await waitFor(`every pod of ${relay} to reload its users file`, async () => {
      const now = await this.usersReloads(relay);
      return [...before].every(([pod, n]) => (now.get(pod) ?? 0) > n) ? true : undefined;
    }, ms, 500);
  }

  /** The relay Service's ClusterIP and port `portName`: clients there go through kube-proxy to any ready pod. */
  async serviceEndpoint(relay: string, portName = 'submission'): Promise<Endpoint> {
    const svc = await this.kube.get<{ spec: { clusterIP: string; ports: { name?: string; port: number }[] } }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/services/${relay}`);
    const port = svc.spec.ports.find((p) => p.name === portName)?.port;
    if (port === undefined) throw new Error(`Service ${relay} has no port ${portName}`);
    return { ip: svc.spec.clusterIP, port };
  }

  /** The relay's serving CA (the ClusterIssuer's). */
  get relayCa(): string {
    return this.issuer.caPem;
  }

  /** One message over STARTTLS + AUTH PLAIN with nodemailer; returns the endpoint used and the reply. */
  async send(o: SendOptions): Promise<{ endpoint: Endpoint; response: string; messageId: string }> {
    const attempts = (o.retries ?? 0) + 1;
    let last: unknown;
    for (let i = 0; i < attempts; i++) {
      const ep = o.endpoint ?? (await this.serviceEndpoint(o.relay).catch(() => undefined));
      if (!ep) {
        last = new Error(`no Service ${o.relay}`);
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      const t = nodemailer.createTransport({
        host: ep.ip, port: ep.port, secure: false, requireTLS: true,
        tls: { ca: this.relayCa, servername: RELAY_HOSTNAME, minVersion: 'TLSv1.2' },
        auth: { user: o.user, pass: o.password, method: 'PLAIN' },
        connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000,
      });
      try {
        const info = await t.sendMail({ from: o.from, to: o.to, subject: o.subject ?? 'test', text: o.text ?? 'hello', headers: { 'X-E2E-Attempt': String(i) } });
        return { endpoint: ep, response: info.response, messageId: info.messageId };
      } catch (err) {
        last = err;
        const code = (err as { responseCode?: number }).responseCode;
        if (code !== undefined && code >= 500) throw err;
        await new Promise((r) => setTimeout(r, 500));
      } finally {
        t.close();
      }
    }
    throw last instanceof Error ? last : new Error(String(last));
  }

  /** `/metrics` of a relay pod (its metrics port). */
  async metrics(podIP: string): Promise<string> {
    return (await httpGet(podIP, 9090, '/metrics')).body;
  }

  async patchRelay(name: string, patch: object): Promise<void> {
    await this.kube.request('PATCH', `/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${name}`, { contentType: MEDIA_MERGE_PATCH, body: patch });
  }

  /** Relay pods (by the operator's instance label) with their uid, IP, restarts and readiness. */
  async relayPods(relay: string): Promise<{ name: string; uid: string; ip?: string; ready: boolean; restarts: number; deleting: boolean }[]> {
    const list = await this.kube.get<{ items: { metadata: { name: string; uid: string; deletionTimestamp?: string }; status?: { podIP?: string; conditions?: { type: string; status: string }[]; containerStatuses?: { restartCount: number }[] } }[] }>(
      `/api/v1/namespaces/${RELAY_NAMESPACE}/pods`, { query: { labelSelector: `app.kubernetes.io/instance=${relay}` } });
    return list.items.map((p) => ({
      name: p.metadata.name,
      uid: p.metadata.uid,
      ...(p.status?.podIP ? { ip: p.status.podIP } : {}),
      ready: p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
      restarts: p.status?.containerStatuses?.[0]?.restartCount ?? 0,
      deleting: p.metadata.deletionTimestamp !== undefined,
    }));
  }

  /** Stops everything this environment started: the cluster (pods first, then the node, the add-ons and the control plane), the sink. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    let failure: unknown;
    const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try { await fn(); } catch (err) { this.log(`stop ${what}: ${String(err)}`); failure ??= err; }
    };
    await step('cluster', () => this.cluster.stop());
    this.node.close();
    await step('sink', () => this.sink.stop());
    for (const p of this.pkis) await step('pki', () => p.cleanup());
    // The cluster's stop() throws when something is left on the machine: so does this.
    if (failure) throw failure;
  }
}

export interface EnvironmentOptions {
  log?: Log;
  /** Called before each phase with a short title (the demo prints steps). */
  step?: (title: string) => void;
  /** The upstream sink requires AUTH with these credentials (default: no AUTH). */
  sinkAuth?: { user: string; pass: string };
}

/** Starts the one-node cluster, the CA ClusterIssuer and the sink, and installs the operator with helm. */
export async function startEnvironment(o: EnvironmentOptions = {}): Promise<Environment> {
  const log = o.log ?? (() => {});
  const step = o.step ?? (() => {});
  if (process.getuid?.() !== 0) throw new Error('needs root: the one-node cluster configures network interfaces, iptables, mounts and cgroups (run as root, e.g. sudo make demo)');
  step('start the one-node cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet + containerd + runc, CNI, kube-proxy, CoreDNS, cert-manager, kube-router)');
  const cluster = await startCluster({ log });
  const pkis: Pki[] = [];
  let sink: Sink | undefined;
  try {
    step('import the image built by make image into the node\'s containerd');
    await cluster.importImage(projectImageLayout());
    const kube = new Kube(cluster.kubeconfig);
    step(`cert-manager: CA ClusterIssuer ${CLUSTER_ISSUER}`);
    const caPki = await createPki({ caName: 'e2e cluster issuer CA' });
    pkis.push(caPki);
    const issuer = await CertManagerCa.create(kube, caPki, CLUSTER_ISSUER);
    step(`start the upstream SMTP sink on the node address (${UPSTREAM_HOSTNAME}, STARTTLS, own CA)`);
    const pki = await createPki({ caName: 'upstream sink CA' });
    pkis.push(pki);
    const cert = await pki.issue({ name: 'sink', dnsNames: [UPSTREAM_HOSTNAME], ips: [] });
    sink = await startSink({ cert, pki, host: NODE_IP, ...(o.sinkAuth ? { auth: o.sinkAuth } : {}) });
    // Pods reach it by name: a Service without selector and an EndpointSlice to the node address.
    await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: UPSTREAM_NAMESPACE } } });
    await kube.request('POST', `/api/v1/namespaces/${UPSTREAM_NAMESPACE}/services`, {
      body: { metadata: { name: 'smtp' }, spec: { ports: [{ name: 'smtp', port: sink.port, targetPort: sink.port, protocol: 'TCP' }] } },
    });
    await kube.request('POST', `/apis/discovery.k8s.io/v1/namespaces/${UPSTREAM_NAMESPACE}/endpointslices`, {
      body: {
        metadata: { name: 'smtp-node', labels: { 'kubernetes.io/service-name': 'smtp', 'endpointslice.kubernetes.io/managed-by': 'smtp-relay-operator-e2e' } },
        addressType: 'IPv4', endpoints: [{ addresses: [NODE_IP], conditions: { ready: true } }], ports: [{ name: 'smtp', port: sink.port, protocol: 'TCP' }],
      },
    });
    const env = new Environment(cluster, issuer, sink, pkis, log);
    step('helm install the operator (charts/smtp-relay-operator) and wait for its pod to be available');
    await env.installOperator();
    return env;
  } catch (err) {
    await cluster.stop().catch((e: Error) => log(e.message));
    await sink?.stop().catch(() => {});
    for (const p of pkis) await p.cleanup().catch(() => {});
    throw err;
  }
}

/**
 * The serial number of the certificate a relay endpoint serves after STARTTLS (a new
 * connection each time), verified against `ca` for `servername`.
 */
export async function servedCertificateSerial(ep: Endpoint, ca: string, servername = RELAY_HOSTNAME): Promise<string> {
  const net = await import('node:net');
  const tls = await import('node:tls');
  return new Promise<string>((resolve, reject) => {
    const sock = net.connect({ host: ep.ip, port: ep.port });
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('STARTTLS probe timed out')); }, 10_000);
    let buf = '';
    let stage = 0;
    sock.setEncoding('utf8');
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    sock.on('data', (d: string) => {
      buf += d;
      if (!/\r\n$/.test(buf)) return;
      const last = buf.trimEnd().split('\r\n').pop() ?? '';
      if (/^\d{3}-/.test(last)) return;
      const code = Number(last.slice(0, 3));
      buf = '';
      if (stage === 0 && code === 220) { stage = 1; sock.write('EHLO probe.example\r\n'); return; }
      if (stage === 1 && code === 250) { stage = 2; sock.write('STARTTLS\r\n'); return; }
      if (stage === 2 && code === 220) {
        stage = 3;
        sock.removeAllListeners('data');
        const t = tls.connect({ socket: sock, servername, ca }, () => {
          clearTimeout(timer);
          const serial = t.getPeerCertificate().serialNumber;
          t.end('QUIT\r\n');
          t.destroy();
          resolve(serial);
        });
        t.on('error', (e) => { clearTimeout(timer); reject(e); });
        return;
      }
      clearTimeout(timer);
      sock.destroy();
      reject(new Error(`unexpected reply at stage ${stage}: ${last}`));
    });
  });
}
