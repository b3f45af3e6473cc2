/**
 * Pod networking for the container kubelet stand-in: one network namespace per pod, made
 * by the harness itself, joined to the host by a veth pair with a private /30.
 *
 *   host netns:  srh<N>  198.18.x.y+1/30   (the pod's "node" address, hostIP)
 *   pod netns:   eth0    198.18.x.y+2/30   (the podIP), lo up
 *
 * Addresses come from 198.18.0.0/15 (RFC 2544, "benchmarking", reserved for tests, never
 * routed): /30 number N is 198.18.0.0 + 4N. The pod netns has no default route, and the
 * host does not forward (ip_forward is left alone), so a pod reaches only its own /30
 * (i.e. the host at hostIP) and its own loopback; the host reaches every pod at its podIP.
 * Several pods can listen on the same ports; each has its own ip_unprivileged_port_start.
 *
 * Allocation is safe across processes: slot N is taken by an atomic mkdir of
 * <stateDir>/<N> holding the owner's pid and start time; slots of dead owners are freed
 * (and their netns deleted) by reapStaleNetworks(), which every allocation calls first.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { onProcessEnd } from './cleanup.js';

const run = promisify(execFile);

export const NETNS_STATE_DIR = process.env['SROP_NETNS_STATE'] ?? '/run/smtp-relay-operator/netns';
const SLOTS = 16384; // 198.18.0.0/15 holds 32768 /30s; half is plenty

export interface PodNetwork {
  /** `ip netns` name (its path is /run/netns/<name>). */
  name: string;
  /** For the OCI runtime spec: the network namespace path. */
  netnsPath: string;
  podIP: string;
  /** The host end of the veth: the only address outside the pod it can reach. */
  hostIP: string;
  hostInterface: string;
  slot: number;
  /** Deletes the namespace (and so the veth pair) and frees the slot. Idempotent. */
  release(): Promise<void>;
}

/** pid + start time, so a reused pid is not mistaken for the owner. */
export function processIdentity(pid: number = process.pid): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return `${pid} ${fields[19]}`; // field 22 (starttime), counted after the comm field
  } catch {
    return undefined;
  }
}

export function ownerAlive(identity: string): boolean {
  const pid = Number.parseInt(identity.split(' ')[0] ?? '', 10);
  return Number.isInteger(pid) && processIdentity(pid) === identity;
}

function slotAddresses(slot: number): { hostIP: string; podIP: string } {
  const base = (198 << 24) + (18 << 16) + slot * 4;
  const ip = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
  return { hostIP: ip(base + 1), podIP: ip(base + 2) };
}

function names(slot: number): { ns: string; hostIf: string; podIf: string } {
  return { ns: `srop-pod-${slot}`, hostIf: `srh${slot}`, podIf: `srp${slot}` };
}

function deleteNetnsSync(slot: number): void {
  const { ns, hostIf } = names(slot);
  try { execFileSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' }); } catch { /* gone */ }
  try { execFileSync('ip', ['link', 'delete', hostIf], { stdio: 'ignore' }); } catch { /* gone with the netns */ }
}

/** Frees the slots (and namespaces) of owners that are no longer running. */
export function reapStaleNetworks(stateDir: string = NETNS_STATE_DIR): number {
  if (!existsSync(stateDir)) return 0;
  let reaped = 0;
  for (const entry of readdirSync(stateDir)) {
    const slot = Number.parseInt(entry, 10);
    if (!Number.isInteger(slot)) continue;
    let owner = '';
    try { owner = readFileSync(join(stateDir, entry, 'owner'), 'utf8').trim(); } catch { /* half-made slot */ }
    if (owner !== '' && ownerAlive(owner)) continue;
    if (owner === '') {
      // Being created right now by another process (mkdir, then owner file)? Give it a moment.
      continue;
    }
    deleteNetnsSync(slot);
    rmSync(join(stateDir, entry), { recursive: true, force: true });
    reaped++;
  }
  return reaped;
}

const live = new Map<number, PodNetwork>();
let exitHookInstalled = false;
function installExitHook(stateDir: string): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  onProcessEnd(() => {
    for (const slot of live.keys()) {
      deleteNetnsSync(slot);
      rmSync(join(stateDir, String(slot)), { recursive: true, force: true });
    }
    live.clear();
  });
}

/**
 * Creates a pod network namespace with its veth pair. Needs root and iproute2 (`ip`).
 */
export async function createPodNetwork(opts: { stateDir?: string } = {}): Promise<PodNetwork> {
  const stateDir = opts.stateDir ?? NETNS_STATE_DIR;
  mkdirSync(stateDir, { recursive: true });
  reapStaleNetworks(stateDir);
  const me = processIdentity();
  if (me === undefined) throw new Error('cannot read /proc/self/stat');
  let slot = -1;
  const start = Math.floor(Math.random() * SLOTS);
  for (let i = 0; i < SLOTS; i++) {
    const s = (start + i) % SLOTS;
    try {
      mkdirSync(join(stateDir, String(s)));
    } catch {
      continue;
    }
    writeFileSync(join(stateDir, String(s), 'owner'), `${me}\n`);
    slot = s;
    break;
  }
  if (slot < 0) throw new Error('no free pod network slot');
  installExitHook(stateDir);
  const { ns, hostIf, podIf } = names(slot);
  const { hostIP, podIP } = slotAddresses(slot);
  const ipc = async (...args: string[]): Promise<void> => {
    try {
      await run('ip', args);
    } catch (err) {
      const e = err as { code?: string; stderr?: string };
      if (e.code === 'ENOENT') throw new Error("pod network: 'ip' not found; apt-get install -y iproute2");
      throw new Error(`pod network: ip ${args.join(' ')}: ${e.stderr?.trim() ?? String(err)}`);
    }
  };
  const net: PodNetwork = {
    name: ns,
    netnsPath: `/run/netns/${ns}`,
    podIP,
    hostIP,
    hostInterface: hostIf,
    slot,
    release: async () => {
      if (!live.has(slot)) return;
      live.delete(slot);
      deleteNetnsSync(slot);
      rmSync(join(stateDir, String(slot)), { recursive: true, force: true });
    },
  };
  live.set(slot, net);
  try {
    deleteNetnsSync(slot); // leftovers from a crash that lost its state dir
    await ipc('netns', 'add', ns);
    await ipc('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', podIf);
    await ipc('link', 'set', podIf, 'netns', ns);
    await ipc('-n', ns, 'link', 'set', podIf, 'name', 'eth0');
    await ipc('-n', ns, 'addr', 'add', `${podIP}/30`, 'dev', 'eth0');
    await ipc('-n', ns, 'link', 'set', 'eth0', 'up');
    await ipc('-n', ns, 'link', 'set', 'lo', 'up');
    await ipc('addr', 'add', `${hostIP}/30`, 'dev', hostIf);
    await ipc('link', 'set', hostIf, 'up');
  } catch (err) {
    await net.release();
    throw err;
  }
  return net;
}

/**
 * Lets a pod reach a service that listens on the host's loopback only (the API server, an
 * upstream SMTP sink): a TCP proxy in this process listening on the pod's hostIP:listenPort
 * and forwarding each connection to target (default 127.0.0.1:listenPort). In a cluster the
 * same role is played by a Service's ClusterIP. Closing it (or the process exiting) removes it.
 */
export async function proxyHostPort(
  net: Pick<PodNetwork, 'hostIP'>,
  listenPort: number,
  target: { host?: string; port?: number } = {},
): Promise<{ address: string; port: number; close(): Promise<void> }> {
  const { createServer, connect } = await import('node:net');
  const host = target.host ?? '127.0.0.1';
  const port = target.port ?? listenPort;
  const sockets = new Set<import('node:net').Socket>();
  const server = createServer((inbound) => {
    const outbound = connect({ host, port });
    sockets.add(inbound);
    sockets.add(outbound);
    const done = (): void => {
      inbound.destroy();
      outbound.destroy();
      sockets.delete(inbound);
      sockets.delete(outbound);
    };
    inbound.on('error', done).on('close', done);
    outbound.on('error', done).on('close', done);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, net.hostIP, () => resolve());
  });
  const addr = server.address();
  return {
    address: net.hostIP,
    port: typeof addr === 'object' && addr ? addr.port : listenPort,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
