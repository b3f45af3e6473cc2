import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ANNOTATION_RESTART_HASH, type SmtpRelay } from '../../../../operator/api/v1alpha1.js';
import { buildDeployment as buildWithConfig, restartHash } from '../../../../operator/builders/deployment.js';
import { buildRelayConfig, dkimRecordName } from '../../../../operator/builders/relay-config.js';
import { relayFixture, type RelayModifier } from '../../../harness/smtprelay/fixtures.js';

const INPUTS = { image: 'registry.example.com/smtp-relay:1.0.0' };
const buildDeployment = (r: SmtpRelay, inputs = INPUTS) => buildWithConfig(r, buildRelayConfig(r), inputs);
const hashOf = (r: SmtpRelay) => restartHash(buildRelayConfig(r));
const template = (r: SmtpRelay, inputs = INPUTS) => JSON.stringify(buildDeployment(r, inputs).spec.template);

test('the relay pod is hardened: non-root, read-only root, no privilege escalation, no capabilities, seccomp, no token', () => {
  const d = buildDeployment(relayFixture(), INPUTS);
  const pod = d.spec.template.spec!;
  const c = pod.containers[0]!;
  assert.equal(pod.automountServiceAccountToken, false);
  assert.deepEqual(pod.securityContext, { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } });
  assert.equal(c.securityContext?.readOnlyRootFilesystem, true);
  assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
  assert.equal(c.securityContext?.privileged, false);
  assert.deepEqual(c.securityContext?.capabilities, { drop: ['ALL'] });
  assert.deepEqual(c.securityContext?.seccompProfile, { type: 'RuntimeDefault' });
  assert.deepEqual(c.resources, { requests: { cpu: '100m', memory: '128Mi' }, limits: { cpu: '1', memory: '256Mi' } });
  assert.deepEqual(c.args, ['relay', 'serve', '--config', '/etc/smtp-relay/config/config.yaml']);
  assert.equal(c.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(c.livenessProbe?.httpGet?.path, '/healthz');
  assert.equal(c.readinessProbe?.httpGet?.port, 'metrics');
  assert.ok((pod.terminationGracePeriodSeconds ?? 0) > 25, 'longer than the relay drain period');
  assert.equal(pod.topologySpreadConstraints?.length, 2);
});

test('the container listens on unprivileged ports only', () => {
  const ports = buildDeployment(relayFixture(), INPUTS).spec.template.spec!.containers[0]!.ports!.map((p) => p.containerPort);
  assert.deepEqual(ports, [2587, 2465, 9090, 9091]);
  assert.ok(ports.every((p) => p >= 1024));
});

test('volumes are mounted whole (no subPath), read-only, so kubelet updates reach the running relay', () => {
  const relay = relayFixture(undefined, (r) => {
    r.spec.upstream.credentialsSecretRef = { name: 'up' };
    r.spec.upstream.caSecretRef = { name: 'ca', key: 'bundle.pem' };
    r.spec.dkim = [{ domain: 'Example.com', selector: 's1' }, { domain: 'example.org', selector: 's2', secretRef: { name: 'org-dkim', key: 'k.pem' } }];
  });
  const pod = buildDeployment(relay, INPUTS).spec.template.spec!;
  const mounts = pod.containers[0]!.volumeMounts!;
  assert.ok(mounts.every((m) => m.subPath === undefined));
  assert.deepEqual(
    mounts.map((m) => [m.mountPath, m.readOnly ?? false]),
    [
      ['/etc/smtp-relay/config', true],
      ['/etc/smtp-relay/users', true],
      ['/etc/smtp-relay/tls', true],
      ['/etc/smtp-relay/internal', true],
      ['/etc/smtp-relay/upstream/credentials', true],
      ['/etc/smtp-relay/upstream/ca', true],
      ['/etc/smtp-relay/dkim', true],
      ['/tmp', false],
    ],
  );
  const vol = (n: string) => pod.volumes!.find((v) => v.name === n)!;
  assert.deepEqual(vol('upstream-ca').secret?.items, [{ key: 'bundle.pem', path: 'ca.crt' }]);
  assert.deepEqual(
    vol('dkim').projected?.sources?.map((s) => [s.secret?.name, s.secret?.items]),
    [
      ['outbound-dkim-s1-example-com', [{ key: 'private.key', path: 'example.com/s1.key' }]],
      ['org-dkim', [{ key: 'k.pem', path: 'example.org/s2.key' }]],
    ],
  );
  assert.equal(vol('tls').secret?.secretName, 'outbound-tls');
  assert.equal(vol('users').secret?.defaultMode, 0o440);
});

const keeps: Array<[string, RelayModifier]> = [
  ['a new user', (r) => r.spec.auth.users.push({ name: 'billing', allowedSenders: ['billing@example.com'] })],
  ['a changed sender rule', (r) => (r.spec.auth.users[0]!.allowedSenders = ['*@example.com'])],
  ['a rate limit', (r) => (r.spec.auth.users[0]!.rateLimit = { messages: 5, per: '1m' })],
  ['changed limits', (r) => (r.spec.limits = { maxMessageSize: '20Mi', maxRecipients: 5, maxConnections: 10, maxConnectionsPerIp: 2, preAuthTimeout: '5s', maxUnauthenticated: 4 })],
  ['a changed IP allow-list', (r) => (r.spec.access.allowedCidrs = ['192.168.0.0/16'])],
  ['changed lockout settings', (r) => (r.spec.auth.lockout.maxFailures = 10)],
  ['a changed password policy', (r) => (r.spec.auth.passwordPolicy.minLength = 30)],
  ['another upstream host', (r) => (r.spec.upstream.host = 'smtp2.example.net')],
  ['a changed Service port (the container port stays)', (r) => (r.spec.listeners.submission.port = 2525)],
  ['another issuer', (r) => (r.spec.tls.issuerRef = { name: 'other', kind: 'ClusterIssuer', group: 'cert-manager.io' })],
  ['more replicas (scaled, not rolled)', (r) => (r.spec.replicas = 5)],
];
for (const [what, change] of keeps) {
  test(`${what} does not roll the pods (pod template unchanged)`, () => {
    assert.equal(template(relayFixture(undefined, change)), template(relayFixture()));
  });
}

const rolls: Array<[string, RelayModifier]> = [
  ['a disabled listener', (r) => (r.spec.listeners.submission.enabled = false)],
  ['a new hostname (banner)', (r) => (r.spec.hostname = 'relay2.example.com')],
  ['a new minimum TLS version', (r) => (r.spec.tls.minVersion = 'TLSv1.3')],
];
for (const [what, change] of rolls) {
  test(`${what} rolls the pods (restart hash changes)`, () => {
    assert.notEqual(hashOf(relayFixture(undefined, change)), hashOf(relayFixture()));
  });
}

test('a new image rolls the pods; the restart hash is stable across builds', () => {
  assert.notEqual(template(relayFixture(), { image: 'registry.example.com/smtp-relay:1.0.1' }), template(relayFixture()));
  assert.equal(hashOf(relayFixture()), hashOf(relayFixture()));
  assert.match(hashOf(relayFixture()), /^[0-9a-f]{16}$/);
});

test('the pod template carries the restart hash of the config the Deployment was built from', () => {
  const relay = relayFixture();
  const config = buildRelayConfig(relay);
  const d = buildWithConfig(relay, config, INPUTS);
  assert.equal(d.spec.template.metadata!.annotations![ANNOTATION_RESTART_HASH], restartHash(config));
});

test('a DKIM key left out of the config is not mounted either; the others are', () => {
  const relay = relayFixture(undefined, (r) => {
    r.spec.dkim = [
      { domain: 'Example.com', selector: 'relay1' },
      { domain: 'billing.example.com', selector: 's2', secretRef: { name: 'k', key: 'dkim.pem' } },
    ];
  });
  const config = buildRelayConfig(relay, { skipDkim: new Set([dkimRecordName({ domain: 'example.com', selector: 'relay1' })]) });
  const dkim = buildWithConfig(relay, config, INPUTS).spec.template.spec!.volumes!.find((v) => v.name === 'dkim');
  assert.deepEqual(dkim?.projected?.sources?.map((s) => s.secret?.items?.[0]?.path), ['billing.example.com/s2.key']);
  const none = buildRelayConfig(relay, { skipDkim: new Set(relay.spec.dkim.map(dkimRecordName)) });
  assert.equal(buildWithConfig(relay, none, INPUTS).spec.template.spec!.volumes!.find((v) => v.name === 'dkim'), undefined);
});

test('the selector holds only the operator’s labels and never changes with the spec', () => {
  const a = buildDeployment(relayFixture(), INPUTS).spec.selector;
  const b = buildDeployment(relayFixture(undefined, (r) => ((r.spec.podAnnotations = { x: 'y' }), (r.spec.replicas = 7))), INPUTS).spec.selector;
  assert.deepEqual(a, { matchLabels: { 'app.kubernetes.io/instance': 'outbound', 'app.kubernetes.io/name': 'smtp-relay' } });
  assert.deepEqual(b, a);
});

test('integer quantities are rendered as strings; nodeSelector, tolerations and priority class reach the pod', () => {
  const relay = relayFixture(undefined, (r) => {
    r.spec.resources = { requests: { cpu: 1, memory: '64Mi' }, limits: { memory: '128Mi' } };
    r.spec.nodeSelector = { 'kubernetes.io/os': 'linux' };
    r.spec.tolerations = [{ key: 'dedicated', operator: 'Equal', value: 'mail', effect: 'NoSchedule' }];
    r.spec.priorityClassName = 'mail';
  });
  const pod = buildDeployment(relay, INPUTS).spec.template.spec!;
  assert.deepEqual(pod.containers[0]!.resources, { requests: { cpu: '1', memory: '64Mi' }, limits: { memory: '128Mi' } });
  assert.deepEqual(pod.nodeSelector, { 'kubernetes.io/os': 'linux' });
  assert.equal(pod.tolerations?.length, 1);
  assert.equal(pod.priorityClassName, 'mail');
});
