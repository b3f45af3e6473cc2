import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SecretDerivations } from '../../../../operator/controllers/secrets.js';

test('derived Secret values are valid for one resourceVersion and bounded', () => {
  const d = new SecretDerivations(2);
  d.set('tls\0ns/a', '10', { notAfter: 'x' });
  assert.deepEqual(d.get('tls\0ns/a', '10'), { value: { notAfter: 'x' } });
  assert.equal(d.get('tls\0ns/a', '11'), undefined, 'the Secret changed: derive again');
  d.set('tls\0ns/b', '1', undefined);
  assert.deepEqual(d.get('tls\0ns/b', '1'), { value: undefined }, 'an undefined value (no problem) is a hit too');
  d.set('tls\0ns/c', '1', 1);
  assert.equal(d.size(), 2);
  assert.equal(d.get('tls\0ns/a', '10'), undefined, 'the oldest entry went first');
});
