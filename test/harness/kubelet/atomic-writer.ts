/**
 * The kubelet's atomic writer (k8s.io/kubernetes/pkg/volume/util/atomic_writer.go), for the
 * container kubelet stand-in: Secret, ConfigMap and projected volumes are written as
 *
 *   <dir>/..2026_11_27_22_44_15.123456789/<files>   the payload, one timestamped dir per version
 *   <dir>/..data -> ..2026_11_27_...                 swapped atomically on update
 *   <dir>/<name> -> ..data/<name>                    one symlink per top-level user-visible path
 *
 * An update writes a new timestamped dir, points `..data_tmp` at it and renames `..data_tmp`
 * over `..data` (rename(2) is atomic), then removes the old dir and stale user-visible links.
 * A reader that opens <dir>/tls.crt sees the old or the new version, never a mix. Nothing is
 * written when the payload is unchanged.
 */
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';

export interface PayloadFile {
  data: Buffer;
  /** File mode (permission bits). */
  mode: number;
}

export type Payload = Map<string, PayloadFile>;

const DATA = '..data';
const DATA_TMP = '..data_tmp';

function timestampDirName(): string {
  const d = new Date();
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  const ns = p(d.getUTCMilliseconds(), 3) + p(Math.floor(Math.random() * 1e6), 6);
  return `..${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}_${p(d.getUTCHours())}_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}.${ns}`;
}

/** Checks a payload path as the atomic writer does (relative, no `..` elements, not starting with `..`). */
export function validatePath(path: string): void {
  if (path === '' || posix.isAbsolute(path)) throw new Error(`invalid payload path ${JSON.stringify(path)}`);
  if (path.startsWith('..')) throw new Error(`payload path ${JSON.stringify(path)} must not start with '..'`);
  if (path.split('/').some((e) => e === '..' || e === '')) throw new Error(`payload path ${JSON.stringify(path)} has a '..' or empty element`);
}

function currentPayloadEquals(dir: string, payload: Payload): boolean {
  const data = join(dir, DATA);
  if (!existsSync(data)) return false;
  const seen = new Set<string>();
  const walk = (rel: string): boolean => {
    for (const e of readdirSync(join(data, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (!walk(p)) return false;
        continue;
      }
      const want = payload.get(p);
      if (!want) return false;
      const st = lstatSync(join(data, p));
      if ((st.mode & 0o7777) !== want.mode) return false;
      if (!readFileSync(join(data, p)).equals(want.data)) return false;
      seen.add(p);
    }
    return true;
  };
  try {
    return walk('') && seen.size === payload.size;
  } catch {
    return false;
  }
}

/**
 * Writes `payload` into `dir` in the atomic-writer layout. `gid` (fsGroup) becomes the group
 * of every file and dir (the kubelet's SetVolumeOwnership). Returns true when it changed
 * something.
 */
export function writeAtomic(dir: string, payload: Payload, opts: { gid?: number } = {}): boolean {
  for (const p of payload.keys()) validatePath(p);
  mkdirSync(dir, { recursive: true });
  if (opts.gid !== undefined) {
    chownSync(dir, 0, opts.gid);
    chmodSync(dir, 0o2755);
  }
  if (currentPayloadEquals(dir, payload)) return false;

  const tsName = timestampDirName();
  const ts = join(dir, tsName);
  mkdirSync(ts, { mode: 0o755 });
  for (const [p, f] of payload) {
    const file = join(ts, p);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, f.data);
    chmodSync(file, f.mode);
    if (opts.gid !== undefined) chownSync(file, 0, opts.gid);
  }
  // Subdirectories too (group-owned, readable).
  const fixDirs = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const sub = join(d, e.name);
      chmodSync(sub, 0o755);
      if (opts.gid !== undefined) chownSync(sub, 0, opts.gid);
      fixDirs(sub);
    }
  };
  fixDirs(ts);
  chmodSync(ts, 0o755);
  if (opts.gid !== undefined) chownSync(ts, 0, opts.gid);

  let old: string | undefined;
  try { old = readlinkSync(join(dir, DATA)); } catch { /* first write */ }

  // ..data_tmp -> new dir; rename over ..data (atomic).
  rmSync(join(dir, DATA_TMP), { force: true });
  symlinkSync(tsName, join(dir, DATA_TMP));
  renameSync(join(dir, DATA_TMP), join(dir, DATA));

  // User-visible top-level links.
  const top = new Set([...payload.keys()].map((p) => p.split('/')[0] ?? p));
  for (const name of top) {
    const link = join(dir, name);
    let ok = false;
    try { ok = readlinkSync(link) === posix.join(DATA, name); } catch { /* missing */ }
    if (!ok) {
      rmSync(link, { force: true, recursive: true });
      symlinkSync(posix.join(DATA, name), link);
    }
  }
  for (const e of readdirSync(dir)) {
    if (e.startsWith('..')) continue;
    if (!top.has(e)) rmSync(join(dir, e), { force: true, recursive: true });
  }
  if (old && old !== tsName) rmSync(join(dir, old), { recursive: true, force: true });
  return true;
}
