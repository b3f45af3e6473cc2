import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { loadTransport } from '../../../../operator/runtime/transport.js';

const dir = mkdtempSync(join(tmpdir(), 'kubeconfig-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function kubeconfig(name: string, user: Record<string, unknown>, cluster: Record<string, unknown> = { server: 'https://127.0.0.1:6443/' }): string {
  const path = join(dir, name);
  writeFileSync(
    path,
    YAML.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      'current-context': 'c',
      contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
      clusters: [{ name: 'k', cluster }],
      users: [{ name: 'u', user }],
    }),
  );
  return path;
}

test('a token kubeconfig (read by client-node) gives a bearer header and the server without a trailing slash', async () => {
  const t = await loadTransport(kubeconfig('token.yaml', { token: 'abc.def' }));
  assert.equal(t.server, 'https://127.0.0.1:6443');
  const p = await t.prepare('https://127.0.0.1:6443/api', 'GET');
  assert.equal(p.headers['Authorization'], 'Bearer abc.def');
});

test('a missing kubeconfig file is an error that names it', async () => {
  await assert.rejects(loadTransport(join(dir, 'nope.yaml')), /nope\.yaml/);
});
