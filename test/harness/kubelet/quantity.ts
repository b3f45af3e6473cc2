/**
 * Kubernetes resource quantities ("128Mi", "500m", "1.5", "2G", "1e3") as the kubelet reads
 * them for container limits: memory in bytes, CPU in millicores.
 */

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** The quantity's value as a number (e.g. "128Mi" -> 134217728, "500m" -> 0.5). */
export function parseQuantity(q: string | number): number {
  if (typeof q === 'number') return q;
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$/.exec(q.trim());
  if (m === null) throw new Error(`invalid resource quantity ${JSON.stringify(q)}`);
  const num = Number(m[1]);
  if (m[2] !== undefined) return num * 10 ** Number(m[2].slice(1));
  const suffix = m[3] ?? '';
  const mult = BINARY[suffix] ?? DECIMAL[suffix];
  if (mult === undefined) throw new Error(`invalid resource quantity suffix in ${JSON.stringify(q)}`);
  return num * mult;
}

/** Bytes, rounded up as the kubelet does for memory. */
export function quantityBytes(q: string | number): number {
  return Math.ceil(parseQuantity(q));
}

/** Millicores, rounded up (the kubelet's MilliValue). */
export function quantityMilli(q: string | number): number {
  return Math.ceil(Math.round(parseQuantity(q) * 1e9) / 1e6);
}
