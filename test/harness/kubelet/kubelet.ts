/**
 * The container kubelet: a STAND-IN for a node's kubelet, for the tests and `make demo`
 * (no real kubelet, no scheduler and no container engine run here). It plays the kubelet's
 * part against the real API server faithfully enough that what works here works on a node:
 *
 * - registers a Node (Ready, with capacity/allocatable) and deletes it on stop();
 * - watches Pods; binds the unscheduled ones to its node itself (POST pods/<name>/binding,
 *   the scheduler's job, as no scheduler runs: only pods for the default scheduler whose
 *   nodeSelector the node's labels satisfy; others stay Pending), and runs the ones bound to it;
 * - runs each container under runc from the image `make image` built (every pod image name
 *   maps to that one local OCI image), with the OCI config derived from the pod spec
 *   (runc.ts: user, fsGroup, capabilities, no_new_privs, read-only root, seccomp
 *   RuntimeDefault, limits), in a network namespace of its own per pod (netns.ts);
 * - resolves env: value ($(VAR) expansion), valueFrom secretKeyRef / configMapKeyRef,
 *   fieldRef (metadata.name/namespace/uid/labels/annotations, spec.nodeName,
 *   spec.serviceAccountName, status.podIP/hostIP), envFrom, and KUBERNETES_SERVICE_HOST/PORT;
 * - materializes volumes: ConfigMap, Secret (items, defaultMode, optional, fsGroup group
 *   ownership), projected (secret, configMap, serviceAccountToken, downwardAPI), emptyDir
 *   (disk or Memory) and, when automount is on, the service-account token volume
 *   (kube-api-access-*, which the ServiceAccount admission plugin adds in a cluster; the test
 *   API server runs without that plugin, so the kubelet adds it the same way), in the
 *   atomic-writer layout (atomic-writer.ts) on a tmpfs per pod (never on disk, as the kubelet
 *   keeps them), bind-mounted at the mount paths, and kept in
 *   sync when the Secrets/ConfigMaps change (it watches them);
 * - runs readiness/liveness probes (httpGet, tcpSocket) against the pod IP and writes the pod
 *   status (phase, podIP(s), hostIP, startTime, conditions PodScheduled/Initialized/
 *   ContainersReady/Ready, containerStatuses with ready/started/restartCount/state/lastState),
 *   so Deployment availability and the Service's EndpointSlices are real;
 * - restarts exited containers per restartPolicy with the kubelet's backoff (immediately the
 *   first time, then 10 s doubling up to 5 min; CrashLoopBackOff while waiting), and a
 *   container whose liveness probe fails;
 * - on deletion: SIGTERM, waits the grace period, SIGKILL, removes the containers, network and
 *   volumes, then deletes the pod object with grace period 0;
 * - keeps each container's log (stdout+stderr) for printing: logs(namespace, pod, container).
 *
 * Pods reach the host only through `hostServices`: a name in each pod's /etc/hosts that
 * points at the pod's host address, where a proxy forwards to a loopback service (this is
 * what a Service's ClusterIP and cluster DNS do in a cluster). The API server is always one:
 * kubernetes.default.svc:443 (a name its serving certificate carries); the in-cluster config
 * env (KUBERNETES_SERVICE_HOST=kubernetes.default.svc, _PORT=443) points there.
 *
 * Not done (not needed by this project's pods): init/ephemeral/sidecar containers, startup
 * and exec probes, hostPath/PVC volumes, subPath updates, image pulls, service-link env vars.
 */
import { execFileSync } from 'node:child_process';
import { createConnection } from 'node:net';
import { request as httpRequest } from 'node:http';
import { appendFileSync, chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeConfig, V1Container, V1Pod, V1PodSpec, V1Volume, V1ConfigMap, V1Secret, V1Probe, V1KeyToPath, V1ServiceAccount } from '@kubernetes/client-node';
import { Kube, KubeError, isNotFound, MEDIA_MERGE_PATCH, type KubeObject } from '../../../operator/runtime/kube.js';
import { Informer } from '../../../operator/runtime/informer.js';
import { writeAtomic, type Payload } from './atomic-writer.js';
import type { UnpackedImage } from './image.js';
import { onProcessEnd } from './cleanup.js';
import { createPodNetwork, proxyHostPort, type PodNetwork } from './netns.js';
import { ContainerConfigError, expandVars, RuncRunner, type EnvVar, type ExitStatus, type RunningContainer, type VolumeSource } from './runc.js';
import { quantityBytes } from './quantity.js';

type Pod = V1Pod & KubeObject;
type ConfigMap = V1ConfigMap & KubeObject;
type Secret = V1Secret & KubeObject;

const POD = { group: '', version: 'v1', plural: 'pods', kind: 'Pod', namespaced: true };
const SECRET = { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true };
const CONFIGMAP = { group: '', version: 'v1', plural: 'configmaps', kind: 'ConfigMap', namespaced: true };

const SA_MOUNT = '/var/run/secrets/kubernetes.io/serviceaccount';

/** A loopback service the pods reach by name (on their host address). */
export interface HostService {
  /** Names put in each pod's /etc/hosts (first is the main one). */
  hostnames: string[];
  /** Port the pods connect to. */
  port: number;
  /** Where the connection goes on the host; default 127.0.0.1:port. */
  target?: { host?: string; port?: number };
}

export interface ContainerKubeletOptions {
  /** Credentials the kubelet uses (in a cluster: the node's). */
  kubeconfig: KubeConfig;
  /** The image every container runs (pod image names map to it). */
  image: UnpackedImage;
  nodeName?: string;
  hostServices?: HostService[];
  /** First backoff after a second crash; default 10 s (the kubelet's). Doubles up to backoffMaxMs. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Periodic resync (probes run on their own timers); default 1 s. */
  syncIntervalMs?: number;
  /** Per-pod directories (volumes, logs); default a temp dir removed on stop(). */
  dir?: string;
  log?: (line: string) => void;
}

interface ProbeState { successes: number; failures: number; timer?: NodeJS.Timeout; interval?: NodeJS.Timeout }

interface ContainerRuntime {
  spec: V1Container;
  running?: RunningContainer;
  runSeq: number;
  /** Restarts so far (counted when a container is started again, as the kubelet does). */
  restartCount: number;
  /** A container of this spec ran before (so the next start is a restart). */
  hasRun: boolean;
  crashes: number;
  state: Record<string, unknown>;
  lastState?: Record<string, unknown>;
  ready: boolean;
  nextStartAt: number;
  starting: boolean;
  /** restartPolicy says: do not start again. */
  finished: boolean;
  readiness: ProbeState;
  liveness: ProbeState;
  logPath: string;
  containerID?: string;
}

interface PodRuntime {
  uid: string;
  namespace: string;
  name: string;
  pod: Pod;
  dir: string;
  network?: PodNetwork;
  proxies: { close(): Promise<void> }[];
  volumes: Record<string, VolumeSource>;
  /** The pod spec as run (with the service-account volume added). */
  spec: V1PodSpec;
  containers: Map<string, ContainerRuntime>;
  busy?: Promise<void>;
  setupError?: { reason: string; message: string };
  ready: boolean;
  terminating: boolean;
  startTime: string;
  lastStatus?: string;
  token?: { value: string; refreshAt: number };
}

const now = (): string => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

/** The Kubernetes container-runtime view of an exit (reason of a terminated state). */
function terminatedReason(st: ExitStatus): string {
  if (st.oomKilled) return 'OOMKilled';
  return st.exitCode === 0 ? 'Completed' : 'Error';
}

export class ContainerKubelet {
  readonly nodeName: string;
  readonly kube: Kube;
  private readonly o: ContainerKubeletOptions;
  private readonly dir: string;
  private readonly ownDir: boolean;
  private runner!: RuncRunner;
  private pods!: Informer<Pod>;
  private secrets!: Informer<Secret>;
  private configMaps!: Informer<ConfigMap>;
  private readonly runtimes = new Map<string, PodRuntime>();
  private readonly binding = new Map<string, number>();
  private syncTimer?: NodeJS.Timeout;
  private syncing = false;
  private syncAgain = false;
  private stopped = false;
  private readonly apiTarget: { host: string; port: number };
  private get nodeLabels(): Record<string, string> {
    return { 'kubernetes.io/hostname': this.nodeName, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64' };
  }
  private readonly tmpfsMounted = new Set<string>();
  private unregisterCleanup?: () => void;
  /** Logs of pods that are gone, kept until stop(). */
  private readonly logFiles = new Map<string, string>();

  private constructor(o: ContainerKubeletOptions) {
    this.o = o;
    this.nodeName = o.nodeName ?? 'kubelet-stand-in';
    this.kube = new Kube(o.kubeconfig);
    this.ownDir = o.dir === undefined;
    this.dir = o.dir ?? join(tmpdir(), `container-kubelet-${process.pid}-${Date.now().toString(36)}`);
    const server = new URL(o.kubeconfig.getCurrentCluster()?.server ?? 'https://127.0.0.1:6443');
    this.apiTarget = { host: server.hostname.replace(/^\[|\]$/g, ''), port: Number(server.port || 443) };
  }

  private log(line: string): void {
    this.o.log?.(`kubelet: ${line}`);
  }

  /** Registers the Node, starts watching and running pods. */
  static async start(o: ContainerKubeletOptions): Promise<ContainerKubelet> {
    const k = new ContainerKubelet(o);
    await k.init();
    return k;
  }

  private async init(): Promise<void> {
    mkdirSync(this.dir, { recursive: true, mode: 0o711 });
    this.runner = await RuncRunner.create({ image: this.o.image });
    // A process that ends without stop() still unmounts the pods' tmpfs volumes.
    this.unregisterCleanup = onProcessEnd(() => {
      for (const d of this.tmpfsMounted) {
        try { execFileSync('umount', ['-l', d], { stdio: 'ignore' }); } catch { /* gone */ }
      }
      this.tmpfsMounted.clear();
    });
    await this.registerNode();
    const strip = <T extends KubeObject>(x: T): T => { delete x.metadata?.managedFields; return x; };
    this.pods = new Informer<Pod>({ kube: this.kube, resource: POD, transform: strip, watchTimeoutSeconds: 60 });
    this.secrets = new Informer<Secret>({ kube: this.kube, resource: SECRET, transform: strip, watchTimeoutSeconds: 60 });
    this.configMaps = new Informer<ConfigMap>({ kube: this.kube, resource: CONFIGMAP, transform: strip, watchTimeoutSeconds: 60 });
    for (const inf of [this.pods, this.secrets, this.configMaps] as Informer<KubeObject>[]) {
      inf.on({ add: () => this.kick(), update: () => this.kick(), delete: () => this.kick() });
      inf.start();
    }
    await Promise.all([this.pods.waitForSync(), this.secrets.waitForSync(), this.configMaps.waitForSync()]);
    this.syncTimer = setInterval(() => this.kick(), this.o.syncIntervalMs ?? 1000);
    this.kick();
    this.log(`node ${this.nodeName} registered and Ready`);
  }

  private async registerNode(): Promise<void> {
    const cpus = (await import('node:os')).availableParallelism();
    const mem = (await import('node:os')).totalmem();
    const capacity = { cpu: String(cpus), memory: `${Math.floor(mem / 1024)}Ki`, pods: '110', 'ephemeral-storage': '10Gi' };
    const labels = this.nodeLabels;
    try {
      await this.kube.request('POST', '/api/v1/nodes', { body: { apiVersion: 'v1', kind: 'Node', metadata: { name: this.nodeName, labels } } });
    } catch (err) {
      if (!(err instanceof KubeError && err.code === 409)) throw err;
    }
    const t = now();
    await this.kube.request('PATCH', `/api/v1/nodes/${this.nodeName}/status`, {
      contentType: MEDIA_MERGE_PATCH,
      body: {
        status: {
          capacity,
          allocatable: capacity,
          conditions: [
            { type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'container kubelet stand-in is posting ready status', lastHeartbeatTime: t, lastTransitionTime: t },
            { type: 'MemoryPressure', status: 'False', reason: 'KubeletHasSufficientMemory', lastHeartbeatTime: t, lastTransitionTime: t },
            { type: 'DiskPressure', status: 'False', reason: 'KubeletHasNoDiskPressure', lastHeartbeatTime: t, lastTransitionTime: t },
            { type: 'PIDPressure', status: 'False', reason: 'KubeletHasSufficientPID', lastHeartbeatTime: t, lastTransitionTime: t },
          ],
          addresses: [{ type: 'InternalIP', address: '127.0.0.1' }, { type: 'Hostname', address: this.nodeName }],
          nodeInfo: {
            machineID: '', systemUUID: '', bootID: '', kernelVersion: '', osImage: 'container kubelet stand-in',
            containerRuntimeVersion: 'runc://', kubeletVersion: 'v0.0.0-stand-in', kubeProxyVersion: '', operatingSystem: 'linux', architecture: 'amd64',
          },
        },
      },
    });
  }

  // -------------------------------------------------------------------------------------
  // The sync loop: coalesced, never overlapping; long per-pod work runs in pod tasks.
  // -------------------------------------------------------------------------------------

  private kick(): void {
    if (this.stopped) return;
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    void this.syncAll().catch((err) => this.log(`sync error: ${String(err)}`)).finally(() => {
      this.syncing = false;
      if (this.syncAgain && !this.stopped) {
        this.syncAgain = false;
        setImmediate(() => this.kick());
      }
    });
  }

  private async syncAll(): Promise<void> {
    const seen = new Set<string>();
    for (const pod of this.pods.list()) {
      const uid = pod.metadata?.uid ?? '';
      const spec = pod.spec;
      if (!spec) continue;
      if (!spec.nodeName) {
        // The default scheduler's part: pods for it whose nodeSelector this node satisfies.
        const forUs = (spec.schedulerName ?? 'default-scheduler') === 'default-scheduler'
          && Object.entries(spec.nodeSelector ?? {}).every(([k, v]) => this.nodeLabels[k] === v);
        if (!pod.metadata?.deletionTimestamp && forUs) await this.bind(pod);
        continue;
      }
      if (spec.nodeName !== this.nodeName) continue;
      seen.add(uid);
      let pr = this.runtimes.get(uid);
      const phase = pod.status?.phase;
      if (!pr) {
        if (pod.metadata?.deletionTimestamp) {
          // Never ran here (or ran in an earlier kubelet): nothing to stop, finalize.
          this.runTask(uid, () => this.finalize(pod));
          continue;
        }
        if (phase === 'Succeeded' || phase === 'Failed') continue;
        pr = this.newRuntime(pod);
        this.runtimes.set(uid, pr);
      }
      pr.pod = pod;
      const p = pr;
      if (pod.metadata?.deletionTimestamp) {
        if (!p.terminating && !this.tasks.has(uid)) {
          p.terminating = true;
          const grace = pod.metadata.deletionGracePeriodSeconds ?? spec.terminationGracePeriodSeconds ?? 30;
          this.runTask(uid, () => this.terminate(p, grace, true));
        }
        continue;
      }
      this.runTask(uid, () => this.syncPod(p));
    }
    for (const [uid, pr] of this.runtimes) {
      if (seen.has(uid) || pr.terminating || this.tasks.has(uid)) continue;
      pr.terminating = true;
      this.runTask(uid, () => this.terminate(pr, pr.spec.terminationGracePeriodSeconds ?? 30, false));
    }
  }

  private readonly tasks = new Map<string, Promise<void>>();
  /** Runs fn unless a task for this pod is running (the next sync retries). */
  private runTask(uid: string, fn: () => Promise<void>): void {
    if (this.tasks.has(uid)) return;
    const t = fn().catch((err) => this.log(`pod ${uid}: ${String(err)}`)).finally(() => {
      this.tasks.delete(uid);
    });
    this.tasks.set(uid, t);
  }

  private async bind(pod: Pod): Promise<void> {
    const key = pod.metadata?.uid ?? '';
    const last = this.binding.get(key) ?? 0;
    if (Date.now() - last < 2000) return;
    this.binding.set(key, Date.now());
    try {
      await this.kube.request('POST', `/api/v1/namespaces/${pod.metadata?.namespace}/pods/${pod.metadata?.name}/binding`, {
        body: { apiVersion: 'v1', kind: 'Binding', metadata: { name: pod.metadata?.name, uid: pod.metadata?.uid }, target: { apiVersion: 'v1', kind: 'Node', name: this.nodeName } },
      });
      this.log(`bound ${pod.metadata?.namespace}/${pod.metadata?.name} to ${this.nodeName}`);
    } catch (err) {
      if (!(err instanceof KubeError && (err.code === 409 || err.code === 404))) this.log(`binding ${pod.metadata?.name}: ${String(err)}`);
    }
  }

  private newRuntime(pod: Pod): PodRuntime {
    const uid = pod.metadata?.uid ?? '';
    const ns = pod.metadata?.namespace ?? 'default';
    const name = pod.metadata?.name ?? '';
    const dir = join(this.dir, 'pods', uid);
    mkdirSync(join(dir, 'logs'), { recursive: true });
    const spec: V1PodSpec = structuredClone(pod.spec!);
    const containers = new Map<string, ContainerRuntime>();
    const pr: PodRuntime = { uid, namespace: ns, name, pod, dir, proxies: [], volumes: {}, spec, containers, ready: false, terminating: false, startTime: now() };
    for (const c of spec.containers) {
      const logPath = join(dir, 'logs', `${c.name}.log`);
      this.logFiles.set(`${ns}/${name}/${c.name}`, logPath);
      containers.set(c.name, {
        spec: c, runSeq: 0, restartCount: 0, hasRun: false, crashes: 0, ready: false, nextStartAt: 0, starting: false, finished: false,
        state: { waiting: { reason: 'ContainerCreating' } }, readiness: { successes: 0, failures: 0 }, liveness: { successes: 0, failures: 0 }, logPath,
      });
    }
    return pr;
  }

  // -------------------------------------------------------------------------------------
  // Pod sync: network, volumes, containers, status.
  // -------------------------------------------------------------------------------------

  private async syncPod(pr: PodRuntime): Promise<void> {
    if (this.stopped || pr.terminating) return;
    try {
      if (!pr.network) await this.setupNetwork(pr);
      await this.syncVolumes(pr);
      pr.setupError = undefined;
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (pr.setupError?.message !== message) this.log(`${pr.namespace}/${pr.name}: cannot start yet: ${message}`);
      pr.setupError = { reason: err instanceof ContainerConfigError ? 'CreateContainerConfigError' : 'ContainerCreating', message };
      for (const c of pr.containers.values()) if (!c.running && !c.finished) c.state = { waiting: { reason: pr.setupError.reason, message: pr.setupError.message } };
      await this.writeStatus(pr);
      return;
    }
    const policy = pr.spec.restartPolicy ?? 'Always';
    for (const c of pr.containers.values()) {
      if (c.running || c.starting || c.finished) continue;
      if (Date.now() < c.nextStartAt) continue;
      await this.startContainer(pr, c, policy);
    }
    await this.writeStatus(pr);
  }

  private async setupNetwork(pr: PodRuntime): Promise<void> {
    if (pr.spec.hostNetwork) throw new ContainerConfigError('hostNetwork pods are not run by this stand-in');
    const net = await createPodNetwork();
    pr.network = net;
    const services: HostService[] = [
      { hostnames: ['kubernetes.default.svc', 'kubernetes.default', 'kubernetes', 'kubernetes.default.svc.cluster.local'], port: 443, target: this.apiTarget },
      ...(this.o.hostServices ?? []),
    ];
    for (const s of services) pr.proxies.push(await proxyHostPort(net, s.port, s.target ?? {}));
    this.log(`${pr.namespace}/${pr.name}: pod network ${net.podIP} (host ${net.hostIP})`);
  }

  private extraHosts(pr: PodRuntime): string[] {
    const hostIP = pr.network?.hostIP ?? '127.0.0.1';
    const lines = [`${hostIP}\tkubernetes.default.svc kubernetes.default kubernetes kubernetes.default.svc.cluster.local`];
    for (const s of this.o.hostServices ?? []) lines.push(`${hostIP}\t${s.hostnames.join(' ')}`);
    for (const a of pr.spec.hostAliases ?? []) if (a.ip) lines.push(`${a.ip}\t${(a.hostnames ?? []).join(' ')}`);
    return lines;
  }

  private async automount(pr: PodRuntime): Promise<boolean> {
    if (pr.spec.automountServiceAccountToken !== undefined) return pr.spec.automountServiceAccountToken;
    const sa = await this.kube.getOrUndefined<V1ServiceAccount & KubeObject>(`/api/v1/namespaces/${pr.namespace}/serviceaccounts/${pr.spec.serviceAccountName ?? 'default'}`);
    return sa?.automountServiceAccountToken ?? true;
  }

  /** Adds the kube-api-access volume and its mounts, as the ServiceAccount admission plugin does. */
  private async addServiceAccountVolume(pr: PodRuntime): Promise<void> {
    if ((pr.spec as { __saChecked?: boolean }).__saChecked) return;
    (pr.spec as { __saChecked?: boolean }).__saChecked = true;
    if (!(await this.automount(pr))) return;
    const name = 'kube-api-access-stand-in';
    pr.spec.volumes = [...(pr.spec.volumes ?? []), {
      name,
      projected: {
        defaultMode: 0o644,
        sources: [
          { serviceAccountToken: { path: 'token', expirationSeconds: 3607 } },
          { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
          { downwardAPI: { items: [{ path: 'namespace', fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } }] } },
        ],
      },
    }];
    for (const c of pr.spec.containers) {
      if ((c.volumeMounts ?? []).some((m) => m.mountPath === SA_MOUNT)) continue;
      c.volumeMounts = [...(c.volumeMounts ?? []), { name, mountPath: SA_MOUNT, readOnly: true }];
    }
  }

  /**
   * Secret, ConfigMap and projected volumes live on a tmpfs per pod, as the kubelet keeps them
   * (secrets never touch the node's disk); unmounted when the pod goes (or the process ends).
   */
  private memoryDir(pr: PodRuntime): string {
    const d = join(pr.dir, 'memory');
    if (!this.tmpfsMounted.has(d)) {
      mkdirSync(d, { recursive: true, mode: 0o711 });
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0711,nosuid,nodev,noexec', 'tmpfs', d]);
      this.tmpfsMounted.add(d);
    }
    return d;
  }

  private unmountMemoryDir(pr: PodRuntime): void {
    const d = join(pr.dir, 'memory');
    if (!this.tmpfsMounted.delete(d)) return;
    try { execFileSync('umount', ['-l', d], { stdio: 'ignore' }); } catch { /* gone */ }
  }

  private fsGroup(pr: PodRuntime): number | undefined {
    return pr.spec.securityContext?.fsGroup;
  }

  private async syncVolumes(pr: PodRuntime): Promise<void> {
    await this.addServiceAccountVolume(pr);
    for (const vol of pr.spec.volumes ?? []) {
      if (vol.emptyDir) {
        if (pr.volumes[vol.name]) continue;
        if (vol.emptyDir.medium === 'Memory') {
          pr.volumes[vol.name] = { tmpfs: vol.emptyDir.sizeLimit ? { sizeBytes: quantityBytes(vol.emptyDir.sizeLimit) } : {} };
        } else {
          const d = join(pr.dir, 'volumes', vol.name);
          mkdirSync(d, { recursive: true });
          const g = this.fsGroup(pr);
          if (g !== undefined) {
            chownSync(d, 0, g);
            chmodSync(d, 0o2777);
          } else chmodSync(d, 0o777);
          pr.volumes[vol.name] = { hostPath: d };
        }
        continue;
      }
      const payload = await this.payload(pr, vol);
      if (payload === undefined) throw new ContainerConfigError(`volume ${vol.name}: unsupported volume type (stand-in supports configMap, secret, projected, emptyDir)`);
      const d = join(this.memoryDir(pr), vol.name);
      const g = this.fsGroup(pr);
      const changed = writeAtomic(d, payload, g !== undefined ? { gid: g } : {});
      if (changed && pr.volumes[vol.name]) this.log(`${pr.namespace}/${pr.name}: volume ${vol.name} updated`);
      pr.volumes[vol.name] = { hostPath: d };
    }
  }

  private keyItems(data: Record<string, Buffer>, items: V1KeyToPath[] | undefined, mode: number, what: string, optional: boolean, out: Payload): void {
    if (!items || items.length === 0) {
      for (const [k, v] of Object.entries(data)) out.set(k, { data: v, mode });
      return;
    }
    for (const it of items) {
      const v = data[it.key];
      if (v === undefined) {
        if (optional) continue;
        throw new ContainerConfigError(`configmap/secret ${what}: key ${it.key} not found`);
      }
      out.set(it.path, { data: v, mode: it.mode ?? mode });
    }
  }

  private secretData(ns: string, name: string): Record<string, Buffer> | undefined {
    const s = this.secrets.get(ns, name);
    if (!s) return undefined;
    const out: Record<string, Buffer> = {};
    for (const [k, v] of Object.entries(s.data ?? {})) out[k] = Buffer.from(v, 'base64');
    return out;
  }

  private configMapData(ns: string, name: string): Record<string, Buffer> | undefined {
    const c = this.configMaps.get(ns, name);
    if (!c) return undefined;
    const out: Record<string, Buffer> = {};
    for (const [k, v] of Object.entries(c.data ?? {})) out[k] = Buffer.from(v, 'utf8');
    for (const [k, v] of Object.entries(c.binaryData ?? {})) out[k] = Buffer.from(v, 'base64');
    return out;
  }

  private fieldValue(pr: PodRuntime, fieldPath: string): string {
    const m = pr.pod.metadata ?? {};
    const label = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(fieldPath);
    if (label) return (label[1] === 'labels' ? m.labels : m.annotations)?.[label[2] ?? ''] ?? '';
    switch (fieldPath) {
      case 'metadata.name': return m.name ?? '';
      case 'metadata.namespace': return m.namespace ?? '';
      case 'metadata.uid': return m.uid ?? '';
      case 'spec.nodeName': return this.nodeName;
      case 'spec.serviceAccountName': return pr.spec.serviceAccountName ?? 'default';
      case 'status.podIP': return pr.network?.podIP ?? '';
      case 'status.podIPs': return pr.network?.podIP ?? '';
      case 'status.hostIP': return pr.network?.hostIP ?? '';
      case 'status.hostIPs': return pr.network?.hostIP ?? '';
      default: throw new ContainerConfigError(`fieldRef ${fieldPath} is not supported`);
    }
  }

  private async saToken(pr: PodRuntime, expirationSeconds: number, audience?: string): Promise<string> {
    if (pr.token && Date.now() < pr.token.refreshAt) return pr.token.value;
    const sa = pr.spec.serviceAccountName ?? 'default';
    const tr = await this.kube.request<{ status?: { token?: string } }>('POST', `/api/v1/namespaces/${pr.namespace}/serviceaccounts/${sa}/token`, {
      body: {
        apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest',
        // Bound to the pod, as the kubelet does; a pod without spec.serviceAccountName (the test
        // API server runs without the ServiceAccount admission plugin that defaults it) cannot be.
        spec: {
          audiences: audience ? [audience] : [], expirationSeconds,
          ...(pr.pod.spec?.serviceAccountName ? { boundObjectRef: { apiVersion: 'v1', kind: 'Pod', name: pr.name, uid: pr.uid } } : {}),
        },
      },
    });
    const value = tr.status?.token;
    if (!value) throw new Error(`TokenRequest for ${pr.namespace}/${sa} returned no token`);
    // The kubelet refreshes at 80% of the token's lifetime.
    pr.token = { value, refreshAt: Date.now() + expirationSeconds * 800 };
    return value;
  }

  private async payload(pr: PodRuntime, vol: V1Volume): Promise<Payload | undefined> {
    const out: Payload = new Map();
    const ns = pr.namespace;
    if (vol.secret) {
      const name = vol.secret.secretName ?? '';
      const data = this.secretData(ns, name);
      const optional = vol.secret.optional === true;
      if (!data) {
        if (optional) return out;
        throw new Error(`secret "${name}" not found`);
      }
      this.keyItems(data, vol.secret.items, vol.secret.defaultMode ?? 0o644, name, optional, out);
      return out;
    }
    if (vol.configMap) {
      const name = vol.configMap.name ?? '';
      const data = this.configMapData(ns, name);
      const optional = vol.configMap.optional === true;
      if (!data) {
        if (optional) return out;
        throw new Error(`configmap "${name}" not found`);
      }
      this.keyItems(data, vol.configMap.items, vol.configMap.defaultMode ?? 0o644, name, optional, out);
      return out;
    }
    if (vol.projected) {
      const mode = vol.projected.defaultMode ?? 0o644;
      for (const src of vol.projected.sources ?? []) {
        if (src.secret) {
          const name = src.secret.name ?? '';
          const data = this.secretData(ns, name);
          if (!data) {
            if (src.secret.optional) continue;
            throw new Error(`secret "${name}" not found`);
          }
          this.keyItems(data, src.secret.items, mode, name, src.secret.optional === true, out);
        } else if (src.configMap) {
          const name = src.configMap.name ?? '';
          const data = this.configMapData(ns, name);
          if (!data) {
            if (src.configMap.optional) continue;
            throw new Error(`configmap "${name}" not found`);
          }
          this.keyItems(data, src.configMap.items, mode, name, src.configMap.optional === true, out);
        } else if (src.serviceAccountToken) {
          const t = await this.saToken(pr, src.serviceAccountToken.expirationSeconds ?? 3600, src.serviceAccountToken.audience);
          // The token file is readable by the pod's user: 0600 owned by runAsUser when fsGroup
          // is unset would be stricter; the kubelet uses the projected defaultMode.
          out.set(src.serviceAccountToken.path, { data: Buffer.from(t), mode });
        } else if (src.downwardAPI) {
          for (const it of src.downwardAPI.items ?? []) {
            if (!it.fieldRef) throw new ContainerConfigError(`downwardAPI ${it.path}: only fieldRef is supported`);
            out.set(it.path, { data: Buffer.from(this.fieldValue(pr, it.fieldRef.fieldPath)), mode: it.mode ?? mode });
          }
        }
      }
      return out;
    }
    if (vol.downwardAPI) {
      for (const it of vol.downwardAPI.items ?? []) {
        if (!it.fieldRef) throw new ContainerConfigError(`downwardAPI ${it.path}: only fieldRef is supported`);
        out.set(it.path, { data: Buffer.from(this.fieldValue(pr, it.fieldRef.fieldPath)), mode: it.mode ?? vol.downwardAPI.defaultMode ?? 0o644 });
      }
      return out;
    }
    return undefined;
  }

  /** The container's env, resolved as the kubelet does (envFrom first, then env, in order). */
  private resolveEnv(pr: PodRuntime, c: V1Container): EnvVar[] {
    const env = new Map<string, string>();
    env.set('KUBERNETES_SERVICE_HOST', 'kubernetes.default.svc');
    env.set('KUBERNETES_SERVICE_PORT', '443');
    env.set('KUBERNETES_SERVICE_PORT_HTTPS', '443');
    env.set('KUBERNETES_PORT', 'tcp://kubernetes.default.svc:443');
    for (const ef of c.envFrom ?? []) {
      const prefix = ef.prefix ?? '';
      if (ef.configMapRef) {
        const d = this.configMapData(pr.namespace, ef.configMapRef.name ?? '');
        if (!d) { if (ef.configMapRef.optional) continue; throw new ContainerConfigError(`configmap "${ef.configMapRef.name}" not found`); }
        for (const [k, v] of Object.entries(d)) env.set(prefix + k, v.toString('utf8'));
      } else if (ef.secretRef) {
        const d = this.secretData(pr.namespace, ef.secretRef.name ?? '');
        if (!d) { if (ef.secretRef.optional) continue; throw new ContainerConfigError(`secret "${ef.secretRef.name}" not found`); }
        for (const [k, v] of Object.entries(d)) env.set(prefix + k, v.toString('utf8'));
      }
    }
    for (const e of c.env ?? []) {
      if (e.valueFrom) {
        const vf = e.valueFrom;
        if (vf.secretKeyRef) {
          const d = this.secretData(pr.namespace, vf.secretKeyRef.name ?? '');
          const v = d?.[vf.secretKeyRef.key];
          if (v === undefined) {
            if (vf.secretKeyRef.optional) continue;
            throw new ContainerConfigError(d ? `couldn't find key ${vf.secretKeyRef.key} in Secret ${pr.namespace}/${vf.secretKeyRef.name}` : `secret "${vf.secretKeyRef.name}" not found`);
          }
          env.set(e.name, v.toString('utf8'));
        } else if (vf.configMapKeyRef) {
          const d = this.configMapData(pr.namespace, vf.configMapKeyRef.name ?? '');
          const v = d?.[vf.configMapKeyRef.key];
          if (v === undefined) {
            if (vf.configMapKeyRef.optional) continue;
            throw new ContainerConfigError(d ? `couldn't find key ${vf.configMapKeyRef.key} in ConfigMap ${pr.namespace}/${vf.configMapKeyRef.name}` : `configmap "${vf.configMapKeyRef.name}" not found`);
          }
          env.set(e.name, v.toString('utf8'));
        } else if (vf.fieldRef) {
          env.set(e.name, this.fieldValue(pr, vf.fieldRef.fieldPath));
        } else {
          throw new ContainerConfigError(`env ${e.name}: resourceFieldRef is not supported by this stand-in`);
        }
      } else {
        env.set(e.name, expandVars(e.value ?? '', env));
      }
    }
    return [...env].map(([name, value]) => ({ name, value }));
  }

  private async startContainer(pr: PodRuntime, c: ContainerRuntime, policy: string): Promise<void> {
    c.starting = true;
    const spec = pr.spec.containers.find((x) => x.name === c.spec.name) ?? c.spec;
    const id = `${pr.uid.slice(0, 8)}-${c.spec.name}-${c.runSeq++}`.replace(/[^A-Za-z0-9_.-]/g, '-');
    try {
      const env = this.resolveEnv(pr, spec);
      const running = await this.runner.start({
        id,
        pod: pr.spec,
        container: spec,
        env,
        volumes: pr.volumes,
        ...(pr.network ? { network: pr.network } : {}),
        podName: pr.name,
        extraHosts: this.extraHosts(pr),
        stdoutPath: c.logPath,
        stderrPath: c.logPath,
      });
      c.running = running;
      if (c.hasRun) c.restartCount++;
      c.hasRun = true;
      c.containerID = `runc://${id}`;
      c.state = { running: { startedAt: running.startedAt.toISOString().replace(/\.\d+Z$/, 'Z') } };
      c.ready = false;
      this.log(`${pr.namespace}/${pr.name}: container ${c.spec.name} started (pid ${running.pid}, restarts ${c.restartCount})`);
      this.startProbes(pr, c);
      void running.exited.then((st) => this.onExit(pr, c, running, st, policy));
    } catch (err) {
      const reason = err instanceof ContainerConfigError ? 'CreateContainerConfigError' : 'RunContainerError';
      const message = err instanceof Error ? err.message : String(err);
      c.state = { waiting: { reason, message } };
      c.nextStartAt = Date.now() + this.backoff(c);
      c.crashes++;
      appendFileSync(c.logPath, `[container kubelet] ${reason}: ${message}\n`);
      this.log(`${pr.namespace}/${pr.name}: container ${c.spec.name}: ${reason}: ${message}`);
    } finally {
      c.starting = false;
    }
  }

  private backoff(c: ContainerRuntime): number {
    // Immediately after the first exit; then base, doubling, capped (the kubelet's backoff).
    if (c.crashes === 0) return 0;
    const base = this.o.backoffBaseMs ?? 10_000;
    const max = this.o.backoffMaxMs ?? 300_000;
    return Math.min(max, base * 2 ** (c.crashes - 1));
  }

  private async onExit(pr: PodRuntime, c: ContainerRuntime, running: RunningContainer, st: ExitStatus, policy: string): Promise<void> {
    this.stopProbes(c);
    c.ready = false;
    const terminated = {
      exitCode: st.exitCode,
      ...(st.signal ? { signal: Number(st.exitCode - 128) } : {}),
      reason: terminatedReason(st),
      startedAt: running.startedAt.toISOString().replace(/\.\d+Z$/, 'Z'),
      finishedAt: st.finishedAt.toISOString().replace(/\.\d+Z$/, 'Z'),
      containerID: c.containerID,
    };
    await running.delete().catch(() => {});
    if (c.running === running) c.running = undefined;
    if (pr.terminating || this.stopped) {
      c.state = { terminated };
      return;
    }
    this.log(`${pr.namespace}/${pr.name}: container ${c.spec.name} exited ${st.exitCode} (${terminated.reason})`);
    // A container that ran long enough resets its backoff (the kubelet: 2x the max backoff).
    if (Date.now() - running.startedAt.getTime() > 2 * (this.o.backoffMaxMs ?? 300_000)) c.crashes = 0;
    const restart = policy === 'Always' || (policy === 'OnFailure' && st.exitCode !== 0);
    if (!restart) {
      c.state = { terminated };
      c.finished = true;
    } else {
      c.lastState = { terminated };
      const delay = this.backoff(c);
      c.crashes++;
      c.nextStartAt = Date.now() + delay;
      c.state = delay > 0
        ? { waiting: { reason: 'CrashLoopBackOff', message: `back-off ${Math.round(delay / 1000)}s restarting failed container=${c.spec.name} pod=${pr.name}_${pr.namespace}(${pr.uid})` } }
        : { waiting: { reason: 'ContainerCreating' } };
      if (delay > 0) setTimeout(() => this.kick(), delay + 10).unref();
    }
    this.kick();
  }

  // -------------------------------------------------------------------------------------
  // Probes.
  // -------------------------------------------------------------------------------------

  private startProbes(pr: PodRuntime, c: ContainerRuntime): void {
    const spec = c.spec;
    c.readiness = { successes: 0, failures: 0 };
    c.liveness = { successes: 0, failures: 0 };
    if (!spec.readinessProbe) {
      c.ready = true;
    } else {
      this.scheduleProbe(pr, c, spec.readinessProbe, c.readiness, (ok) => {
        const p = spec.readinessProbe!;
        const before = c.ready;
        if (ok && c.readiness.successes >= (p.successThreshold ?? 1)) c.ready = true;
        if (!ok && c.readiness.failures >= (p.failureThreshold ?? 3)) c.ready = false;
        if (before !== c.ready) {
          this.log(`${pr.namespace}/${pr.name}: container ${spec.name} ${c.ready ? 'ready' : 'not ready'}`);
          this.kick();
        }
      });
    }
    if (spec.livenessProbe) {
      this.scheduleProbe(pr, c, spec.livenessProbe, c.liveness, (ok) => {
        const p = spec.livenessProbe!;
        if (!ok && c.liveness.failures >= (p.failureThreshold ?? 3) && c.running) {
          this.log(`${pr.namespace}/${pr.name}: container ${spec.name} failed liveness probe, will be restarted`);
          const r = c.running;
          this.stopProbes(c);
          void this.stopContainer(r, pr.spec.terminationGracePeriodSeconds ?? 30);
        }
      });
    }
    this.kick();
  }

  private scheduleProbe(pr: PodRuntime, c: ContainerRuntime, probe: V1Probe, st: ProbeState, done: (ok: boolean) => void): void {
    const period = (probe.periodSeconds ?? 10) * 1000;
    const run = (): void => {
      if (!c.running || pr.terminating) return;
      void this.probe(pr, c, probe).then((ok) => {
        if (ok) { st.successes++; st.failures = 0; } else { st.failures++; st.successes = 0; }
        done(ok);
      });
    };
    // The kubelet probes readiness right after start (no initialDelay) then every period.
    st.timer = setTimeout(() => {
      run();
      st.interval = setInterval(run, period);
    }, Math.max(100, (probe.initialDelaySeconds ?? 0) * 1000));
  }

  private stopProbes(c: ContainerRuntime): void {
    for (const s of [c.readiness, c.liveness]) {
      if (s.timer) clearTimeout(s.timer);
      if (s.interval) clearInterval(s.interval);
      s.timer = undefined;
      s.interval = undefined;
    }
  }

  private portOf(c: V1Container, port: number | string | undefined): number {
    if (typeof port === 'number') return port;
    if (port !== undefined && /^\d+$/.test(port)) return Number(port);
    const p = (c.ports ?? []).find((x) => x.name === port);
    if (!p) throw new Error(`probe port ${port} not found`);
    return p.containerPort;
  }

  private async probe(pr: PodRuntime, c: ContainerRuntime, probe: V1Probe): Promise<boolean> {
    const host = pr.network?.podIP ?? '127.0.0.1';
    const timeout = (probe.timeoutSeconds ?? 1) * 1000;
    try {
      if (probe.httpGet) {
        const g = probe.httpGet;
        if ((g.scheme ?? 'HTTP') !== 'HTTP') return false;
        const port = this.portOf(c.spec, g.port as number | string);
        return await new Promise<boolean>((resolve) => {
          const req = httpRequest({ host: g.host ?? host, port, path: g.path ?? '/', method: 'GET', timeout, headers: { 'User-Agent': 'kube-probe/stand-in', Accept: '*/*', ...Object.fromEntries((g.httpHeaders ?? []).map((h) => [h.name, h.value])) } }, (res) => {
            res.resume();
            resolve((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400);
          });
          req.on('timeout', () => { req.destroy(); resolve(false); });
          req.on('error', () => resolve(false));
          req.end();
        });
      }
      if (probe.tcpSocket) {
        const port = this.portOf(c.spec, probe.tcpSocket.port as number | string);
        return await new Promise<boolean>((resolve) => {
          const s = createConnection({ host: probe.tcpSocket!.host ?? host, port, timeout });
          s.on('connect', () => { s.destroy(); resolve(true); });
          s.on('timeout', () => { s.destroy(); resolve(false); });
          s.on('error', () => resolve(false));
        });
      }
      return false; // exec / grpc probes: not supported by this stand-in (fail visibly)
    } catch {
      return false;
    }
  }

  // -------------------------------------------------------------------------------------
  // Status.
  // -------------------------------------------------------------------------------------

  private podStatus(pr: PodRuntime): Record<string, unknown> {
    const t = now();
    const prev = pr.pod.status ?? {};
    const cs = [...pr.containers.values()].map((c) => ({
      name: c.spec.name,
      image: c.spec.image,
      imageID: this.o.image.digest,
      ...(c.containerID ? { containerID: c.containerID } : {}),
      ready: c.ready && c.running !== undefined,
      started: c.running !== undefined,
      restartCount: c.restartCount,
      state: c.state,
      ...(c.lastState ? { lastState: c.lastState } : { lastState: {} }),
    }));
    const allReady = cs.length > 0 && cs.every((x) => x.ready);
    const anyRunning = [...pr.containers.values()].some((c) => c.running);
    const allFinished = [...pr.containers.values()].every((c) => c.finished);
    let phase = 'Pending';
    if (allFinished) {
      phase = [...pr.containers.values()].every((c) => (c.state['terminated'] as { exitCode?: number } | undefined)?.exitCode === 0) ? 'Succeeded' : 'Failed';
    } else if (anyRunning || [...pr.containers.values()].some((c) => c.hasRun)) phase = 'Running';
    const cond = (type: string, ok: boolean, reason?: string): Record<string, unknown> => {
      const old = (prev.conditions ?? []).find((x) => x.type === type);
      const status = ok ? 'True' : 'False';
      const since = old && old.status === status && old.lastTransitionTime ? new Date(old.lastTransitionTime as unknown as string).toISOString().replace(/\.\d+Z$/, 'Z') : t;
      return { type, status, lastProbeTime: null, lastTransitionTime: since, ...(reason && !ok ? { reason } : {}) };
    };
    const status: Record<string, unknown> = {
      phase,
      conditions: [
        cond('PodReadyToStartContainers', pr.network !== undefined),
        cond('Initialized', true),
        cond('Ready', allReady, 'ContainersNotReady'),
        cond('ContainersReady', allReady, 'ContainersNotReady'),
        cond('PodScheduled', true),
      ],
      hostIP: pr.network?.hostIP ?? '127.0.0.1',
      hostIPs: [{ ip: pr.network?.hostIP ?? '127.0.0.1' }],
      startTime: pr.startTime,
      containerStatuses: cs,
    };
    if (pr.network) {
      status['podIP'] = pr.network.podIP;
      status['podIPs'] = [{ ip: pr.network.podIP }];
    }
    pr.ready = allReady;
    return status;
  }

  private async writeStatus(pr: PodRuntime): Promise<void> {
    const status = this.podStatus(pr);
    const key = JSON.stringify({ ...status, conditions: (status['conditions'] as { type: string; status: string }[]).map((c) => [c.type, c.status]) });
    if (key === pr.lastStatus) return;
    try {
      await this.kube.request('PATCH', `/api/v1/namespaces/${pr.namespace}/pods/${pr.name}/status`, { contentType: MEDIA_MERGE_PATCH, body: { metadata: { uid: pr.uid }, status } });
      pr.lastStatus = key;
    } catch (err) {
      if (!isNotFound(err)) this.log(`${pr.namespace}/${pr.name}: status: ${String(err)}`);
    }
  }

  // -------------------------------------------------------------------------------------
  // Termination.
  // -------------------------------------------------------------------------------------

  private async stopContainer(r: RunningContainer, graceSeconds: number): Promise<void> {
    await r.kill('SIGTERM').catch(() => {});
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      r.exited.then(() => false),
      new Promise<boolean>((res) => { timer = setTimeout(() => res(true), graceSeconds * 1000); }),
    ]).finally(() => clearTimeout(timer));
    if (timedOut) await r.kill('SIGKILL').catch(() => {});
    await r.exited;
  }

  private async terminate(pr: PodRuntime, graceSeconds: number, deleteObject: boolean): Promise<void> {
    pr.terminating = true;
    this.log(`${pr.namespace}/${pr.name}: stopping (grace ${graceSeconds}s)`);
    for (const c of pr.containers.values()) this.stopProbes(c);
    await Promise.all([...pr.containers.values()].map(async (c) => {
      c.ready = false;
      while (c.starting) await new Promise((r) => setTimeout(r, 50));
      const r = c.running;
      if (r) {
        await this.stopContainer(r, graceSeconds);
        await r.delete().catch(() => {});
      }
    }));
    if (deleteObject) await this.writeStatus(pr).catch(() => {});
    for (const p of pr.proxies) await p.close().catch(() => {});
    pr.proxies = [];
    await pr.network?.release().catch(() => {});
    this.unmountMemoryDir(pr);
    rmSync(join(pr.dir, 'volumes'), { recursive: true, force: true });
    rmSync(join(pr.dir, 'memory'), { recursive: true, force: true });
    this.runtimes.delete(pr.uid);
    if (deleteObject) await this.finalize(pr.pod);
    this.log(`${pr.namespace}/${pr.name}: stopped and removed`);
  }

  /** Deletes the pod object for good (grace period 0), as the kubelet does once it stopped it. */
  private async finalize(pod: Pod): Promise<void> {
    try {
      await this.kube.request('DELETE', `/api/v1/namespaces/${pod.metadata?.namespace}/pods/${pod.metadata?.name}`, {
        body: { apiVersion: 'v1', kind: 'DeleteOptions', gracePeriodSeconds: 0, preconditions: { uid: pod.metadata?.uid } },
      });
    } catch (err) {
      if (!(err instanceof KubeError && (err.code === 404 || err.code === 409))) throw err;
    }
  }

  // -------------------------------------------------------------------------------------
  // For tests and the demo.
  // -------------------------------------------------------------------------------------

  /** "namespace/pod/container" of every container this kubelet ran, stopped pods included (each has a log). */
  loggedContainers(): string[] {
    return [...this.logFiles.keys()];
  }

  /** The log (stdout and stderr) of a pod's container; '' when unknown. */
  logs(namespace: string, pod: string, container?: string): string {
    const prefix = `${namespace}/${pod}/`;
    const out: string[] = [];
    for (const [k, path] of this.logFiles) {
      if (!k.startsWith(prefix)) continue;
      if (container !== undefined && k !== prefix + container) continue;
      try { out.push(readFileSync(path, 'utf8')); } catch { /* removed */ }
    }
    return out.join('');
  }

  /** Pods this kubelet runs now: name, IP, readiness, the host pids of their containers. */
  runningPods(): { namespace: string; name: string; uid: string; podIP?: string; ready: boolean; pids: number[]; containers: { name: string; pid?: number; restartCount: number }[] }[] {
    return [...this.runtimes.values()].map((pr) => ({
      namespace: pr.namespace,
      name: pr.name,
      uid: pr.uid,
      ...(pr.network ? { podIP: pr.network.podIP } : {}),
      ready: pr.ready,
      pids: [...pr.containers.values()].flatMap((c) => (c.running ? [c.running.pid] : [])),
      containers: [...pr.containers.values()].map((c) => ({ name: c.spec.name, ...(c.running ? { pid: c.running.pid } : {}), restartCount: c.restartCount })),
    }));
  }

  /** Host pids of every running container (for "nothing left running" checks). */
  containerPids(): number[] {
    return this.runningPods().flatMap((p) => p.pids);
  }

  /** Kills a pod's container process (SIGKILL from outside, as a crash would). */
  async killContainer(namespace: string, pod: string, container: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    for (const pr of this.runtimes.values()) {
      if (pr.namespace !== namespace || pr.name !== pod) continue;
      const r = pr.containers.get(container)?.running;
      if (!r) throw new Error(`container ${namespace}/${pod}/${container} is not running`);
      await r.kill(signal);
      return;
    }
    throw new Error(`pod ${namespace}/${pod} is not running here`);
  }

  /** Stops every pod (SIGTERM, short grace), removes the Node, the state and the runner. */
  async stop(opts: { graceSeconds?: number; deleteNode?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.syncTimer) clearInterval(this.syncTimer);
    await Promise.all([this.pods?.stop(), this.secrets?.stop(), this.configMaps?.stop()]);
    await Promise.allSettled([...this.tasks.values()]);
    await Promise.all([...this.runtimes.values()].map((pr) => this.terminate(pr, opts.graceSeconds ?? 5, false).catch(() => {})));
    await this.runner?.close().catch(() => {});
    if (opts.deleteNode !== false) {
      await this.kube.request('DELETE', `/api/v1/nodes/${this.nodeName}`).catch(() => {});
    }
    for (const pr of this.runtimes.values()) this.unmountMemoryDir(pr);
    for (const d of this.tmpfsMounted) {
      try { execFileSync('umount', ['-l', d], { stdio: 'ignore' }); } catch { /* gone */ }
    }
    this.tmpfsMounted.clear();
    this.unregisterCleanup?.();
    if (this.ownDir && existsSync(this.dir)) rmSync(this.dir, { recursive: true, force: true });
  }
}
