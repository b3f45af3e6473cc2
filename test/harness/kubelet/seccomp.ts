/**
 * The seccomp profile a container gets for `seccompProfile: {type: RuntimeDefault}`.
 *
 * A container runtime's RuntimeDefault is its built-in default profile: an allow-list of
 * syscalls with "return an error" as the default action, plus rules that allow a few more
 * syscalls only when the container holds the matching capability. This file does not keep a
 * hand-copied list: it reads the default profile that Debian's containers-common package
 * installs with buildah (/usr/share/containers/seccomp.json, the podman/buildah default,
 * derived from Docker's and of the same shape as containerd's), and resolves it for this
 * machine's architecture and the container's capabilities exactly as moby/containers-common
 * do (`includes`/`excludes` of `arches` and `caps`), producing the OCI runtime spec's
 * `linux.seccomp` object that runc loads.
 *
 * Where podman's profile is looser than containerd's/Docker's RuntimeDefault (podman allows
 * mount, umount2, unshare, setns, pivot_root, the new mount API, reboot, keyctl ... for any
 * container and leaves them to capabilities), CONTAINERD_GATED below takes those syscalls
 * out again unless the container holds the capability that containerd's profile asks for,
 * so the result denies what a cluster node's containerd denies.
 */
import { readFileSync } from 'node:fs';

export const DEFAULT_PROFILE_PATH = '/usr/share/containers/seccomp.json';

/** OCI runtime-spec linux.seccomp. */
export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: OciSeccompSyscall[];
}
export interface OciSeccompSyscall {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo?: number; op: string }[];
}

interface ProfileFilter {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}
interface ProfileSyscall {
  names?: string[];
  name?: string;
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo?: number; op: string }[] | null;
  includes?: ProfileFilter;
  excludes?: ProfileFilter;
}
interface Profile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap?: { architecture: string; subArchitectures?: string[] }[];
  syscalls: ProfileSyscall[];
}

/** Go/OCI arch names for Node's process.arch, and the libseccomp name of the native arch. */
const ARCHES: Record<string, { goArch: string; scmp: string }> = {
  x64: { goArch: 'amd64', scmp: 'SCMP_ARCH_X86_64' },
  arm64: { goArch: 'arm64', scmp: 'SCMP_ARCH_AARCH64' },
  s390x: { goArch: 's390x', scmp: 'SCMP_ARCH_S390X' },
  ppc64: { goArch: 'ppc64le', scmp: 'SCMP_ARCH_PPC64LE' },
};

/**
 * Syscalls that containerd's RuntimeDefault allows only with one of the listed capabilities
 * (an empty list: never), but that podman's default profile allows to every container.
 */
export const CONTAINERD_GATED: Readonly<Record<string, readonly string[]>> = {
  mount: ['CAP_SYS_ADMIN'], umount: ['CAP_SYS_ADMIN'], umount2: ['CAP_SYS_ADMIN'],
  mount_setattr: ['CAP_SYS_ADMIN'], move_mount: ['CAP_SYS_ADMIN'], open_tree: ['CAP_SYS_ADMIN'],
  fsconfig: ['CAP_SYS_ADMIN'], fsmount: ['CAP_SYS_ADMIN'], fsopen: ['CAP_SYS_ADMIN'], fspick: ['CAP_SYS_ADMIN'],
  pivot_root: ['CAP_SYS_ADMIN'], setns: ['CAP_SYS_ADMIN'], unshare: ['CAP_SYS_ADMIN'],
  name_to_handle_at: ['CAP_SYS_ADMIN'], syslog: ['CAP_SYS_ADMIN', 'CAP_SYSLOG'],
  reboot: ['CAP_SYS_BOOT'],
  pidfd_getfd: ['CAP_SYS_PTRACE'], process_vm_readv: ['CAP_SYS_PTRACE'], process_vm_writev: ['CAP_SYS_PTRACE'],
  get_mempolicy: ['CAP_SYS_NICE'], mbind: ['CAP_SYS_NICE'], set_mempolicy: ['CAP_SYS_NICE'],
  keyctl: [], add_key: [], request_key: [],
};

function kernelAtLeast(release: string, min: string): boolean {
  const parse = (v: string): number[] => v.split(/[.-]/).slice(0, 2).map((x) => Number.parseInt(x, 10) || 0);
  const [a0 = 0, a1 = 0] = parse(release);
  const [b0 = 0, b1 = 0] = parse(min);
  return a0 > b0 || (a0 === b0 && a1 >= b1);
}

/**
 * The RuntimeDefault profile for a container holding `capabilities` (names like
 * "CAP_NET_BIND_SERVICE"; the effective set runc will give it).
 * Throws with an install hint when the default profile file is missing.
 */
export function runtimeDefaultSeccomp(
  capabilities: readonly string[],
  opts: { profilePath?: string; arch?: string; kernelRelease?: string } = {},
): OciSeccomp {
  const path = opts.profilePath ?? DEFAULT_PROFILE_PATH;
  let profile: Profile;
  try {
    profile = JSON.parse(readFileSync(path, 'utf8')) as Profile;
  } catch (err) {
    throw new Error(
      `RuntimeDefault seccomp: cannot read the default profile ${path} (${(err as Error).message}); ` +
        'it comes with buildah: apt-get install -y buildah (package golang-github-containers-common)',
    );
  }
  const arch = ARCHES[opts.arch ?? process.arch];
  if (arch === undefined) throw new Error(`RuntimeDefault seccomp: unsupported architecture ${opts.arch ?? process.arch}`);
  const kernel = opts.kernelRelease ?? readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  const caps = new Set(capabilities);

  const architectures: string[] = [];
  for (const m of profile.archMap ?? []) {
    if (m.architecture === arch.scmp) architectures.push(m.architecture, ...(m.subArchitectures ?? []));
  }

  const syscalls: OciSeccompSyscall[] = [];
  for (const s of profile.syscalls) {
    const inc = s.includes ?? {};
    const exc = s.excludes ?? {};
    if (inc.arches && inc.arches.length > 0 && !inc.arches.includes(arch.goArch)) continue;
    if (inc.caps && inc.caps.length > 0 && !inc.caps.every((c) => caps.has(c))) continue;
    if (inc.minKernel && !kernelAtLeast(kernel, inc.minKernel)) continue;
    if (exc.arches && exc.arches.includes(arch.goArch)) continue;
    if (exc.caps && exc.caps.some((c) => caps.has(c))) continue;
    let names = s.names ?? (s.name ? [s.name] : []);
    if (s.action === 'SCMP_ACT_ALLOW' && !(inc.caps && inc.caps.length > 0)) {
      names = names.filter((n) => {
        const need = CONTAINERD_GATED[n];
        return need === undefined || need.some((c) => caps.has(c));
      });
    }
    if (names.length === 0) continue;
    const rule: OciSeccompSyscall = { names: [...names], action: s.action };
    if (s.errnoRet !== undefined) rule.errnoRet = s.errnoRet;
    if (s.args && s.args.length > 0) rule.args = s.args.map((a) => ({ ...a }));
    syscalls.push(rule);
  }
  const out: OciSeccomp = { defaultAction: profile.defaultAction, architectures, syscalls };
  if (profile.defaultErrnoRet !== undefined) out.defaultErrnoRet = profile.defaultErrnoRet;
  return out;
}
