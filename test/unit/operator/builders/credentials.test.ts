import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  buildGeneratedUserSecret,
  generatePassword,
  generatedPasswordLength,
  isGeneratedPassword,
  passwordDigest,
} from '../../../../operator/builders/credentials.js';
import { checkPassword } from '../../../../operator/status/secret-checks.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import { assertGolden } from '../../../harness/smtprelay/testkit.js';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const policy = { minLength: 16 };

test('generated passwords have the requested length, only letters and digits, and use the whole alphabet uniformly', () => {
  const pw = generatePassword(32);
  assert.match(pw, /^[A-Za-z0-9]{32}$/);
  assert.notEqual(pw, generatePassword(32));
  // With a fixed "random" source: bytes >= 248 are skipped (no modulo bias).
  let n = 0;
  const seq = (k: number) => Buffer.from(Array.from({ length: k }, () => [255, 0, 61, 62, 247, 248][n++ % 6]!));
  assert.equal(generatePassword(4, seq), 'A9A9');
  const counts = new Map<string, number>();
  for (const c of generatePassword(62_000)) counts.set(c, (counts.get(c) ?? 0) + 1);
  assert.equal(counts.size, 62);
  for (const v of counts.values()) assert.ok(v > 800 && v < 1200, `count ${v}`);
});

test('generated passwords meet any policy: at least 32, or the policy minimum when longer', () => {
  assert.equal(generatedPasswordLength({ minLength: 16 }), 32);
  assert.equal(generatedPasswordLength({ minLength: 64 }), 64);
  const pw = generatePassword(generatedPasswordLength({ minLength: 64 }));
  assert.equal(checkPassword(pw, { minLength: 64 }, 'x'), undefined);
});

test('a generated user Secret is basic-auth, named after the relay and user, and labelled with the user', () => {
  const relay = relayFixture(undefined, (r) => r.spec.auth.users.push({ name: 'ops@team_a', allowedSenders: ['a@example.com'] }));
  const s = buildGeneratedUserSecret(relay, relay.spec.auth.users[1]!, 'p'.repeat(32));
  assert.equal(s.type, 'kubernetes.io/basic-auth');
  assert.equal(s.metadata.name, 'outbound-user-ops-team-a');
  assert.deepEqual(s.metadata.annotations, {
    'smtprelay.dev/user': 'ops@team_a',
    'smtprelay.dev/generated-password-sha256': passwordDigest('p'.repeat(32)),
  });
  assert.deepEqual(s.data, { password: b64('p'.repeat(32)), username: b64('ops@team_a') });
});

test('a generated user Secret is exactly the golden object (marker annotation included)', () => {
  const relay = relayFixture();
  assertGolden('generated-user-secret', buildGeneratedUserSecret(relay, relay.spec.auth.users[0]!, 'Xk2v9QpL0aTzR7mWc4NbY8eHs1dUf6Gj'));
});

test('the generated marker: true while the password is the generated one; false once edited, without a marker, or with a malformed one', () => {
  const relay = relayFixture();
  const pw = generatePassword(32);
  const secret = buildGeneratedUserSecret(relay, relay.spec.auth.users[0]!, pw);
  assert.equal(passwordDigest('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(isGeneratedPassword(secret, pw), true);
  assert.equal(isGeneratedPassword(secret, 'the-user-changed-it-1234'), false, 'edited by the user');
  assert.equal(isGeneratedPassword({ type: 'kubernetes.io/basic-auth', data: secret.data }, pw), false, 'no marker: user-supplied');
  assert.equal(isGeneratedPassword({ metadata: { annotations: { 'smtprelay.dev/generated-password-sha256': 'zz' } } }, pw), false, 'malformed marker');
  assert.equal(isGeneratedPassword({ metadata: { annotations: { 'smtprelay.dev/generated-password-sha256': passwordDigest(pw).toUpperCase() } } }, pw), false, 'only the exact lowercase hex form');
});
