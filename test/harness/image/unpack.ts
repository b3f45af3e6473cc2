/**
 * Reads the OCI image layout that `make image` exports (.cache/image/oci) and unpacks an
 * image's root filesystem once, for tests that look at what the image ships
 * (test/e2e/image-contents.test.ts).
 *
 * Unpacking applies the layers in order with OCI whiteouts (`.wh.NAME` deletes NAME,
 * `.wh..wh..opq` empties the directory), keeping file owners and modes (we run as root).
 * The result is kept in `<cacheDir>/<manifest digest>/rootfs` and reused; a half-done unpack
 * (crash) is never used, as the directory is renamed into place only when complete.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const REPO_ROOT = resolve(dirname(new URL(import.meta.url).pathname), '../../../..');
/** Where `make image` puts the OCI layout (see test/harness/image/build.sh). */
export const DEFAULT_OCI_DIR = join(REPO_ROOT, '.cache/image/oci');
export const DEFAULT_UNPACK_DIR = join(REPO_ROOT, '.cache/image/unpacked');

/** The parts of the OCI image config a kubelet uses. */
export interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
  ExposedPorts?: Record<string, unknown>;
  Labels?: Record<string, string>;
}

export interface UnpackedImage {
  /** The image reference as given (OCI layout dir + tag). */
  ref: string;
  /** sha256:... of the manifest. */
  digest: string;
  /** Unpacked root filesystem; treat as read-only. */
  rootfs: string;
  config: ImageConfig;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

function blobPath(ociDir: string, digest: string): string {
  const [alg, hex] = digest.split(':');
  if (!alg || !hex || !/^[a-f0-9]+$/.test(hex)) throw new Error(`bad digest ${digest}`);
  return join(ociDir, 'blobs', alg, hex);
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

/** Manifest descriptor for `tag` in an OCI layout. */
async function findManifest(ociDir: string, tag: string): Promise<Descriptor> {
  const indexPath = join(ociDir, 'index.json');
  if (!existsSync(indexPath)) {
    throw new Error(`no OCI image layout at ${ociDir}: run 'make image' first (it builds the Dockerfile with buildah)`);
  }
  const index = await readJson<{ manifests: Descriptor[] }>(indexPath);
  const found = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!found) throw new Error(`tag ${tag} not in ${indexPath}`);
  return found;
}

/** Lists a layer tarball's entries (GNU tar detects the compression itself). */
async function listLayer(tarball: string): Promise<string[]> {
  const { stdout } = await run('tar', ['-tf', tarball], { maxBuffer: 256 * 1024 * 1024 });
  return stdout.split('\n').filter((l) => l.length > 0);
}

async function applyLayer(rootfs: string, tarball: string): Promise<void> {
  const entries = await listLayer(tarball);
  for (const raw of entries) {
    const entry = raw.replace(/^\.\//, '').replace(/\/$/, '');
    const base = entry.split('/').pop() ?? '';
    if (!base.startsWith('.wh.')) continue;
    const dir = join(rootfs, dirname(entry));
    if (!resolve(dir).startsWith(resolve(rootfs))) throw new Error(`layer entry escapes rootfs: ${raw}`);
    if (base === '.wh..wh..opq') {
      if (existsSync(dir)) for (const name of await readdir(dir)) await rm(join(dir, name), { recursive: true, force: true });
    } else {
      await rm(join(dir, base.slice('.wh.'.length)), { recursive: true, force: true });
    }
  }
  await run('tar', ['-xf', tarball, '-C', rootfs, '--same-owner', '--preserve-permissions', '--numeric-owner',
    '--xattrs', '--exclude=.wh.*', '--exclude=*/.wh.*']);
}

/**
 * Unpacks `tag` from the OCI layout (once; later calls return the cached copy).
 */
export async function unpackImage(opts: { ociDir?: string; tag?: string; cacheDir?: string } = {}): Promise<UnpackedImage> {
  const ociDir = opts.ociDir ?? DEFAULT_OCI_DIR;
  const tag = opts.tag ?? 'dev';
  const cacheDir = opts.cacheDir ?? DEFAULT_UNPACK_DIR;
  const desc = await findManifest(ociDir, tag);
  const manifest = await readJson<{ config: Descriptor; layers: Descriptor[] }>(blobPath(ociDir, desc.digest));
  const imageConfig = await readJson<{ config?: ImageConfig }>(blobPath(ociDir, manifest.config.digest));
  const hex = desc.digest.split(':')[1] ?? '';
  const target = join(cacheDir, hex);
  const rootfs = join(target, 'rootfs');
  if (!existsSync(join(target, 'complete'))) {
    await mkdir(cacheDir, { recursive: true });
    const tmp = await mkdtemp(join(cacheDir, 'tmp-'));
    try {
      await mkdir(join(tmp, 'rootfs'));
      for (const layer of manifest.layers) await applyLayer(join(tmp, 'rootfs'), blobPath(ociDir, layer.digest));
      await writeFile(join(tmp, 'complete'), `${desc.digest}\n`);
      try {
        await rename(tmp, target);
      } catch (err) {
        // Another process finished the same unpack first; use theirs.
        if (!existsSync(join(target, 'complete'))) throw err;
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  await pruneUnpacked(cacheDir, hex);
  return { ref: `oci:${ociDir}:${tag}`, digest: desc.digest, rootfs, config: imageConfig.config ?? {} };
}

/**
 * Removes unpacked images other than `keep` that no container uses as its lower layer any
 * more (each is the size of the image), and unpack leftovers older than an hour.
 */
async function pruneUnpacked(cacheDir: string, keep: string): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  for (const name of await readdir(cacheDir)) {
    if (name === keep) continue;
    const dir = join(cacheDir, name);
    if (name.startsWith('tmp-')) {
      const { mtimeMs } = await stat(dir);
      if (Date.now() - mtimeMs > 3600_000) await rm(dir, { recursive: true, force: true });
      continue;
    }
    if (mountinfo.includes(dir)) continue;
    await rm(dir, { recursive: true, force: true });
  }
}
