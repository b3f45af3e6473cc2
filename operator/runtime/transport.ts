// How requests reach the API server: the server URL, auth headers and a TLS
// dispatcher.
//
// Why not always @kubernetes/client-node's KubeConfig: loading that package
// loads its whole generated client (thousands of model classes), about 85 MiB
// of RSS in an operator whose own caches need a few MiB. So the operator reads
// kubeconfig files and the in-cluster ServiceAccount itself for the common
// cases (client certificates, bearer tokens, token files, basic auth), and
// loads client-node only for a kubeconfig that needs an auth plugin (exec,
// auth-provider). Tests may still hand a KubeConfig object in.

import { readFileSync, existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Agent, type Dispatcher } from 'undici';
import YAML from 'yaml';

export interface PreparedRequest {
  headers: Record<string, string>;
  dispatcher?: Dispatcher;
}

export interface KubeTransport {
  readonly server: string;
  prepare(url: string, method: string): Promise<PreparedRequest>;
}

/** The part of @kubernetes/client-node's KubeConfig we use (structural; the library is not loaded here). */
export interface KubeConfigLike {
  getCurrentCluster(): { server: string } | null;
  applySecurityAuthentication(context: unknown): Promise<void>;
}

/** Requests authenticated by a client-node KubeConfig (any auth it supports). */
export class KubeConfigTransport implements KubeTransport {
  readonly server: string;
  private dispatcher: Dispatcher | undefined;

  constructor(private readonly kc: KubeConfigLike) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('kubeconfig has no current cluster; set current-context or use --kubeconfig');
    this.server = cluster.server.replace(/\/+$/, '');
  }

  async prepare(url: string, method: string): Promise<PreparedRequest> {
    // KubeConfig fills headers (tokens, refreshed by its authenticators) and
    // builds a new TLS dispatcher per call; we keep the first so connections are reused.
    const headers: Record<string, string> = {};
    let dispatcher: Dispatcher | undefined;
    const ctx = {
      setHeaderParam(k: string, v: string) {
        headers[k] = v;
      },
      setDispatcher(d: Dispatcher) {
        dispatcher = d;
      },
      getUrl: () => url,
      getHttpMethod: () => method,
    };
    await this.kc.applySecurityAuthentication(ctx);
    if (!this.dispatcher && dispatcher) this.dispatcher = dispatcher;
    return this.dispatcher ? { headers, dispatcher: this.dispatcher } : { headers };
  }
}

export interface NativeTransportOptions {
  server: string;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  insecureSkipTlsVerify?: boolean;
  tlsServerName?: string;
  token?: string;
  /** Re-read at most every `tokenFileRefreshMs` (projected ServiceAccount tokens rotate). */
  tokenFile?: string;
  tokenFileRefreshMs?: number;
  username?: string;
  password?: string;
}

/** Requests with TLS material and a static or file-backed token, no client-node. */
export class NativeTransport implements KubeTransport {
  readonly server: string;
  private readonly dispatcher: Dispatcher;
  private token: { value: string; readAt: number } | undefined;

  constructor(private readonly o: NativeTransportOptions) {
    this.server = o.server.replace(/\/+$/, '');
    this.dispatcher = new Agent({
      connect: {
        ...(o.ca ? { ca: o.ca } : {}),
        ...(o.cert ? { cert: o.cert } : {}),
        ...(o.key ? { key: o.key } : {}),
        ...(o.tlsServerName ? { servername: o.tlsServerName } : {}),
        rejectUnauthorized: !o.insecureSkipTlsVerify,
      },
    });
  }

  private bearer(): string | undefined {
    if (this.o.token) return this.o.token;
    if (!this.o.tokenFile) return undefined;
    const now = Date.now();
    if (!this.token || now - this.token.readAt > (this.o.tokenFileRefreshMs ?? 60_000)) {
      this.token = { value: readFileSync(this.o.tokenFile, 'utf8').trim(), readAt: now };
    }
    return this.token.value;
  }

  async prepare(): Promise<PreparedRequest> {
    const headers: Record<string, string> = {};
    const token = this.bearer();
    if (token) headers['Authorization'] = `Bearer ${token}`;
    else if (this.o.username !== undefined) headers['Authorization'] = `Basic ${Buffer.from(`${this.o.username}:${this.o.password ?? ''}`).toString('base64')}`;
    return { headers, dispatcher: this.dispatcher };
  }
}

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

interface KubeconfigFile {
  'current-context'?: string;
  clusters?: { name: string; cluster: Record<string, unknown> }[];
  users?: { name: string; user: Record<string, unknown> }[];
  contexts?: { name: string; context: { cluster: string; user: string } }[];
}

function fileOrData(base: string, file: unknown, data: unknown): Buffer | undefined {
  if (typeof data === 'string' && data) return Buffer.from(data, 'base64');
  if (typeof file === 'string' && file) return readFileSync(file.startsWith('/') ? file : join(base, file));
  return undefined;
}

/**
 * A transport from a kubeconfig file, or null when that kubeconfig needs an
 * auth plugin (then the caller falls back to client-node).
 */
export function transportFromKubeconfigFile(path: string): NativeTransport | null {
  const doc = YAML.parse(readFileSync(path, 'utf8')) as KubeconfigFile;
  const base = path.slice(0, Math.max(0, path.lastIndexOf('/'))) || '.';
  const ctxName = doc['current-context'];
  const ctx = doc.contexts?.find((c) => c.name === ctxName)?.context;
  if (!ctx) throw new Error(`kubeconfig ${path}: current-context "${ctxName ?? ''}" not found`);
  const cluster = doc.clusters?.find((c) => c.name === ctx.cluster)?.cluster;
  if (!cluster || typeof cluster['server'] !== 'string') throw new Error(`kubeconfig ${path}: cluster "${ctx.cluster}" has no server`);
  const user = doc.users?.find((u) => u.name === ctx.user)?.user ?? {};
  if (user['exec'] || user['auth-provider']) return null;
  const o: NativeTransportOptions = { server: cluster['server'] };
  const ca = fileOrData(base, cluster['certificate-authority'], cluster['certificate-authority-data']);
  if (ca) o.ca = ca;
  if (cluster['insecure-skip-tls-verify'] === true) o.insecureSkipTlsVerify = true;
  if (typeof cluster['tls-server-name'] === 'string') o.tlsServerName = cluster['tls-server-name'];
  const cert = fileOrData(base, user['client-certificate'], user['client-certificate-data']);
  const key = fileOrData(base, user['client-key'], user['client-key-data']);
  if (cert) o.cert = cert;
  if (key) o.key = key;
  if (typeof user['token'] === 'string') o.token = user['token'];
  if (typeof user['tokenFile'] === 'string') o.tokenFile = user['tokenFile'];
  if (typeof user['username'] === 'string') {
    o.username = user['username'];
    if (typeof user['password'] === 'string') o.password = user['password'];
  }
  return new NativeTransport(o);
}

/** The in-cluster ServiceAccount transport, or undefined outside a pod. */
export function inClusterTransport(): NativeTransport | undefined {
  const host = process.env['KUBERNETES_SERVICE_HOST'];
  const port = process.env['KUBERNETES_SERVICE_PORT'];
  if (!host || !port || !existsSync(join(SA_DIR, 'token'))) return undefined;
  const h = host.includes(':') ? `[${host}]` : host;
  return new NativeTransport({ server: `https://${h}:${port}`, ca: readFileSync(join(SA_DIR, 'ca.crt')), tokenFile: join(SA_DIR, 'token') });
}

/**
 * Where the operator connects, in client-go's order: --kubeconfig, else
 * $KUBECONFIG (first file), else ~/.kube/config, else in-cluster.
 */
export async function loadTransport(kubeconfigPath?: string): Promise<KubeTransport> {
  const candidates = kubeconfigPath ? [kubeconfigPath] : [...(process.env['KUBECONFIG'] ?? '').split(':').filter(Boolean), join(homedir(), '.kube', 'config')];
  for (const path of candidates) {
    if (!kubeconfigPath && !existsSync(path)) continue;
    const native = transportFromKubeconfigFile(path);
    if (native) return native;
    // Auth plugins: let client-node run them (loaded only here).
    const { KubeConfig } = await import('@kubernetes/client-node');
    const kc = new KubeConfig();
    kc.loadFromFile(path);
    return new KubeConfigTransport(kc as unknown as KubeConfigLike);
  }
  const inCluster = inClusterTransport();
  if (inCluster) return inCluster;
  throw new Error('no kubeconfig found ($KUBECONFIG, ~/.kube/config) and not running in a pod; pass --kubeconfig');
}
