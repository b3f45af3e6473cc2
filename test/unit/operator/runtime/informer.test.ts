import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LAST_APPLIED, stripManagedFields } from '../../../../operator/runtime/informer.js';

test('what the operator never reads is dropped before caching: managedFields and kubectl\'s last-applied copy', () => {
  const spec = { hostname: 'relay.example.com' };
  const obj = {
    metadata: { name: 'r', namespace: 'n', managedFields: [{ manager: 'kubectl' }], annotations: { [LAST_APPLIED]: JSON.stringify({ spec }), keep: 'yes' } },
    spec,
  };
  const out = stripManagedFields(obj);
  assert.deepEqual(out, { metadata: { name: 'r', namespace: 'n', annotations: { keep: 'yes' } }, spec });
  const only = stripManagedFields({ metadata: { name: 'r', annotations: { [LAST_APPLIED]: '{}' } } });
  assert.deepEqual(only, { metadata: { name: 'r' } });
});
