import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConditionType, Reason, type Condition } from '../../../../operator/api/v1alpha1.js';
import { conditionsFixture, relayFixture } from '../../../harness/smtprelay/fixtures.js';
import { rfc3339 } from '../../../../operator/status/conditions.js';
import {
  availableCondition,
  certificateCondition,
  certManagerMissingCondition,
  conditionFromProblems,
  credentialsCondition,
  dkimCondition,
  givenSecretCondition,
  invalidSpecCondition,
  issuedCertificateCondition,
  reconciledCondition,
  summarizeReady,
  upstreamCondition,
} from '../../../../operator/status/decisions.js';
import { refusalMessage, refusalSummary } from '../../../../operator/upstream-logins.js';

const t0 = new Date('2026-03-01T10:00:00.123Z');
const at = (d: Date) => () => d;

/** All conditions with `status` at t0, then the overrides. */
const all = (status: 'True' | 'False' | 'Unknown', except: Partial<Record<string, Partial<Condition>>> = {}): Condition[] => conditionsFixture(status, t0, except);

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

test('a spec the builders refuse is not Reconciled (InvalidSpec), and the message says to fix the SmtpRelay', () => {
  const c = invalidSpecCondition(new Error('listener ports clash'));
  assert.deepEqual(c, {
    type: ConditionType.Reconciled,
    status: 'False',
    reason: Reason.InvalidSpec,
    message: 'the spec cannot be turned into a relay: listener ports clash; fix the SmtpRelay',
  });
});

test('a relay whose children were all applied is Reconciled, counting them', () => {
  assert.deepEqual(reconciledCondition({ applied: 9, failed: [], serviceMonitorUnavailable: false }), {
    type: ConditionType.Reconciled,
    status: 'True',
    reason: Reason.Applied,
    message: '9 child objects up to date',
  });
});

test('a relay that asks for a ServiceMonitor the cluster does not serve is still Reconciled, and says why it has none', () => {
  const c = reconciledCondition({ applied: 9, failed: [], serviceMonitorUnavailable: true });
  assert.equal(c.status, 'True');
  assert.match(c.message, /^9 child objects up to date; no ServiceMonitor: .*install the prometheus-operator CRDs$/);
});

test('a child that could not be applied makes Reconciled False (ApplyFailed), naming it, in at most 2000 characters', () => {
  const c = reconciledCondition({ applied: 8, failed: ['Deployment outbound: forbidden'], serviceMonitorUnavailable: true });
  assert.deepEqual(c, { type: ConditionType.Reconciled, status: 'False', reason: Reason.ApplyFailed, message: 'could not apply Deployment outbound: forbidden' });
  const many = reconciledCondition({ applied: 0, failed: Array.from({ length: 100 }, (_, i) => `Secret s${i}: ${'x'.repeat(50)}`), serviceMonitorUnavailable: false });
  assert.equal(many.message.length, 2000);
});

test('a relay with an issuerRef on a cluster without cert-manager is told to install it or use a TLS Secret', () => {
  const c = certManagerMissingCondition();
  assert.equal(c.type, ConditionType.CertificateReady);
  assert.equal(c.status, 'False');
  assert.equal(c.reason, Reason.IssuerNotFound);
  assert.match(c.message, /install cert-manager or use spec\.tls\.secretName/);
});

const issued = { status: { conditions: [{ type: 'Ready', status: 'True' }], notAfter: '2026-05-30T00:00:00Z' } };
const decisionTime = at(new Date('2026-03-01T00:00:00Z'));

test('an issued Certificate whose Secret has no tls.crt yet is not ready (TlsSecretNotFound)', () => {
  const c = issuedCertificateCondition(relayFixture(), issued, { hasCertificate: false }, 'outbound-tls', { now: decisionTime });
  assert.deepEqual(c, {
    type: ConditionType.CertificateReady,
    status: 'False',
    reason: Reason.TlsSecretNotFound,
    message: 'the Certificate is Ready but its Secret outbound-tls has no tls.crt yet',
  });
});

test('an issued Certificate whose Secret holds the certificate is Issued', () => {
  const c = issuedCertificateCondition(relayFixture(), issued, { hasCertificate: true }, 'outbound-tls', { now: decisionTime });
  assert.equal(c.reason, Reason.Issued);
  assert.equal(c.status, 'True');
});

test('a Certificate whose issuer does not exist is IssuerNotFound, whatever its Secret holds', () => {
  const c = issuedCertificateCondition(relayFixture(), undefined, { hasCertificate: false }, 'outbound-tls', { issuerFound: false, now: decisionTime });
  assert.equal(c.reason, Reason.IssuerNotFound);
});

test('a given TLS Secret with a problem is not ready, with the problem as reason and message', () => {
  const c = givenSecretCondition({ hasCertificate: false, problem: { reason: Reason.TlsSecretNotFound, message: 'Secret my-tls does not exist' } }, 'my-tls', decisionTime);
  assert.deepEqual(c, { type: ConditionType.CertificateReady, status: 'False', reason: Reason.TlsSecretNotFound, message: 'Secret my-tls does not exist' });
});

test('a given TLS Secret whose certificate has expired is CertificateExpired and asks for a replacement', () => {
  const c = givenSecretCondition({ hasCertificate: true, notAfter: '2026-02-01T00:00:00Z' }, 'my-tls', decisionTime);
  assert.equal(c.reason, Reason.CertificateExpired);
  assert.equal(c.message, 'the certificate in Secret my-tls expired at 2026-02-01T00:00:00Z; replace it');
});

test('a given TLS Secret with a valid certificate is TlsSecretValid, with its expiry when known', () => {
  assert.deepEqual(givenSecretCondition({ hasCertificate: true, notAfter: '2026-05-30T00:00:00Z' }, 'my-tls', decisionTime), {
    type: ConditionType.CertificateReady,
    status: 'True',
    reason: Reason.TlsSecretValid,
    message: 'Secret my-tls holds a valid certificate until 2026-05-30T00:00:00Z',
  });
  assert.equal(givenSecretCondition({ hasCertificate: true }, 'my-tls', decisionTime).message, 'Secret my-tls holds a valid certificate');
});

test('an upstream without problems is UpstreamConfigured, naming host, port, TLS mode and whether it has credentials', () => {
  const plain = relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, host: 'smtp.example.net', port: 587, tls: 'starttls' }));
  assert.deepEqual(upstreamCondition(plain, []), {
    type: ConditionType.UpstreamReady,
    status: 'True',
    reason: Reason.UpstreamConfigured,
    message: 'upstream smtp.example.net:587 (starttls)',
  });
  const withCredentials = relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, host: 'smtp.example.net', port: 465, tls: 'implicit', credentialsSecretRef: { name: 'up' } }));
  assert.equal(upstreamCondition(withCredentials, []).message, 'upstream smtp.example.net:465 (implicit) with credentials');
});

test('an upstream whose credentials Secret is missing is not ready, with that reason', () => {
  const c = upstreamCondition(relayFixture(), [{ reason: Reason.UpstreamCredentialsNotFound, message: 'Secret up does not exist' }]);
  assert.deepEqual(c, { type: ConditionType.UpstreamReady, status: 'False', reason: Reason.UpstreamCredentialsNotFound, message: 'Secret up does not exist' });
});

test('an upstream that a pod reports refusing the login is not ready (UpstreamAuthRefused), naming the pods and the upstream\'s words', () => {
  const relay = relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, host: 'smtp.office365.com', port: 587, tls: 'starttls', credentialsSecretRef: { name: 'up' } }));
  const words = '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.';
  const message = refusalSummary(relay, [
    { pod: 'outbound-0', reply: words, mechanism: 'LOGIN', since: '2026-03-01T10:00:00Z' },
    { pod: 'outbound-1', reply: words, mechanism: 'LOGIN', since: '2026-03-01T09:59:00Z' },
    { pod: 'outbound-2', reply: '535 5.7.3 Authentication unsuccessful', mechanism: 'LOGIN' },
  ]);
  assert.equal(
    message,
    `the upstream smtp.office365.com:587 refuses the relay's login (LOGIN) on pods outbound-0, outbound-1: "${words}" since 2026-03-01T09:59:00Z; (LOGIN) on pod outbound-2: "535 5.7.3 Authentication unsuccessful"; check the username and password in Secret up and whether the upstream allows SMTP AUTH (docs/runbooks.md SmtpRelayUpstreamAuthRefused); this clears at the next login the upstream accepts`,
  );
  assert.deepEqual(upstreamCondition(relay, [], message), { type: ConditionType.UpstreamReady, status: 'False', reason: Reason.UpstreamAuthRefused, message });
  assert.equal(refusalSummary(relay, Array.from({ length: 50 }, (_, i) => ({ pod: `outbound-${i}`, reply: `535 5.7.3 no ${i}` }))).length, 1000, 'bounded');
});

test('a Secret problem wins over a refusal the pods report: it is the cause', () => {
  const c = upstreamCondition(relayFixture(), [{ reason: Reason.UpstreamCredentialsNotFound, message: 'Secret up does not exist' }], 'the upstream x:587 refuses the relay\'s login ...');
  assert.equal(c.reason, Reason.UpstreamCredentialsNotFound);
  assert.equal(upstreamCondition(relayFixture(), [], undefined).status, 'True', 'no refusal: the Secret-based verdict');
});

test('before its pods were first asked (an operator restart), a relay keeps the refusal its status shows; a relay that does not log in never shows one', () => {
  const withLogin = (status?: Partial<Condition>) =>
    relayFixture(undefined, (r) => {
      r.spec.upstream = { ...r.spec.upstream, credentialsSecretRef: { name: 'up' } };
      if (status) r.status = { conditions: conditionsFixture('True', t0, { UpstreamReady: status }) };
    });
  const shown = withLogin({ status: 'False', reason: Reason.UpstreamAuthRefused, message: 'the upstream x:587 refuses the relay\'s login ...' });
  assert.equal(refusalMessage(shown, undefined), 'the upstream x:587 refuses the relay\'s login ...');
  assert.equal(refusalMessage(shown, []), undefined, 'asked: none refuses now');
  assert.equal(refusalMessage(withLogin({ status: 'True', reason: Reason.UpstreamConfigured }), undefined), undefined);
  assert.match(refusalMessage(withLogin(), [{ pod: 'p', reply: '535 no' }])!, /on pod p: "535 no"/);
  const noLogin = relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, credentialsSecretRef: undefined, oauth2: undefined }));
  assert.equal(refusalMessage(noLogin, [{ pod: 'p', reply: '535 no' }]), undefined);
});

test('a relay without DKIM is DkimReady and says no signing is configured', () => {
  const c = dkimCondition(relayFixture(undefined, (r) => (r.spec.dkim = [])), []);
  assert.deepEqual(c, { type: ConditionType.DkimReady, status: 'True', reason: Reason.DkimKeysReady, message: 'no DKIM signing configured' });
});

test('a relay whose DKIM keys are usable names the domains and points at status.dnsRecords', () => {
  const relay = relayFixture(undefined, (r) => (r.spec.dkim = [{ domain: 'example.com', selector: 'relay1' }, { domain: 'billing.example.com', selector: 's2' }]));
  assert.equal(dkimCondition(relay, []).message, 'DKIM keys ready for example.com, billing.example.com; publish the TXT records in status.dnsRecords');
});

test('a relay with an unusable DKIM key is not DkimReady, with the first reason and every message', () => {
  const relay = relayFixture(undefined, (r) => (r.spec.dkim = [{ domain: 'example.com', selector: 'relay1' }]));
  const c = dkimCondition(relay, [
    { reason: Reason.DkimSecretNotFound, message: 'a' },
    { reason: Reason.DkimKeyInvalid, message: 'b' },
  ]);
  assert.deepEqual(c, { type: ConditionType.DkimReady, status: 'False', reason: Reason.DkimSecretNotFound, message: 'a; b' });
});
