import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConditionType, Reason, type Condition } from '../../../../operator/api/v1alpha1.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import {
  availableCondition,
  certificateCondition,
  certificateNotAfter,
  conditionFromProblems,
  conditionsEqual,
  credentialsCondition,
  replicasSummary,
  rfc3339,
  setCondition,
  summarizeReady,
} from '../../../../operator/builders/status.js';

const t0 = new Date('2026-03-01T10:00:00.123Z');
const t1 = new Date('2026-03-01T11:00:00.987Z');
const at = (d: Date) => () => d;

test('a new condition gets the current time (second precision) and the generation', () => {
  const list = setCondition(undefined, { type: 'CertificateReady', status: 'False', reason: 'Issuing', message: 'waiting' }, 3, at(t0));
  assert.deepEqual(list, [{ type: 'CertificateReady', status: 'False', lastTransitionTime: '2026-03-01T10:00:00Z', reason: 'Issuing', message: 'waiting', observedGeneration: 3 }]);
});

test('a condition whose status did not change keeps its lastTransitionTime but takes the new reason, message and generation', () => {
  const first = setCondition(undefined, { type: 'CertificateReady', status: 'False', reason: 'Issuing', message: 'waiting' }, 1, at(t0));
  const second = setCondition(first, { type: 'CertificateReady', status: 'False', reason: 'IssuerNotFound', message: 'no issuer' }, 2, at(t1));
  assert.equal(second[0]!.lastTransitionTime, '2026-03-01T10:00:00Z');
  assert.equal(second[0]!.reason, 'IssuerNotFound');
  assert.equal(second[0]!.observedGeneration, 2);
});

test('a condition whose status changed moves its lastTransitionTime; other conditions are untouched and order is kept', () => {
  let list = setCondition(undefined, { type: 'A', status: 'False', reason: 'R', message: 'm' }, 1, at(t0));
  list = setCondition(list, { type: 'B', status: 'True', reason: 'R', message: 'm' }, 1, at(t0));
  const before = structuredClone(list);
  const after = setCondition(list, { type: 'A', status: 'True', reason: 'R', message: 'm' }, 1, at(t1));
  assert.deepEqual(list, before, 'input not mutated');
  assert.deepEqual(after.map((c) => [c.type, c.lastTransitionTime]), [
    ['A', '2026-03-01T11:00:00Z'],
    ['B', '2026-03-01T10:00:00Z'],
  ]);
});

function all(status: 'True' | 'False' | 'Unknown', except: Partial<Record<string, Partial<Condition>>> = {}): Condition[] {
  return ['Reconciled', 'CertificateReady', 'CredentialsReady', 'UpstreamReady', 'DkimReady', 'Available'].map((type) => ({
    type,
    status,
    reason: 'R',
    message: `${type} message`,
    lastTransitionTime: rfc3339(t0),
    ...except[type],
  }));
}

test('a relay whose conditions are all True is Ready', () => {
  assert.deepEqual(summarizeReady(all('True')), { type: 'Ready', status: 'True', reason: 'Ready', message: 'The relay is serving mail' });
});

test('a relay whose certificate is not issued is not Ready, and says so with the certificate reason', () => {
  const ready = summarizeReady(all('True', { CertificateReady: { status: 'False', reason: 'IssuerNotFound', message: 'Issuer x does not exist' } }));
  assert.deepEqual(ready, { type: 'Ready', status: 'False', reason: 'IssuerNotFound', message: 'CertificateReady: Issuer x does not exist' });
});

test('the first False condition in dependency order decides the Ready reason', () => {
  const ready = summarizeReady(all('True', { Available: { status: 'False', reason: 'A' }, CredentialsReady: { status: 'False', reason: 'C' } }));
  assert.equal(ready.reason, 'C');
});

test('a relay with a condition not yet reported is Unknown (Pending), naming it', () => {
  const ready = summarizeReady(all('True').filter((c) => c.type !== 'Available'));
  assert.equal(ready.status, 'Unknown');
  assert.equal(ready.reason, Reason.Pending);
  assert.match(ready.message, /Available not yet reported/);
  assert.equal(summarizeReady(undefined).status, 'Unknown');
});

test('conditionsEqual ignores order but not content', () => {
  const a = all('True');
  assert.ok(conditionsEqual(a, [...a].reverse()));
  assert.ok(!conditionsEqual(a, all('True', { DkimReady: { message: 'other' } })));
  assert.ok(!conditionsEqual(a, a.slice(1)));
  assert.ok(conditionsEqual(undefined, []));
});

test('CredentialsReady names each user left out and why', () => {
  const relay = relayFixture(undefined, (r) => r.spec.auth.users.push({ name: 'b', allowedSenders: ['b@example.com'] }));
  assert.deepEqual(credentialsCondition(relay, []), { type: 'CredentialsReady', status: 'True', reason: 'CredentialsValid', message: '2 users can authenticate' });
  const c = credentialsCondition(relay, [{ user: 'b', reason: 'TooShort', message: 'password has 8 characters; the policy requires at least 16' }]);
  assert.equal(c.status, 'False');
  assert.equal(c.reason, Reason.PasswordRefused);
  assert.equal(c.message, '1 of 2 users left out: b: password has 8 characters; the policy requires at least 16');
  assert.equal(credentialsCondition(relay, [{ user: 'b', reason: Reason.UserSecretInvalid, message: 'x' }]).reason, Reason.UserSecretInvalid);
});

test('conditionFromProblems: True when none, else the first reason and all messages', () => {
  const ok = { reason: Reason.UpstreamConfigured, message: 'ok' };
  assert.equal(conditionFromProblems(ConditionType.UpstreamReady, [], ok).status, 'True');
  const c = conditionFromProblems(ConditionType.UpstreamReady, [{ reason: 'A', message: 'a' }, { reason: 'B', message: 'b' }], ok);
  assert.deepEqual(c, { type: 'UpstreamReady', status: 'False', reason: 'A', message: 'a; b' });
});

test('Available: all but one replica available is enough; none is not; a missing Deployment says so', () => {
  const relay = relayFixture(undefined, (r) => (r.spec.replicas = 3));
  assert.equal(availableCondition(relay, { status: { availableReplicas: 2 } }).status, 'True');
  assert.equal(availableCondition(relay, { status: { availableReplicas: 1 } }).reason, Reason.MinimumReplicasUnavailable);
  assert.equal(availableCondition(relay, { status: {} }).status, 'False');
  assert.equal(availableCondition(relay, undefined).reason, Reason.DeploymentNotFound);
  const one = relayFixture(undefined, (r) => (r.spec.replicas = 1));
  assert.equal(availableCondition(one, { status: { availableReplicas: 0 } }).status, 'False');
  assert.equal(availableCondition(one, { status: { availableReplicas: 1 } }).status, 'True');
});

test('replicasSummary is ready/desired', () => {
  assert.equal(replicasSummary(undefined, 2), '0/2');
  assert.equal(replicasSummary(2, 3), '2/3');
});

const now = at(new Date('2026-03-01T00:00:00Z'));
test('a Certificate that cert-manager marks Ready is Issued, with its expiry in the message', () => {
  const c = certificateCondition(relayFixture(), { status: { conditions: [{ type: 'Ready', status: 'True' }], notAfter: '2026-05-30T00:00:00Z' } }, { now });
  assert.deepEqual(c, { type: 'CertificateReady', status: 'True', reason: 'Issued', message: 'certificate issued, valid until 2026-05-30T00:00:00Z' });
});

test('a Certificate not yet issued is waiting (Issuing); a failed issuance is CertificateFailed; a missing issuer is IssuerNotFound', () => {
  assert.equal(certificateCondition(relayFixture(), undefined, { now }).reason, Reason.Issuing);
  assert.equal(certificateCondition(relayFixture(), { status: { conditions: [{ type: 'Ready', status: 'False', reason: 'DoesNotExist' }] } }, { now }).reason, Reason.Issuing);
  const failed = certificateCondition(relayFixture(), { status: { conditions: [{ type: 'Issuing', status: 'False', reason: 'Failed', message: 'CA refused' }] } }, { now });
  assert.equal(failed.reason, Reason.CertificateFailed);
  assert.match(failed.message, /CA refused/);
  const missing = certificateCondition(relayFixture(), undefined, { now, issuerFound: false });
  assert.equal(missing.reason, Reason.IssuerNotFound);
  assert.match(missing.message, /Issuer ca-issuer \(spec.tls.issuerRef\) does not exist/);
});

test('an expired certificate is not ready even if cert-manager still says Ready', () => {
  const c = certificateCondition(relayFixture(), { status: { conditions: [{ type: 'Ready', status: 'True' }], notAfter: '2026-02-01T00:00:00Z' } }, { now });
  assert.equal(c.reason, Reason.CertificateExpired);
});

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
