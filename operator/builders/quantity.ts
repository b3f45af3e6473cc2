// Resource quantities in the canonical form the API server stores them in
// (k8s.io/apimachinery resource.Quantity). The Deployment carries the user's
// spec.resources; sent as written ("0.5", "1024Mi"), the server would store
// "500m" / "1Gi", the applier's "is what we set still there" compare would
// fail on every reconcile and the Deployment would be re-applied forever.

const DECIMAL_SUFFIXES: Record<string, number> = { n: -9, u: -6, m: -3, '': 0, k: 3, M: 6, G: 9, T: 12, P: 15, E: 18 };
const BINARY_SUFFIXES: Record<string, number> = { Ki: 1, Mi: 2, Gi: 3, Ti: 4, Pi: 5, Ei: 6 };
const DECIMAL_BY_EXPONENT = new Map(Object.entries(DECIMAL_SUFFIXES).map(([s, e]) => [e, s]));
const BINARY_BY_POWER = new Map(Object.entries(BINARY_SUFFIXES).map(([s, p]) => [p, s]));

const QUANTITY = /^([+-]?)(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$/;

/**
 * The canonical string of a quantity, as the API server writes it back:
 * precision rounded up to milli; decimal values as integer × 10^(3k) with an SI
 * suffix ("0.5" → "500m", "1000m" → "1"); binary values (Ki…Ei) as the largest
 * exact power of 1024 ("1024Mi" → "1Gi"), below 1024 or fractional as decimal;
 * "e" exponents kept as exponents. Anything it does not understand is returned
 * unchanged (the server's validation is the judge of those).
 */
export function canonicalQuantity(input: string | number): string {
  const text = String(input).trim();
  const m = QUANTITY.exec(text);
  if (!m) return String(input);
  const [, sign = '', number = '', suffix = ''] = m;
  const [whole = '', frac = ''] = number.split('.');
  // value = unscaled × 10^-scale
  let unscaled = BigInt((whole || '0') + frac);
  let scale = frac.length;
  let format: 'decimal' | 'binary' | 'exponent' = 'decimal';
  if (suffix in BINARY_SUFFIXES) {
    format = 'binary';
    unscaled *= 1024n ** BigInt(BINARY_SUFFIXES[suffix]!);
  } else if (/^[eE]/.test(suffix)) {
    format = 'exponent';
    scale -= Number(suffix.slice(1));
  } else {
    scale -= DECIMAL_SUFFIXES[suffix]!;
  }
  if (unscaled === 0n) return '0';
  // Round up (away from zero) to milli: core/v1 defaulting does that to every
  // ResourceList value (SetDefaults_ResourceList), which is where these go.
  if (scale > 3) {
    const div = 10n ** BigInt(scale - 3);
    unscaled = (unscaled + div - 1n) / div;
    scale = 3;
  }
  const neg = sign === '-';
  if (format === 'binary') {
    const exact = scale <= 0 || unscaled % 10n ** BigInt(scale) === 0n;
    let int = scale <= 0 ? unscaled * 10n ** BigInt(-scale) : unscaled / 10n ** BigInt(scale);
    if (exact && int >= 1024n) {
      let power = 0;
      while (int % 1024n === 0n && power < 6) {
        int /= 1024n;
        power++;
      }
      return `${neg ? '-' : ''}${int}${BINARY_BY_POWER.get(power) ?? ''}`;
    }
    format = 'decimal';
  }
  // Strip trailing zeros, then lower the exponent to a multiple of 3.
  let exponent = -scale;
  while (unscaled % 10n === 0n) {
    unscaled /= 10n;
    exponent++;
  }
  const r = ((exponent % 3) + 3) % 3;
  unscaled *= 10n ** BigInt(r);
  exponent -= r;
  const digits = `${neg ? '-' : ''}${unscaled}`;
  if (format === 'exponent') return exponent === 0 ? digits : `${digits}e${exponent}`;
  const si = DECIMAL_BY_EXPONENT.get(exponent);
  return si === undefined ? String(input) : `${digits}${si}`;
}

/** A CPU quantity in cores ("2" → 2, "1500m" → 1.5, 3 → 3); undefined when it is not one. */
export function cpuCores(input: string | number | undefined): number | undefined {
  if (input === undefined) return undefined;
  const m = /^(\d+(?:\.\d*)?|\.\d+)(m)?$/.exec(String(input).trim());
  if (!m) return undefined;
  const n = Number(m[1]) / (m[2] ? 1000 : 1);
  return Number.isFinite(n) ? n : undefined;
}
