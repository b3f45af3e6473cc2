// How requests reach the API server: the server URL, auth headers and a TLS
// dispatcher.
//
// Configuration and authentication come from @kubernetes/client-node's
// KubeConfig; requests themselves are sent by kube.ts with undici.

import type { Dispatcher } from 'undici';

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
