// ServiceAccount-token logins on the real relay process. The test plays the
// Kubernetes API server's token issuer (test/harness/support/token-issuer.ts:
// its own key, its JWKS in jwks.json beside users.yaml, and the claims of a
// bound token); the relay verifies offline, as in a pod without API access.

import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { after, before, describe, test } from 'node:test';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { TEST_ISSUER, TestTokenIssuer } from '../harness/support/token-issuer.js';
import { oauthBearerMessage } from '../../relay/oauthbearer.js';
import { RawSmtp, message, startRelay, stopAll, tempDir, type RelayProcess } from './harness.js';

const AUDIENCE = 'smtprelay.dev/mail/outbound';
const SA_USER = { name: 'reports', serviceAccount: { namespace: 'apps', name: 'reports' }, allowedSenders: ['reports@example.com'] };
const good = { namespace: 'apps', serviceAccount: 'reports', audience: AUDIENCE };

let pki: Pki;
let sink: Sink;
let relay: RelayProcess;
let issuer: TestTokenIssuer;

before(async () => {
  const dir = await tempDir('relay-sa-token-');
  pki = await createPki();
  sink = await startSink({ pki });
  issuer = await TestTokenIssuer.create('key-1');
  relay = await startRelay({
    dir,
    cert: await pki.issue({ name: 'relay' }),
    users: [{ name: 'alice', password: 'alice-password-12345', allowedSenders: ['alice@example.com'] }],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    lockout: '{maxFailures: 4, window: 10m, duration: 15m}',
    tokens: { issuer: TEST_ISSUER, audience: AUDIENCE, jwks: issuer.jwks, users: [SA_USER] },
  });
});

after(() => stopAll(relay, sink, pki));

async function login(user: string, pass: string): Promise<number | undefined> {
  const c = await RawSmtp.connect(relay.ports.submission);
  await c.cmd('EHLO app.test');
  await c.starttls();
  await c.cmd('EHLO app.test');
  const r = await c.login(user, pass);
  c.close();
  return r?.code;
}

describe('ServiceAccount-token logins (the test plays the API server\'s token issuer)', () => {
  test('a token minted by the test issuer for the relay\'s audience logs in with AUTH PLAIN and mail is relayed; the log names the pod', async () => {
    const token = await issuer.token({ ...good, pod: 'reports-5d8c9-abcde' });
    const before = sink.messages.length;
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: relay.ports.submission, requireTLS: true, auth: { user: SA_USER.name, pass: token }, tls: { ca: pki.ca.certPem, servername: 'localhost' } });
    const info = await t.sendMail({ envelope: { from: 'reports@example.com', to: ['boss@example.net'] }, raw: message('reports@example.com', 'boss@example.net', 'monthly report') });
    t.close();
    assert.match(info.response, /^250 /);
    await sink.waitForMessages(before + 1);
    const line = await relay.waitForLog((l) => l.event === 'auth_success' && l.user === 'reports');
    assert.equal(line.pod, 'reports-5d8c9-abcde');
    assert.equal(JSON.stringify(relay.logs).includes(token), false, 'the token is never logged');
  });

  test('the same token works as an XOAUTH2 access token, which the relay advertises with token logins', async () => {
    const c = await RawSmtp.connect(relay.ports.submission);
    await c.cmd('EHLO app.test');
    await c.starttls();
    const ehlo = await c.cmd('EHLO app.test');
    assert.match(JSON.stringify(ehlo), /AUTH PLAIN LOGIN XOAUTH2/);
    const token = await issuer.token(good);
    const r = await c.cmd(`AUTH XOAUTH2 ${Buffer.from(`user=${SA_USER.name}\x01auth=Bearer ${token}\x01\x01`).toString('base64')}`);
    c.close();
    assert.equal(r?.code, 235);
  });

  test('wrong audience, expired, another ServiceAccount and another key are each refused with 535', async () => {
    const other = await TestTokenIssuer.create('key-1');
    for (const [what, token] of [
      ['wrong audience', await issuer.token({ ...good, audience: 'https://kubernetes.default.svc' })],
      ['expired', await issuer.token({ ...good, expiresIn: -300 })],
      ['another ServiceAccount', await issuer.token({ ...good, serviceAccount: 'billing' })],
    ] as const) {
      assert.equal(await login(SA_USER.name, token), 535, what);
    }
    // the lockout counts these as failed logins of "reports": the fourth (maxFailures), with another key, locks out
    assert.equal(await login(SA_USER.name, await other.token(good)), 421, 'another key: the fourth failure starts the lockout');
    // the relay's log is read from its stdout: wait for the fourth line before reading all four
    await relay.waitForLog((l) => l.event === 'auth_failure' && l.user === 'reports' && l.reason === 'signature invalid');
    const reasons = relay.logs.filter((l) => l.event === 'auth_failure' && l.user === 'reports').map((l) => l.reason);
    assert.deepEqual(reasons.slice(-4), ['claim aud invalid: check_failed', 'token expired', 'token of another ServiceAccount (sub system:serviceaccount:apps:billing)', 'signature invalid']);
  });

  test('after maxFailures bad tokens the user is locked out: even a good token gets 421', async () => {
    assert.equal(await login(SA_USER.name, await issuer.token(good)), 421);
    assert.ok((await relay.metric('smtp_relay_lockouts_total', { scope: 'user' })) >= 1);
  });
});

describe('AUTH OAUTHBEARER (RFC 7628) with a ServiceAccount token, on a relay of its own (its own lockout counts)', () => {
  let bearerRelay: RelayProcess;
  before(async () => {
    bearerRelay = await startRelay({
      dir: await tempDir('relay-sa-bearer-'),
      cert: await pki.issue({ name: 'relay-bearer' }),
      users: [{ name: 'alice', password: 'alice-password-12345', allowedSenders: ['alice@example.com'] }],
      upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
      tokens: { issuer: TEST_ISSUER, audience: AUDIENCE, jwks: issuer.jwks, users: [SA_USER] },
    });
  });
  after(async () => {
    await bearerRelay?.stop();
  });

  const session = async () => {
    const c = await RawSmtp.connect(bearerRelay.ports.submission);
    await c.cmd('EHLO app.test');
    await c.starttls();
    const ehlo = await c.cmd('EHLO app.test');
    return { c, ehlo: JSON.stringify(ehlo) };
  };
  const bearer = (user: string, token: string) => Buffer.from(oauthBearerMessage(user, 'localhost', bearerRelay.ports.submission, token)).toString('base64');

  test('advertised with token logins; the initial response logs in, and mail goes through', async () => {
    const { c, ehlo } = await session();
    assert.match(ehlo, /AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER/);
    const token = await issuer.token({ ...good, pod: 'reports-oauthbearer' });
    assert.equal((await c.cmd(`AUTH OAUTHBEARER ${bearer(SA_USER.name, token)}`))?.code, 235);
    assert.equal((await c.cmd('MAIL FROM:<reports@example.com>'))?.code, 250, 'authenticated as reports');
    c.close();
    const line = await bearerRelay.waitForLog((l) => l.event === 'auth_success' && l.mechanism === 'OAUTHBEARER');
    assert.equal(line.pod, 'reports-oauthbearer');
    assert.equal(JSON.stringify(bearerRelay.logs).includes(token), false, 'the token is never logged');
  });

  test('the two-step form (AUTH OAUTHBEARER, 334, then the message) logs in too', async () => {
    const { c } = await session();
    assert.equal((await c.cmd('AUTH OAUTHBEARER'))?.code, 334);
    assert.equal((await c.cmd(bearer(SA_USER.name, await issuer.token(good))))?.code, 235);
    c.close();
  });

  test('a refused token gets the error challenge (334 invalid_token), then 535 after the client\'s ^A; it counts as a failed login', async () => {
    const { c } = await session();
    const r = await c.cmd(`AUTH OAUTHBEARER ${bearer(SA_USER.name, await issuer.token({ ...good, expiresIn: -300 }))}`);
    assert.equal(r?.code, 334);
    assert.deepEqual(JSON.parse(Buffer.from(r!.lines.join('').replace(/^334[ -]?/, ''), 'base64').toString('utf8')), { status: 'invalid_token', schemes: 'bearer', scope: '' });
    const final = await c.cmd('AQ==');
    assert.equal(final?.code, 535);
    c.close();
    const failure = await bearerRelay.waitForLog((l) => l.event === 'auth_failure' && l.mechanism === 'OAUTHBEARER');
    assert.equal(failure.reason, 'token expired');
    assert.ok((await bearerRelay.metric('smtp_relay_auth_attempts_total', { mechanism: 'OAUTHBEARER', result: 'failure' })) >= 1);
  });

  test('malformed messages get 501 with what is wrong: no a=, channel binding, no auth=; never the token', async () => {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const token = await issuer.token(good);
    for (const [what, msg, reason] of [
      ['no authorization identity', `n,,\x01auth=Bearer ${token}\x01\x01`, /a=<login name>/],
      ['channel binding', `p=tls-unique,a=reports,\x01auth=Bearer ${token}\x01\x01`, /channel binding/],
      ['no auth=', 'n,a=reports,\x01host=x\x01\x01', /no auth=Bearer/],
      ['not RFC 7628', 'hello', /not an OAUTHBEARER message/],
    ] as const) {
      const { c } = await session();
      const r = await c.cmd(`AUTH OAUTHBEARER ${b64(msg)}`);
      c.close();
      assert.equal(r?.code, 501, what);
      assert.match(r!.lines.join(' '), reason, what);
      assert.equal(r!.lines.join(' ').includes(token), false);
    }
  });
});
