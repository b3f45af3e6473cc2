import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildInternalSecret, controlToken, generateToken } from '../../../../operator/builders/internal.js';
import { buildPeersService } from '../../../../operator/builders/service.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';

test('the internal Secret holds a control and a peer token, 256 random bits each, different, owned by the relay', () => {
  const s = buildInternalSecret(relayFixture());
  assert.equal(s.metadata.name, 'outbound-internal');
  assert.equal(s.metadata.ownerReferences[0]?.uid, relayFixture().metadata.uid);
  assert.deepEqual(Object.keys(s.data).sort(), ['control-token', 'peer-token']);
  const control = Buffer.from(s.data['control-token']!, 'base64').toString('utf8');
  const peer = Buffer.from(s.data['peer-token']!, 'base64').toString('utf8');
  assert.match(control, /^[A-Za-z0-9_-]{43}$/);
  assert.match(peer, /^[A-Za-z0-9_-]{43}$/);
  assert.notEqual(control, peer);
  assert.notEqual(control, Buffer.from(buildInternalSecret(relayFixture()).data['control-token']!, 'base64').toString('utf8'), 'generated anew each time (created once by the caller)');
  assert.equal(controlToken(s), control);
  assert.equal(controlToken({ data: { 'control-token': '' } }), undefined);
  assert.equal(controlToken(undefined), undefined);
  assert.equal(generateToken(() => Buffer.alloc(32, 0xff)), '_'.repeat(42) + '8');
});

test('the peers Service is headless, publishes not-ready pods (a draining pod still hands off) and selects the relay pods on the peer port', () => {
  const svc = buildPeersService(relayFixture());
  assert.equal(svc.metadata.name, 'outbound-peers');
  assert.equal(svc.spec.clusterIP, 'None');
  assert.equal(svc.spec.publishNotReadyAddresses, true);
  assert.deepEqual(svc.spec.selector, { 'app.kubernetes.io/instance': 'outbound', 'app.kubernetes.io/name': 'smtp-relay' });
  assert.deepEqual(svc.spec.ports, [{ name: 'peers', port: 9091, targetPort: 'peers', protocol: 'TCP' }]);
});
