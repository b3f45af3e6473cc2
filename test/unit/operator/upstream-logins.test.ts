import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dnsRelayPods, logsInUpstream } from '../../../operator/upstream-logins.js';
import { relayFixture } from '../../harness/smtprelay/fixtures.js';

test("a relay's pods are the A/AAAA records of its headless peers Service, asked on the metrics port", async () => {
  const asked: string[] = [];
  const pods = await dnsRelayPods(relayFixture(), async (name) => {
    asked.push(name);
    return ['10.244.0.7', 'fd00:10:244::7', '10.244.0.7'];
  });
  assert.deepEqual(asked, ['outbound-peers.mail.svc'], 'relative: the search path adds the cluster domain');
  assert.deepEqual(pods, [{ address: '10.244.0.7:9090' }, { address: '[fd00:10:244::7]:9090' }]);
});

test('a Service without records has no pods; a failing resolver is an error (the last answers stay)', async () => {
  const fail = (code: string) => async () => {
    throw Object.assign(new Error(code), { code });
  };
  assert.deepEqual(await dnsRelayPods(relayFixture(), fail('ENOTFOUND')), []);
  assert.deepEqual(await dnsRelayPods(relayFixture(), fail('ENODATA')), []);
  await assert.rejects(dnsRelayPods(relayFixture(), fail('ETIMEOUT')), /ETIMEOUT/);
});

test('only a relay that logs in upstream (password or OAuth2) is asked', () => {
  assert.equal(logsInUpstream(relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, credentialsSecretRef: undefined, oauth2: undefined }))), false);
  assert.equal(logsInUpstream(relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, credentialsSecretRef: { name: 'up' } }))), true);
  assert.equal(logsInUpstream(relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, credentialsSecretRef: undefined, oauth2: { user: 'relay@contoso.com', microsoft: { tenantId: 't', clientId: 'c', clientSecretRef: { name: 's', key: 'client-secret' } } } }))), true);
});
