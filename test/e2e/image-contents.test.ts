// What the image ships: the compiled programs and their production dependencies, and
// no test code (tests, fixtures, golden files and harnesses live in test/, which the
// Dockerfile never copies).
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { unpackImage } from '../harness/image/unpack.js';

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await files(p)));
    else out.push(p);
  }
  return out;
}

test('the image\'s dist/ holds the entrypoint, relay/ and operator/ only, and no test-only module', async () => {
  const image = await unpackImage(); // fails with "run 'make image' first" when there is none
  const dist = join(image.rootfs, 'app', 'dist');
  const all = (await files(dist)).map((f) => relative(dist, f));
  assert.ok(all.includes('relay/main.js') && all.includes('operator/main.js') && all.includes('entrypoint.js'), 'both programs and the entrypoint are there');
  const tops = new Set(all.map((f) => f.split('/')[0]));
  assert.deepEqual([...tops].sort(), ['entrypoint.js', 'entrypoint.js.map', 'operator', 'relay']);
  const testOnly = all.filter((f) => /\.test\.js|testkit|fixtures|testdata|(^|\/)defaults\.js/.test(f));
  assert.deepEqual(testOnly, []);
});
