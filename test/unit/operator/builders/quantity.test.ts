import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalQuantity } from '../../../../operator/builders/quantity.js';
import { QUANTITY_CASES } from '../../../harness/smtprelay/testkit.js';


test('quantities are written in the form the API server stores', () => {
  for (const [input, want] of QUANTITY_CASES) assert.equal(canonicalQuantity(input), want, `${input}`);
});

test('a string that is not a quantity is passed through for the server to refuse', () => {
  assert.equal(canonicalQuantity('lots'), 'lots');
});
