/**
 * `make demo` as a test: the demo driver (test/demo/main.ts) run with DEMO_ONCE=1 exits 0,
 * reports each step, and shows that the upstream received the message DKIM-signed (dkimpy
 * PASS) with a Received header, and leaves no container or control-plane process behind.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../harness/controlplane/harness.js';

test('make demo (DEMO_ONCE=1): the message reaches the upstream DKIM-signed; exit 0; steps timed', { timeout: 600_000 }, async () => {
  const script = join(repoRoot(), 'dist', 'test', 'demo', 'main.js');
  const child = spawn(process.execPath, [script], { env: { ...process.env, DEMO_ONCE: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  assert.equal(code, 0, out);
  assert.match(out, /answered: 250 2\.0\.0/);
  assert.match(out, /DKIM-Signature: v=1; a=rsa-sha256; .*d=example\.com; .*s=relay1;/);
  assert.match(out, /Received: from .* by relay\.example\.com with ESMTPSA/);
  assert.match(out, /\(dkimpy\): PASS d=example\.com s=relay1/);
  assert.match(out, /smtp_relay_messages_total\{result="accepted"\} 0 -> 1/);
  assert.match(out, /RESULT: the message went through the relay/);
  assert.match(out, /tear down[^\n]*\n\s+done in/);
  assert.match(out, /password: \d+ characters \(not printed\)/);
  const steps = out.match(/^\[\s*\d+\] /gm) ?? [];
  assert.ok(steps.length >= 10, `steps shown: ${steps.length}`);
});
