import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildCertificate, certificateDnsNames } from '../../../../operator/builders/certificate.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import { buildNetworkPolicy } from '../../../../operator/builders/networkpolicy.js';
import { buildMetricsService, buildService, relayEndpoint } from '../../../../operator/builders/service.js';
import { buildPodDisruptionBudget, buildServiceMonitor } from '../../../../operator/builders/workload.js';

test('the Service maps the spec ports onto the named container ports and carries no metrics port', () => {
  const svc = buildService(relayFixture(undefined, (r) => (r.spec.listeners.submission.port = 2525)));
  assert.deepEqual(svc.spec.ports, [
    { name: 'submission', port: 2525, targetPort: 'submission', protocol: 'TCP' },
    { name: 'submissions', port: 465, targetPort: 'submissions', protocol: 'TCP' },
  ]);
  assert.equal(svc.spec.type, 'ClusterIP');
  assert.deepEqual(buildMetricsService(relayFixture()).spec.ports, [{ name: 'metrics', port: 9090, targetPort: 'metrics', protocol: 'TCP' }]);
});

test('the endpoint is the Service name and the first enabled listener port', () => {
  assert.equal(relayEndpoint(relayFixture()), 'outbound.mail.svc:587');
  assert.equal(relayEndpoint(relayFixture(undefined, (r) => (r.spec.listeners.submission.enabled = false))), 'outbound.mail.svc:465');
});

test('the Certificate covers the hostname and the Service names, for server auth', () => {
  const cert = buildCertificate(relayFixture());
  assert.ok(cert);
  assert.deepEqual(cert.spec.dnsNames, ['relay.example.com', 'outbound.mail.svc', 'outbound.mail.svc.cluster.local']);
  assert.ok(cert.spec.usages.includes('server auth'));
  assert.equal(cert.spec.secretName, 'outbound-tls');
  assert.deepEqual(cert.spec.issuerRef, { name: 'ca-issuer', kind: 'Issuer', group: 'cert-manager.io' });
  assert.deepEqual(certificateDnsNames(relayFixture(), 'corp.internal').slice(-1), ['outbound.mail.svc.corp.internal']);
  assert.deepEqual(certificateDnsNames(relayFixture(undefined, (r) => (r.spec.hostname = 'outbound.mail.svc'))), ['outbound.mail.svc', 'outbound.mail.svc.cluster.local']);
});

test('the NetworkPolicy admits SMTP only from the allowed CIDRs, namespaces and PROXY peers, on container ports', () => {
  const np = buildNetworkPolicy(
    relayFixture(undefined, (r) => {
      r.spec.access.allowedCidrs = ['10.0.0.0/8'];
      r.spec.access.allowedNamespaces = { matchLabels: { 'smtp-relay/client': 'true' } };
      r.spec.access.proxyProtocol.trustedCidrs = ['10.0.0.0/8', '192.0.2.0/24'];
    }),
  );
  assert.deepEqual(np.spec.ingress[0], {
    from: [{ ipBlock: { cidr: '10.0.0.0/8' } }, { ipBlock: { cidr: '192.0.2.0/24' } }, { namespaceSelector: { matchLabels: { 'smtp-relay/client': 'true' } } }],
    ports: [
      { protocol: 'TCP', port: 2587 },
      { protocol: 'TCP', port: 2465 },
    ],
  });
  assert.deepEqual(np.spec.ingress[1], {
    from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }],
    ports: [{ protocol: 'TCP', port: 9090 }],
  });
  assert.deepEqual(np.spec.policyTypes, ['Ingress', 'Egress']);
});

test('with no allowed peers at all the SMTP ingress rule is left out (an empty "from" would admit everyone)', () => {
  const np = buildNetworkPolicy(relayFixture(undefined, (r) => (r.spec.access.allowedCidrs = [])));
  // metrics from the monitoring namespaces, and the peer port from the relay's own pods
  assert.equal(np.spec.ingress.length, 2);
  assert.deepEqual(np.spec.ingress[0]!.ports, [{ protocol: 'TCP', port: 9090 }]);
  assert.deepEqual(np.spec.ingress[1]!.ports, [{ protocol: 'TCP', port: 9091 }]);
  for (const rule of np.spec.ingress) assert.ok(rule.from.length > 0);
});

test('egress is DNS, the upstream port and the sibling relay pods\' peer port only; an IP upstream is pinned to that address', () => {
  const byName = buildNetworkPolicy(relayFixture()).spec.egress;
  assert.deepEqual(byName, [
    { ports: [{ protocol: 'UDP', port: 53 }, { protocol: 'TCP', port: 53 }] },
    { ports: [{ protocol: 'TCP', port: 587 }] },
    { to: [{ podSelector: { matchLabels: { 'app.kubernetes.io/instance': 'outbound', 'app.kubernetes.io/name': 'smtp-relay' } } }], ports: [{ protocol: 'TCP', port: 9091 }] },
  ]);
  const byIp = buildNetworkPolicy(relayFixture(undefined, (r) => ((r.spec.upstream.host = '192.0.2.25'), (r.spec.upstream.port = 465)))).spec.egress;
  assert.deepEqual(byIp[1], { ports: [{ protocol: 'TCP', port: 465 }], to: [{ ipBlock: { cidr: '192.0.2.25/32' } }] });
  const byIp6 = buildNetworkPolicy(relayFixture(undefined, (r) => (r.spec.upstream.host = '2001:db8::25'))).spec.egress;
  assert.deepEqual(byIp6[1]?.to, [{ ipBlock: { cidr: '2001:db8::25/128' } }]);
});

test('the PodDisruptionBudget keeps all but one pod and lets unhealthy pods go', () => {
  assert.deepEqual(buildPodDisruptionBudget(relayFixture()).spec, {
    maxUnavailable: 1,
    selector: { matchLabels: { 'app.kubernetes.io/instance': 'outbound', 'app.kubernetes.io/name': 'smtp-relay' } },
    unhealthyPodEvictionPolicy: 'AlwaysAllow',
  });
});

test('the ServiceMonitor selects the metrics Service in the relay namespace and carries the extra labels', () => {
  const sm = buildServiceMonitor(
    relayFixture(undefined, (r) => (r.spec.metrics.serviceMonitor = { enabled: true, interval: '15s', labels: { release: 'prometheus' } })),
  );
  assert.ok(sm);
  assert.equal(sm.metadata.labels['release'], 'prometheus');
  assert.deepEqual(sm.spec.endpoints, [{ port: 'metrics', path: '/metrics', interval: '15s', scheme: 'http' }]);
  assert.equal(sm.spec.selector.matchLabels['app.kubernetes.io/component'], 'metrics');
  assert.equal(buildMetricsService(relayFixture()).metadata.labels['app.kubernetes.io/component'], 'metrics');
  assert.deepEqual(sm.spec.namespaceSelector, { matchNames: ['mail'] });
});

test('the peer port admits only the relay\'s own pods; the metrics port also the operator\'s pods when the operator knows them', () => {
  const own = { podSelector: { matchLabels: { 'app.kubernetes.io/instance': 'outbound', 'app.kubernetes.io/name': 'smtp-relay' } } };
  const without = buildNetworkPolicy(relayFixture());
  const peerRules = without.spec.ingress.filter((r) => r.ports.some((p) => p.port === 9091));
  assert.deepEqual(peerRules, [{ from: [own], ports: [{ protocol: 'TCP', port: 9091 }] }]);
  assert.equal(without.spec.ingress.filter((r) => r.ports.some((p) => p.port === 9090)).length, 1, 'only the monitoring rule');
  const withOperator = buildNetworkPolicy(relayFixture(), { operatorPods: { namespace: 'ops', matchLabels: { 'app.kubernetes.io/name': 'smtp-relay-operator', 'app.kubernetes.io/instance': 'x' } } });
  const metricsRules = withOperator.spec.ingress.filter((r) => r.ports.some((p) => p.port === 9090));
  assert.deepEqual(metricsRules[1], {
    from: [
      {
        namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ops' } },
        podSelector: { matchLabels: { 'app.kubernetes.io/instance': 'x', 'app.kubernetes.io/name': 'smtp-relay-operator' } },
      },
    ],
    ports: [{ protocol: 'TCP', port: 9090 }],
  });
  // an empty label set would select every pod of the namespace: no rule then
  assert.equal(buildNetworkPolicy(relayFixture(), { operatorPods: { namespace: 'ops', matchLabels: {} } }).spec.ingress.length, without.spec.ingress.length);
});
