// A list-watch cache ("informer") that keeps going on its own.
//
// Why not @kubernetes/client-node's ListWatch: it stops for good on any watch
// error other than 410 (client-node 2.0.1 ListWatch), has no watchdog, stores objects as they
// come (managedFields and all), and its Watch builds the request headers
// itself, so it cannot ask for metadata-only objects. This is the same
// list → watch-from-resourceVersion loop, plus:
// - restart with exponential backoff after any error (API server restart,
//   network, 5xx), relist on 410 Gone (expired resourceVersion);
// - server-side watch timeouts with bookmarks, so a quiet watch is renewed
//   without a relist;
// - a watchdog: a watch silent for longer than `watchdogMs` (no event, no
//   bookmark) is aborted and the cache relisted, which catches a connection
//   that died without a FIN;
// - a transform applied before caching (we drop managedFields everywhere);
// - `metadataOnly`: PartialObjectMetadata lists/watches, used for Secrets so
//   the operator never holds the data of Secrets it does not own.

import { type Clock, realClock } from './clock.js';
import { Kube, type KubeList, type KubeObject, type Resource, type WatchEvent, apiVersionOf, isGone, keyOf, resourcePath, MEDIA_METADATA, MEDIA_METADATA_LIST, KubeError } from './kube.js';

export interface InformerHandlers<T> {
  add?(obj: T): void;
  update?(oldObj: T, newObj: T): void;
  delete?(obj: T): void;
}

export interface InformerOptions<T extends KubeObject> {
  kube: Kube;
  resource: Resource;
  /** Watch one namespace; undefined = all namespaces. */
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
  metadataOnly?: boolean;
  transform?: (obj: T) => T;
  /** Silence after which the watch is dropped and the cache relisted. Default 5 min. */
  watchdogMs?: number;
  /** Server-side watch timeout (renewed from the last resourceVersion). Default 5 min. */
  watchTimeoutSeconds?: number;
  /** Backoff after errors: base and cap. Defaults 500 ms and 30 s. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  pageSize?: number;
  clock?: Clock;
  onError?: (err: unknown, retryInMs: number) => void;
  /** For tests and metrics: called after each successful (re)list, with why it listed. */
  onList?: (count: number, reason: ListReason) => void;
}

/**
 * Why a list happened: the first one; the watch's resourceVersion had expired (410 Gone,
 * e.g. after etcd compaction); the watchdog found the watch silent; relist() was called.
 */
export type ListReason = 'initial' | 'expired' | 'watchdog' | 'requested';

export const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';

/**
 * Removes what we never read, to keep the cache small: managedFields, and
 * kubectl's last-applied annotation (a second copy of a `kubectl apply`-ed
 * SmtpRelay's whole spec; 1,000 relays would be cached twice over).
 */
export function stripManagedFields<T extends KubeObject>(obj: T): T {
  if (obj.metadata?.managedFields) delete obj.metadata.managedFields;
  const a = obj.metadata?.annotations;
  if (a && LAST_APPLIED in a) {
    delete a[LAST_APPLIED];
    if (Object.keys(a).length === 0) delete obj.metadata!.annotations;
  }
  return obj;
}

export class Informer<T extends KubeObject> {
  private readonly o: InformerOptions<T>;
  private readonly clock: Clock;
  private readonly items = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];
  private resourceVersion = '';
  private listReason: ListReason = 'initial';
  private stopped = true;
  private synced = false;
  private syncWaiters: (() => void)[] = [];
  private abort: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private lastActivity = 0;
  private cancelWatchdog: (() => void) | undefined;
  private wakeSleep: (() => void) | undefined;
  /** Number of lists done; tests read it to see a relist happen. */
  lists = 0;

  constructor(opts: InformerOptions<T>) {
    this.o = opts;
    this.clock = opts.clock ?? realClock;
  }

  get resource(): Resource {
    return this.o.resource;
  }

  on(h: InformerHandlers<T>): void {
    this.handlers.push(h);
  }

  get(namespace: string, name: string): T | undefined {
    return this.items.get(namespace ? `${namespace}/${name}` : name);
  }

  list(namespace?: string): T[] {
    const out: T[] = [];
    for (const obj of this.items.values()) if (!namespace || obj.metadata?.namespace === namespace) out.push(obj);
    return out;
  }

  size(): number {
    return this.items.size;
  }

  hasSynced(): boolean {
    return this.synced;
  }

  waitForSync(): Promise<void> {
    if (this.synced) return Promise.resolve();
    return new Promise((r) => this.syncWaiters.push(r));
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelWatchdog?.();
    this.abort?.abort();
    this.wakeSleep?.();
    await this.loop;
  }

  /** Drops the watch and relists now (the watchdog's action; exposed for tests). */
  relist(reason: ListReason = 'requested'): void {
    this.resourceVersion = '';
    this.listReason = reason;
    this.abort?.abort();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        if (!this.resourceVersion) await this.doList();
        if (this.stopped) break; // stop() may come while the list is in flight
        failures = 0;
        const started = this.clock.now();
        await this.doWatch();
        // A server that ends watches at once must not make us spin.
        if (this.clock.now() - started < 1000 && !this.stopped) await this.sleep(1000);
      } catch (err) {
        if (this.stopped) break;
        if (isGone(err)) {
          this.resourceVersion = '';
          this.listReason = 'expired';
          continue;
        }
        if (isAbort(err)) continue; // watchdog or relist(): go round again
        failures++;
        const base = this.o.backoffBaseMs ?? 500;
        const delay = Math.min(this.o.backoffMaxMs ?? 30_000, base * 2 ** Math.min(failures - 1, 20));
        this.o.onError?.(err, delay);
        await this.sleep(delay);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const cancel = this.clock.setTimer(() => {
        this.wakeSleep = undefined;
        resolve();
      }, ms);
      this.wakeSleep = () => {
        cancel();
        this.wakeSleep = undefined;
        resolve();
      };
    });
  }

  private basePath(): string {
    return resourcePath(this.o.resource, this.o.namespace);
  }

  private selectorQuery(): Record<string, string> {
    const q: Record<string, string> = {};
    if (this.o.labelSelector) q['labelSelector'] = this.o.labelSelector;
    if (this.o.fieldSelector) q['fieldSelector'] = this.o.fieldSelector;
    return q;
  }

  private prepare(obj: T): T {
    const out = stripManagedFields(obj);
    return this.o.transform ? this.o.transform(out) : out;
  }

  private async doList(): Promise<void> {
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv = '';
    do {
      const list: KubeList<T> = await this.o.kube.get<KubeList<T>>(this.basePath(), {
        query: { ...this.selectorQuery(), limit: this.o.pageSize ?? 500, continue: cont },
        ...(this.o.metadataOnly ? { accept: MEDIA_METADATA_LIST } : {}),
      });
      for (const item of list.items ?? []) {
        // Items of a built-in kind's list carry no kind/apiVersion (watch events do):
        // fill them in, so a relisted object compares like a watched one.
        if (!this.o.metadataOnly) {
          item.kind ??= this.o.resource.kind;
          item.apiVersion ??= apiVersionOf(this.o.resource);
        }
        const obj = this.prepare(item);
        fresh.set(keyOf(obj), obj);
      }
      cont = list.metadata?.continue || undefined;
      rv = list.metadata?.resourceVersion ?? '';
    } while (cont);
    // Replace the cache and tell the handlers what changed.
    const old = new Map(this.items);
    this.items.clear();
    for (const [k, v] of fresh) this.items.set(k, v);
    for (const [k, v] of fresh) {
      const prev = old.get(k);
      if (!prev) this.emit('add', v);
      else if (prev.metadata?.resourceVersion !== v.metadata?.resourceVersion) this.emit('update', v, prev);
    }
    for (const [k, v] of old) if (!fresh.has(k)) this.emit('delete', v);
    this.resourceVersion = rv;
    this.lists++;
    this.o.onList?.(fresh.size, this.listReason);
    if (!this.synced) {
      this.synced = true;
      for (const w of this.syncWaiters.splice(0)) w();
    }
  }

  private armWatchdog(): void {
    this.cancelWatchdog?.();
    const ms = this.o.watchdogMs ?? 5 * 60_000;
    const check = () => {
      const silent = this.clock.now() - this.lastActivity;
      if (silent >= ms) {
        this.relist('watchdog');
        return;
      }
      this.cancelWatchdog = this.clock.setTimer(check, ms - silent);
    };
    this.cancelWatchdog = this.clock.setTimer(check, ms);
  }

  private async doWatch(): Promise<void> {
    this.abort = new AbortController();
    this.lastActivity = this.clock.now();
    this.armWatchdog();
    try {
      await this.o.kube.watch<T>(
        this.basePath(),
        {
          ...this.selectorQuery(),
          resourceVersion: this.resourceVersion,
          allowWatchBookmarks: true,
          timeoutSeconds: this.o.watchTimeoutSeconds ?? 300,
        },
        (ev) => this.onEvent(ev),
        { signal: this.abort.signal, ...(this.o.metadataOnly ? { accept: MEDIA_METADATA } : {}) },
      );
    } finally {
      this.cancelWatchdog?.();
      this.cancelWatchdog = undefined;
    }
  }

  private onEvent(ev: WatchEvent<T>): void {
    this.lastActivity = this.clock.now();
    if (ev.type === 'ERROR') {
      const st = ev.object as unknown as { code?: number; reason?: string; message?: string };
      if (st.code === 410) this.resourceVersion = '';
      // The server closes the stream after an ERROR event; throw so the loop backs off or relists.
      throw new KubeError(st.code ?? 500, st.reason ?? '', st.message ?? 'watch error');
    }
    const rv = ev.object?.metadata?.resourceVersion;
    if (ev.type === 'BOOKMARK') {
      if (rv) this.resourceVersion = rv;
      return;
    }
    const obj = this.prepare(ev.object);
    const k = keyOf(obj);
    const prev = this.items.get(k);
    if (ev.type === 'DELETED') {
      this.items.delete(k);
      this.emit('delete', prev ?? obj);
    } else {
      this.items.set(k, obj);
      if (prev) this.emit('update', obj, prev);
      else this.emit('add', obj);
    }
    if (rv) this.resourceVersion = rv;
  }

  private emit(kind: 'add' | 'update' | 'delete', obj: T, prev?: T): void {
    for (const h of this.handlers) {
      try {
        if (kind === 'add') h.add?.(obj);
        else if (kind === 'update') h.update?.(prev!, obj);
        else h.delete?.(obj);
      } catch {
        // A handler bug must not stop the informer.
      }
    }
  }
}

function isAbort(err: unknown): boolean {
  return err instanceof Error && (err.name === 'AbortError' || (err as { code?: string }).code === 'ABORT_ERR');
}

/**
 * One informer per watched namespace (or one for the whole cluster), read as
 * one cache. Lets the operator run with namespace-scoped RBAC (Roles) when
 * --namespaces is given.
 */
export class InformerGroup<T extends KubeObject> {
  private readonly byNamespace = new Map<string, Informer<T>>();
  private readonly all: Informer<T> | undefined;

  constructor(namespaces: string[] | undefined, opts: Omit<InformerOptions<T>, 'namespace'>) {
    if (!namespaces || namespaces.length === 0) this.all = new Informer<T>(opts);
    else for (const ns of namespaces) this.byNamespace.set(ns, new Informer<T>({ ...opts, namespace: ns }));
  }

  get resource(): Resource {
    return this.informers()[0]!.resource;
  }

  informers(): Informer<T>[] {
    return this.all ? [this.all] : [...this.byNamespace.values()];
  }

  on(h: InformerHandlers<T>): void {
    for (const i of this.informers()) i.on(h);
  }

  /** Whether this group watches `namespace` (a miss in get() then means the object does not exist). */
  watches(namespace: string): boolean {
    return this.all !== undefined || this.byNamespace.has(namespace);
  }

  get(namespace: string, name: string): T | undefined {
    const inf = this.all ?? this.byNamespace.get(namespace);
    return inf?.get(namespace, name);
  }

  list(namespace?: string): T[] {
    if (this.all) return this.all.list(namespace);
    if (namespace) return this.byNamespace.get(namespace)?.list(namespace) ?? [];
    return this.informers().flatMap((i) => i.list());
  }

  size(): number {
    return this.informers().reduce((n, i) => n + i.size(), 0);
  }

  start(): void {
    for (const i of this.informers()) i.start();
  }

  async stop(): Promise<void> {
    await Promise.all(this.informers().map((i) => i.stop()));
  }

  hasSynced(): boolean {
    return this.informers().every((i) => i.hasSynced());
  }

  async waitForSync(): Promise<void> {
    await Promise.all(this.informers().map((i) => i.waitForSync()));
  }
}
