// How requests reach the API server: the server URL, auth headers and a TLS
// dispatcher.
//
// Configuration and authentication come from @kubernetes/client-node's
// KubeConfig; requests themselves are sent by kube.ts with undici.

import { Agent, type Dispatcher } from 'undici';

export interface PreparedRequest {
  headers: Record<string, string>;
  dispatcher?: Dispatcher;
}

export interface KubeTransport {
  readonly server: string;
  prepare(url: string, method: string): Promise<PreparedRequest>;
}

/**
 * How often the operator PINGs the API server on its HTTP/2 connection (undici negotiates
 * HTTP/2 with kube-apiserver; every watch and request shares that one connection). A PING
 * still unanswered at the next one resets the connection, so one that died silently (no
 * FIN or RST: a NAT or load balancer dropped the flow, a hung peer) is replaced within 10-20
 * s, and the watches on it resume on a new one. undici's default is 60 s (so up to 2 min);
 * client-go pings after 30 s without a frame and waits 15 s for the answer.
 */
export const HTTP2_PING_INTERVAL_MS = 10_000;

/** The part of @kubernetes/client-node's KubeConfig we use (structural; the library is not loaded here). */
export interface KubeConfigLike {
  getCurrentCluster(): { server: string } | null;
  applySecurityAuthentication(context: unknown): Promise<void>;
  /** Fills TLS options (ca, cert, key...) from the kubeconfig; public in client-node 2. */
  applyToHTTPSOptions?(opts: object): Promise<void>;
  /** What dispatcher client-node would build (type and connect options); public in client-node 2. */
  createDispatcherOptions?(cluster: never, agentOptions: object): { type: string; connect?: object };
}

/** TLS options of the kubeconfig as client-node's own dispatcher gets them (config.js applySecurityAuthentication). */
const AGENT_TLS_KEYS = ['ca', 'cert', 'key', 'pfx', 'passphrase', 'rejectUnauthorized', 'servername'] as const;

/**
 * client-node's dispatcher for this kubeconfig, rebuilt with HTTP2_PING_INTERVAL_MS: the
 * same connect options (TLS material, keep-alive), only the PING interval differs. A proxy
 * or SOCKS kubeconfig keeps client-node's own dispatcher (undefined here).
 */
async function pingingDispatcher(kc: KubeConfigLike): Promise<Dispatcher | undefined> {
  if (!kc.applyToHTTPSOptions || !kc.createDispatcherOptions) return undefined;
  const https: Record<string, unknown> = {};
  await kc.applyToHTTPSOptions(https);
  const agentOptions: Record<string, unknown> = {};
  for (const k of AGENT_TLS_KEYS) if (https[k] !== undefined) agentOptions[k] = https[k];
  const o = kc.createDispatcherOptions(kc.getCurrentCluster() as never, agentOptions);
  if (o.type === 'agent') return new Agent({ connect: o.connect ?? {}, pingInterval: HTTP2_PING_INTERVAL_MS });
  if (o.type === 'none') return new Agent({ pingInterval: HTTP2_PING_INTERVAL_MS });
  return undefined;
}

/** Requests authenticated by a client-node KubeConfig (any auth it supports). */
export class KubeConfigTransport implements KubeTransport {
  readonly server: string;
  private dispatcher: Dispatcher | undefined;
  private pinging: Promise<Dispatcher | undefined> | undefined;

  constructor(private readonly kc: KubeConfigLike) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('kubeconfig has no current cluster; set current-context or use --kubeconfig');
    this.server = cluster.server.replace(/\/+$/, '');
  }

  async prepare(url: string, method: string): Promise<PreparedRequest> {
    // KubeConfig fills headers (tokens, refreshed by its authenticators) and
    // builds a new TLS dispatcher per call; we keep one so connections are reused: the
    // same, built once with a shorter HTTP/2 PING interval (pingingDispatcher).
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
    if (!this.dispatcher) {
      this.pinging ??= pingingDispatcher(this.kc);
      this.dispatcher = (await this.pinging) ?? dispatcher;
    }
    return this.dispatcher ? { headers, dispatcher: this.dispatcher } : { headers };
  }
}

/**
 * Where the operator connects, in client-go's order: --kubeconfig, else
 * $KUBECONFIG, else ~/.kube/config, else the in-cluster ServiceAccount.
 * Parsing kubeconfigs and authenticating (client certificates, tokens, rotated
 * ServiceAccount token files, exec and auth-provider plugins) is left to
 * @kubernetes/client-node's KubeConfig: security-sensitive code we do not
 * hand-write. Loading it costs about 85 MiB of RSS (docs/operator.md).
 */
export async function loadTransport(kubeconfigPath?: string): Promise<KubeTransport> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  if (kubeconfigPath) kc.loadFromFile(kubeconfigPath);
  else kc.loadFromDefault();
  if (!kc.getCurrentCluster()) {
    throw new Error('no kubeconfig found ($KUBECONFIG, ~/.kube/config) and not running in a pod; pass --kubeconfig');
  }
  return new KubeConfigTransport(kc as unknown as KubeConfigLike);
}
