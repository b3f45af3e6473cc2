/**
 * The whole system without Docker, for `make demo` (test/demo/) and the end-to-end tests
 * (test/e2e/): the local control plane (etcd, kube-apiserver, kube-controller-manager), the
 * cert-manager stand-in with a ClusterIssuer, an upstream SMTP sink on the host (reachable
 * from pods as smtp.upstream.test), the container kubelet stand-in running pods under runc
 * from the image `make image` built, and the operator installed with the project's Helm
 * chart (`helm install`, its real RBAC, running as a container with its ServiceAccount token).
 *
 *   const env = await startEnvironment({ log });
 *   const relay = await env.applyRelay({ name: 'outbound', replicas: 2 });
 *   await env.waitRelayReady('outbound');
 *   const info = await env.send({ relay: 'outbound', ... });
 *   await env.stop();   // everything it started is stopped; nothing is left running
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { startControlPlane, repoRoot, type ControlPlane } from '../harness/controlplane/harness.js';
import { Kube, KubeError, MEDIA_MERGE_PATCH } from '../../operator/runtime/kube.js';
import { unpackImage } from '../harness/kubelet/image.js';
import { ContainerKubelet } from '../harness/kubelet/kubelet.js';
import { CertIssuerStandIn } from '../harness/certissuer/issuer.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { createPki, type Pki } from '../harness/support/pki.js';

const run = promisify(execFile);

export const UPSTREAM_HOSTNAME = 'smtp.upstream.test';
export const CLUSTER_ISSUER = 'stand-in-ca';
export const OPERATOR_NAMESPACE = 'smtp-relay-system';
export const RELAY_NAMESPACE = 'mail';
export const RELAY_HOSTNAME = 'relay.example.com';
/** The image name the chart and the operator use; the kubelet maps it to the local OCI image. */
export const IMAGE_REPOSITORY = 'smtp-relay-operator';
export const IMAGE_TAG = 'dev';

export type Log = (line: string) => void;

export interface RelayOptions {
  name: string;
  replicas?: number;
  users?: { name: string; allowedSenders: string[] }[];
  dkim?: boolean;
  /** spec.queue as written (absent: inline mode). */
  queue?: Record<string, unknown>;
  /** spec.resources as written (absent: the CRD's defaults, 1 CPU: one relay process). */
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
  /** A particular endpoint; default the first ready one of the Service. */
  endpoint?: Endpoint;
  /** Retries (new connection, next endpoint) on a connection-level or 4xx failure. */
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

export class Environment {
  readonly kube: Kube;
  private stopped = false;

  constructor(
    readonly cp: ControlPlane,
    readonly issuer: CertIssuerStandIn,
    readonly kubelet: ContainerKubelet,
    readonly sink: Sink,
    private readonly sinkPki: Pki,
    private readonly log: Log,
  ) {
    this.kube = new Kube(cp.kubeconfig);
  }

  /** `helm install` of charts/smtp-relay-operator; waits for the operator Deployment to be available. */
  async installOperator(): Promise<void> {
    const chart = join(repoRoot(), 'charts', 'smtp-relay-operator');
    try {
      await run(helmBin(), [
        'install', 'smtp-relay-operator', chart, '--namespace', OPERATOR_NAMESPACE, '--create-namespace',
        '--kubeconfig', this.cp.kubeconfigPath,
        '--set', `image.repository=${IMAGE_REPOSITORY}`, '--set', `image.tag=${IMAGE_TAG}`,
        // The stand-in kubelet probes every period; shorter periods make the demo quicker.
        '--set', 'readinessProbe.initialDelaySeconds=1', '--set', 'readinessProbe.periodSeconds=2',
      ], { maxBuffer: 16 << 20, env: { ...process.env, HELM_CACHE_HOME: join(this.cp.dir, 'helm-cache'), HELM_CONFIG_HOME: join(this.cp.dir, 'helm-config'), HELM_DATA_HOME: join(this.cp.dir, 'helm-data') } });
    } catch (err) {
      const e = err as { code?: string; stderr?: string };
      if (e.code === 'ENOENT') throw new Error(`helm not found at ${helmBin()}: run 'make helm'`);
      throw new Error(`helm install failed: ${e.stderr ?? String(err)}`);
    }
    await waitFor('the operator Deployment to be available', async () => {
      const d = await this.kube.get<{ status?: { availableReplicas?: number } }>(`/apis/apps/v1/namespaces/${OPERATOR_NAMESPACE}/deployments/smtp-relay-operator`);
      return (d.status?.availableReplicas ?? 0) >= 1;
    }, 120_000);
  }

  /** Creates the namespace, the upstream CA Secret and an SmtpRelay pointing at the sink. */
  async applyRelay(o: RelayOptions): Promise<void> {
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
          auth: { users: o.users ?? [{ name: 'app', allowedSenders: ['app@example.com'] }] },
          // Clients reach pods from the pods' host addresses (198.18.0.0/15, see test/harness/kubelet/netns.ts).
          access: { allowedCidrs: ['198.18.0.0/15'] },
          upstream: { host: UPSTREAM_HOSTNAME, port: this.sink.port, tls: 'starttls', caSecretRef: { name: 'upstream-ca', key: 'ca.crt' } },
          ...(o.dkim === false ? {} : { dkim: [{ domain: 'example.com', selector: 'relay1' }] }),
          ...(o.queue ? { queue: o.queue } : {}),
          ...(o.resources ? { resources: o.resources } : {}),
        },
      },
    });
  }

  async relay(name: string): Promise<Relay> {
    return this.kube.get<Relay>(`/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${name}`);
  }

  async waitRelayReady(name: string, ms = 180_000): Promise<Relay> {
    return waitFor(`SmtpRelay ${name} Ready`, async () => {
      const r = await this.relay(name);
      const ready = r.status?.conditions?.find((c) => c.type === 'Ready');
      return ready?.status === 'True' && r.status?.observedGeneration === r.metadata.generation ? r : undefined;
    }, ms);
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

  /** The relay's serving CA (the stand-in issuer's). */
  get relayCa(): string {
    return this.issuer.caPem;
  }

  /** One message over STARTTLS + AUTH PLAIN with nodemailer; returns the endpoint used and the reply. */
  async send(o: SendOptions): Promise<{ endpoint: Endpoint; response: string; messageId: string }> {
    const attempts = (o.retries ?? 0) + 1;
    let last: unknown;
    for (let i = 0; i < attempts; i++) {
      let ep = o.endpoint;
      if (!ep) {
        const eps = await this.endpoints(o.relay).catch(() => []);
        ep = eps[i % Math.max(1, eps.length)];
      }
      if (!ep) {
        last = new Error('no ready endpoint');
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

  /** Stops everything this environment started (pods first, then the stand-ins and the control plane). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try { await fn(); } catch (err) { this.log(`stop ${what}: ${String(err)}`); }
    };
    await step('kubelet', () => this.kubelet.stop({ graceSeconds: 5 }));
    await step('issuer', () => this.issuer.stop());
    await step('sink', () => this.sink.stop());
    await step('sink pki', () => this.sinkPki.cleanup());
    await step('control plane', () => this.cp.stop());
  }
}

export interface EnvironmentOptions {
  log?: Log;
  /** Called before each phase with a short title (the demo prints steps). */
  step?: (title: string) => void;
  /** Kubelet restart backoff base (default the kubelet's 10 s). */
  backoffBaseMs?: number;
  kubeletLog?: Log;
  /** The upstream sink requires AUTH with these credentials (default: no AUTH). */
  sinkAuth?: { user: string; pass: string };
}

/** Starts control plane, stand-ins and sink, and installs the operator with helm. */
export async function startEnvironment(o: EnvironmentOptions = {}): Promise<Environment> {
  const log = o.log ?? (() => {});
  const step = o.step ?? (() => {});
  if (process.getuid?.() !== 0) throw new Error('needs root: containers run under runc in network namespaces of their own (run as root, e.g. sudo make demo)');
  step('unpack the image built by make image');
  const image = await unpackImage();
  step('start the control plane (etcd, kube-apiserver, kube-controller-manager; CRDs: SmtpRelay and cert-manager\'s)');
  const cp = await startControlPlane({ log });
  let issuer: CertIssuerStandIn | undefined;
  let kubelet: ContainerKubelet | undefined;
  let sink: Sink | undefined;
  let pki: Pki | undefined;
  try {
    step(`start the cert-manager stand-in with ClusterIssuer ${CLUSTER_ISSUER}`);
    issuer = await CertIssuerStandIn.start({ kubeconfig: cp.kubeconfig, log });
    await issuer.ensureClusterIssuer(CLUSTER_ISSUER);
    step(`start the upstream SMTP sink (${UPSTREAM_HOSTNAME}, STARTTLS, own CA)`);
    pki = await createPki({ caName: 'upstream sink CA' });
    const cert = await pki.issue({ name: 'sink', dnsNames: [UPSTREAM_HOSTNAME], ips: [] });
    sink = await startSink({ cert, pki, ...(o.sinkAuth ? { auth: o.sinkAuth } : {}) });
    step('start the container kubelet stand-in (runc, a network namespace per pod)');
    kubelet = await ContainerKubelet.start({
      kubeconfig: cp.kubeconfig,
      image,
      hostServices: [{ hostnames: [UPSTREAM_HOSTNAME], port: sink.port, target: { host: '127.0.0.1', port: sink.port } }],
      ...(o.backoffBaseMs !== undefined ? { backoffBaseMs: o.backoffBaseMs } : {}),
      ...(o.kubeletLog ? { log: o.kubeletLog } : {}),
    });
    const env = new Environment(cp, issuer, kubelet, sink, pki, log);
    step('helm install the operator (charts/smtp-relay-operator) and wait for it to be available');
    await env.installOperator();
    return env;
  } catch (err) {
    await kubelet?.stop({ graceSeconds: 2 }).catch(() => {});
    await issuer?.stop().catch(() => {});
    await sink?.stop().catch(() => {});
    await pki?.cleanup().catch(() => {});
    await cp.stop().catch(() => {});
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
