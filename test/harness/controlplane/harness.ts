/**
 * A real Kubernetes control plane on loopback (etcd + kube-apiserver +
 * kube-controller-manager), the way controller-runtime's envtest runs one,
 * for integration tests and the demo.
 *
 * Binaries: built once per machine by `make controlplane`
 * (test/harness/controlplane/build.sh) into
 *   ${CONTROLPLANE_CACHE:-~/.cache/smtp-relay-operator/controlplane}/<k8s version>/bin
 * or taken from $CONTROLPLANE_BIN if set. A missing binary throws an Error that
 * says to run `make controlplane`; nothing skips.
 *
 * API (stable; other tests import it from test/harness/controlplane/harness.js):
 *
 *   const cp = await startControlPlane(opts?);
 *     opts.crdFiles?: string[]       extra CRD YAML files (multi-document ok) to install before
 *                                    the controller manager starts (so its garbage collector
 *                                    watches them from the start); installed after the defaults
 *     opts.crdObjects?: object[]     extra CRD objects, same as crdFiles
 *     opts.defaultCrds?: boolean     install <repo>/crds/*.yaml and <repo>/../shared/cert-manager-crds/*.yaml
 *                                    (default true; missing folders are tolerated)
 *     opts.controllerManager?: boolean  start kube-controller-manager (default true)
 *     opts.extraControllers?: string[]  more kube-controller-manager controllers (the cluster
 *                                    harness adds node-lifecycle-controller)
 *     opts.apiserverArgs?: string[]  extra kube-apiserver flags (`--flag=value`); each replaces a
 *                                    same-named default flag (e.g. --disable-admission-plugins)
 *     opts.address?: string          the address kube-apiserver binds and advertises (default
 *                                    127.0.0.1; the cluster harness gives its node address, so
 *                                    pods reach it through the `kubernetes` Service); cp.server uses it
 *     opts.servingSans?: string[]    extra subjectAltNames of its serving certificate
 *                                    (`IP:…` / `DNS:…`, e.g. the `kubernetes` Service's ClusterIP)
 *     opts.log?: (line: string) => void  progress lines (default: silent)
 *
 *   cp.server            https://<opts.address, default 127.0.0.1>:<port>
 *   cp.kubeconfigPath    admin kubeconfig file (user "admin", group system:masters)
 *   cp.kubeconfig        @kubernetes/client-node KubeConfig loaded from it
 *   cp.caPath            cluster CA certificate (PEM file)
 *   cp.etcdEndpoint      http://127.0.0.1:<port> (etcd v3 JSON gateway is on it)
 *   cp.dir               temp folder with certs, kubeconfigs, etcd data and logs (<dir>/logs/*.log)
 *   cp.pids              PIDs of the processes started (each leads its own process group)
 *   cp.serviceAccountKubeconfig(namespace, name, opts?) -> { path, kubeconfig, token }
 *                        TokenRequest for that ServiceAccount (created if missing unless
 *                        opts.create === false), written as a kubeconfig file (mode 0600).
 *                        opts.expirationSeconds (default 3600, min 600).
 *   cp.installCrds(files | objects) -> Promise<void>   create/replace CRDs and wait Established
 *   cp.compactEtcd() -> Promise<number>   compacts etcd at its current revision (returns it).
 *                        A watch resuming from an older resourceVersion then gets 410 Gone if it
 *                        is served from etcd. By default the apiserver's watch cache serves it
 *                        from its in-memory event window instead (no 410), so to force 410s for a
 *                        resource start with apiserverArgs: ['--watch-cache-sizes=<plural>.<group>#0']
 *                        (see controlplane.test.ts).
 *   cp.restartApiserver(opts?) -> Promise<void>   stops kube-apiserver (opts.signal, default SIGTERM:
 *                        its graceful shutdown; SIGKILL for a crash), waits opts.downMs (default 0)
 *                        with it down, starts it again on the same port with the same flags
 *                        (opts.args: flags that replace same-named ones, or are added, for this
 *                        start only), and waits for /readyz. Watches and keep-alive connections
 *                        of clients break as in a real restart; etcd keeps the data.
 *   cp.stop()            ends every process by process group (TERM, then KILL after 10 s),
 *                        waits for them, removes the temp folder (kept if CONTROLPLANE_KEEP=1).
 *                        Idempotent.
 *
 * Started with: etcd 3.7 (--unsafe-no-fsync), kube-apiserver with envtest's flags
 * (--service-cluster-ip-range=10.0.0.0/24 --allow-privileged --disable-admission-plugins=ServiceAccount
 * --authorization-mode=RBAC), client-cert auth against a generated CA, SA issuer = server URL;
 * kube-controller-manager with the garbage-collector, namespace, deployment, replicaset,
 * serviceaccount, serviceaccount-token, root-ca-certificate-publisher and endpointslice controllers.
 * No scheduler and no kubelet: Pods are created but never scheduled or run.
 * Start-up from warm binaries: about 3.5-5 s (7 CRDs included) on 2 cores.
 *
 * Process safety: children are started in their own process group and, where
 * util-linux `setpriv` exists, with a parent-death signal (KILL), so even a
 * SIGKILLed test process leaves nothing running; 'exit' and SIGINT/SIGTERM/SIGHUP
 * handlers kill whatever is still up. A folder left by a SIGKILLed run is removed by the next start.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { generateKeyPair } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, accessSync, constants as fsConstants, openSync, closeSync } from 'node:fs';
import { mkdtemp, readdir, readFile, writeFile, rm } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import { ObjectSerializer as CrdSerializer } from '@kubernetes/client-node/dist/gen/models/ObjectSerializer.js';
import YAML from 'yaml';

const execFileP = promisify(execFile);

export interface ControlPlaneOptions {
  crdFiles?: string[];
  crdObjects?: object[];
  defaultCrds?: boolean;
  controllerManager?: boolean;
  /** kube-controller-manager controllers started beside the default set (e.g. node-lifecycle-controller). */
  extraControllers?: string[];
  apiserverArgs?: string[];
  /** Address kube-apiserver binds and advertises (default 127.0.0.1). */
  address?: string;
  /** Extra subjectAltNames (`IP:…`, `DNS:…`) of the API server's serving certificate. */
  servingSans?: string[];
  log?: (line: string) => void;
}

export interface ServiceAccountKubeconfig {
  path: string;
  kubeconfig: k8s.KubeConfig;
  token: string;
}

export interface ControlPlane {
  readonly server: string;
  readonly kubeconfigPath: string;
  readonly kubeconfig: k8s.KubeConfig;
  readonly caPath: string;
  readonly etcdEndpoint: string;
  readonly dir: string;
  readonly pids: number[];
  serviceAccountKubeconfig(
    namespace: string,
    name: string,
    opts?: { expirationSeconds?: number; create?: boolean },
  ): Promise<ServiceAccountKubeconfig>;
  installCrds(crds: Array<string | object>): Promise<void>;
  compactEtcd(): Promise<number>;
  restartApiserver(opts?: RestartApiserverOptions): Promise<void>;
  stop(): Promise<void>;
}

export interface RestartApiserverOptions {
  /** How the running kube-apiserver is stopped (default SIGTERM). */
  signal?: 'SIGTERM' | 'SIGKILL';
  /** Time with no API server before the new one starts (default 0). */
  downMs?: number;
  /** `--flag=value` flags for the new process: each replaces a same-named flag, or is added. */
  args?: string[];
}

/** `base` with each `--name=value` of `extra` replacing the same-named flag (or appended). */
export function mergeFlags(base: string[], extra: string[]): string[] {
  const name = (f: string) => f.split('=')[0];
  const names = new Set(extra.map(name));
  return [...base.filter((f) => !names.has(name(f))), ...extra];
}

/** Repository root: the folder holding test/harness/controlplane/go.mod, found upward from this file. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'test', 'harness', 'controlplane', 'go.mod'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('controlplane: cannot find the repository root (test/harness/controlplane/go.mod) above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

/** Kubernetes version pinned in test/harness/controlplane/go.mod, e.g. "v1.37.2". */
export function kubernetesVersion(root = repoRoot()): string {
  const gomod = readFileSync(join(root, 'test', 'harness', 'controlplane', 'go.mod'), 'utf8');
  const m = /^\s*k8s\.io\/kubernetes\s+(v\S+)/m.exec(gomod);
  if (!m?.[1]) throw new Error('controlplane: no k8s.io/kubernetes requirement in test/harness/controlplane/go.mod');
  return m[1];
}

/** Folder holding kube-apiserver, kube-controller-manager and etcd. */
export function binDir(root = repoRoot()): string {
  if (process.env.CONTROLPLANE_BIN) return process.env.CONTROLPLANE_BIN;
  const cache = process.env.CONTROLPLANE_CACHE || join(homedir(), '.cache', 'smtp-relay-operator', 'controlplane');
  return join(cache, kubernetesVersion(root), 'bin');
}

function findBinary(dir: string, name: string): string {
  const p = join(dir, name);
  try {
    accessSync(p, fsConstants.X_OK);
  } catch {
    throw new Error(
      `controlplane: ${name} is missing or not executable at ${p}. ` +
        'Run `make controlplane` (needs Go >= 1.26; builds kube-apiserver, kube-controller-manager and etcd ' +
        'from test/harness/controlplane/go.mod into the cache folder; set CONTROLPLANE_BIN to use other binaries).',
    );
  }
  return p;
}

// ---------------------------------------------------------------------------
// process bookkeeping shared by every control plane of this process

/** A process a harness started in its own process group, logging to a file. */
export interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
  exitInfo?: { code: number | null; signal: NodeJS.Signals | null };
  logPath: string;
}

const live = new Set<Proc>();
const liveDirs = new Set<string>();
let handlersInstalled = false;

function killGroupSync(p: Proc, sig: NodeJS.Signals): void {
  if (p.exitInfo) return;
  try {
    process.kill(-p.pid, sig);
  } catch {
    try {
      process.kill(p.pid, sig);
    } catch {
      /* already gone */
    }
  }
}

function emergencyCleanup(): void {
  for (const p of live) killGroupSync(p, 'SIGKILL');
  live.clear();
  if (process.env.CONTROLPLANE_KEEP !== '1') {
    for (const d of liveDirs) {
      try {
        rmSync(d, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  }
  liveDirs.clear();
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', emergencyCleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      emergencyCleanup();
      process.off(sig, handler);
      // Nobody else handles it: behave like the default action.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

let setprivChecked: boolean | undefined;
function hasSetpriv(): boolean {
  if (setprivChecked === undefined) setprivChecked = existsSync('/usr/bin/setpriv') || existsSync('/bin/setpriv');
  return setprivChecked;
}

/**
 * Starts `bin` in its own process group, output to <logDir>/<name>.log, killed with the
 * test process (setpriv --pdeathsig, and the exit and signal handlers). The cluster
 * harness (test/harness/cluster/cluster.ts) starts its parts with it too.
 */
export function startProcess(name: string, bin: string, args: string[], logDir: string, env: NodeJS.ProcessEnv = {}): Proc {
  installHandlers();
  const logPath = join(logDir, `${name}.log`);
  const fd = openSync(logPath, 'a');
  const [cmd, argv] = hasSetpriv() ? ['setpriv', ['--pdeathsig', 'KILL', bin, ...args]] : [bin, args];
  let child: ChildProcess;
  try {
    child = spawn(cmd, argv, { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, GOMAXPROCS: process.env.GOMAXPROCS ?? '2', ...env } });
  } finally {
    closeSync(fd);
  }
  if (child.pid === undefined) throw new Error(`could not start ${bin}`);
  const proc: Proc = {
    name,
    child,
    pid: child.pid,
    logPath,
    exited: new Promise<void>((res) => {
      child.once('exit', (code, signal) => {
        proc.exitInfo = { code, signal };
        live.delete(proc);
        res();
      });
      child.once('error', () => {
        proc.exitInfo ??= { code: null, signal: null };
        live.delete(proc);
        res();
      });
    }),
  };
  child.unref();
  live.add(proc);
  return proc;
}

async function stopProcess(p: Proc, graceMs = 10_000): Promise<void> {
  if (p.exitInfo) return;
  killGroupSync(p, 'SIGTERM');
  const t = setTimeout(() => killGroupSync(p, 'SIGKILL'), graceMs);
  await p.exited;
  clearTimeout(t);
  // The group may hold stragglers (none expected: the binaries do not fork).
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    /* group is empty */
  }
}

function logTail(p: Proc, lines = 25): string {
  try {
    const text = readFileSync(p.logPath, 'utf8').trimEnd().split('\n');
    return text.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

// ---------------------------------------------------------------------------
// small helpers

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface HttpResult {
  status: number;
  body: string;
}

function httpGetOrPost(
  url: string,
  opts: { method?: string; body?: string; ca?: Buffer; cert?: Buffer; key?: Buffer; timeoutMs?: number; rejectUnauthorized?: boolean } = {},
): Promise<HttpResult> {
  return new Promise((res, rej) => {
    const u = new URL(url);
    const fn = u.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = fn(
      u,
      {
        method: opts.method ?? 'GET',
        ca: opts.ca,
        cert: opts.cert,
        key: opts.key,
        rejectUnauthorized: opts.rejectUnauthorized ?? true,
        headers: opts.body !== undefined ? { 'content-type': 'application/json' } : {},
        timeout: opts.timeoutMs ?? 5000,
        agent: false,
      },
      (resp) => {
        const chunks: Buffer[] = [];
        resp.on('data', (c: Buffer) => chunks.push(c));
        resp.on('end', () => res({ status: resp.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        resp.on('error', rej);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', rej);
    req.end(opts.body);
  });
}

async function waitFor(
  what: string,
  procs: Proc[],
  check: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = '';
  for (;;) {
    for (const p of procs) {
      if (p.exitInfo) {
        throw new Error(
          `controlplane: ${p.name} exited (code ${p.exitInfo.code}, signal ${p.exitInfo.signal}) while waiting for ${what}. ` +
            `Last lines of ${p.logPath}:\n${logTail(p)}`,
        );
      }
    }
    try {
      if (await check()) return;
    } catch (e) {
      lastErr = (e as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `controlplane: timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${lastErr})` : ''}. ` +
          procs.map((p) => `Last lines of ${p.logPath}:\n${logTail(p)}`).join('\n'),
      );
    }
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------
// certificates (openssl CLI: node:crypto cannot issue X.509 certificates)

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await execFileP('openssl', args, { cwd });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new Error('controlplane: the openssl CLI is needed to make test certificates (apt-get install openssl)');
    throw new Error(`controlplane: openssl ${args[0]} failed: ${err.stderr ?? err.message}`);
  }
}

async function makePki(dir: string, servingSans: string[] = []): Promise<void> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl(
    ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '7', '-subj', '/CN=smtp-relay-operator-test-ca',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  const leaf = (name: string, subj: string, ext: string[]): Promise<void> =>
    openssl(
      ['req', '-x509', ...ec, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '7',
        '-subj', subj, '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'keyUsage=critical,digitalSignature,keyEncipherment',
        ...ext.flatMap((e) => ['-addext', e])],
      dir,
    );
  const sa = promisify(generateKeyPair)('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  }).then(async ({ publicKey, privateKey }) => {
    await writeFile(join(dir, 'sa.pub'), publicKey, { mode: 0o600 });
    await writeFile(join(dir, 'sa.key'), privateKey, { mode: 0o600 });
  });
  await Promise.all([
    leaf('apiserver', '/CN=kube-apiserver', ['extendedKeyUsage=serverAuth', `subjectAltName=${['IP:127.0.0.1', 'DNS:localhost', 'IP:10.0.0.1', 'DNS:kubernetes.default.svc', ...servingSans].join(',')}`]),
    leaf('admin', '/O=system:masters/CN=admin', ['extendedKeyUsage=clientAuth']),
    leaf('kcm', '/O=system:masters/CN=system:kube-controller-manager', ['extendedKeyUsage=clientAuth']),
    sa,
  ]);
}

function kubeconfigYaml(server: string, ca: Buffer, user: string, cred: { cert: Buffer; key: Buffer } | { token: string }, namespace = 'default'): string {
  const userEntry =
    'token' in cred
      ? { token: cred.token }
      : { 'client-certificate-data': cred.cert.toString('base64'), 'client-key-data': cred.key.toString('base64') };
  return YAML.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server, 'certificate-authority-data': ca.toString('base64') } }],
    users: [{ name: user, user: userEntry }],
    contexts: [{ name: user, context: { cluster: 'test', user, namespace } }],
    'current-context': user,
  });
}

// ---------------------------------------------------------------------------
// CRDs

async function readCrdFile(file: string): Promise<object[]> {
  const text = await readFile(file, 'utf8');
  return YAML.parseAllDocuments(text)
    .map((d) => d.toJS() as unknown)
    .filter((o): o is { kind: string } => !!o && typeof o === 'object' && (o as { kind?: unknown }).kind === 'CustomResourceDefinition');
}

async function yamlFilesIn(dir: string): Promise<string[]> {
  try {
    const names = await readdir(dir);
    return names.filter((n) => /\.ya?ml$/.test(n)).sort().map((n) => join(dir, n));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

/** Creates (or replaces) the CRDs and waits until each is Established. */
export async function installCrds(kc: k8s.KubeConfig, crds: Array<string | object>, timeoutMs = 30_000): Promise<void> {
  const api = kc.makeApiClient(k8s.ApiextensionsV1Api);
  const objs: k8s.V1CustomResourceDefinition[] = [];
  for (const c of crds) {
    // Plain JSON (from YAML) must become client-node models first: its serializer reads
    // `default`, `enum`, `x-kubernetes-*` only under their TypeScript names (`_default`,
    // `xKubernetesValidations`...) and would silently drop them from a plain object.
    const plain = typeof c === 'string' ? await readCrdFile(c) : [c];
    for (const o of plain) objs.push(CrdSerializer.deserialize(o, 'V1CustomResourceDefinition', '') as k8s.V1CustomResourceDefinition);
  }
  await Promise.all(
    objs.map(async (crd) => {
      const name = crd.metadata?.name;
      if (!name) throw new Error('controlplane: CRD without metadata.name');
      try {
        await api.createCustomResourceDefinition({ body: crd });
      } catch (e) {
        if ((e as { code?: number }).code !== 409) throw new Error(`controlplane: creating CRD ${name} failed: ${errText(e)}`);
        const cur = await api.readCustomResourceDefinition({ name });
        await api.replaceCustomResourceDefinition({ name, body: { ...crd, metadata: { ...crd.metadata, resourceVersion: cur.metadata?.resourceVersion } } });
      }
    }),
  );
  const deadline = Date.now() + timeoutMs;
  for (const crd of objs) {
    const name = crd.metadata!.name!;
    for (;;) {
      const cur = await api.readCustomResourceDefinition({ name });
      if (cur.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (Date.now() > deadline) throw new Error(`controlplane: CRD ${name} not Established after ${timeoutMs} ms: ${JSON.stringify(cur.status?.conditions)}`);
      await sleep(100);
    }
  }
}

function errText(e: unknown): string {
  const err = e as { code?: number; body?: unknown; message?: string };
  if (err.body !== undefined) {
    const b = typeof err.body === 'string' ? err.body : JSON.stringify(err.body);
    return `HTTP ${err.code}: ${b.slice(0, 500)}`;
  }
  return err.message ?? String(e);
}

// ---------------------------------------------------------------------------

const DIR_PREFIX = 'smtp-relay-cp-';

/** Removes temp folders left by a test process that was SIGKILLed (its children die with it). */
async function removeStaleDirs(): Promise<void> {
  let names: string[] = [];
  try {
    names = (await readdir(tmpdir())).filter((n) => n.startsWith(DIR_PREFIX));
  } catch {
    return;
  }
  for (const n of names) {
    const d = join(tmpdir(), n);
    try {
      const owner = Number(readFileSync(join(d, 'owner.pid'), 'utf8'));
      if (!Number.isInteger(owner) || owner <= 0) continue;
      try {
        process.kill(owner, 0);
        continue; // owner alive
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') continue;
      }
      await rm(d, { recursive: true, force: true });
    } catch {
      /* not ours or already gone */
    }
  }
}

const KCM_CONTROLLERS = [
  'garbage-collector-controller',
  'namespace-controller',
  'deployment-controller',
  'replicaset-controller',
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'root-ca-certificate-publisher-controller',
  // EndpointSlices of Services from ready pods (the container kubelet writes pod readiness).
  'endpointslice-controller',
];

export async function startControlPlane(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const log = opts.log ?? ((): void => {});
  const t0 = Date.now();
  const root = repoRoot();
  const bins = binDir(root);
  const etcdBin = findBinary(bins, 'etcd');
  const apiserverBin = findBinary(bins, 'kube-apiserver');
  const kcmBin = opts.controllerManager === false ? '' : findBinary(bins, 'kube-controller-manager');

  await removeStaleDirs();
  const dir = await mkdtemp(join(tmpdir(), DIR_PREFIX));
  liveDirs.add(dir);
  await writeFile(join(dir, 'owner.pid'), String(process.pid));
  const logDir = join(dir, 'logs');
  mkdirSync(logDir);
  const procs: Proc[] = [];
  let stopped = false;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const byName = (n: string): Proc[] => procs.filter((p) => p.name.startsWith(n));
    await Promise.all(byName('kube-controller-manager').map((p) => stopProcess(p)));
    await Promise.all(byName('kube-apiserver').map((p) => stopProcess(p)));
    await Promise.all(byName('etcd').map((p) => stopProcess(p)));
    await Promise.all(procs.map((p) => stopProcess(p)));
    liveDirs.delete(dir);
    if (process.env.CONTROLPLANE_KEEP !== '1') await rm(dir, { recursive: true, force: true });
    else log(`controlplane: kept ${dir}`);
  };

  try {
    await makePki(dir, opts.servingSans);
    const ca = readFileSync(join(dir, 'ca.crt'));
    const adminCert = readFileSync(join(dir, 'admin.crt'));
    const adminKey = readFileSync(join(dir, 'admin.key'));
    log(`controlplane: pki ready (${Date.now() - t0} ms)`);

    // etcd (retry on a port taken between freePort() and bind)
    let etcdEndpoint = '';
    for (let attempt = 1; ; attempt++) {
      const [clientPort, peerPort] = [await freePort(), await freePort()];
      etcdEndpoint = `http://127.0.0.1:${clientPort}`;
      const peer = `http://127.0.0.1:${peerPort}`;
      const p = startProcess(`etcd${attempt > 1 ? `-${attempt}` : ''}`, etcdBin, [
        '--name=default',
        `--data-dir=${join(dir, `etcd-data-${attempt}`)}`,
        `--listen-client-urls=${etcdEndpoint}`,
        `--advertise-client-urls=${etcdEndpoint}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=default=${peer}`,
        '--unsafe-no-fsync=true',
        '--log-level=warn',
        '--quota-backend-bytes=2147483648',
      ], logDir);
      procs.push(p);
      try {
        await waitFor('etcd /health', [p], async () => {
          const r = await httpGetOrPost(`${etcdEndpoint}/health`, { timeoutMs: 1000 });
          return r.status === 200 && /"health":\s*"true"/.test(r.body);
        }, 20_000);
        break;
      } catch (e) {
        if (attempt < 3 && /address already in use/.test(logTail(p))) {
          await stopProcess(p);
          continue;
        }
        throw e;
      }
    }
    log(`controlplane: etcd up at ${etcdEndpoint} (${Date.now() - t0} ms)`);

    // kube-apiserver
    let server = '';
    let apiserver: Proc | undefined;
    let apiserverFlags: string[] = [];
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const address = opts.address ?? '127.0.0.1';
      server = `https://${address}:${port}`;
      apiserverFlags = mergeFlags([
        `--advertise-address=${address}`,
        `--bind-address=${address}`,
        `--secure-port=${port}`,
        `--cert-dir=${join(dir, 'apiserver-certs')}`,
        `--tls-cert-file=${join(dir, 'apiserver.crt')}`,
        `--tls-private-key-file=${join(dir, 'apiserver.key')}`,
        `--client-ca-file=${join(dir, 'ca.crt')}`,
        `--etcd-servers=${etcdEndpoint}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        '--allow-privileged=true',
        '--disable-admission-plugins=ServiceAccount',
        '--authorization-mode=RBAC',
        `--service-account-issuer=${server}`,
        `--service-account-key-file=${join(dir, 'sa.pub')}`,
        `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
        '--endpoint-reconciler-type=none',
        '--profiling=false',
        '--v=1',
      ], opts.apiserverArgs ?? []);
      apiserver = startProcess(`kube-apiserver${attempt > 1 ? `-${attempt}` : ''}`, apiserverBin, apiserverFlags, logDir);
      procs.push(apiserver);
      const p = apiserver;
      try {
        await waitFor('kube-apiserver /readyz', [p, ...procs.filter((q) => q.name.startsWith('etcd') && !q.exitInfo)], async () => {
          const r = await httpGetOrPost(`${server}/readyz`, { ca, cert: adminCert, key: adminKey, timeoutMs: 2000 });
          return r.status === 200;
        }, 60_000);
        break;
      } catch (e) {
        if (attempt < 3 && /address already in use/.test(logTail(p))) {
          await stopProcess(p);
          continue;
        }
        throw e;
      }
    }
    log(`controlplane: kube-apiserver ready at ${server} (${Date.now() - t0} ms)`);

    const kubeconfigPath = join(dir, 'admin.kubeconfig');
    await writeFile(kubeconfigPath, kubeconfigYaml(server, ca, 'admin', { cert: adminCert, key: adminKey }), { mode: 0o600 });
    const kubeconfig = new k8s.KubeConfig();
    kubeconfig.loadFromFile(kubeconfigPath);

    // CRDs before the controller manager, so its garbage collector knows them at start.
    const crds: Array<string | object> = [];
    if (opts.defaultCrds !== false) {
      crds.push(...(await yamlFilesIn(join(root, 'crds'))));
      crds.push(...(await yamlFilesIn(resolve(root, '..', 'shared', 'cert-manager-crds'))));
    }
    crds.push(...(opts.crdFiles ?? []), ...(opts.crdObjects ?? []));
    if (crds.length > 0) {
      await installCrds(kubeconfig, crds);
      log(`controlplane: ${crds.length} CRD sources installed and Established (${Date.now() - t0} ms)`);
    }

    if (kcmBin) {
      const kcmKubeconfig = join(dir, 'kcm.kubeconfig');
      await writeFile(kcmKubeconfig, kubeconfigYaml(server, ca, 'kcm', { cert: readFileSync(join(dir, 'kcm.crt')), key: readFileSync(join(dir, 'kcm.key')) }), { mode: 0o600 });
      let kcm: Proc | undefined;
      for (let attempt = 1; ; attempt++) {
        const port = await freePort();
        kcm = startProcess(`kube-controller-manager${attempt > 1 ? `-${attempt}` : ''}`, kcmBin, [
          `--kubeconfig=${kcmKubeconfig}`,
          `--authentication-kubeconfig=${kcmKubeconfig}`,
          `--authorization-kubeconfig=${kcmKubeconfig}`,
          '--bind-address=127.0.0.1',
          `--secure-port=${port}`,
          `--cert-dir=${join(dir, 'kcm-certs')}`,
          '--leader-elect=false',
          `--controllers=${[...KCM_CONTROLLERS, ...(opts.extraControllers ?? [])].join(',')}`,
          `--service-account-private-key-file=${join(dir, 'sa.key')}`,
          `--root-ca-file=${join(dir, 'ca.crt')}`,
          '--use-service-account-credentials=false',
          '--profiling=false',
          '--v=1',
        ], logDir);
        procs.push(kcm);
        const p = kcm;
        try {
          await waitFor('kube-controller-manager /healthz', [p, apiserver], async () => {
            // Its serving cert is self-signed (in cert-dir): not verified for this loopback health probe only.
            const r = await httpGetOrPost(`https://127.0.0.1:${port}/healthz`, { timeoutMs: 2000, rejectUnauthorized: false });
            return r.status === 200;
          }, 30_000);
          break;
        } catch (e) {
          if (attempt < 3 && /address already in use/.test(logTail(p))) {
            await stopProcess(p);
            continue;
          }
          throw e;
        }
      }
      // The serviceaccount controller is working once "default" has its ServiceAccount.
      const core = kubeconfig.makeApiClient(k8s.CoreV1Api);
      await waitFor('ServiceAccount default/default from kube-controller-manager', [kcm, apiserver], async () => {
        await core.readNamespacedServiceAccount({ name: 'default', namespace: 'default' });
        return true;
      }, 30_000);
      log(`controlplane: kube-controller-manager ready (${Date.now() - t0} ms)`);
    }

    let restarts = 0;
    const cp: ControlPlane = {
      server,
      kubeconfigPath,
      kubeconfig,
      caPath: join(dir, 'ca.crt'),
      etcdEndpoint,
      dir,
      get pids() {
        return procs.filter((p) => !p.exitInfo).map((p) => p.pid);
      },
      serviceAccountKubeconfig: (namespace, name, o = {}) => serviceAccountKubeconfig(kubeconfig, dir, server, ca, namespace, name, o),
      installCrds: (list) => installCrds(kubeconfig, list),
      compactEtcd: () => compactEtcd(etcdEndpoint),
      restartApiserver: async (o = {}) => {
        if (stopped) throw new Error('controlplane: restartApiserver after stop()');
        const current = apiserver!;
        if (!current.exitInfo) {
          killGroupSync(current, o.signal ?? 'SIGTERM');
          const t = setTimeout(() => killGroupSync(current, 'SIGKILL'), 20_000);
          await current.exited;
          clearTimeout(t);
        }
        if (o.downMs) await sleep(o.downMs);
        restarts++;
        const next = startProcess(`kube-apiserver-restart-${restarts}`, apiserverBin, mergeFlags(apiserverFlags, o.args ?? []), logDir);
        procs.push(next);
        apiserver = next;
        const etcd = procs.filter((q) => q.name.startsWith('etcd') && !q.exitInfo);
        await waitFor('the restarted kube-apiserver /readyz', [next, ...etcd], async () => {
          const r = await httpGetOrPost(`${server}/readyz`, { ca, cert: adminCert, key: adminKey, timeoutMs: 2000 });
          return r.status === 200;
        }, 60_000);
        log(`controlplane: kube-apiserver restarted (${next.pid})`);
      },
      stop,
    };
    log(`controlplane: up in ${Date.now() - t0} ms`);
    return cp;
  } catch (e) {
    await stop().catch(() => {});
    throw e;
  }
}

async function serviceAccountKubeconfig(
  admin: k8s.KubeConfig,
  dir: string,
  server: string,
  ca: Buffer,
  namespace: string,
  name: string,
  o: { expirationSeconds?: number; create?: boolean },
): Promise<ServiceAccountKubeconfig> {
  const core = admin.makeApiClient(k8s.CoreV1Api);
  if (o.create !== false) {
    try {
      await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name, namespace } } });
    } catch (e) {
      if ((e as { code?: number }).code !== 409) throw new Error(`controlplane: creating ServiceAccount ${namespace}/${name} failed: ${errText(e)}`);
    }
  }
  const tr = await core.createNamespacedServiceAccountToken({
    name,
    namespace,
    body: { spec: { audiences: [], expirationSeconds: o.expirationSeconds ?? 3600 } },
  });
  const token = tr.status?.token;
  if (!token) throw new Error(`controlplane: TokenRequest for ${namespace}/${name} returned no token`);
  const user = `system:serviceaccount:${namespace}:${name}`;
  const path = join(dir, `sa-${namespace}-${name}-${Date.now()}.kubeconfig`);
  await writeFile(path, kubeconfigYaml(server, ca, user, { token }, namespace), { mode: 0o600 });
  const kubeconfig = new k8s.KubeConfig();
  kubeconfig.loadFromFile(path);
  return { path, kubeconfig, token };
}

/** Compacts etcd at its current revision through the v3 JSON gateway; returns the revision. */
async function compactEtcd(endpoint: string): Promise<number> {
  const st = await httpGetOrPost(`${endpoint}/v3/maintenance/status`, { method: 'POST', body: '{}' });
  if (st.status !== 200) throw new Error(`controlplane: etcd status failed: HTTP ${st.status} ${st.body}`);
  const rev = Number((JSON.parse(st.body) as { header?: { revision?: string } }).header?.revision);
  if (!Number.isFinite(rev) || rev <= 0) throw new Error(`controlplane: etcd status has no revision: ${st.body}`);
  const r = await httpGetOrPost(`${endpoint}/v3/kv/compaction`, { method: 'POST', body: JSON.stringify({ revision: String(rev), physical: true }) });
  if (r.status !== 200) throw new Error(`controlplane: etcd compaction failed: HTTP ${r.status} ${r.body}`);
  return rev;
}
