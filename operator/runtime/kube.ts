// A thin raw client for the Kubernetes API: JSON in, JSON out, every header
// under our control. Not client-node's generated clients: they cannot send the
// metadata-only Accept header, default status patches to json-patch
// and (de)serialize MicroTime wrongly. Connection and auth: transport.ts.

import { fetch } from 'undici';
import { KubeConfigTransport, loadTransport, type KubeConfigLike, type KubeTransport, type PreparedRequest } from './transport.js';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: OwnerReference[];
    deletionTimestamp?: string;
    creationTimestamp?: string;
    managedFields?: unknown[];
  };
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface KubeList<T> {
  metadata?: { resourceVersion?: string; continue?: string };
  items: T[];
}

/** Where a kind lives in the API. */
export interface Resource {
  group: string; // '' for the core group
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
}

export function apiVersionOf(r: Resource): string {
  return r.group ? `${r.group}/${r.version}` : r.version;
}

export function resourcePath(r: Resource, namespace?: string, name?: string, subresource?: string): string {
  let p = r.group ? `/apis/${r.group}/${r.version}` : `/api/${r.version}`;
  if (r.namespaced && namespace) p += `/namespaces/${encodeURIComponent(namespace)}`;
  p += `/${r.plural}`;
  if (name) p += `/${encodeURIComponent(name)}`;
  if (subresource) p += `/${subresource}`;
  return p;
}

export const MEDIA_JSON = 'application/json';
export const MEDIA_MERGE_PATCH = 'application/merge-patch+json';
export const MEDIA_APPLY_PATCH = 'application/apply-patch+yaml';
/** Metadata-only lists/watches (what controller-runtime's OnlyMetadata sends). */
export const MEDIA_METADATA_LIST = 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1';
export const MEDIA_METADATA = 'application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1';

/** An error status from the API server, with the Status reason parsed. */
export class KubeError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'KubeError';
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof KubeError && err.code === 404;
}
export function isConflict(err: unknown): boolean {
  return err instanceof KubeError && err.code === 409;
}
export function isGone(err: unknown): boolean {
  return err instanceof KubeError && err.code === 410;
}

/**
 * Query for a GET the API server may answer from its watch cache instead of a
 * quorum read from etcd (resourceVersion=0: "any version it has"): much cheaper
 * at scale, possibly a moment stale. For lookups where that is fine.
 */
export const FROM_WATCH_CACHE = { resourceVersion: '0' } as const;

/**
 * How long a request (not a watch) may take before it is aborted and fails (then retried
 * by whoever made it: the work queue, the informer's backoff). Without it a request sent on
 * a kept-alive connection that died without a FIN or RST would wait for undici's 300 s
 * header timeout, holding its reconcile worker that long. 30 s: well above what a request
 * takes on a loaded API server (its own limit is 60 s, --request-timeout), so a slow but
 * live server is not made slower by retries.
 */
export const REQUEST_TIMEOUT_MS = 30_000;

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  accept?: string;
  /** Aborts the request; default a REQUEST_TIMEOUT_MS timeout. */
  signal?: AbortSignal;
  /** The caller does not use the response (e.g. an apply): read and drop it unparsed, resolve undefined. */
  discardResponse?: boolean;
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export class Kube {
  readonly transport: KubeTransport;
  private readonly server: string;

  /** From a transport, or from a @kubernetes/client-node KubeConfig (tests, plugins). */
  constructor(source: KubeTransport | KubeConfigLike) {
    this.transport = 'prepare' in source ? source : new KubeConfigTransport(source);
    this.server = this.transport.server;
  }

  /** --kubeconfig PATH, else $KUBECONFIG, ~/.kube/config, else the in-cluster ServiceAccount. */
  static async fromKubeconfig(path?: string): Promise<Kube> {
    return new Kube(await loadTransport(path));
  }

  private prepare(url: string, method: string): Promise<PreparedRequest> {
    return this.transport.prepare(url, method);
  }

  private url(path: string, query?: RequestOptions['query']): string {
    const u = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) u.searchParams.set(k, String(v));
    return u.toString();
  }

  async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const url = this.url(path, opts.query);
    const { headers, dispatcher } = await this.prepare(url, method);
    headers['Accept'] = opts.accept ?? MEDIA_JSON;
    let body: string | undefined;
    if (opts.body !== undefined) {
      body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
      headers['Content-Type'] = opts.contentType ?? MEDIA_JSON;
    }
    const res = await fetch(url, {
      method,
      headers,
      ...(body !== undefined ? { body } : {}),
      ...(dispatcher ? { dispatcher } : {}),
      signal: opts.signal ?? AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    if (opts.discardResponse && res.status < 400) {
      // Drain without building a string and an object tree we would throw away
      // (an applied Deployment comes back whole, managedFields and all).
      if (res.body) for await (const _ of res.body) void _;
      return undefined as T;
    }
    const text = await res.text();
    if (res.status >= 400) throw statusError(res.status, text);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  get<T = KubeObject>(path: string, opts?: RequestOptions): Promise<T> {
    return this.request<T>('GET', path, opts);
  }

  /** GET that answers undefined for 404. */
  async getOrUndefined<T = KubeObject>(path: string, opts?: RequestOptions): Promise<T | undefined> {
    try {
      return await this.get<T>(path, opts);
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Opens a watch and calls onEvent per event. Resolves when the server
   * ends the stream; rejects on an HTTP or network error.
   */
  async watch<T>(path: string, query: RequestOptions['query'], onEvent: (e: WatchEvent<T>) => void, opts: { accept?: string; signal: AbortSignal }): Promise<void> {
    const url = this.url(path, { ...query, watch: true });
    const { headers, dispatcher } = await this.prepare(url, 'GET');
    headers['Accept'] = opts.accept ?? MEDIA_JSON;
    const res = await fetch(url, { method: 'GET', headers, signal: opts.signal, ...(dispatcher ? { dispatcher } : {}) });
    if (res.status !== 200 || !res.body) {
      throw statusError(res.status, await res.text());
    }
    const input = Readable.fromWeb(res.body as never);
    const lines = createInterface({ input, crlfDelay: Infinity });
    // readline ignores errors of its input: an abort or a broken connection
    // would leave the loop below waiting forever (and the error uncaught).
    let streamError: unknown;
    input.on('error', (err) => {
      streamError ??= err;
      lines.close();
    });
    // A handler error ends our interest in the stream, but we keep reading to
    // its end (the server closes a watch after an ERROR event): leaving the
    // loop early and aborting later makes undici raise an uncaught AbortError.
    let failed: { err: unknown } | undefined;
    for await (const line of lines) {
      if (!line || failed) continue;
      let ev: WatchEvent<T>;
      try {
        ev = JSON.parse(line) as WatchEvent<T>;
      } catch {
        continue;
      }
      try {
        onEvent(ev);
      } catch (err) {
        failed = { err };
      }
    }
    if (failed) throw failed.err;
    if (streamError) throw streamError;
    if (opts.signal.aborted) throw new DOMException('watch aborted', 'AbortError');
  }
}

function statusError(code: number, text: string): KubeError {
  let reason = '';
  let message = text.slice(0, 2000);
  let details: unknown;
  try {
    const st = JSON.parse(text) as { reason?: string; message?: string; details?: unknown };
    reason = st.reason ?? '';
    message = st.message ?? message;
    details = st.details;
  } catch {
    /* not a Status */
  }
  return new KubeError(code, reason, `${code} ${reason}: ${message}`.trim(), details);
}

export function keyOf(o: { metadata?: { namespace?: string; name?: string } }): string {
  const ns = o.metadata?.namespace;
  return ns ? `${ns}/${o.metadata?.name ?? ''}` : (o.metadata?.name ?? '');
}

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return i < 0 ? { namespace: '', name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
