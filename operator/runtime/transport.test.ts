import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { NativeTransport, transportFromKubeconfigFile } from './transport.js';

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
      contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }, { name: 'other', context: { cluster: 'x', user: 'y' } }],
      clusters: [{ name: 'k', cluster }],
      users: [{ name: 'u', user }],
    }),
  );
  return path;
}

test('a token kubeconfig gives a bearer header and the server without a trailing slash', async () => {
  const t = transportFromKubeconfigFile(kubeconfig('token.yaml', { token: 'abc.def' }))!;
  assert.ok(t instanceof NativeTransport);
  assert.equal(t.server, 'https://127.0.0.1:6443');
  const p = await t.prepare();
  assert.equal(p.headers['Authorization'], 'Bearer abc.def');
  assert.ok(p.dispatcher);
});

test('a token file is read, and read again after the refresh interval (rotated ServiceAccount tokens)', async () => {
  const tokenPath = join(dir, 'token');
  writeFileSync(tokenPath, 'first\n');
  const t = new NativeTransport({ server: 'https://127.0.0.1:1', tokenFile: tokenPath, tokenFileRefreshMs: 0 });
  assert.equal((await t.prepare()).headers['Authorization'], 'Bearer first');
  writeFileSync(tokenPath, 'second\n');
  await new Promise((r) => setTimeout(r, 5));
  assert.equal((await t.prepare()).headers['Authorization'], 'Bearer second');
});

test('client certificates may be files relative to the kubeconfig or inline data', async () => {
  writeFileSync(join(dir, 'client.crt'), 'CERT');
  writeFileSync(join(dir, 'client.key'), 'KEY');
  assert.ok(transportFromKubeconfigFile(kubeconfig('files.yaml', { 'client-certificate': 'client.crt', 'client-key': 'client.key' }, { server: 'https://h:1', 'certificate-authority-data': Buffer.from('CA').toString('base64') })));
  assert.throws(() => transportFromKubeconfigFile(kubeconfig('missing.yaml', { 'client-certificate': 'nope.crt' })), /ENOENT/);
});

test('exec and auth-provider users are left to client-node (null)', () => {
  assert.equal(transportFromKubeconfigFile(kubeconfig('exec.yaml', { exec: { command: 'aws', apiVersion: 'client.authentication.k8s.io/v1' } })), null);
  assert.equal(transportFromKubeconfigFile(kubeconfig('ap.yaml', { 'auth-provider': { name: 'oidc' } })), null);
});

test('a kubeconfig without its current context or server says so', () => {
  const path = join(dir, 'bad.yaml');
  writeFileSync(path, YAML.stringify({ 'current-context': 'nope', contexts: [] }));
  assert.throws(() => transportFromKubeconfigFile(path), /current-context "nope" not found/);
  assert.throws(() => transportFromKubeconfigFile(kubeconfig('noserver.yaml', { token: 't' }, {})), /has no server/);
});
