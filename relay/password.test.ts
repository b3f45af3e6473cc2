import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VerificationMemo, formatHash, hashPassword, parseHash } from './password.js';

test('formatHash gives back the stored form', async () => {
  const text = await hashPassword('pw', { N: 16, r: 1, p: 1 });
  const parsed = parseHash(text);
  assert.ok(typeof parsed !== 'string');
  assert.equal(formatHash(parsed), text);
});

test('VerificationMemo: only the remembered password with the same stored hash in the same slot matches', () => {
  const m = new VerificationMemo();
  assert.equal(m.has('u', 'pw', 'H1'), false);
  m.remember('u', 'pw', 'H1');
  assert.equal(m.has('u', 'pw', 'H1'), true);
  assert.equal(m.has('u', 'pw2', 'H1'), false, 'other password');
  assert.equal(m.has('u', 'pw', 'H2'), false, 'changed hash');
  assert.equal(m.has('v', 'pw', 'H1'), false, 'other slot');
  assert.equal(m.has('u', 'p', 'w\0H1'), false);
  // one entry per slot: remembering again replaces
  m.remember('u', 'pw2', 'H2');
  assert.equal(m.size, 1);
  assert.equal(m.has('u', 'pw', 'H1'), false);
  assert.equal(m.has('u', 'pw2', 'H2'), true);
});

test('VerificationMemo: bounded (oldest out), retain drops slots, no plaintext kept', () => {
  const m = new VerificationMemo(3);
  for (const u of ['a', 'b', 'c', 'd']) m.remember(u, `secret-${u}`, 'H');
  assert.equal(m.size, 3);
  assert.equal(m.has('a', 'secret-a', 'H'), false);
  assert.equal(m.has('d', 'secret-d', 'H'), true);
  m.retain((slot) => slot !== 'c');
  assert.equal(m.size, 2);
  assert.equal(m.has('c', 'secret-c', 'H'), false);
  assert.ok(!JSON.stringify([...(m as unknown as { macs: Map<string, Buffer> }).macs.values()].map(String)).includes('secret-d'));
});
