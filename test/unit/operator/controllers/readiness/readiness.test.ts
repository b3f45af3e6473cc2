import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CERTIFICATE_POLL_MS, CERTIFICATE_RECHECK_MS, certificateRequeueMs } from '../../../../../operator/controllers/readiness/sync.js';

const now = Date.parse('2026-03-01T00:00:00Z');
const ready = { type: 'CertificateReady', status: 'True' as const, reason: 'Issued', message: '' };

test('a certificate that is not ready is looked at again after the poll interval', () => {
  assert.equal(certificateRequeueMs({ ...ready, status: 'False', reason: 'Issuing' }, undefined, now), CERTIFICATE_POLL_MS);
});

test('a ready certificate is looked at again when it expires, at most every recheck interval and at least a second later', () => {
  assert.equal(certificateRequeueMs(ready, '2026-03-01T01:00:00Z', now), 3600_000);
  assert.equal(certificateRequeueMs(ready, '2026-06-01T00:00:00Z', now), CERTIFICATE_RECHECK_MS);
  assert.equal(certificateRequeueMs(ready, undefined, now), CERTIFICATE_RECHECK_MS);
  assert.equal(certificateRequeueMs(ready, '2026-02-01T00:00:00Z', now), 1000);
});
