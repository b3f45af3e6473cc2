import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Condition } from '../../../../operator/api/v1alpha1.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import type { ConditionInput } from '../../../../operator/status/conditions.js';
import { relayStatus, replicasSummary } from '../../../../operator/status/relay-status.js';

test('replicasSummary is ready/desired', () => {
  assert.equal(replicasSummary(undefined, 2), '0/2');
  assert.equal(replicasSummary(2, 3), '2/3');
});

const t0 = () => new Date('2026-03-01T10:00:00Z');
const t1 = () => new Date('2026-03-01T11:00:00Z');
const ok = (type: string): ConditionInput => ({ type, status: 'True', reason: 'R', message: `${type} ok` });
const everything = ['Reconciled', 'CertificateReady', 'CredentialsReady', 'UpstreamReady', 'DkimReady', 'Available'].map(ok);
const observed = { endpoint: 'outbound.mail.svc:587', replicas: 2, readyReplicas: 2, certificate: { secretName: 'outbound-tls' }, dnsRecords: [] };

test('a relay whose phases all decided True is Ready, with observedGeneration and the readiness fields', () => {
  const relay = relayFixture(undefined, (r) => ((r.metadata.generation = 4), (r.spec.replicas = 2)));
  const status = relayStatus(relay, everything, observed, t0);
  assert.equal(status.observedGeneration, 4);
  assert.deepEqual(status.conditions?.map((c) => [c.type, c.status, c.observedGeneration]), [
    ['Reconciled', 'True', 4],
    ['CertificateReady', 'True', 4],
    ['CredentialsReady', 'True', 4],
    ['UpstreamReady', 'True', 4],
    ['DkimReady', 'True', 4],
    ['Available', 'True', 4],
    ['Ready', 'True', 4],
  ]);
  assert.equal(status.endpoint, 'outbound.mail.svc:587');
  assert.equal(status.replicasSummary, '2/2');
  assert.deepEqual(status.certificate, { secretName: 'outbound-tls' });
  assert.equal(status.dnsRecords, undefined);
});

test('a reconcile that stopped early keeps what status said for the conditions it did not decide, and the old readiness fields', () => {
  const before: Condition[] = everything.map((c) => ({ ...c, lastTransitionTime: '2026-01-01T00:00:00Z', observedGeneration: 1 }));
  const relay = relayFixture(undefined, (r) => ((r.metadata.generation = 2), (r.status = { conditions: before, endpoint: 'old:587', replicas: 2 })));
  const status = relayStatus(relay, [{ type: 'CredentialsReady', status: 'False', reason: 'PasswordRefused', message: 'no' }], undefined, t1);
  const byType = new Map(status.conditions?.map((c) => [c.type, c]));
  assert.equal(byType.get('CredentialsReady')?.lastTransitionTime, '2026-03-01T11:00:00Z', 'its status changed');
  assert.equal(byType.get('Available')?.lastTransitionTime, '2026-01-01T00:00:00Z', 'not decided: left as it was');
  assert.equal(byType.get('Available')?.observedGeneration, 1);
  assert.equal(byType.get('Ready')?.status, 'False');
  assert.equal(status.endpoint, 'old:587');
  assert.equal(status.replicas, 2);
});

test('a relay without a Deployment yet has no status.replicas, and dnsRecords appear once DKIM keys exist', () => {
  const relay = relayFixture(undefined, (r) => (r.status = { replicas: 2, conditions: [] }));
  const record = { type: 'TXT' as const, name: 'relay1._domainkey.example.com', value: 'v=DKIM1; k=rsa; p=AAAA' };
  const status = relayStatus(relay, everything, { endpoint: 'e:587', readyReplicas: 0, dnsRecords: [record] }, t0);
  assert.equal(status.replicas, undefined);
  assert.equal(status.readyReplicas, 0);
  assert.deepEqual(status.dnsRecords, [record]);
});
