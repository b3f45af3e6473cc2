/**
 * The container runner of the container kubelet stand-in: runs one Kubernetes container
 * (a V1Container of a V1PodSpec) from the image `make image` built, under runc, with an
 * OCI runtime config derived from the pod spec the way kubelet + containerd derive it:
 *
 * - process: command/args per Kubernetes rules (command replaces the image ENTRYPOINT and
 *   drops its CMD; args alone replace CMD; `$(VAR)` expanded from the env, `$$` escapes),
 *   env = image ENV overridden by the container's env (values resolved by the caller from
 *   Secrets/ConfigMaps/downward API), workingDir or the image's.
 * - user: runAsUser / runAsGroup (container over pod), else the image USER; the primary
 *   group from the image's /etc/passwd when only a uid is known; fsGroup and
 *   supplementalGroups as supplementary groups (plus the image's /etc/group memberships);
 *   runAsNonRoot is checked and refused as the kubelet does.
 * - capabilities: containerd's default set, minus `drop` (ALL empties it), plus `add`; given
 *   as bounding/effective/permitted (no inheritable, no ambient: as in containerd, so a
 *   non-root process gets no effective capabilities from `add`, as in a real cluster).
 * - noNewPrivileges from allowPrivilegeEscalation=false; root.readonly from
 *   readOnlyRootFilesystem; seccomp RuntimeDefault (seccomp.ts) / Unconfined; runtime
 *   default masked and read-only /proc and /sys paths.
 * - mounts: /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (ro), /sys/fs/cgroup (ro);
 *   each volumeMount bound from the host directory the caller prepared for its volume
 *   (read-only when readOnly, subPath supported), or a tmpfs for medium: Memory emptyDirs;
 *   /etc/hosts and /etc/hostname (read-only) as the kubelet provides them. Nothing else is
 *   writable: the root filesystem is an overlay (image lower, per-container upper) that
 *   runc remounts read-only when asked.
 * - resources: limits.memory -> memory limit (swap off), limits.cpu -> CFS quota,
 *   requests.cpu -> shares, via cgroups (v1 or v2, cgroupfs driver), under
 *   /smtp-relay-kubelet/<runner>/<container>.
 * - namespaces: pid, ipc, uts, mount, and network = the pod's netns (netns.ts) or the host's
 *   (hostNetwork); pod sysctls (e.g. net.ipv4.ip_unprivileged_port_start) only in a pod netns.
 *
 * The container runs as a child `runc run --keep` (foreground, no terminal), whose exit
 * status is the container's (128+N for signal N); stdout/stderr go to files; an OOM kill is
 * read from the stopped container's memory cgroup before delete(). Containers, overlays and bundles live under
 * <stateDir>/<runner id>/; a runner whose process died (test crash) is cleaned up by the
 * next runner created (reapStaleRunners), and a process exit hook cleans up this one's.
 */
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join, posix, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { V1Container, V1PodSpec, V1SecurityContext, V1PodSecurityContext } from '@kubernetes/client-node';
import { onProcessEnd } from './cleanup.js';
import type { ImageConfig, UnpackedImage } from './image.js';
import { ownerAlive, processIdentity, type PodNetwork } from './netns.js';
import { quantityBytes, quantityMilli } from './quantity.js';
import { runtimeDefaultSeccomp, type OciSeccomp } from './seccomp.js';

const execFileP = promisify(execFile);

export const RUNNER_STATE_DIR = process.env['SROP_RUNC_STATE'] ?? '/run/smtp-relay-operator/runc';
const CGROUP_PARENT = 'smtp-relay-kubelet';
/** From `runc run` to the container's process running (generous: 2 cores shared with builds). */
const START_TIMEOUT_MS = 30_000;

/** containerd's default capability set (oci.DefaultCapabilities / Docker's). */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL',
  'CAP_AUDIT_WRITE',
];
/** containerd's default masked / read-only paths (procMount: Default). */
const MASKED_PATHS = [
  '/proc/asound', '/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** Where a pod volume comes from on the host; the caller (the kubelet) materializes it. */
export type VolumeSource =
  | { hostPath: string }
  /** emptyDir with medium: Memory. */
  | { tmpfs: { sizeBytes?: number } };

export interface EnvVar {
  name: string;
  value: string;
}

export interface ContainerRequest {
  /** Unique runc container id (letters, digits, - _ .). */
  id: string;
  pod: V1PodSpec;
  /** One of pod.containers (by value). */
  container: V1Container;
  /**
   * The container's env, resolved by the caller (env + envFrom, Secrets, ConfigMaps,
   * downward API, service links), in order. When absent, container.env is used and only
   * literal `value`s are allowed.
   */
  env?: EnvVar[];
  /** Host sources for the pod's volumes, by volume name. */
  volumes?: Record<string, VolumeSource>;
  /** The pod's network namespace; undefined = host network (hostNetwork: true). */
  network?: PodNetwork;
  /** Pod name (hostname; and the pod IP's name in /etc/hosts). */
  podName?: string;
  /** Extra /etc/hosts lines (hostAliases). */
  extraHosts?: string[];
  /** Log files; default <runner dir>/logs/<id>.{stdout,stderr}. Appended to. */
  stdoutPath?: string;
  stderrPath?: string;
}

export interface ExitStatus {
  /** The container's exit code; 128+N when a signal N ended it (as runc and the kubelet report). */
  exitCode: number;
  signal?: NodeJS.Signals;
  /** The kernel's OOM killer ended it (memory limit): the kubelet's reason "OOMKilled". */
  oomKilled: boolean;
  finishedAt: Date;
}

export interface RunningContainer {
  id: string;
  /** The container's init process, as seen from the host. */
  pid: number;
  bundle: string;
  stdoutPath: string;
  stderrPath: string;
  startedAt: Date;
  /** Resolves when the container's process has exited. */
  exited: Promise<ExitStatus>;
  /** Sends a signal to the container's init (runc kill). */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Kills it (SIGKILL) if still running, waits, removes container, mounts and bundle. */
  delete(): Promise<void>;
}

/** Thrown when the pod spec cannot work (the kubelet's CreateContainerConfigError). */
export class ContainerConfigError extends Error {
  override name = 'ContainerConfigError';
}

// ---------------------------------------------------------------------------------------
// The OCI runtime spec, derived from the pod spec (pure apart from reading the image's
// /etc/passwd, /etc/group and the seccomp profile file).
// ---------------------------------------------------------------------------------------

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: { bounding: string[]; effective: string[]; permitted: string[] };
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    namespaces: { type: string; path?: string }[];
    resources: {
      devices: { allow: boolean; access: string }[];
      memory?: { limit: number; swap?: number };
      cpu?: { shares?: number; quota?: number; period?: number };
    };
    cgroupsPath?: string;
    sysctl?: Record<string, string>;
    seccomp?: OciSeccomp;
    maskedPaths: string[];
    readonlyPaths: string[];
  };
}

/** Kubernetes `$(VAR)` expansion (k8s.io/kubernetes/third_party/forked/golang/expansion). */
export function expandVars(input: string, env: ReadonlyMap<string, string>): string {
  let out = '';
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if (c !== '$' || i + 1 >= input.length) {
      out += c;
      continue;
    }
    const next = input[i + 1];
    if (next === '$') {
      out += '$';
      i++;
    } else if (next === '(') {
      const close = input.indexOf(')', i + 2);
      if (close < 0) {
        out += input.slice(i);
        break;
      }
      const name = input.slice(i + 2, close);
      const value = env.get(name);
      out += value ?? `$(${name})`;
      i = close;
    } else {
      out += c;
    }
  }
  return out;
}

interface PasswdEntry { name: string; uid: number; gid: number }
interface GroupEntry { name: string; gid: number; members: string[] }

function readPasswd(rootfs: string): PasswdEntry[] {
  try {
    return readFileSync(join(rootfs, 'etc/passwd'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => {
      const f = l.split(':');
      return { name: f[0] ?? '', uid: Number(f[2]), gid: Number(f[3]) };
    });
  } catch {
    return [];
  }
}
function readGroups(rootfs: string): GroupEntry[] {
  try {
    return readFileSync(join(rootfs, 'etc/group'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => {
      const f = l.split(':');
      return { name: f[0] ?? '', gid: Number(f[2]), members: (f[3] ?? '').split(',').filter(Boolean) };
    });
  } catch {
    return [];
  }
}

/** The process user, as kubelet (runAsNonRoot check) and containerd (WithUser...) resolve it. */
export function resolveUser(pod: V1PodSpec, container: V1Container, image: Pick<UnpackedImage, 'rootfs' | 'config'>):
  { uid: number; gid: number; additionalGids: number[] } {
  const psc: V1PodSecurityContext = pod.securityContext ?? {};
  const csc: V1SecurityContext = container.securityContext ?? {};
  const passwd = readPasswd(image.rootfs);
  const groups = readGroups(image.rootfs);
  const runAsUser = csc.runAsUser ?? psc.runAsUser;
  const runAsGroup = csc.runAsGroup ?? psc.runAsGroup;
  const runAsNonRoot = csc.runAsNonRoot ?? psc.runAsNonRoot;

  let uid: number | undefined;
  let gid: number | undefined;
  let userName: string | undefined;
  if (runAsUser !== undefined) {
    uid = runAsUser;
  } else {
    const imageUser = (image.config.User ?? '').trim();
    if (imageUser === '') {
      uid = 0;
    } else {
      const [u = '', g] = imageUser.split(':');
      if (/^\d+$/.test(u)) uid = Number(u);
      else {
        if (runAsNonRoot) {
          throw new ContainerConfigError(
            `container has runAsNonRoot and image has non-numeric user (${u}), cannot verify user is non-root`);
        }
        const entry = passwd.find((p) => p.name === u);
        if (!entry) throw new ContainerConfigError(`unable to find user ${u}: no matching entries in passwd file`);
        uid = entry.uid;
        gid = entry.gid;
        userName = entry.name;
      }
      if (g !== undefined && g !== '') {
        if (/^\d+$/.test(g)) gid = Number(g);
        else {
          const ge = groups.find((x) => x.name === g);
          if (!ge) throw new ContainerConfigError(`unable to find group ${g}: no matching entries in group file`);
          gid = ge.gid;
        }
      }
    }
  }
  if (runAsNonRoot && uid === 0) {
    throw new ContainerConfigError('container has runAsNonRoot and image will run as root');
  }
  const byUid = passwd.find((p) => p.uid === uid);
  userName ??= byUid?.name;
  if (runAsGroup !== undefined) gid = runAsGroup;
  gid ??= byUid?.gid ?? 0;

  const extra: number[] = [];
  if (userName !== undefined) for (const g of groups) if (g.members.includes(userName)) extra.push(g.gid);
  if (psc.fsGroup !== undefined) extra.push(psc.fsGroup);
  for (const g of psc.supplementalGroups ?? []) extra.push(g);
  const additionalGids = [...new Set(extra)].filter((g) => g !== gid);
  return { uid, gid, additionalGids };
}

/** The container's capability set: runtime default, minus drop, plus add. */
export function resolveCapabilities(container: V1Container): string[] {
  const caps = container.securityContext?.capabilities;
  if (container.securityContext?.privileged) throw new ContainerConfigError('privileged containers are not supported here');
  const norm = (c: string): string => (c.toUpperCase().startsWith('CAP_') ? c.toUpperCase() : `CAP_${c.toUpperCase()}`);
  const drop = (caps?.drop ?? []).map(norm);
  let set = drop.includes('CAP_ALL') ? [] : DEFAULT_CAPABILITIES.filter((c) => !drop.includes(c));
  const add = (caps?.add ?? []).map(norm);
  if (add.includes('CAP_ALL')) throw new ContainerConfigError('capabilities.add: ALL is not supported here');
  set = [...new Set([...set, ...add])];
  return set;
}

/**
 * Process args by the Kubernetes rules (containerd's WithProcessArgs): a command replaces the
 * image ENTRYPOINT and CMD; args alone replace CMD. `$(VAR)` is expanded in the container's
 * command and args (not in what comes from the image).
 */
export function resolveArgs(container: V1Container, config: ImageConfig, env: ReadonlyMap<string, string>): string[] {
  const command = (container.command ?? []).map((a) => expandVars(a, env));
  const args = (container.args ?? []).map((a) => expandVars(a, env));
  let argv: string[];
  if (command.length > 0) argv = [...command, ...args];
  else argv = [...(config.Entrypoint ?? []), ...(args.length > 0 ? args : (config.Cmd ?? []))];
  if (argv.length === 0) throw new ContainerConfigError('no command specified');
  return argv;
}

function resolveEnv(req: ContainerRequest, config: ImageConfig): Map<string, string> {
  const env = new Map<string, string>();
  for (const kv of config.Env ?? []) {
    const eq = kv.indexOf('=');
    if (eq > 0) env.set(kv.slice(0, eq), kv.slice(eq + 1));
  }
  if (req.env) {
    for (const e of req.env) env.set(e.name, e.value);
  } else {
    const own = new Map<string, string>();
    for (const e of req.container.env ?? []) {
      if (e.valueFrom !== undefined) {
        throw new ContainerConfigError(`env ${e.name}: valueFrom must be resolved by the caller (pass ContainerRequest.env)`);
      }
      const v = expandVars(e.value ?? '', own);
      own.set(e.name, v);
      env.set(e.name, v);
    }
    if ((req.container.envFrom ?? []).length > 0) {
      throw new ContainerConfigError('envFrom must be resolved by the caller (pass ContainerRequest.env)');
    }
  }
  return env;
}

function resolveResources(container: V1Container): OciSpec['linux']['resources'] {
  const out: OciSpec['linux']['resources'] = { devices: [{ allow: false, access: 'rwm' }] };
  const limits = container.resources?.limits ?? {};
  const requests = container.resources?.requests ?? {};
  if (limits['memory'] !== undefined) {
    const limit = quantityBytes(limits['memory']);
    out.memory = { limit };
  }
  const cpuRequest = requests['cpu'] ?? limits['cpu'];
  const cpu: NonNullable<OciSpec['linux']['resources']['cpu']> = {
    // kubelet: shares = milli * 1024 / 1000, at least 2 (BestEffort gets 2).
    shares: cpuRequest !== undefined ? Math.max(2, Math.floor((quantityMilli(cpuRequest) * 1024) / 1000)) : 2,
  };
  if (limits['cpu'] !== undefined) {
    cpu.period = 100000;
    cpu.quota = Math.max(1000, Math.floor((quantityMilli(limits['cpu']) * 100000) / 1000));
  }
  out.cpu = cpu;
  return out;
}

export interface SpecContext {
  image: Pick<UnpackedImage, 'rootfs' | 'config'>;
  /** The container's root (overlay) directory. */
  rootPath: string;
  /** Directory for the kubelet-managed /etc/hosts and /etc/hostname files. */
  etcDir: string;
  /** cgroups path, or undefined to let runc choose / when cgroups are not used. */
  cgroupsPath?: string;
  /** cgroup v1 memsw available: then swap = limit (no swap), as the kubelet sets. */
  swapAccounting?: boolean;
}

/** Builds the OCI runtime config for one container (writes nothing but the etc files). */
export function buildRuntimeSpec(req: ContainerRequest, ctx: SpecContext): OciSpec {
  const { pod, container } = req;
  const psc: V1PodSecurityContext = pod.securityContext ?? {};
  const csc: V1SecurityContext = container.securityContext ?? {};
  const env = resolveEnv(req, ctx.image.config);
  const args = resolveArgs(container, ctx.image.config, env);
  const user = resolveUser(pod, container, ctx.image);
  const caps = resolveCapabilities(container);
  const hostname = req.podName ?? req.id;

  const mounts: OciMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ];

  // kubelet-managed /etc/hosts and /etc/hostname (read-only here).
  mkdirSync(ctx.etcDir, { recursive: true });
  const hosts = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback'];
  if (req.network) hosts.push(`${req.network.podIP}\t${hostname}`);
  hosts.push(...(req.extraHosts ?? []));
  writeFileSync(join(ctx.etcDir, 'hosts'), `# Kubernetes-managed hosts file.\n${hosts.join('\n')}\n`);
  writeFileSync(join(ctx.etcDir, 'hostname'), `${hostname}\n`);
  for (const f of ['hosts', 'hostname']) {
    mounts.push({ destination: `/etc/${f}`, type: 'bind', source: join(ctx.etcDir, f), options: ['rbind', 'rprivate', 'ro', 'nosuid', 'nodev', 'noexec'] });
  }

  for (const vm of container.volumeMounts ?? []) {
    const vol = (pod.volumes ?? []).find((v) => v.name === vm.name);
    if (!vol) throw new ContainerConfigError(`volumeMount ${vm.name}: no such volume in the pod spec`);
    const src = req.volumes?.[vm.name];
    if (!src) throw new ContainerConfigError(`volume ${vm.name}: the caller did not prepare it (ContainerRequest.volumes)`);
    if (!posix.isAbsolute(vm.mountPath)) throw new ContainerConfigError(`volumeMount ${vm.name}: mountPath must be absolute`);
    const ro = vm.readOnly === true;
    if ('tmpfs' in src) {
      const opts = ['nosuid', 'nodev', 'mode=1777', ...(ro ? ['ro'] : [])];
      if (src.tmpfs.sizeBytes !== undefined) opts.push(`size=${src.tmpfs.sizeBytes}`);
      mounts.push({ destination: vm.mountPath, type: 'tmpfs', source: 'tmpfs', options: opts });
    } else {
      let source = src.hostPath;
      if (vm.subPath) {
        source = resolve(src.hostPath, vm.subPath);
        if (!source.startsWith(resolve(src.hostPath) + '/')) throw new ContainerConfigError(`volumeMount ${vm.name}: subPath escapes the volume`);
      }
      mounts.push({ destination: vm.mountPath, type: 'bind', source, options: ['rbind', 'rprivate', ro ? 'ro' : 'rw', 'nosuid', 'nodev'] });
    }
  }

  const namespaces: { type: string; path?: string }[] = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }];
  if (req.network) namespaces.push({ type: 'network', path: req.network.netnsPath });

  const sysctl: Record<string, string> = {};
  for (const s of psc.sysctls ?? []) {
    if (!req.network && s.name.startsWith('net.')) {
      throw new ContainerConfigError(`sysctl ${s.name} needs a pod network namespace (not allowed with hostNetwork)`);
    }
    sysctl[s.name] = s.value;
  }

  const seccompType = csc.seccompProfile?.type ?? psc.seccompProfile?.type ?? 'Unconfined';
  let seccomp: OciSeccomp | undefined;
  if (seccompType === 'RuntimeDefault') seccomp = runtimeDefaultSeccomp(caps);
  else if (seccompType !== 'Unconfined') throw new ContainerConfigError(`seccompProfile type ${seccompType} is not supported here`);

  const resources = resolveResources(container);
  if (resources.memory && ctx.swapAccounting) resources.memory.swap = resources.memory.limit;

  const spec: OciSpec = {
    ociVersion: '1.0.2-dev',
    process: {
      terminal: false,
      user,
      args,
      env: [...env].map(([k, v]) => `${k}=${v}`),
      cwd: container.workingDir ?? (ctx.image.config.WorkingDir || '/'),
      capabilities: { bounding: [...caps], effective: [...caps], permitted: [...caps] },
      noNewPrivileges: csc.allowPrivilegeEscalation === false,
    },
    root: { path: ctx.rootPath, readonly: csc.readOnlyRootFilesystem === true },
    hostname,
    mounts,
    linux: {
      namespaces,
      resources,
      maskedPaths: [...MASKED_PATHS],
      readonlyPaths: [...READONLY_PATHS],
    },
  };
  if (ctx.cgroupsPath !== undefined) spec.linux.cgroupsPath = ctx.cgroupsPath;
  if (Object.keys(sysctl).length > 0) spec.linux.sysctl = sysctl;
  if (seccomp) spec.linux.seccomp = seccomp;
  return spec;
}

// ---------------------------------------------------------------------------------------
// Running containers with runc.
// ---------------------------------------------------------------------------------------

function runcAvailable(): void {
  try {
    execFileSync('runc', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error("runc not found: apt-get install -y runc (listed in .ci/run)");
  }
}

/** Mount points under `dir` (deepest first). */
function mountsUnder(dir: string): string[] {
  const prefix = resolve(dir) + '/';
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (mp && (mp + '/').startsWith(prefix)) out.push(mp.replace(/\\040/g, ' '));
  }
  return out.sort((a, b) => b.length - a.length);
}

function umountAllSync(dir: string): void {
  for (const mp of mountsUnder(dir)) {
    try { execFileSync('umount', ['-l', mp], { stdio: 'ignore' }); } catch { /* already gone */ }
  }
}

function cgroupDirs(rel: string): string[] {
  const dirs: string[] = [];
  if (existsSync('/sys/fs/cgroup/cgroup.controllers')) dirs.push(join('/sys/fs/cgroup', rel));
  else {
    try {
      for (const h of readdirSync('/sys/fs/cgroup')) dirs.push(join('/sys/fs/cgroup', h, rel));
    } catch { /* no cgroups */ }
  }
  return dirs;
}

/** OOM kills recorded in a container's memory cgroup (v1 memory.oom_control, v2 memory.events). */
function oomKills(cgroupsPath: string): number {
  const files = existsSync('/sys/fs/cgroup/cgroup.controllers')
    ? [join('/sys/fs/cgroup', cgroupsPath, 'memory.events')]
    : [join('/sys/fs/cgroup/memory', cgroupsPath, 'memory.oom_control')];
  for (const f of files) {
    try {
      const m = /^oom_kill (\d+)$/m.exec(readFileSync(f, 'utf8'));
      if (m) return Number(m[1]);
    } catch { /* no memory controller */ }
  }
  return 0;
}

function removeCgroupTreeSync(rel: string): void {
  for (const dir of cgroupDirs(rel)) {
    if (!existsSync(dir)) continue;
    // Children first; rmdir on a cgroup only succeeds when it has no processes.
    const walk = (d: string): void => {
      try {
        for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
        execFileSync('rmdir', [d], { stdio: 'ignore' });
      } catch { /* busy or gone */ }
    };
    walk(dir);
  }
}

/** Kills and deletes every container of a runner state dir, unmounts, removes it. */
function destroyRunnerDirSync(dir: string): void {
  const root = join(dir, 'runc');
  if (existsSync(root)) {
    let ids: string[] = [];
    try {
      ids = execFileSync('runc', ['--root', root, 'list', '-q'], { encoding: 'utf8' }).split('\n').filter(Boolean);
    } catch { /* no runc state */ }
    for (const id of ids) {
      try { execFileSync('runc', ['--root', root, 'kill', id, 'KILL'], { stdio: 'ignore' }); } catch { /* stopped */ }
    }
    for (const id of ids) {
      try { execFileSync('runc', ['--root', root, 'delete', '--force', id], { stdio: 'ignore' }); } catch { /* gone */ }
    }
  }
  umountAllSync(dir);
  const runnerId = dir.split('/').pop() ?? '';
  removeCgroupTreeSync(`${CGROUP_PARENT}/${runnerId}`);
  rmSync(dir, { recursive: true, force: true });
}

/** Cleans up after runners whose process is gone (a crashed test). Returns how many. */
export function reapStaleRunners(stateDir: string = RUNNER_STATE_DIR): number {
  if (!existsSync(stateDir)) return 0;
  let n = 0;
  for (const entry of readdirSync(stateDir)) {
    const dir = join(stateDir, entry);
    let owner = '';
    try { owner = readFileSync(join(dir, 'owner'), 'utf8').trim(); } catch { /* being created */ continue; }
    if (ownerAlive(owner)) continue;
    destroyRunnerDirSync(dir);
    n++;
  }
  return n;
}

interface LiveContainer {
  id: string;
  child: ChildProcess;
  bundle: string;
  exited: Promise<ExitStatus>;
  done: boolean;
}

export interface RuncRunnerOptions {
  image: UnpackedImage;
  stateDir?: string;
}

/**
 * Runs containers of one image. Create one per test (or per kubelet); close() when done.
 */
export class RuncRunner {
  readonly image: UnpackedImage;
  readonly dir: string;
  readonly runcRoot: string;
  readonly runnerId: string;
  private readonly live = new Map<string, LiveContainer>();
  private readonly swapAccounting = existsSync('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes');
  private readonly unregisterCleanup: () => void;
  private closed = false;

  private constructor(image: UnpackedImage, dir: string, runnerId: string) {
    this.image = image;
    this.dir = dir;
    this.runnerId = runnerId;
    this.runcRoot = join(dir, 'runc');
    this.unregisterCleanup = onProcessEnd(() => this.closeSync());
  }

  static async create(opts: RuncRunnerOptions): Promise<RuncRunner> {
    runcAvailable();
    if (process.getuid?.() !== 0) throw new Error('the runc runner needs root');
    const stateDir = opts.stateDir ?? RUNNER_STATE_DIR;
    mkdirSync(stateDir, { recursive: true });
    reapStaleRunners(stateDir);
    const runnerId = `r${process.pid}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
    const dir = join(stateDir, runnerId);
    mkdirSync(join(dir, 'runc'), { recursive: true });
    mkdirSync(join(dir, 'logs'), { recursive: true });
    writeFileSync(join(dir, 'owner'), `${processIdentity()}\n`);
    return new RuncRunner(opts.image, dir, runnerId);
  }

  /** Creates the bundle and starts the container; resolves once it is running. */
  async start(req: ContainerRequest): Promise<RunningContainer> {
    if (this.closed) throw new Error('runner closed');
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(req.id)) throw new Error(`bad container id ${req.id}`);
    if (this.live.has(req.id)) throw new Error(`container ${req.id} exists`);
    const bundle = join(this.dir, 'bundles', req.id);
    rmSync(bundle, { recursive: true, force: true });
    const rootPath = join(bundle, 'rootfs');
    for (const d of ['rootfs', 'upper', 'work']) mkdirSync(join(bundle, d), { recursive: true });

    const cgroupsPath = `/${CGROUP_PARENT}/${this.runnerId}/${req.id}`;
    try {
      const spec = buildRuntimeSpec(req, {
        image: this.image,
        rootPath,
        etcDir: join(bundle, 'etc'),
        cgroupsPath,
        swapAccounting: this.swapAccounting,
      });
      writeFileSync(join(bundle, 'config.json'), JSON.stringify(spec, null, 2));
      // The container's root: image (read-only lower) + its own upper layer.
      await execFileP('mount', ['-t', 'overlay', 'overlay', '-o',
        `lowerdir=${this.image.rootfs},upperdir=${join(bundle, 'upper')},workdir=${join(bundle, 'work')}`, rootPath]);
    } catch (err) {
      umountAllSync(bundle);
      rmSync(bundle, { recursive: true, force: true });
      throw err;
    }

    const stdoutPath = req.stdoutPath ?? join(this.dir, 'logs', `${req.id}.stdout`);
    const stderrPath = req.stderrPath ?? join(this.dir, 'logs', `${req.id}.stderr`);
    const outFd = openSync(stdoutPath, 'a');
    const errFd = openSync(stderrPath, 'a');
    const runcLog = join(bundle, 'runc.log');
    let child: ChildProcess;
    try {
      child = spawn('runc', ['--root', this.runcRoot, '--log', runcLog, '--log-format', 'json', 'run', '--keep', '--bundle', bundle, req.id], {
        stdio: ['ignore', outFd, errFd],
      });
    } finally {
      closeSync(outFd);
      closeSync(errFd);
    }
    const exited = new Promise<ExitStatus>((resolveExit) => {
      child.on('exit', (code, signal) => {
        // runc run exits with the container's status (128+N for a signal N).
        const exitCode = code ?? 128 + (signal ? (execSignalNumber(signal) ?? 0) : 0);
        // `run --keep` leaves the stopped container and its cgroup until delete: read the OOM count.
        const status: ExitStatus = { exitCode, oomKilled: oomKills(cgroupsPath) > 0, finishedAt: new Date() };
        if (exitCode > 128) {
          const name = signalName(exitCode - 128);
          if (name) status.signal = name;
        }
        resolveExit(status);
      });
      child.on('error', () => resolveExit({ exitCode: 127, oomKilled: false, finishedAt: new Date() }));
    });
    const entry: LiveContainer = { id: req.id, child, bundle, exited, done: false };
    void exited.then(() => { entry.done = true; });
    this.live.set(req.id, entry);

    // Wait for "running" (or an early exit: a failed start or a very short process).
    const startedAt = new Date();
    let pid = 0;
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!entry.done && Date.now() < deadline) {
      const st = await this.state(req.id);
      if (st && st.pid > 0 && (st.status === 'running' || st.status === 'stopped')) {
        pid = st.pid;
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    if (pid === 0 && !entry.done) {
      await this.deleteContainer(req.id);
      throw new Error(`container ${req.id} did not start within ${START_TIMEOUT_MS / 1000}s: ${readRuncErrors(runcLog)}`);
    }
    if (pid === 0 && entry.done) {
      const st = await exited;
      const errs = readRuncErrors(runcLog);
      if (errs !== '') {
        await this.deleteContainer(req.id);
        throw new Error(`container ${req.id} failed to start (exit ${st.exitCode}): ${errs}`);
      }
    }

    return {
      id: req.id,
      pid,
      bundle,
      stdoutPath,
      stderrPath,
      startedAt,
      exited,
      kill: async (signal: NodeJS.Signals = 'SIGTERM') => {
        if (entry.done) return;
        try {
          await execFileP('runc', ['--root', this.runcRoot, 'kill', req.id, signal.replace(/^SIG/, '')]);
        } catch (err) {
          if (!entry.done && (await this.state(req.id))?.status === 'running') throw err;
        }
      },
      delete: () => this.deleteContainer(req.id),
    };
  }

  /** `runc state`, or undefined when the container does not exist (yet / any more). */
  async state(id: string): Promise<{ status: string; pid: number } | undefined> {
    try {
      const { stdout } = await execFileP('runc', ['--root', this.runcRoot, 'state', id]);
      const s = JSON.parse(stdout) as { status: string; pid: number };
      return { status: s.status, pid: s.pid };
    } catch {
      return undefined;
    }
  }

  /** Ids of containers runc knows in this runner. */
  async list(): Promise<string[]> {
    const { stdout } = await execFileP('runc', ['--root', this.runcRoot, 'list', '-q']);
    return stdout.split('\n').filter(Boolean);
  }

  private async deleteContainer(id: string): Promise<void> {
    const entry = this.live.get(id);
    if (entry && !entry.done) {
      try { await execFileP('runc', ['--root', this.runcRoot, 'kill', id, 'KILL']); } catch { /* exited meanwhile */ }
      await Promise.race([entry.exited, new Promise((r) => setTimeout(r, 5000))]);
      if (!entry.done) entry.child.kill('SIGKILL');
    }
    try { await execFileP('runc', ['--root', this.runcRoot, 'delete', '--force', id]); } catch { /* runc run removed it */ }
    const bundle = join(this.dir, 'bundles', id);
    umountAllSync(bundle);
    removeCgroupTreeSync(`${CGROUP_PARENT}/${this.runnerId}/${id}`);
    rmSync(bundle, { recursive: true, force: true });
    this.live.delete(id);
  }

  /** Deletes every container and removes the runner's state (logs included). */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const id of [...this.live.keys()]) await this.deleteContainer(id);
    this.closeSync();
  }

  private closeSync(): void {
    if (this.closed) return;
    this.closed = true;
    this.unregisterCleanup();
    for (const e of this.live.values()) if (!e.done) e.child.kill('SIGKILL');
    destroyRunnerDirSync(this.dir);
  }
}

function readRuncErrors(logPath: string): string {
  try {
    return readFileSync(logPath, 'utf8').split('\n').filter(Boolean).map((l) => {
      try {
        const j = JSON.parse(l) as { level?: string; msg?: string };
        return j.level === 'error' || j.level === 'fatal' ? j.msg ?? '' : '';
      } catch {
        return l;
      }
    }).filter(Boolean).join('; ');
  } catch {
    return '';
  }
}

function execSignalNumber(sig: NodeJS.Signals): number | undefined {
  return (osConstants.signals as Record<string, number>)[sig];
}
function signalName(n: number): NodeJS.Signals | undefined {
  for (const [k, v] of Object.entries(osConstants.signals)) if (v === n) return k as NodeJS.Signals;
  return undefined;
}
