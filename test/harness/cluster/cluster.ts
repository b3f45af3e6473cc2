/**
 * A real one-node Kubernetes cluster on this machine, for the end-to-end tests and the demo,
 * on top of the control plane harness (test/harness/controlplane/harness.ts): kubelet,
 * containerd + runc, CNI (ptp + host-local + loopback, portmap), kube-proxy (iptables mode),
 * kube-scheduler, CoreDNS, cert-manager's controllers and kube-router's NetworkPolicy
 * controller, every one built from its own Go
 * module by `make cluster` (test/harness/cluster/build.sh) into
 *   ${CLUSTER_CACHE:-~/.cache/smtp-relay-operator/cluster}/bin (and .../cni).
 * Needs root (network, mounts, cgroups). A missing binary throws an Error that says to run
 * `make cluster`; nothing skips.
 *
 * Layout (one cluster per machine at a time: a lock in /run/smtp-relay-operator/ serialises
 * callers, who wait up to 10 min for it):
 *
 *   node            "srop-node", InternalIP 198.19.255.1 on lo (label lo:srop; this kernel has no dummy
 *                   interfaces)
 *                   (198.18.0.0/15 is RFC 2544's range for tests, never routed; the cluster
 *                   uses 198.19.0.0/16)
 *   Service range   198.19.0.0/24, routed to lo from the node address (so the host's own
 *                   clients reach Services through kube-proxy's OUTPUT rules); a Service
 *                   address that no kube-proxy rule rewrites goes nowhere; kubernetes = .1, DNS = .10
 *   API server      ServiceAccount admission on (pods get their token volume); listens on the node address (cp.server = https://198.19.255.1:<port>),
 *                   its certificate valid for it, 198.19.0.1 and kubernetes.default.svc…;
 *                   the `kubernetes` Service has an EndpointSlice to it, so pods (the
 *                   operator, in-cluster) reach it as in a real cluster
 *   pod range       198.19.16.0/20 (host-local), one veth per pod (ptp), no masquerade; the
 *                   host forwards (ip_forward=1 while the cluster runs) only between pod
 *                   addresses: a chain SROP-CLUSTER-FWD drops pod traffic to anything else
 *   DNS             CoreDNS on the host at 198.19.255.1:53 (kubernetes plugin, cluster.local,
 *                   no upstream), behind the Service kube-system/kube-dns 198.19.0.10
 *                   with a hand-made EndpointSlice (as a host-network pod would be)
 *   kubelet         cgroupfs driver under the cgroup /srop-cluster (failCgroupV1: false),
 *                   client certificate CN=system:node:srop-node (ClusterRole system:node),
 *                   root dir, pod logs, volume plugin dir under the cluster's folder
 *   containerd      root, state, runc state, CNI config and IPAM under the cluster's folder;
 *                   sandbox image localhost/smtp-relay-operator/pause:1 (our own, imported
 *                   from the cache), NRI off; images come in with `ctr images import`
 *   kube-proxy      iptables mode, clusterCIDR = pod range, no localhost NodePorts, conntrack
 *                   sysctls left alone
 *   cert-manager    our controller main (certmanager/main.go) with the v1.21.2 CRDs, and
 *                   cert-manager's webhook (our main over its internal/webhook,
 *                   cmwebhook/main.go) on https://127.0.0.1:<port>, serving a certificate of a
 *                   CA the harness makes (pki/cert-manager-webhook-ca), registered before the
 *                   controllers start as the chart registers it (ValidatingWebhookConfiguration
 *                   for CREATE/UPDATE of cert-manager.io and acme.cert-manager.io `*\/*`,
 *                   MutatingWebhookConfiguration for CREATE of CertificateRequests, both
 *                   failurePolicy Fail) but with a `url` clientConfig and that CA as caBundle:
 *                   every cert-manager object is validated by cert-manager itself, and nothing
 *                   of cert-manager can be written while the webhook is down
 *   NetworkPolicy   kube-router v2.10.0 policy-only (--run-firewall, no router, no service
 *                   proxy, no health/metrics port), admin kubeconfig, --hostname-override =
 *                   the node, --service-cluster-ip-range = the API server's: KUBE-ROUTER-*
 *                   jumps first in INPUT/FORWARD/OUTPUT, a KUBE-POD-FW-* chain per pod of the
 *                   node, KUBE-NWPLCY-* per policy, KUBE-SRC-/KUBE-DST-* ipsets. A blocked
 *                   connection is REJECTed (ICMP port unreachable: ECONNREFUSED at once, not a
 *                   timeout). Host-to-pod traffic is always allowed (prove policies pod to pod).
 *                   startCluster({ networkPolicy: false }) leaves it out
 *   storage         StorageClass `local` (default, no provisioner, WaitForFirstConsumer);
 *                   c.localVolume(name) makes a folder-backed local PersistentVolume
 *   add-ons         CoreDNS, kube-proxy, the scheduler, cert-manager (controllers and webhook) and kube-router run as host processes
 *                   (not as pods), each with its own log in <dir>/logs/
 *
 *   const c = await startCluster({ log?, crdFiles? });
 *   c.cp                   the ControlPlane (server, kubeconfig, kubeconfigPath, caPath, ...)
 *   c.kubeconfig           admin KubeConfig
 *   c.nodeName, c.nodeIP, c.podCIDR, c.serviceCIDR, c.dnsIP
 *   c.kernelSettingsBefore the kernel settings as they were before any cluster (stop() restores them)
 *   c.importImage(ociLayoutDirOrArchive)  `ctr -n k8s.io images import` (a layout folder, as
 *                          `make image` leaves it, is tarred on the fly and named
 *                          localhost/smtp-relay-operator:<its tag>); returns the names imported
 *   c.ctr(args)            runs ctr against this containerd (namespace k8s.io), returns stdout
 *   c.stop()               deletes every pod and waits for the kubelet to tear it down, stops
 *                          the add-ons, kubelet and containerd, kills what is left in the
 *                          cluster's cgroups and any shim, unmounts everything under the
 *                          folder, removes the pods' CNI network namespaces, the KUBE-* /
 *                          SROP-CLUSTER* iptables chains (IPv4 and IPv6; kube-router's too) and
 *                          the jumps to them, kube-router's ipsets, the cgroups, the node
 *                          address and the Service route, restores ip_forward and the kernel
 *                          settings the kubelet changes, removes the folder (kept if CLUSTER_KEEP=1) and the lock.
 *                          Idempotent. A cluster left by a killed test process is cleaned the
 *                          same way by the next start.
 */
import { execFile } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync, statSync, writeFileSync, accessSync, constants as fsConstants } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { get as httpsGet } from 'node:https';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import YAML from 'yaml';
import { freePort, repoRoot, startControlPlane, startProcess, type ControlPlane, type Proc } from '../controlplane/harness.js';

const execFileP = promisify(execFile);

export const NODE_NAME = 'srop-node';
export const NODE_IP = '198.19.255.1';
export const NODE_IFACE = 'lo';
/** The label of the node address on lo (`ip addr show label lo:srop`). */
export const NODE_LABEL = 'lo:srop';
export const SERVICE_CIDR = '198.19.0.0/24';
export const DNS_IP = '198.19.0.10';
/** The ClusterIP of the `kubernetes` Service (the first of the Service range). */
export const KUBERNETES_IP = '198.19.0.1';
export const POD_CIDR = '198.19.16.0/20';
export const CLUSTER_DOMAIN = 'cluster.local';
export const PAUSE_IMAGE = 'localhost/smtp-relay-operator/pause:1';
const CGROUP_ROOT = 'srop-cluster';
const FWD_CHAIN = 'SROP-CLUSTER-FWD';
const STATE_DIR = process.env['CLUSTER_STATE_DIR'] ?? '/run/smtp-relay-operator';
const LOCK_DIR = join(STATE_DIR, 'cluster.lock');
/** Fixed, so that a later start can find and clean what a killed run left. */
export const CLUSTER_DIR = process.env['CLUSTER_DIR'] ?? '/var/tmp/smtp-relay-cluster';
const KERNEL_SETTINGS = ['vm/overcommit_memory', 'vm/panic_on_oom', 'kernel/panic', 'kernel/panic_on_oops', 'kernel/keys/root_maxkeys', 'kernel/keys/root_maxbytes', 'net/ipv4/ip_forward'];

export interface ClusterOptions {
  log?: (line: string) => void;
  /** Extra CRD files installed with the control plane (cert-manager's are always installed). */
  crdFiles?: string[];
  /** Start cert-manager's controllers and its webhook (default true). */
  certManager?: boolean;
  /** Enforce NetworkPolicy with kube-router's policy controller (default true). */
  networkPolicy?: boolean;
}

export interface Cluster {
  readonly cp: ControlPlane;
  readonly kubeconfig: k8s.KubeConfig;
  readonly dir: string;
  readonly nodeName: string;
  readonly nodeIP: string;
  readonly podCIDR: string;
  readonly serviceCIDR: string;
  readonly dnsIP: string;
  /** The kernel settings (ip_forward, and those the kubelet changes) as they were before any cluster; stop() restores them. */
  readonly kernelSettingsBefore: Readonly<Record<string, string>>;
  importImage(source: string): Promise<string[]>;
  /**
   * A local PersistentVolume of the StorageClass `local` (no provisioner, WaitForFirstConsumer:
   * the scheduler and the controller-manager's PV binder bind it to a claim when a pod uses
   * it): a folder under <dir>/volumes owned by `uid` (default 65532). Returns the folder.
   */
  localVolume(name: string, o?: { size?: string; uid?: number }): Promise<string>;
  ctr(args: string[], input?: string): Promise<string>;
  stop(): Promise<void>;
}

/** Folder of the cluster parts built by `make cluster`. */
export function clusterCache(): string {
  return process.env['CLUSTER_CACHE'] || join(homedir(), '.cache', 'smtp-relay-operator', 'cluster');
}

function binary(name: string, sub = 'bin'): string {
  const p = join(clusterCache(), sub, name);
  try {
    accessSync(p, fsConstants.R_OK);
  } catch {
    throw new Error(`cluster: ${name} is missing at ${p}. Run \`make cluster\` (test/harness/cluster/build.sh builds the node parts from their Go modules into ${clusterCache()}).`);
  }
  return p;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Status of a GET to a component's loopback health endpoint (its serving certificate is self-signed, so not verified). */
function insecureGet(url: string): Promise<number> {
  return new Promise((res, rej) => {
    const req = httpsGet(url, { rejectUnauthorized: false, timeout: 2000, agent: false }, (r) => {
      r.resume();
      r.on('end', () => res(r.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', rej);
  });
}

async function sh(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string; okCodes?: number[] } = {}): Promise<string> {
  return new Promise((res, rej) => {
    const child = execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const code = typeof err.code === 'number' ? err.code : -1;
        if (opts.okCodes?.includes(code)) return res(stdout);
        return rej(new Error(`cluster: ${cmd} ${args.join(' ')} failed (${err.code ?? err.signal ?? ''}): ${(stderr || err.message).trim().slice(0, 2000)}`));
      }
      res(stdout);
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Best effort: the error is returned, never thrown (for clean-up steps). */
async function tryRun(cmd: string, args: string[], timeoutMs = 30_000): Promise<string | undefined> {
  try {
    await sh(cmd, args, { timeoutMs });
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

// ---------------------------------------------------------------------------
// processes (each in its own process group, with a parent-death signal)

/** The parts run as processes of the control plane harness's kind (own process group, log file, killed with the test process). */
function startProc(name: string, bin: string, args: string[], logDir: string, env: NodeJS.ProcessEnv = {}): Proc {
  return startProcess(name, bin, args, logDir, { GOMAXPROCS: '2', ...env });
}

async function stopProc(p: Proc, graceMs = 10_000): Promise<void> {
  if (p.exitInfo) return;
  try {
    process.kill(-p.pid, 'SIGTERM');
  } catch {
    /* gone */
  }
  const t = setTimeout(() => {
    try {
      process.kill(-p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }, graceMs);
  await p.exited;
  clearTimeout(t);
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    /* empty group */
  }
}

function tail(p: Proc, lines = 30): string {
  try {
    return readFileSync(p.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function waitFor(what: string, procs: Proc[], check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = '';
  for (;;) {
    for (const p of procs) {
      if (p.exitInfo) throw new Error(`cluster: ${p.name} exited (code ${p.exitInfo.code}, signal ${p.exitInfo.signal}) while waiting for ${what}. Last lines of ${p.logPath}:\n${tail(p)}`);
    }
    try {
      if (await check()) return;
    } catch (e) {
      lastErr = (e as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(`cluster: timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${lastErr})` : ''}.\n` + procs.map((p) => `Last lines of ${p.logPath}:\n${tail(p)}`).join('\n'));
    }
    await sleep(250);
  }
}

// ---------------------------------------------------------------------------
// lock and the machine-wide clean-up (also of a run that was killed)

function identity(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return `${pid} ${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]}`;
  } catch {
    return undefined;
  }
}

function lockOwnerAlive(): boolean {
  try {
    const owner = readFileSync(join(LOCK_DIR, 'owner'), 'utf8').trim();
    return identity(Number.parseInt(owner, 10)) === owner;
  } catch {
    return false;
  }
}

async function acquireLock(log: (l: string) => void, timeoutMs = 600_000): Promise<void> {
  mkdirSync(STATE_DIR, { recursive: true });
  const deadline = Date.now() + timeoutMs;
  let said = false;
  for (;;) {
    try {
      mkdirSync(LOCK_DIR);
      writeFileSync(join(LOCK_DIR, 'owner'), identity(process.pid) ?? String(process.pid));
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (!lockOwnerAlive()) {
      // A run that died without its stop(): clean what it left, then take the lock.
      log('cluster: cleaning up after a cluster whose test process died');
      await cleanupMachine(log);
      rmSync(LOCK_DIR, { recursive: true, force: true });
      continue;
    }
    if (!said) {
      log('cluster: another test process runs the cluster; waiting for it');
      said = true;
    }
    if (Date.now() > deadline) throw new Error(`cluster: another process holds ${LOCK_DIR} after ${timeoutMs} ms`);
    await sleep(2000);
  }
}

/** Processes whose command line names the cluster folder (containerd, shims, kubelet, add-ons). */
function clusterProcesses(): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    const pid = Number(d);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes(CLUSTER_DIR + '/')) out.push(pid);
    } catch {
      /* gone */
    }
  }
  return out;
}

function cgroupMounts(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length > 8 && (f[f.indexOf('-') + 1] === 'cgroup' || f[f.indexOf('-') + 1] === 'cgroup2'))
    .map((f) => f[4]!);
}

function cgroupProcs(): number[] {
  const pids = new Set<number>();
  const walk = (d: string): void => {
    let entries: string[];
    try {
      entries = readdirSync(d);
    } catch {
      return;
    }
    try {
      for (const l of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n')) if (l) pids.add(Number(l));
    } catch {
      /* none */
    }
    for (const e of entries) {
      const p = join(d, e);
      try {
        if (statSync(p).isDirectory()) walk(p);
      } catch {
        /* gone */
      }
    }
  };
  for (const m of cgroupMounts()) walk(join(m, CGROUP_ROOT));
  return [...pids];
}

function removeCgroups(): string[] {
  const left: string[] = [];
  const rmTree = (d: string): void => {
    let entries: string[] = [];
    try {
      entries = readdirSync(d);
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(d, e);
      try {
        if (statSync(p).isDirectory()) rmTree(p);
      } catch {
        /* gone */
      }
    }
    try {
      rmdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') left.push(`${d}: ${(e as Error).message}`);
    }
  };
  for (const m of cgroupMounts()) rmTree(join(m, CGROUP_ROOT));
  return left;
}

function mountsUnder(prefix: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === prefix || m.startsWith(prefix + '/')))
    .map((m) => m.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
}

async function iptablesChains(cmd: string, table: string): Promise<{ chains: string[]; rules: string[] }> {
  const out = await sh(cmd + '-save', ['-t', table], { timeoutMs: 30_000 }).catch(() => '');
  const chains: string[] = [];
  const rules: string[] = [];
  for (const l of out.split('\n')) {
    if (l.startsWith(':')) chains.push(l.slice(1).split(' ')[0]!);
    else if (l.startsWith('-A ')) rules.push(l);
  }
  return { chains, rules };
}

/** kube-proxy's and the kubelet's chains, and this harness's. Not CNI-*: buildah's CNI networks use those names too. */
const OUR_CHAIN = /^(KUBE-|SROP-CLUSTER)/;

/** Removes the chains of kube-proxy, the kubelet and this harness, and the rules that jump to them. */
async function cleanupIptables(problems: string[]): Promise<void> {
  for (const cmd of ['iptables', 'ip6tables']) {
    for (const table of ['filter', 'nat', 'mangle', 'raw']) {
      const { chains, rules } = await iptablesChains(cmd, table);
      const ours = chains.filter((c) => OUR_CHAIN.test(c));
      if (ours.length === 0) continue;
      // Rules in other chains that jump to ours, deleted by their spec.
      for (const r of rules) {
        const m = /^-A (\S+) (.*)$/.exec(r);
        if (!m || OUR_CHAIN.test(m[1]!)) continue;
        const target = /-j (\S+)/.exec(m[2]!)?.[1];
        if (!target || !OUR_CHAIN.test(target)) continue;
        const err = await tryRun(cmd, ['-w', '5', '-t', table, '-D', m[1]!, ...splitRule(m[2]!)]);
        if (err) problems.push(err);
      }
      for (const c of ours) await tryRun(cmd, ['-w', '5', '-t', table, '-F', c]);
      for (const c of ours) {
        const err = await tryRun(cmd, ['-w', '5', '-t', table, '-X', c]);
        if (err && !/No chain|does not exist/.test(err)) problems.push(err);
      }
    }
  }
}

/** kube-router's ipsets: per-policy KUBE-SRC-... and KUBE-DST-..., and kube-router-local-pods (IPv6 ones prefixed inet6:). */
const OUR_IPSET = /^(inet6:)?(KUBE-SRC-|KUBE-DST-|kube-router-)/;

/** The names of the ipsets kube-router made (none if the ipset tool is absent). */
export async function clusterIpsets(): Promise<string[]> {
  const out = await sh('ipset', ['list', '-n'], { timeoutMs: 30_000 }).catch(() => '');
  return out.split('\n').filter((n) => OUR_IPSET.test(n));
}

async function cleanupIpsets(problems: string[]): Promise<void> {
  for (const n of await clusterIpsets()) {
    const err = await tryRun('ipset', ['destroy', n]);
    if (err) problems.push(err);
  }
}

/** Splits an iptables-save rule into argv (handles "quoted strings"). */
function splitRule(s: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(s); m; m = re.exec(s)) out.push(m[1] !== undefined ? m[1].replace(/\\"/g, '"') : m[2]!);
  return out;
}

function readKernelSettings(): Record<string, string> {
  const o: Record<string, string> = {};
  for (const k of KERNEL_SETTINGS) o[k] = readFileSync(`/proc/sys/${k}`, 'utf8').trim();
  return o;
}

const SYSCTL_FILE = join(STATE_DIR, 'cluster-sysctl.json');

/**
 * Everything a cluster leaves on the machine, removed in dependency order. Used by stop()
 * after the graceful part, and by a start that finds the lock of a dead test process.
 */
async function cleanupMachine(log: (l: string) => void): Promise<string[]> {
  const problems: string[] = [];
  // 1. processes: every cluster process, then everything left in the cluster's cgroups.
  for (let round = 0; round < 5; round++) {
    const pids = [...clusterProcesses(), ...cgroupProcs()];
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await sleep(300);
  }
  const still = [...clusterProcesses(), ...cgroupProcs()];
  if (still.length) problems.push(`processes still running: ${still.join(' ')}`);
  // 2. mounts under the folder (container rootfs, pod volumes, netns bind mounts).
  for (const m of mountsUnder(CLUSTER_DIR)) {
    const err = (await tryRun('umount', [m])) && (await tryRun('umount', ['-l', m]));
    if (err) problems.push(err);
  }
  // 3. network namespaces made by containerd's CNI code (cni-<uuid> in /run/netns) for this
  //    cluster's pods: those holding an address of the cluster's range (other tools name theirs
  //    cni-* too).
  try {
    for (const n of readdirSync('/run/netns')) {
      if (!n.startsWith('cni-')) continue;
      const addrs = await sh('ip', ['-n', n, '-o', 'addr', 'show']).catch(() => '');
      if (!addrs.includes(' 198.19.')) continue;
      const err = await tryRun('ip', ['netns', 'delete', n]);
      if (err) problems.push(err);
    }
  } catch {
    /* no /run/netns */
  }
  // host ends of pod veths that outlived their netns (ptp names them veth<hex>), by address.
  try {
    const links = JSON.parse(await sh('ip', ['-j', 'addr', 'show'])) as Array<{ ifname: string; addr_info?: Array<{ local: string }> }>;
    for (const l of links) {
      if (l.ifname === 'lo') continue;
      if (l.addr_info?.some((a) => a.local.startsWith('198.19.'))) await tryRun('ip', ['link', 'delete', l.ifname]);
    }
  } catch (e) {
    problems.push((e as Error).message);
  }
  // 4. iptables chains and rules, then kube-router's ipsets (no rule refers to them any more).
  await cleanupIptables(problems);
  await cleanupIpsets(problems);
  // 5. cgroups, the node interface, kernel settings.
  problems.push(...removeCgroups());
  await tryRun('ip', ['addr', 'del', `${NODE_IP}/32`, 'dev', NODE_IFACE]);
  await tryRun('ip', ['route', 'del', SERVICE_CIDR, 'dev', NODE_IFACE]);
  await tryRun('ip', ['route', 'del', 'blackhole', SERVICE_CIDR]); // as older versions of this harness made it
  try {
    const saved = JSON.parse(readFileSync(SYSCTL_FILE, 'utf8')) as Record<string, string>;
    for (const [k, v] of Object.entries(saved)) {
      try {
        if (readFileSync(`/proc/sys/${k}`, 'utf8').trim() !== v) writeFileSync(`/proc/sys/${k}`, v);
      } catch (e) {
        problems.push(`sysctl ${k}: ${(e as Error).message}`);
      }
    }
    rmSync(SYSCTL_FILE, { force: true });
  } catch {
    /* nothing saved */
  }
  // 6. container log links the kubelet made in /var/log/containers to files of this cluster.
  try {
    for (const n of readdirSync('/var/log/containers')) {
      const p = join('/var/log/containers', n);
      try {
        if (readlinkSync(p).startsWith(CLUSTER_DIR + '/')) rmSync(p, { force: true });
      } catch {
        /* not a link */
      }
    }
  } catch {
    /* no folder */
  }
  // Paths the parts hard-code outside the folder: the kubelet's device-plugin socket, the CNI
  // result cache, containerd's shim socket folder, the container log links folder. Folders go
  // only when empty (rmdir), so nobody else's content is touched.
  rmSync('/var/lib/kubelet/device-plugins/kubelet.sock', { force: true });
  for (const d of ['/var/lib/kubelet/device-plugins', '/var/lib/kubelet', '/var/lib/cni/results', '/var/lib/cni', '/run/containerd/s', '/run/containerd', '/var/log/containers']) {
    try {
      rmdirSync(d);
    } catch {
      /* absent or not empty */
    }
  }
  // 7. the folder.
  if (process.env['CLUSTER_KEEP'] !== '1') {
    try {
      rmSync(CLUSTER_DIR, { recursive: true, force: true });
    } catch (e) {
      problems.push(`removing ${CLUSTER_DIR}: ${(e as Error).message}`);
    }
  } else log(`cluster: kept ${CLUSTER_DIR}`);
  return problems;
}

// ---------------------------------------------------------------------------
// certificates, signed by the control plane's CA

async function clientCert(cpDir: string, dir: string, name: string, subj: string, ext: string[]): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  await sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-CA', join(cpDir, 'ca.crt'), '-CAkey', join(cpDir, 'ca.key'),
    '-keyout', key, '-out', cert, '-days', '7', '-subj', subj, '-addext', 'basicConstraints=critical,CA:FALSE',
    '-addext', 'keyUsage=critical,digitalSignature,keyEncipherment', ...ext.flatMap((e) => ['-addext', e])]);
  return { cert, key };
}

function kubeconfigFile(path: string, server: string, caPath: string, user: string, c: { cert: string; key: string }): void {
  writeFileSync(path, YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server, 'certificate-authority': caPath } }],
    users: [{ name: user, user: { 'client-certificate': c.cert, 'client-key': c.key } }],
    contexts: [{ name: user, context: { cluster: 'test', user } }],
    'current-context': user,
  }), { mode: 0o600 });
}

// ---------------------------------------------------------------------------
// cert-manager's webhook

/** The message of an API error (the Status in an ApiException's body, raw text or parsed). */
export function apiErrorMessage(e: unknown): string {
  const body = (e as { body?: unknown }).body;
  if (typeof body === 'string') {
    try {
      return String((JSON.parse(body) as { message?: unknown }).message ?? body);
    } catch {
      return body;
    }
  }
  if (body && typeof body === 'object' && 'message' in body) return String((body as { message: unknown }).message);
  return (e as Error).message ?? String(e);
}

/** The name of cert-manager's webhook in its chart's configurations. */
export const CERT_MANAGER_WEBHOOK = 'webhook.cert-manager.io';

/**
 * Starts cert-manager's webhook (our main, cmwebhook/main.go) as a host process serving TLS on
 * every interface, with a serving certificate for 127.0.0.1 from a CA of its own (made here,
 * as the chart's cert-manager-webhook-ca), and registers it as cert-manager's chart does
 * (templates/webhook-{validating,mutating}-webhook.yaml of v1.21.2, default values): the
 * validating webhook for CREATE/UPDATE of every cert-manager.io and acme.cert-manager.io v1
 * resource (`*\/*`: subresources too) except in namespaces labelled
 * cert-manager.io/disable-validation=true, the mutating one for CREATE of CertificateRequests;
 * matchPolicy Equivalent, failurePolicy Fail, sideEffects None, timeoutSeconds 30. The
 * clientConfig is a `url` on loopback (the API server runs on this host) instead of the
 * chart's Service, with our CA as caBundle. Resolves once the API server enforces it: a
 * server-side dry run of an invalid Certificate is refused by the webhook.
 */
async function startCertManagerWebhook(kc: k8s.KubeConfig, cp: ControlPlane, bin: string, pki: string, logDir: string, procs: Proc[], all: Proc[], log: (l: string) => void): Promise<Proc> {
  const t0 = Date.now();
  const caDir = join(pki, 'cert-manager-webhook-ca');
  mkdirSync(caDir, { recursive: true, mode: 0o700 });
  await sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(caDir, 'ca.key'), '-out', join(caDir, 'ca.crt'),
    '-days', '7', '-subj', '/CN=cert-manager-webhook-ca', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  const serving = await clientCert(caDir, pki, 'cert-manager-webhook', '/CN=cert-manager-webhook', ['extendedKeyUsage=serverAuth', 'subjectAltName=IP:127.0.0.1']);
  const caBundle = readFileSync(join(caDir, 'ca.crt')).toString('base64');
  const [port, healthz] = [await freePort(), await freePort()];
  const proc = startProc('cert-manager-webhook', bin, [`--kubeconfig=${cp.kubeconfigPath}`, `--secure-port=${port}`, `--healthz-port=${healthz}`,
    `--tls-cert-file=${serving.cert}`, `--tls-private-key-file=${serving.key}`, '--v=1'], logDir);
  procs.push(proc);
  await waitFor('cert-manager-webhook /healthz', [...all, proc], async () => (await fetch(`http://127.0.0.1:${healthz}/healthz`, { signal: AbortSignal.timeout(2000) })).status === 200, 60_000);

  const url = `https://127.0.0.1:${port}`;
  const admission = kc.makeApiClient(k8s.AdmissionregistrationV1Api);
  const labels = { app: 'webhook', 'app.kubernetes.io/name': 'webhook', 'app.kubernetes.io/component': 'webhook' };
  await admission.createValidatingWebhookConfiguration({
    body: {
      metadata: { name: 'cert-manager-webhook', labels },
      webhooks: [{
        name: CERT_MANAGER_WEBHOOK,
        namespaceSelector: { matchExpressions: [{ key: 'cert-manager.io/disable-validation', operator: 'NotIn', values: ['true'] }] },
        rules: [{ apiGroups: ['cert-manager.io', 'acme.cert-manager.io'], apiVersions: ['v1'], operations: ['CREATE', 'UPDATE'], resources: ['*/*'] }],
        admissionReviewVersions: ['v1'],
        matchPolicy: 'Equivalent',
        timeoutSeconds: 30,
        failurePolicy: 'Fail',
        sideEffects: 'None',
        clientConfig: { url: `${url}/validate`, caBundle },
      }],
    },
  });
  await admission.createMutatingWebhookConfiguration({
    body: {
      metadata: { name: 'cert-manager-webhook', labels },
      webhooks: [{
        name: CERT_MANAGER_WEBHOOK,
        rules: [{ apiGroups: ['cert-manager.io'], apiVersions: ['v1'], operations: ['CREATE'], resources: ['certificaterequests'] }],
        admissionReviewVersions: ['v1'],
        matchPolicy: 'Equivalent',
        timeoutSeconds: 30,
        failurePolicy: 'Fail',
        sideEffects: 'None',
        clientConfig: { url: `${url}/mutate`, caBundle },
      }],
    },
  });
  // The API server picks the configurations up from its informer: wait until it calls the webhook.
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);
  await waitFor('the API server to call cert-manager\'s webhook', [...all, proc], async () => {
    try {
      await custom.createNamespacedCustomObject({
        group: 'cert-manager.io', version: 'v1', namespace: 'cert-manager', plural: 'certificates', dryRun: 'All',
        body: { apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'webhook-probe' }, spec: { secretName: 'webhook-probe', dnsNames: ['probe.invalid'], issuerRef: { name: '' } } },
      });
      return false;
    } catch (e) {
      if (apiErrorMessage(e).includes(`admission webhook "${CERT_MANAGER_WEBHOOK}" denied the request`)) return true;
      throw e;
    }
  }, 60_000);
  log(`cluster: cert-manager's webhook at ${url}, called by the API server (validating and mutating webhook configurations; ${Date.now() - t0} ms)`);
  return proc;
}

// ---------------------------------------------------------------------------

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const log = opts.log ?? ((): void => {});
  const t0 = Date.now();
  const since = (): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
  if (process.getuid?.() !== 0) throw new Error('cluster: needs root (network interfaces, mounts, cgroups, iptables)');
  const bins = {
    containerd: binary('containerd'), shimDir: join(clusterCache(), 'bin'), ctr: binary('ctr'), runc: binary('runc'),
    kubelet: binary('kubelet'), proxy: binary('kube-proxy'), scheduler: binary('kube-scheduler'), coredns: binary('coredns'),
    certManager: opts.certManager === false ? '' : binary('cert-manager-controller'), pauseImage: binary('pause-image.tar'),
    certManagerWebhook: opts.certManager === false ? '' : binary('cert-manager-webhook'),
    crds: opts.certManager === false ? '' : binary('crds'),
    kubeRouter: opts.networkPolicy === false ? '' : binary('kube-router'),
    cni: join(clusterCache(), 'cni'),
  };
  for (const p of ['ptp', 'host-local', 'loopback', 'portmap']) binary(p, 'cni');
  binary('containerd-shim-runc-v2');
  for (const tool of ['iptables', 'ip6tables', 'ip', 'openssl', 'mount', ...(bins.kubeRouter ? ['ipset'] : [])]) {
    await sh('sh', ['-c', `command -v ${tool}`]).catch(() => {
      throw new Error(`cluster: '${tool}' not found (apt-get install iptables ipset iproute2 openssl; listed in .ci/run)`);
    });
  }

  await acquireLock(log);
  // Whatever a killed run left (the lock was free, but the machine may not be clean).
  if (existsSync(CLUSTER_DIR) || clusterProcesses().length > 0) await cleanupMachine(log);

  const dir = CLUSTER_DIR;
  const logDir = join(dir, 'logs');
  for (const d of [dir, logDir, join(dir, 'pki'), join(dir, 'cni', 'net.d'), join(dir, 'kubelet'), join(dir, 'coredns')]) mkdirSync(d, { recursive: true, mode: 0o755 });
  const procs: Proc[] = [];
  let cp: ControlPlane | undefined;
  let stopped = false;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const t = Date.now();
    // Only what is still on the machine after the final clean-up counts as a problem.
    const problems: string[] = [];
    const byName = (n: string): Proc | undefined => procs.find((p) => p.name === n);
    const kubelet = byName('kubelet');
    // 1. No new pods on the node; every pod deleted and torn down by the kubelet (CNI DEL,
    //    sandbox stopped), while the kubelet, containerd and the API server still run.
    if (byName('kube-scheduler')) await stopProc(byName('kube-scheduler')!);
    if (cp && kubelet && !kubelet.exitInfo) {
      try {
        const core = cp.kubeconfig.makeApiClient(k8s.CoreV1Api);
        const pods = (await core.listPodForAllNamespaces()).items.filter((p) => p.spec?.nodeName === NODE_NAME);
        await Promise.all(pods.map((p) => core.deleteNamespacedPod({ name: p.metadata!.name!, namespace: p.metadata!.namespace!, gracePeriodSeconds: 2 }).catch(() => {})));
        await waitFor('the kubelet to tear down every pod', [], async () => (await core.listPodForAllNamespaces()).items.every((p) => p.spec?.nodeName !== NODE_NAME), 60_000);
      } catch (e) {
        // Not fatal: the clean-up below removes whatever the kubelet could not (e.g. the API
        // server was already stopped by a signal handler).
        log(`cluster: graceful pod teardown skipped: ${(e as Error).message.split('\n')[0]!}`);
      }
    }
    // 2. Add-ons and the kubelet, then every container and sandbox through containerd, then containerd.
    for (const n of ['cert-manager', 'cert-manager-webhook', 'coredns', 'kube-router', 'kube-proxy', 'kubelet']) if (byName(n)) await stopProc(byName(n)!);
    const containerd = byName('containerd');
    if (containerd && !containerd.exitInfo) {
      try {
        const ctr = (args: string[]): Promise<string> => sh(bins.ctr, ['--address', join(dir, 'containerd.sock'), '-n', 'k8s.io', ...args], { timeoutMs: 30_000 });
        const ids = (await ctr(['containers', 'list', '-q'])).split('\n').filter(Boolean);
        for (const id of ids) {
          await ctr(['tasks', 'kill', '-s', 'SIGKILL', id]).catch(() => {});
        }
        for (const id of ids) {
          await ctr(['tasks', 'delete', '-f', id]).catch(() => {});
          await ctr(['containers', 'delete', id]).catch(() => {});
        }
      } catch (e) {
        log(`cluster: removing containers through containerd failed: ${(e as Error).message}`);
      }
      await stopProc(containerd);
    }
    for (const p of procs) await stopProc(p);
    // 3. kube-proxy's own clean-up of its rules, then the control plane.
    if (existsSync(join(dir, 'kube-proxy.yaml'))) {
      const err = await tryRun(bins.proxy, ['--cleanup', `--config=${join(dir, 'kube-proxy.yaml')}`], 60_000);
      if (err) log(`cluster: kube-proxy --cleanup: ${err}`);
    }
    if (cp) await cp.stop();
    // 4. The machine.
    problems.push(...(await cleanupMachine(log)));
    rmSync(LOCK_DIR, { recursive: true, force: true });
    process.off('exit', onExit);
    log(`cluster: stopped in ${((Date.now() - t) / 1000).toFixed(1)} s${problems.length ? `; problems: ${problems.join('; ')}` : ''}`);
    if (problems.length) throw new Error(`cluster: stop left problems: ${problems.join('; ')}`);
  };

  const onExit = (): void => {
    // Synchronous last resort (test process exiting without stop()): kill what we started;
    // the next start cleans the rest.
    for (const p of procs) {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  process.once('exit', onExit);

  try {
    // --- the machine: node address, Service route, forwarding between pods only
    if (!existsSync(SYSCTL_FILE)) writeFileSync(SYSCTL_FILE, JSON.stringify(readKernelSettings()));
    // This kernel has no dummy interfaces: the node address goes on lo (the kernel answers for
    // it on every interface, so pods reach it through their veth). Service addresses are
    // routed to lo from the node address: kube-proxy rewrites them (PREROUTING for pods, OUTPUT
    // for the host's own clients, which a blackhole route would fail before OUTPUT with
    // EINVAL), and a packet nothing rewrote arrives on lo for an address that is not local and
    // is dropped: nothing leaves the machine.
    await sh('ip', ['addr', 'add', `${NODE_IP}/32`, 'dev', NODE_IFACE, 'label', NODE_LABEL]);
    await sh('ip', ['route', 'add', SERVICE_CIDR, 'dev', NODE_IFACE, 'src', NODE_IP]);
    await sh('iptables', ['-w', '5', '-N', FWD_CHAIN]);
    await sh('iptables', ['-w', '5', '-A', FWD_CHAIN, '-s', POD_CIDR, '!', '-d', POD_CIDR, '-j', 'DROP']);
    await sh('iptables', ['-w', '5', '-A', FWD_CHAIN, '!', '-s', POD_CIDR, '-d', POD_CIDR, '-j', 'DROP']);
    await sh('iptables', ['-w', '5', '-I', 'FORWARD', '1', '-j', FWD_CHAIN]);
    writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
    // The kubelet's cgroupRoot must exist in every hierarchy (a new cpuset needs its cpus and mems).
    for (const m of cgroupMounts()) {
      const d = join(m, CGROUP_ROOT);
      mkdirSync(d, { recursive: true });
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        if (existsSync(join(m, f)) && readFileSync(join(d, f), 'utf8').trim() === '') writeFileSync(join(d, f), readFileSync(join(m, f), 'utf8').trim());
      }
    }
    log(`cluster: node interface ${NODE_IFACE} ${NODE_IP}, Services ${SERVICE_CIDR}, pods ${POD_CIDR} (${since()})`);

    // --- control plane (cert-manager's CRDs from the module the controller was built from)
    const cmCrds = bins.crds === '' ? [] : readdirSync(bins.crds).filter((n) => n.endsWith('.yaml')).map((n) => join(bins.crds, n));
    // The project's CRDs and cert-manager's of the built release; not the control plane's
    // defaults, whose cert-manager copy would be installed in parallel with these (409).
    const projectCrds = readdirSync(join(repoRoot(), 'crds')).filter((n) => /\.ya?ml$/.test(n)).map((n) => join(repoRoot(), 'crds', n));
    cp = await startControlPlane({
      log,
      defaultCrds: false,
      crdFiles: [...projectCrds, ...cmCrds, ...(opts.crdFiles ?? [])],
      // The ServiceAccount admission plugin back (the control plane harness disables it, as
      // envtest does): pods get their projected token volume (token, the cluster CA from the
      // kube-root-ca.crt ConfigMap, the namespace) at /var/run/secrets/kubernetes.io/serviceaccount,
      // as in a real cluster. The flag must name some plugin: DefaultIngressClass (no Ingress here).
      apiserverArgs: [`--service-cluster-ip-range=${SERVICE_CIDR}`, '--disable-admission-plugins=DefaultIngressClass'],
      // On the node address (on lo), so pods reach it through the `kubernetes` Service
      // (EndpointSlice below), with a serving certificate for the names they use.
      address: NODE_IP,
      servingSans: [`IP:${NODE_IP}`, `IP:${KUBERNETES_IP}`, 'DNS:kubernetes', 'DNS:kubernetes.default', `DNS:kubernetes.default.svc.${CLUSTER_DOMAIN}`],
      // Removes the kubelet's node.kubernetes.io/not-ready taint once the Node is Ready (and
      // taints it again, and evicts, if the kubelet stops reporting), as in a real cluster.
      // The StatefulSet controller runs the relays with a persistent queue (replicas.check.ts).
      extraControllers: ['node-lifecycle-controller', 'persistentvolume-binder-controller', 'persistentvolume-protection-controller', 'persistentvolumeclaim-protection-controller', 'statefulset-controller'],
    });
    const server = cp.server;
    const kc = cp.kubeconfig;
    const core = kc.makeApiClient(k8s.CoreV1Api);
    const rbac = kc.makeApiClient(k8s.RbacAuthorizationV1Api);

    // --- identities
    const pki = join(dir, 'pki');
    const kubeletClient = await clientCert(cp.dir, pki, 'kubelet-client', `/O=system:nodes/CN=system:node:${NODE_NAME}`, ['extendedKeyUsage=clientAuth']);
    const kubeletServing = await clientCert(cp.dir, pki, 'kubelet-serving', `/CN=${NODE_NAME}`, ['extendedKeyUsage=serverAuth', `subjectAltName=IP:${NODE_IP},IP:127.0.0.1,DNS:${NODE_NAME}`]);
    const proxyClient = await clientCert(cp.dir, pki, 'kube-proxy', '/CN=system:kube-proxy', ['extendedKeyUsage=clientAuth']);
    const schedClient = await clientCert(cp.dir, pki, 'kube-scheduler', '/CN=system:kube-scheduler', ['extendedKeyUsage=clientAuth']);
    const kubeletKc = join(dir, 'kubelet.kubeconfig');
    const proxyKc = join(dir, 'kube-proxy.kubeconfig');
    const schedKc = join(dir, 'kube-scheduler.kubeconfig');
    kubeconfigFile(kubeletKc, server, cp.caPath, `system:node:${NODE_NAME}`, kubeletClient);
    kubeconfigFile(proxyKc, server, cp.caPath, 'system:kube-proxy', proxyClient);
    kubeconfigFile(schedKc, server, cp.caPath, 'system:kube-scheduler', schedClient);
    // No Node authorizer here (RBAC only): bind the node's user to the system:node role.
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: 'srop-node' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'system:node' },
        subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: `system:node:${NODE_NAME}` }],
      },
    });

    // --- containerd
    const sock = join(dir, 'containerd.sock');
    writeFileSync(join(dir, 'cni', 'net.d', '10-srop.conflist'), JSON.stringify({
      cniVersion: '1.0.0',
      name: 'srop',
      plugins: [
        { type: 'ptp', ipMasq: false, mtu: 1500, ipam: { type: 'host-local', ranges: [[{ subnet: POD_CIDR }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: join(dir, 'cni', 'ipam') } },
        { type: 'portmap', capabilities: { portMappings: true }, snat: true },
      ],
    }, null, 2));
    const toml = `version = 3
root = "${dir}/containerd/root"
state = "${dir}/containerd/state"
temp = "${dir}/containerd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${sock}"

[ttrpc]
  address = "${sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "${PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # No process here may lower its oom_score_adj (CAP_SYS_RESOURCE is not in the bounding set),
  # so the sandbox's -998 and Guaranteed pods' -997 are raised to containerd's own value.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["${bins.cni}"]
    conf_dir = "${dir}/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "${bins.runc}"
        Root = "${dir}/runc"
        SystemdCgroup = false
`;
    writeFileSync(join(dir, 'containerd.toml'), toml);
    const containerd = startProc('containerd', bins.containerd, ['--config', join(dir, 'containerd.toml'), '--log-level', 'info'], logDir, {
      PATH: `${bins.shimDir}:${process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
    });
    procs.push(containerd);
    const ctr = (args: string[], input?: string): Promise<string> => sh(bins.ctr, ['--address', sock, '-n', 'k8s.io', ...args], { timeoutMs: 300_000, input });
    await waitFor('containerd', [containerd], async () => {
      await sh(bins.ctr, ['--address', sock, 'version'], { timeoutMs: 5000 });
      return true;
    }, 30_000);
    await ctr(['images', 'import', '--platform', 'linux/amd64', bins.pauseImage]);
    log(`cluster: containerd up, ${PAUSE_IMAGE} imported (${since()})`);

    // --- CoreDNS on the node address
    const corefile = `.:53 {
    bind ${NODE_IP}
    errors
    ready 127.0.0.1:${await freePort()}
    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {
        kubeconfig ${cp.kubeconfigPath}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
`;
    writeFileSync(join(dir, 'coredns', 'Corefile'), corefile);
    const readyPort = /ready 127\.0\.0\.1:(\d+)/.exec(corefile)![1];
    const coredns = startProc('coredns', bins.coredns, ['-conf', join(dir, 'coredns', 'Corefile')], logDir);
    procs.push(coredns);

    // --- kubelet
    writeFileSync(join(dir, 'kubelet', 'resolv.conf'), '# the cluster DNS is the only resolver pods get\n');
    const kubeletHealthz = await freePort();
    const kubeletConfig = {
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      failCgroupV1: false,
      cgroupDriver: 'cgroupfs',
      cgroupRoot: `/${CGROUP_ROOT}`,
      cgroupsPerQOS: true,
      enforceNodeAllocatable: ['pods'],
      address: '127.0.0.1',
      port: await freePort(),
      readOnlyPort: 0,
      healthzBindAddress: '127.0.0.1',
      healthzPort: kubeletHealthz,
      tlsCertFile: kubeletServing.cert,
      tlsPrivateKeyFile: kubeletServing.key,
      authentication: { anonymous: { enabled: false }, webhook: { enabled: false }, x509: { clientCAFile: cp.caPath } },
      authorization: { mode: 'AlwaysAllow' },
      clusterDomain: CLUSTER_DOMAIN,
      clusterDNS: [DNS_IP],
      resolvConf: join(dir, 'kubelet', 'resolv.conf'),
      containerRuntimeEndpoint: `unix://${sock}`,
      imageServiceEndpoint: `unix://${sock}`,
      podLogsDir: join(dir, 'pod-logs'),
      volumePluginDir: join(dir, 'volume-plugins'),
      failSwapOn: false,
      protectKernelDefaults: false,
      serializeImagePulls: false,
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      evictionHard: { 'memory.available': '100Mi', 'nodefs.available': '1%', 'imagefs.available': '1%', 'nodefs.inodesFree': '1%' },
      maxPods: 50,
      nodeStatusUpdateFrequency: '5s',
      syncFrequency: '10s',
      fileCheckFrequency: '10s',
      rotateCertificates: false,
      serverTLSBootstrap: false,
      shutdownGracePeriod: '0s',
      localStorageCapacityIsolation: true,
      registerNode: true,
    };
    writeFileSync(join(dir, 'kubelet', 'config.yaml'), YAML.stringify(kubeletConfig));
    const kubelet = startProc('kubelet', bins.kubelet, [
      `--config=${join(dir, 'kubelet', 'config.yaml')}`,
      `--kubeconfig=${kubeletKc}`,
      `--root-dir=${join(dir, 'kubelet', 'root')}`,
      `--cert-dir=${join(dir, 'kubelet', 'pki')}`,
      `--hostname-override=${NODE_NAME}`,
      `--node-ip=${NODE_IP}`,
      '--v=2',
    ], logDir, { PATH: `${bins.shimDir}:${process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin'}` });
    procs.push(kubelet);
    let lastNode = '';
    await waitFor(`Node ${NODE_NAME} Ready and untainted`, [containerd, kubelet, coredns], async () => {
      const n = await core.readNode({ name: NODE_NAME });
      lastNode = JSON.stringify({ taints: n.spec?.taints, conditions: n.status?.conditions?.map((c) => `${c.type}=${c.status}`) });
      return !!n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') && (n.spec?.taints ?? []).length === 0;
    }, 120_000).catch((e: Error) => {
      throw new Error(`${e.message}\nnode: ${lastNode}`);
    });
    log(`cluster: kubelet registered ${NODE_NAME}, Ready, no taints (${since()})`);

    // --- kube-proxy
    const proxyConfig = {
      apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
      kind: 'KubeProxyConfiguration',
      clientConnection: { kubeconfig: proxyKc },
      mode: 'iptables',
      hostnameOverride: NODE_NAME,
      clusterCIDR: POD_CIDR,
      detectLocalMode: 'ClusterCIDR',
      healthzBindAddress: `127.0.0.1:${await freePort()}`,
      metricsBindAddress: `127.0.0.1:${await freePort()}`,
      nodePortAddresses: [`${NODE_IP}/32`],
      conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: '0s', tcpCloseWaitTimeout: '0s' },
      iptables: { localhostNodePorts: false, masqueradeAll: false, syncPeriod: '10s', minSyncPeriod: '0s' },
      oomScoreAdj: 0,
    };
    writeFileSync(join(dir, 'kube-proxy.yaml'), YAML.stringify(proxyConfig));
    const proxy = startProc('kube-proxy', bins.proxy, [`--config=${join(dir, 'kube-proxy.yaml')}`, '--v=2'], logDir);
    procs.push(proxy);

    // --- scheduler
    const schedPort = await freePort();
    const scheduler = startProc('kube-scheduler', bins.scheduler, [
      `--kubeconfig=${schedKc}`,
      `--authentication-kubeconfig=${schedKc}`,
      `--authorization-kubeconfig=${schedKc}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${schedPort}`,
      '--leader-elect=false',
      '--v=1',
    ], logDir);
    procs.push(scheduler);

    // --- cluster DNS Service, served by CoreDNS on the host (a hand-made EndpointSlice)
    await core.createNamespacedService({
      namespace: 'kube-system',
      body: {
        metadata: { name: 'kube-dns', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns' } },
        spec: { clusterIP: DNS_IP, ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] },
      },
    });
    await kc.makeApiClient(k8s.DiscoveryV1Api).createNamespacedEndpointSlice({
      namespace: 'kube-system',
      body: {
        metadata: { name: 'kube-dns-node', namespace: 'kube-system', labels: { 'kubernetes.io/service-name': 'kube-dns', 'endpointslice.kubernetes.io/managed-by': 'smtp-relay-operator-test-harness' } },
        addressType: 'IPv4',
        endpoints: [{ addresses: [NODE_IP], conditions: { ready: true }, nodeName: NODE_NAME }],
        ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }],
      },
    });

    // --- the API server for pods: the `kubernetes` Service (made by the API server) to its
    //     port on the node address. The API server runs with --endpoint-reconciler-type=none,
    //     so this slice stands for the one its reconciler would write.
    const kubernetesSvc = await core.readNamespacedService({ name: 'kubernetes', namespace: 'default' });
    await kc.makeApiClient(k8s.DiscoveryV1Api).createNamespacedEndpointSlice({
      namespace: 'default',
      body: {
        metadata: { name: 'kubernetes', namespace: 'default', labels: { 'kubernetes.io/service-name': 'kubernetes', 'endpointslice.kubernetes.io/managed-by': 'smtp-relay-operator-test-harness' } },
        addressType: 'IPv4',
        endpoints: [{ addresses: [NODE_IP], conditions: { ready: true } }],
        ports: [{ name: kubernetesSvc.spec!.ports![0]!.name!, port: Number(new URL(server).port), protocol: 'TCP' }],
      },
    });

    // --- local PersistentVolumes (localVolume()), bound when a pod is scheduled
    await kc.makeApiClient(k8s.StorageV1Api).createStorageClass({
      body: {
        metadata: { name: 'local', annotations: { 'storageclass.kubernetes.io/is-default-class': 'true' } },
        provisioner: 'kubernetes.io/no-provisioner',
        volumeBindingMode: 'WaitForFirstConsumer',
        reclaimPolicy: 'Retain',
      },
    });

    // --- cert-manager (the namespace of ClusterIssuers' Secrets first)
    await core.createNamespace({ body: { metadata: { name: 'cert-manager' } } });
    const all = [containerd, kubelet, coredns, proxy, scheduler];
    // cert-manager's webhook before its controllers, so every object they write is admitted by
    // it too (the CertificateRequests get their requester's identity from /mutate).
    if (bins.certManagerWebhook) all.push(await startCertManagerWebhook(kc, cp, bins.certManagerWebhook, pki, logDir, procs, all, log));
    if (bins.certManager) {
      const certManager = startProc('cert-manager', bins.certManager, [`--kubeconfig=${cp.kubeconfigPath}`, '--cluster-resource-namespace=cert-manager', '--v=1'], logDir);
      procs.push(certManager);
      all.push(certManager);
    }
    await waitFor('CoreDNS ready', all, async () => {
      const r = await fetch(`http://127.0.0.1:${readyPort}/ready`, { signal: AbortSignal.timeout(2000) });
      return r.status === 200;
    }, 60_000);
    await waitFor('kube-proxy rules for the DNS Service', all, async () => {
      const out = await sh('iptables-save', ['-t', 'nat']);
      return out.includes(`-d ${DNS_IP}/32`);
    }, 60_000);
    // --- NetworkPolicy: kube-router's policy controller alone (no routing, no service proxy,
    //     no health or metrics listener), started once kube-proxy has written its chains: each
    //     kube-router sync saves the whole filter table and restores it without --noflush, so a
    //     chain kube-proxy creates in between is lost (seen at start-up: kube-proxy's first sync
    //     failed with "Chain 'KUBE-PROXY-FIREWALL' does not exist" and its DNS rules never came). It programs KUBE-ROUTER-{INPUT,FORWARD,OUTPUT} and a
    //     KUBE-POD-FW-* chain per pod of this node (status.hostIP = the node's InternalIP, found
    //     on lo), KUBE-NWPLCY-* chains per policy, and KUBE-SRC-*/KUBE-DST-* and
    //     kube-router-local-pods ipsets.
    let kubeRouter: Proc | undefined;
    if (bins.kubeRouter) {
      kubeRouter = startProc('kube-router', bins.kubeRouter, [
        `--kubeconfig=${cp.kubeconfigPath}`,
        '--run-firewall=true',
        '--run-router=false',
        '--run-service-proxy=false',
        '--run-loadbalancer=false',
        '--health-port=0',
        '--metrics-port=0',
        `--service-cluster-ip-range=${SERVICE_CIDR}`,
        `--hostname-override=${NODE_NAME}`,
        '--enable-ipv4=true',
        '--enable-ipv6=false',
        '--v=1',
      ], logDir);
      procs.push(kubeRouter);
    }

    await waitFor('kube-scheduler /healthz', all, async () => (await insecureGet(`https://127.0.0.1:${schedPort}/healthz`)) === 200, 60_000);
    if (kubeRouter) {
      all.push(kubeRouter);
      await waitFor('kube-router\'s policy chains (KUBE-ROUTER-FORWARD in FORWARD, KUBE-NWPLCY-COMMON)', all, async () => {
        const out = await sh('iptables-save', ['-t', 'filter']);
        return /^-A FORWARD .*-j KUBE-ROUTER-FORWARD$/m.test(out) && /^-A INPUT .*-j KUBE-ROUTER-INPUT$/m.test(out) && out.includes(':KUBE-NWPLCY-COMMON ');
      }, 60_000);
    }
    log(`cluster: kube-proxy, scheduler, CoreDNS${bins.certManager ? ', cert-manager (and its webhook)' : ''}${kubeRouter ? ', kube-router (NetworkPolicy)' : ''} up (${since()})`);

    const cluster: Cluster = {
      cp,
      kubeconfig: kc,
      dir,
      nodeName: NODE_NAME,
      nodeIP: NODE_IP,
      podCIDR: POD_CIDR,
      serviceCIDR: SERVICE_CIDR,
      dnsIP: DNS_IP,
      kernelSettingsBefore: JSON.parse(readFileSync(SYSCTL_FILE, 'utf8')) as Record<string, string>,
      ctr,
      importImage: async (source: string): Promise<string[]> => {
        const before = new Set((await ctr(['images', 'list', '-q'])).split('\n'));
        if (statSync(source).isDirectory()) {
          // An OCI layout folder (make image): its index names the tag only ("dev"), so the
          // repository comes from the folder's image name via --base-name.
          const tar = join(dir, `import-${Date.now()}.tar`);
          await sh('tar', ['-C', source, '-cf', tar, '.']);
          try {
            await ctr(['images', 'import', '--platform', 'linux/amd64', '--base-name', 'localhost/smtp-relay-operator', tar]);
          } finally {
            rmSync(tar, { force: true });
          }
        } else {
          await ctr(['images', 'import', '--platform', 'linux/amd64', source]);
        }
        return (await ctr(['images', 'list', '-q'])).split('\n').filter((n) => n && !before.has(n) && !n.startsWith('sha256:'));
      },
      localVolume: async (name: string, o: { size?: string; uid?: number } = {}): Promise<string> => {
        const path = join(dir, 'volumes', name);
        mkdirSync(path, { recursive: true, mode: 0o750 });
        chownSync(path, o.uid ?? 65532, o.uid ?? 65532);
        await core.createPersistentVolume({
          body: {
            metadata: { name },
            spec: {
              capacity: { storage: o.size ?? '1Gi' },
              accessModes: ['ReadWriteOnce'],
              persistentVolumeReclaimPolicy: 'Retain',
              storageClassName: 'local',
              local: { path },
              nodeAffinity: { required: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/hostname', operator: 'In', values: [NODE_NAME] }] }] } },
            },
          },
        });
        return path;
      },
      stop,
    };
    return cluster;
  } catch (e) {
    await stop().catch((err: Error) => log(err.message));
    throw e;
  }
}

/** The project's image as `make image` leaves it (an OCI layout folder, tag "dev"). */
export function projectImageLayout(): string {
  return join(repoRoot(), '.cache', 'image', 'oci');
}

export const PROJECT_IMAGE = 'localhost/smtp-relay-operator:dev';

/** Reads a file of the cluster folder (logs), for failure messages. */
export async function clusterLog(name: string, lines = 40): Promise<string> {
  try {
    return (await readFile(join(CLUSTER_DIR, 'logs', `${name}.log`), 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

