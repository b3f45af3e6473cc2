import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { generateToken } from '../../../../operator/builders/internal.js';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import YAML from 'yaml';
import { validateConfig } from '../../../../relay/config.js';
import { validateUsers } from '../../../../relay/users.js';
import { parseSenderPattern } from '../../../../relay/policy/senders.js';
import { CONFIG_KEY, MOUNT_ROOT, USERS_FILE } from '../../../../operator/api/v1alpha1.js';
import { buildConfigMap, buildRelayConfig, dkimRecordName } from '../../../../operator/builders/relay-config.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import { buildUsersFile, renderUsersFile, relayPasswordHasher } from '../../../../operator/builders/users.js';

const full = () =>
  relayFixture({
    hostname: 'relay.example.com',
    listeners: { submission: { port: 2525 } },
    tls: { secretName: 'relay-tls', minVersion: 'TLSv1.3' },
    auth: {
      users: [
        { name: 'billing', allowedSenders: ['billing@example.com', '*@billing.example.com'], rateLimit: { messages: 600, per: '1h' } },
        { name: 'alerts@ops', allowedSenders: ['alerts@example.com'] },
      ],
      lockout: { maxFailures: 3, window: '5m', duration: '1h' },
    },
    access: { allowedCidrs: ['10.0.0.0/8', '2001:db8::/32'], proxyProtocol: { trustedCidrs: ['10.1.0.0/16'] } },
    limits: { maxMessageSize: '25Mi', maxRecipients: 10, maxConnections: 50, maxConnectionsPerIp: 5 },
    upstream: { host: 'smtp.example.net', port: 465, tls: 'implicit', credentialsSecretRef: { name: 'up' }, caSecretRef: { name: 'ca' } },
    dkim: [
      { domain: 'example.com', selector: 'relay1' },
      { domain: 'billing.example.com', selector: 's2', secretRef: { name: 'k', key: 'dkim.pem' } },
    ],
  });

test('the config maps the spec onto the fixed mount paths and unprivileged container ports', () => {
  assert.deepEqual(buildRelayConfig(full()), {
    version: 1,
    hostname: 'relay.example.com',
    listeners: [
      { name: 'submission', port: 2587, mode: 'starttls' },
      { name: 'submissions', port: 2465, mode: 'implicit' },
    ],
    tls: { certFile: '/etc/smtp-relay/tls/tls.crt', keyFile: '/etc/smtp-relay/tls/tls.key', minVersion: 'TLSv1.3' },
    auth: { usersFile: '/etc/smtp-relay/users/users.yaml', lockout: { maxFailures: 3, window: '5m', duration: '1h' } },
    access: { allowedCidrs: ['10.0.0.0/8', '2001:db8::/32'], proxyProtocol: { trustedCidrs: ['10.1.0.0/16'] } },
    limits: { maxMessageSize: '25Mi', maxRecipients: 10, maxConnections: 50, maxConnectionsPerIp: 5, preAuthTimeout: '10s' },
    upstream: {
      host: 'smtp.example.net',
      port: 465,
      tls: 'implicit',
      maxConnections: 5,
      timeout: '60s',
      caFile: '/etc/smtp-relay/upstream/ca/ca.crt',
      usernameFile: '/etc/smtp-relay/upstream/credentials/username',
      passwordFile: '/etc/smtp-relay/upstream/credentials/password',
    },
    metrics: { port: 9090, controlTokenFile: '/etc/smtp-relay/internal/control-token' },
    shutdownGracePeriod: '25s',
    workers: 1,
    dkim: [
      { domain: 'example.com', selector: 'relay1', keyFile: '/etc/smtp-relay/dkim/example.com/relay1.key' },
      { domain: 'billing.example.com', selector: 's2', keyFile: '/etc/smtp-relay/dkim/billing.example.com/s2.key' },
    ],
    // always, whatever spec.replicas: scaling never changes the config (peers.port is a restart field)
    peers: { port: 9091, tokenFile: '/etc/smtp-relay/internal/peer-token', service: 'outbound-peers.mail.svc.cluster.local' },
  });
  assert.deepEqual(buildRelayConfig(full(), { clusterDomain: 'corp.internal' }).peers?.service, 'outbound-peers.mail.svc.corp.internal');
  const one = full();
  one.spec.replicas = 1;
  assert.deepEqual(buildRelayConfig(one).peers, buildRelayConfig(full()).peers);
});

test('a disabled listener is not opened; without upstream credentials no credential files are named', () => {
  const config = buildRelayConfig(relayFixture(undefined, (r) => (r.spec.listeners.submission.enabled = false)));
  assert.deepEqual(config.listeners, [{ name: 'submissions', port: 2465, mode: 'implicit' }]);
  assert.equal(config.upstream.usernameFile, undefined);
  assert.equal(config.upstream.caFile, undefined);
  assert.equal(config.dkim, undefined);
});

test('a DKIM entry whose key is unusable is left out of the config', () => {
  const relay = full();
  const config = buildRelayConfig(relay, { skipDkim: new Set([dkimRecordName({ domain: 'example.com', selector: 'relay1' })]) });
  assert.deepEqual(config.dkim?.map((d) => d.domain), ['billing.example.com']);
});

test("the rendered config.yaml and users.yaml pass the relay's own validation (the operator/relay contract)", async () => {
  const relay = full();
  const dir = mkdtempSync(join(tmpdir(), 'relay-contract-'));
  try {
    const text = buildConfigMap(relay, buildRelayConfig(relay)).data[CONFIG_KEY]!;
    // The relay checks that every named file is readable: lay the mount tree out under a temp dir.
    const doc = YAML.parse(text.replaceAll(MOUNT_ROOT, dir)) as Record<string, unknown>;
    const files = JSON.stringify(doc).match(new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^"]+`, 'g')) ?? [];
    assert.ok(files.length >= 8, files.join(' '));
    for (const f of files) {
      mkdirSync(dirname(f), { recursive: true });
      writeFileSync(f, f.endsWith('-token') ? generateToken() : 'x'); // tokens as the operator's internal Secret holds them
    }
    const settings = validateConfig(doc, join(dir, 'config/config.yaml'), join(dir, 'config'));
    assert.equal(settings.hostname, 'relay.example.com');
    assert.deepEqual(settings.listeners.map((l) => l.port), [2587, 2465]);

    const users = await buildUsersFile(
      relay,
      new Map([
        ['billing', { password: 'correct horse battery staple', generated: false }],
        ['alerts@ops', { password: 'another long enough password', generated: true }],
      ]),
      undefined,
      relayPasswordHasher,
      { generated: { N: 16, r: 8, p: 1 }, user: { N: 1024, r: 8, p: 1 } },
    );
    const table = validateUsers(YAML.parse(renderUsersFile(users)), USERS_FILE);
    assert.deepEqual([...table.keys()], ['billing', 'alerts@ops']);
    assert.deepEqual(table.get('billing')?.rateLimit, { messages: 600, perMs: 3_600_000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every allowed-sender pattern in the examples is one the relay accepts', () => {
  for (const s of ['billing@example.com', '*@billing.example.com', 'first.last+tag@example.co.uk', "o'brien@example.com"]) {
    assert.equal(typeof parseSenderPattern(s), 'object', s);
  }
});

test('the ConfigMap text is deterministic and says where it comes from', () => {
  const a = buildConfigMap(full(), buildRelayConfig(full())).data[CONFIG_KEY];
  assert.equal(a, buildConfigMap(full(), buildRelayConfig(full())).data[CONFIG_KEY]);
  assert.match(a!, /^# Rendered by smtp-relay-operator from SmtpRelay mail\/outbound;/);
});

test('workers follow the CPU the pod may use: its limit rounded up, else its request, else 1, always written (the relay alone would take every core)', () => {
  const withResources = (resources: { requests?: Record<string, string | number>; limits?: Record<string, string | number> }) => {
    const r = full();
    r.spec.resources = resources;
    return buildRelayConfig(r);
  };
  assert.equal(buildRelayConfig(full()).workers, 1, 'the default limit (1 CPU): one process');
  assert.equal(withResources({ limits: { cpu: '2', memory: '512Mi' }, requests: { cpu: '500m' } }).workers, 2);
  assert.equal(withResources({ limits: { cpu: '2500m' } }).workers, 3);
  assert.equal(withResources({ limits: { cpu: 4 } }).workers, 4);
  assert.equal(withResources({ limits: { memory: '512Mi' }, requests: { cpu: '1500m' } }).workers, 2, 'no CPU limit: the request');
  assert.equal(withResources({ limits: { cpu: '500m' } }).workers, 1);
  assert.equal(withResources({}).workers, 1, 'no CPU limit or request: one process, not every core of the node');
  // the ConfigMap's YAML carries it at the top level, where the relay reads it (test/unit/relay/config.test.ts)
  const r = full();
  r.spec.resources = { limits: { cpu: '3' } };
  assert.match(buildConfigMap(r, buildRelayConfig(r)).data[CONFIG_KEY]!, /^workers: 3$/m);
});
