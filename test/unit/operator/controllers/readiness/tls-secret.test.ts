import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certificateNotAfter } from '../../../../../operator/controllers/readiness/tls-secret.js';

test('certificateNotAfter reads a PEM certificate (made by openssl) and answers undefined for junk', () => {
  const dir = mkdtempSync(join(tmpdir(), 'notafter-'));
  try {
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '30', '-subj', '/CN=relay.example.com', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem')], { encoding: 'utf8' });
    assert.equal(r.status, 0, `openssl is needed (apt-get install openssl): ${r.error?.message ?? r.stderr}`);
    const notAfter = certificateNotAfter(readFileSync(join(dir, 'c.pem'), 'utf8'));
    assert.match(notAfter ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const days = (Date.parse(notAfter!) - Date.now()) / 86_400_000;
    assert.ok(days > 29 && days < 31, `${days} days`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(certificateNotAfter('junk'), undefined);
});
