// Server-side apply of child objects, written only when needed, and status
// writes that happen only on change.
//
// "Needed" = the cached object is missing, or its spec-hash annotation is not
// the hash of the desired object (our desired state changed, including a
// field we stopped setting), or some field we set has another value in the
// cache (someone edited or the server dropped it). The second check is a
// subset compare: fields the server or other managers add are ignored.

import { createHash } from 'node:crypto';
import { ANNOTATION_SPEC_HASH } from '../api/v1alpha1.js';
import { canonicalJson } from '../builders/meta.js';
import { type Kube, type KubeObject, type Resource, KubeError, MEDIA_APPLY_PATCH, MEDIA_MERGE_PATCH, isNotFound, resourcePath } from './kube.js';

export type ApplyOutcome = 'unchanged' | 'created' | 'applied' | 'recreated';

export { canonicalJson };

export function hashOf(v: unknown): string {
  return createHash('sha256').update(canonicalJson(v)).digest('hex').slice(0, 32);
}

/** Is every field of `want` present with the same value in `have`? Arrays compare element by element. */
export function isSubset(want: unknown, have: unknown): boolean {
  if (want === undefined) return true;
  if (want === null || typeof want !== 'object') return want === have;
  if (Array.isArray(want)) {
    if (!Array.isArray(have) || have.length !== want.length) return false;
    return want.every((w, i) => isSubset(w, have[i]));
  }
  if (have === null || typeof have !== 'object' || Array.isArray(have)) return false;
  const h = have as Record<string, unknown>;
  for (const [k, w] of Object.entries(want as Record<string, unknown>)) {
    if (!isSubset(w, h[k])) return false;
  }
  return true;
}

/** Secrets read back carry `data` only; compare `stringData` as the `data` it becomes. */
function comparable(obj: KubeObject): Record<string, unknown> {
  const o = obj as Record<string, unknown>;
  if (obj.kind !== 'Secret' || !o['stringData']) return o;
  const { stringData, ...rest } = o;
  const data: Record<string, string> = { ...((rest['data'] as Record<string, string>) ?? {}) };
  for (const [k, v] of Object.entries(stringData as Record<string, string>)) data[k] = Buffer.from(v, 'utf8').toString('base64');
  return { ...rest, data };
}

/** Adds the spec-hash annotation (hash of the object without it). */
export function withSpecHash<T extends KubeObject>(desired: T): T {
  const annotations = { ...(desired.metadata?.annotations ?? {}) };
  delete annotations[ANNOTATION_SPEC_HASH];
  const base = { ...desired, metadata: { ...desired.metadata, annotations } };
  annotations[ANNOTATION_SPEC_HASH] = hashOf(base);
  return base as T;
}

/**
 * Parts of a child that must hold exactly what the operator sets, not merely contain it:
 * a selector with one more label or expression selects other pods, or none (a Service that
 * reaches no relay pod, a NetworkPolicy or PodDisruptionBudget that no longer applies to
 * them). Server-side apply leaves keys another manager added (a hand edit), so they are
 * removed with a merge patch first (removalPatch).
 */
export const EXACT_PATHS: Record<string, string[][]> = {
  Service: [['spec', 'selector']],
  NetworkPolicy: [['spec', 'podSelector']],
  PodDisruptionBudget: [['spec', 'selector']],
};

function at(obj: unknown, path: string[]): unknown {
  let v: unknown = obj;
  for (const k of path) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A JSON merge patch of `have` that nulls every key `want` lacks (recursively through objects); undefined when none. */
function nullExtras(want: unknown, have: unknown): Record<string, unknown> | undefined {
  if (!isPlainObject(have) || !isPlainObject(want)) return undefined;
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(have)) {
    const sub = !(k in want) || want[k] === undefined ? null : nullExtras(want[k], v);
    if (sub !== undefined) (out ??= {})[k] = sub;
  }
  return out;
}

/** The merge patch that removes what is extra under the child's EXACT_PATHS, or undefined. */
export function removalPatch(desired: KubeObject, cached: KubeObject | undefined): Record<string, unknown> | undefined {
  if (!cached) return undefined;
  let patch: Record<string, unknown> | undefined;
  for (const path of EXACT_PATHS[desired.kind ?? ''] ?? []) {
    const extra = nullExtras(at(desired, path), at(cached, path));
    if (!extra) continue;
    patch ??= {};
    let node = patch;
    for (const k of path.slice(0, -1)) node = (node[k] ??= {}) as Record<string, unknown>;
    node[path[path.length - 1]!] = extra;
  }
  return patch;
}

export function needsApply(desired: KubeObject, cached: KubeObject | undefined): boolean {
  if (!cached) return true;
  if (removalPatch(desired, cached)) return true;
  const d = withSpecHash(desired);
  if (cached.metadata?.annotations?.[ANNOTATION_SPEC_HASH] !== d.metadata?.annotations?.[ANNOTATION_SPEC_HASH]) return true;
  const { metadata: dm, ...drest } = comparable(d) as KubeObject;
  const { metadata: cm, ...crest } = cached;
  const metaWant = { labels: dm?.labels, annotations: dm?.annotations, ownerReferences: dm?.ownerReferences };
  return !isSubset(metaWant, cm) || !isSubset(drest, crest);
}

/** An update the server refused because it would change an immutable field. */
export function isImmutableRejection(err: unknown): boolean {
  return err instanceof KubeError && err.code === 422 && /immutable|may not be changed|cannot change/i.test(err.message);
}

export interface ApplierOptions {
  kube: Kube;
  fieldManager: string;
  /** Counted when an object is deleted and created again. */
  onRecreate?: (obj: KubeObject) => void;
}

export class Applier {
  constructor(private readonly o: ApplierOptions) {}

  /** Applies `desired` if it differs from `cached`; `cached` undefined means absent from the cache. */
  async apply(resource: Resource, desired: KubeObject, cached: KubeObject | undefined): Promise<ApplyOutcome> {
    if (!needsApply(desired, cached)) return 'unchanged';
    const body = withSpecHash(desired);
    const ns = body.metadata?.namespace;
    const name = body.metadata?.name ?? '';
    const path = resourcePath(resource, ns, name);
    const removal = removalPatch(desired, cached);
    if (removal) {
      try {
        await this.o.kube.request('PATCH', path, { query: { fieldManager: this.o.fieldManager }, contentType: MEDIA_MERGE_PATCH, body: removal, discardResponse: true });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    try {
      await this.ssa(path, body);
      return cached ? 'applied' : 'created';
    } catch (err) {
      if (!isImmutableRejection(err)) throw err;
      // e.g. a Deployment selector or a Secret type: the only way forward is a new object.
      try {
        await this.o.kube.request('DELETE', path, { body: { propagationPolicy: 'Background' } });
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
      await this.ssa(path, body);
      this.o.onRecreate?.(body);
      return 'recreated';
    }
  }

  private ssa(path: string, body: KubeObject): Promise<unknown> {
    return this.o.kube.request('PATCH', path, {
      query: { fieldManager: this.o.fieldManager, force: true },
      contentType: MEDIA_APPLY_PATCH,
      body,
      discardResponse: true,
    });
  }

  /**
   * Writes `status` to the /status subresource with a JSON merge patch when it
   * differs from `current`. Fields present in `current` but not in `status` are
   * removed (null in the merge patch). Returns whether a write happened.
   */
  async patchStatus(resource: Resource, namespace: string, name: string, current: Record<string, unknown> | undefined, status: Record<string, unknown>): Promise<boolean> {
    if (canonicalJson(current ?? {}) === canonicalJson(status)) return false;
    const patch: Record<string, unknown> = { ...status };
    for (const k of Object.keys(current ?? {})) if (!(k in status) || status[k] === undefined) patch[k] = null;
    await this.o.kube.request('PATCH', resourcePath(resource, namespace, name, 'status'), {
      contentType: MEDIA_MERGE_PATCH,
      body: { status: patch },
      discardResponse: true,
    });
    return true;
  }
}
