import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VerificationMemo, formatHash, hashPassword, parseHash, verifyPassword } from '../../../relay/password.js';

test('formatHash gives back the stored form', async () => {
  const text = await hashPassword('pw', { N: 16, r: 1, p: 1 });
  const parsed = parseHash(text);
  assert.ok(typeof parsed !== 'string');
  assert.equal(formatHash(parsed), text);
});

/** A check that counts its runs and answers `ok` after a turn of the event loop. */
function counting(ok: (password: string) => boolean) {
  const c = { runs: 0, check: (password: string) => async () => (c.runs++, await new Promise((r) => setImmediate(r)), ok(password)) };
  return c;
}

test('VerificationMemo: only a remembered success with the same password, stored hash and slot skips the check', async () => {
  const m = new VerificationMemo();
  const c = counting((p) => p === 'pw' || p === 'pw2');
  const v = (slot: string, password: string, stored: string) => m.verify(slot, password, stored, c.check(password));
  assert.deepEqual(await v('u', 'pw', 'H1'), { ok: true, how: 'checked' });
  assert.deepEqual(await v('u', 'pw', 'H1'), { ok: true, how: 'remembered' });
  assert.equal(c.runs, 1);
  assert.deepEqual(await v('u', 'bad', 'H1'), { ok: false, how: 'checked' }, 'other password: full check');
  assert.deepEqual(await v('u', 'bad', 'H1'), { ok: false, how: 'checked' }, 'a failure is never remembered');
  assert.deepEqual(await v('u', 'pw', 'H2'), { ok: true, how: 'checked' }, 'changed hash: full check');
  assert.deepEqual(await v('v', 'pw', 'H2'), { ok: true, how: 'checked' }, 'other slot: full check');
  assert.equal(c.runs, 5);
  // one entry per slot: the newest success replaces the older one
  assert.deepEqual(await v('u', 'pw2', 'H2'), { ok: true, how: 'checked' });
  assert.equal(m.size, 2);
  assert.deepEqual(await v('u', 'pw', 'H2'), { ok: true, how: 'checked' });
});

test('VerificationMemo: concurrent identical checks share one run; other passwords do not', async () => {
  const m = new VerificationMemo();
  const c = counting((p) => p === 'right');
  const results = await Promise.all([
    m.verify('u', 'right', 'H', c.check('right')),
    m.verify('u', 'right', 'H', c.check('right')),
    m.verify('u', 'wrong', 'H', c.check('wrong')),
    m.verify('u', 'wrong', 'H', c.check('wrong')),
    m.verify('u', 'right', 'H', c.check('right')),
  ]);
  assert.deepEqual(
    results.map((r) => `${r.ok}/${r.how}`),
    ['true/checked', 'true/shared', 'false/checked', 'false/checked', 'true/shared'],
  );
  assert.equal(c.runs, 3);
  // a real scrypt check through the memo
  const stored = await hashPassword('secret', { N: 1024, r: 8, p: 1 });
  const parsed = parseHash(stored);
  assert.ok(typeof parsed !== 'string');
  assert.equal((await m.verify('w', 'secret', stored, () => verifyPassword('secret', parsed))).how, 'checked');
  assert.equal((await m.verify('w', 'secret', stored, () => verifyPassword('secret', parsed))).how, 'remembered');
  assert.equal((await m.verify('w', 'Secret', stored, () => verifyPassword('Secret', parsed))).ok, false);
});

test('VerificationMemo: bounded (oldest out), retain and forget drop slots, no plaintext kept', async () => {
  const m = new VerificationMemo(3);
  const ok = async () => true;
  for (const u of ['a', 'b', 'c', 'd']) await m.verify(u, `secret-${u}`, 'H', ok);
  assert.equal(m.size, 3);
  assert.equal((await m.verify('d', 'secret-d', 'H', ok)).how, 'remembered');
  const macs = (m as unknown as { macs: Map<string, Buffer> }).macs;
  assert.deepEqual([...macs.keys()], ['b', 'c', 'd']);
  assert.ok(![...macs.values()].some((b) => b.toString('latin1').includes('secret')));
  m.retain((slot) => slot !== 'c');
  m.forget('b');
  assert.deepEqual([...macs.keys()], ['d']);
});
