// Upstream OAuth2 end to end: the real relay process logs in to an upstream SMTP server
// (test/harness/support/sink.ts, XOAUTH2 only; test/harness/support/sasl-upstream.ts,
// OAUTHBEARER and XOAUTH2 on the wire) with access tokens from a token endpoint played by
// the test (test/harness/support/token-endpoint.ts). The upstream verifies each token's
// signature, audience, expiry and subject, as Exchange Online and Gmail do.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { createPki, type CertFiles, type Pki } from '../harness/support/pki.js';
import { startSaslUpstream, type SaslRefusal, type SaslUpstream } from '../harness/support/sasl-upstream.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { GOOGLE_AUDIENCE, MICROSOFT_AUDIENCE, startTokenEndpoint, type TokenEndpoint } from '../harness/support/token-endpoint.js';
import { delay, message, sendPooled, SecretDir, startRelay, tempDir, type RelayProcess } from './harness.js';
import { control } from './control-client.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['*@contoso.com', '*@example.com'] };
const CLIENT = { id: '00000000-aaaa-bbbb-cccc-000000000001', secret: 'client-secret-Q8~x.NOT-FOR-LOGS' };
const MAILBOX = 'relay@contoso.com';
const SA = { email: 'relay@project-1.iam.gserviceaccount.com', ...generateKeyPairSync('rsa', { modulusLength: 2048 }) };

let pki: Pki;
let dir: string;
let endpoint: TokenEndpoint;
/** The control token (GET /upstream). */
const CONTROL_TOKEN = 'ctl-token-oauth2-2b7e91c4d0';
let controlDir: SecretDir;
/** What the upstream does with a token it verified: accept, or refuse with this reply. */
let upstreamRefusal: { code: number; message: string } | { challenge: Record<string, string> } | undefined;
const upstreamSaw: { user: string; ok: boolean; why?: string }[] = [];

async function upstream(audience: string, user: string): Promise<Sink> {
  return startSink({
    pki,
    oauth2: {
      async check(u, token) {
        try {
          const claims = await endpoint.verifyAccessToken(token, audience);
          if (u !== user) throw new Error(`XOAUTH2 user ${u} is not ${user}`);
          if (audience === GOOGLE_AUDIENCE && claims.sub !== user) throw new Error(`token for ${claims.sub}, not ${user}`);
        } catch (err) {
          upstreamSaw.push({ user: u, ok: false, why: (err as Error).message });
          return { code: 535, message: '5.7.3 Authentication unsuccessful' };
        }
        upstreamSaw.push({ user: u, ok: true });
        return upstreamRefusal;
      },
    },
  });
}

before(async () => {
  pki = await createPki({ caName: 'oauth2 test CA' });
  dir = await tempDir('relay-oauth2-');
  controlDir = await SecretDir.create(dir, 'control-token', { token: `${CONTROL_TOKEN}\n` });
  endpoint = await startTokenEndpoint({ pki, client: CLIENT, serviceAccount: { email: SA.email, publicKey: SA.publicKey }, mailbox: MAILBOX });
  await writeFile(join(dir, 'client-secret'), `${CLIENT.secret}\n`, { mode: 0o600 });
  await writeFile(
    join(dir, 'service-account.json'),
    JSON.stringify({
      type: 'service_account',
      project_id: 'project-1',
      private_key_id: 'k1',
      private_key: SA.privateKey.export({ type: 'pkcs8', format: 'pem' }),
      client_email: SA.email,
      client_id: '1234567890',
      token_uri: endpoint.googleUrl,
    }),
    { mode: 0o600 },
  );
});
after(async () => {
  await endpoint?.stop();
  await pki?.cleanup();
});

async function relayFor(sink: { port: number }, oauth2: string, queue?: string): Promise<RelayProcess> {
  return startRelay({
    dir,
    cert: await pki.issue({ name: `relay-${Date.now()}` }),
    users: [APP],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: pki.ca.certFile },
    upstreamExtra: `  oauth2:\n${oauth2}`,
    metricsExtra: `controlTokenFile: ${controlDir.file('token')}`,
    ...(queue ? { queue } : {}),
  });
}

const microsoft = () => `    user: ${MAILBOX}\n    microsoft: {tenantId: contoso.onmicrosoft.com, clientId: "${CLIENT.id}", clientSecretFile: ${join(dir, 'client-secret')}, tokenUrl: "${endpoint.microsoftUrl('contoso.onmicrosoft.com')}"}\n`;

/** Sends `n` messages at once over a pooled client; the replies. */
function send(relay: RelayProcess, n: number, tag: string, from = 'app@contoso.com'): Promise<string[]> {
  return sendPooled(relay, { ca: pki.ca.certPem, user: APP, from, n, tag, maxConnections: 5 });
}

/** GET /upstream (relay/control.ts): the upstream's verdict on the relay's login. */
async function upstreamState(relay: RelayProcess): Promise<Record<string, unknown>> {
  const r = await control(relay, 'GET', '/upstream', CONTROL_TOKEN);
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json;
}

/** No access token, client secret or private key text in anything the relay wrote (or answered: `answers`). */
function assertNoSecretsLogged(relay: RelayProcess, ...answers: unknown[]): void {
  const text = JSON.stringify(relay.logs) + relay.stderr + JSON.stringify(answers);
  for (const token of endpoint.issued) {
    assert.ok(!text.includes(token), 'an access token was logged');
    assert.ok(!text.includes(token.split('.')[2]!), 'an access token signature was logged');
  }
  assert.ok(!text.includes(CLIENT.secret), 'the client secret was logged');
  assert.ok(!text.includes('PRIVATE KEY'), 'a private key was logged');
}

describe('upstream OAuth2', () => {
  test('Microsoft client credentials: tokens from the token endpoint (played by the test) are verified upstream; on expiry under load one refresh serves every connection', async () => {
    endpoint.behaviour.lifetimeS = 4;
    const start = { ...endpoint.requests };
    const sink = await upstream(MICROSOFT_AUDIENCE, MAILBOX);
    const relay = await relayFor(sink, microsoft());
    try {
      const first = await send(relay, 20, 'burst 1');
      assert.deepEqual(first.filter((r) => !r.startsWith('250')), [], 'every message accepted');
      assert.equal(endpoint.requests.microsoft - start.microsoft, 1, 'one token for 20 deliveries on up to 5 upstream connections');
      // Past the token's expiry: a stale token would be refused by the upstream (it checks exp).
      await delay(4500);
      sink.dropConnections();
      const second = await send(relay, 20, 'burst 2');
      assert.deepEqual(second.filter((r) => !r.startsWith('250')), [], 'every message accepted after the refresh');
      assert.equal(endpoint.requests.microsoft - start.microsoft, 2, 'exactly one refresh however many new connections asked at once');
      await sink.waitForMessages(40);
      assert.ok(upstreamSaw.every((s) => s.ok), JSON.stringify(upstreamSaw.filter((s) => !s.ok)));
      assert.equal(await relay.metric('smtp_relay_upstream_token_requests_total', { result: 'success' }), 2);
      assert.ok((await relay.metric('smtp_relay_upstream_token_expiry_timestamp_seconds')) > Date.now() / 1000);
      assertNoSecretsLogged(relay);
    } finally {
      endpoint.behaviour.lifetimeS = 3599;
      await relay.stop();
      await sink.stop();
    }
  });

  test('Google service account: the assertion is verified by the token endpoint (played by the test) with the service account key, and the upstream gets a token for the delegated user', async () => {
    upstreamSaw.length = 0;
    const user = 'billing@example.com';
    const sink = await upstream(GOOGLE_AUDIENCE, user);
    const relay = await relayFor(sink, `    user: ${user}\n    google: {serviceAccountFile: ${join(dir, 'service-account.json')}}\n`);
    try {
      const replies = await send(relay, 3, 'google', 'billing@example.com');
      assert.deepEqual(replies.filter((r) => !r.startsWith('250')), [], 'every message accepted');
      const msgs = await sink.waitForMessages(3, 10_000);
      assert.ok(msgs.every((m) => m.user === user));
      assert.deepEqual(endpoint.refusals, [], 'the assertion verified');
      assert.equal(endpoint.requests.google, 1);
      assert.ok(upstreamSaw.length > 0 && upstreamSaw.every((s) => s.ok), JSON.stringify(upstreamSaw));
      assertNoSecretsLogged(relay);
    } finally {
      await relay.stop();
      await sink.stop();
    }
  });

  test('Gmail-style refusal (334 JSON challenge, then 535): one more try with the same fresh token, no token request, then 451 and the refusal logged', async () => {
    const user = 'billing@example.com';
    const sink = await upstream(GOOGLE_AUDIENCE, user);
    upstreamRefusal = { challenge: { status: '400', schemes: 'Bearer', scope: GOOGLE_AUDIENCE } };
    const before = endpoint.requests.google;
    const relay = await relayFor(sink, `    user: ${user}\n    google: {serviceAccountFile: ${join(dir, 'service-account.json')}}\n`);
    try {
      const [reply] = await send(relay, 1, 'challenged', user);
      assert.match(reply!, /^451 .*Upstream authentication failed/);
      assert.equal(sink.authFailures, 2, 'nodemailer retried once after the challenge');
      assert.equal(endpoint.requests.google - before, 1, 'a token younger than a minute is not fetched again');
      await relay.waitForLog((l) => l.event === 'upstream_auth_refused' && l.provider === 'google');
      assertNoSecretsLogged(relay);
    } finally {
      upstreamRefusal = undefined;
      await relay.stop();
      await sink.stop();
    }
  });

  test('token endpoint (played by the test) down: inline deliveries are deferred with 451 and the reason is logged and counted; they go through once it is back', async () => {
    const sink = await upstream(MICROSOFT_AUDIENCE, MAILBOX);
    endpoint.behaviour.mode = 'unavailable';
    const relay = await relayFor(sink, microsoft());
    try {
      const replies = await send(relay, 3, 'outage');
      assert.deepEqual(replies, replies.map(() => '451 4.7.0 Upstream temporarily refused the message, try again later: 4.7.0 Upstream login token unavailable, try again later'));
      const line = await relay.waitForLog((l) => l.event === 'upstream_token_failed');
      assert.match(String(line.error), /HTTP 503: temporarily_unavailable/);
      assert.equal(await relay.metric('smtp_relay_upstream_errors_total', { kind: 'token' }), 3);
      assert.ok((await relay.metric('smtp_relay_upstream_token_requests_total', { result: 'refused' })) >= 1);
      assert.equal(sink.messages.length, 0);
      endpoint.behaviour.mode = 'ok';
      await delay(1100); // the first backoff after a failure
      const later = await send(relay, 2, 'recovered');
      assert.deepEqual(later.filter((r) => !r.startsWith('250')), [], 'accepted once the endpoint is back');
      await sink.waitForMessages(2, 5000);
      assertNoSecretsLogged(relay);
    } finally {
      endpoint.behaviour.mode = 'ok';
      await relay.stop();
      await sink.stop();
    }
  });

  test('token endpoint (played by the test) down in queue mode: messages are held (250 queued) and delivered after it recovers', async () => {
    const sink = await upstream(MICROSOFT_AUDIENCE, MAILBOX);
    endpoint.behaviour.mode = 'reset';
    const relay = await relayFor(sink, microsoft(), `{directory: ${join(dir, `spool-${Date.now()}`)}, retry: {initialDelay: 1s, maxDelay: 2s}}`);
    try {
      const replies = await send(relay, 4, 'queued');
      assert.deepEqual(replies.filter((r) => !/^250 2\.0\.0 Ok: queued as /.test(r)), []);
      await relay.waitForLog((l) => l.event === 'upstream_token_failed' && /unreachable/.test(String(l.error)));
      await delay(1500);
      assert.equal(sink.messages.length, 0, 'held while no token can be had');
      assert.ok((await relay.metric('smtp_relay_upstream_token_requests_total', { result: 'unreachable' })) >= 1);
      endpoint.behaviour.mode = 'ok';
      const got = await sink.waitForMessages(4, 20_000);
      assert.equal(got.length, 4);
      assertNoSecretsLogged(relay);
    } finally {
      endpoint.behaviour.mode = 'ok';
      await relay.stop();
      await sink.stop();
    }
  });

  test('the upstream refuses a valid token (Exchange: 5.7.139): logged with its words, counted, shown by smtp_relay_upstream_auth_refused, the client gets 451', async () => {
    const sink = await upstream(MICROSOFT_AUDIENCE, MAILBOX);
    upstreamRefusal = { code: 535, message: '5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.' };
    const relay = await relayFor(sink, microsoft());
    try {
      const [reply] = await send(relay, 1, 'refused');
      assert.match(reply!, /^451 4\.7\.0 .*Upstream authentication failed, try again later \(upstream said: 535 5\.7\.139 Authentication unsuccessful/);
      const line = await relay.waitForLog((l) => l.event === 'upstream_auth_refused');
      assert.equal(line.method, 'XOAUTH2');
      assert.equal(line.provider, 'microsoft');
      assert.match(String(line.upstreamReply), /5\.7\.139 Authentication unsuccessful, SmtpClientAuthentication is disabled/);
      assert.match(String(line.hint), /Set-CASMailbox/);
      assert.equal(await relay.metric('smtp_relay_upstream_auth_refused'), 1);
      assert.ok((await relay.metric('smtp_relay_upstream_errors_total', { kind: 'auth' })) >= 1);
      const refused = await upstreamState(relay);
      assert.equal(refused.authRefused, true);
      assert.equal(refused.authentication, 'oauth2');
      assert.equal(refused.mechanism, 'XOAUTH2');
      assert.equal(refused.reply, '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.');
      upstreamRefusal = undefined;
      assert.deepEqual((await send(relay, 1, 'fixed')).map((r) => r.slice(0, 3)), ['250']);
      assert.equal(await relay.metric('smtp_relay_upstream_auth_refused'), 0, 'cleared by the next successful login');
      const cleared = await upstreamState(relay);
      assert.equal(cleared.authRefused, false);
      assert.ok(cleared.lastSuccess);
      assertNoSecretsLogged(relay, refused, cleared);
    } finally {
      upstreamRefusal = undefined;
      await relay.stop();
      await sink.stop();
    }
  });
});

describe('upstream OAuth2: OAUTHBEARER (RFC 7628) where the upstream offers it, else XOAUTH2', () => {
  const GMAIL = ['LOGIN', 'PLAIN', 'XOAUTH2', 'PLAIN-CLIENTTOKEN', 'OAUTHBEARER', 'XOAUTH'];
  const EXCHANGE = ['LOGIN', 'XOAUTH2'];
  const GOOGLE_USER = 'billing@example.com';
  const google = (extra = '') => `    user: ${GOOGLE_USER}\n${extra}    google: {serviceAccountFile: ${join(dir, 'service-account.json')}}\n`;
  let cert: CertFiles;
  /** What the upstream does with a token it verified: accept (undefined) or refuse. */
  let refusal: SaslRefusal | undefined;
  const verified: { mechanism: string; ok: boolean; why?: string }[] = [];

  before(async () => {
    cert = await pki.issue({ name: 'sasl-upstream' });
  });

  /** Nor any SASL message the relay sent (the token base64-encoded inside it). */
  function assertNoSaslLogged(relay: RelayProcess, up: SaslUpstream): void {
    const text = JSON.stringify(relay.logs) + relay.stderr;
    assert.ok(up.auths.length > 0);
    for (const a of up.auths) assert.ok(!text.includes(a.initial.toString('base64')), `the ${a.mechanism} message was logged`);
  }

  function saslUpstream(mechanisms: string[], audience: string, user: string): Promise<SaslUpstream> {
    return startSaslUpstream({
      cert,
      mechanisms,
      async check(mechanism, u, token) {
        try {
          if (u !== user) throw new Error(`user ${u} is not ${user}`);
          const claims = await endpoint.verifyAccessToken(token ?? '', audience);
          if (audience === GOOGLE_AUDIENCE && claims.sub !== user) throw new Error(`token for ${claims.sub}, not ${user}`);
        } catch (err) {
          verified.push({ mechanism, ok: false, why: (err as Error).message });
          return { challenge: { status: 'invalid_token', schemes: 'bearer', scope: audience } };
        }
        verified.push({ mechanism, ok: true });
        return refusal;
      },
    });
  }

  test('an upstream that offers OAUTHBEARER (Gmail) gets it: the initial response is byte for byte n,a=<user>,^Ahost=<host>^Aport=<port>^Aauth=Bearer <token>^A^A; one token serves every connection', async () => {
    verified.length = 0;
    const up = await saslUpstream(GMAIL, GOOGLE_AUDIENCE, GOOGLE_USER);
    const before = endpoint.requests.google;
    const relay = await relayFor(up, google());
    try {
      const replies = await send(relay, 8, 'bearer', GOOGLE_USER);
      assert.deepEqual(replies.filter((r) => !r.startsWith('250')), [], 'every message accepted');
      await up.waitForMessages(8);
      assert.equal(endpoint.requests.google - before, 1, 'one token for every connection');
      const token = endpoint.issued.at(-1)!;
      assert.ok(up.auths.length >= 1 && up.auths.length <= 5, `one AUTH per upstream connection (${up.auths.length})`);
      for (const a of up.auths) {
        assert.equal(a.mechanism, 'OAUTHBEARER');
        assert.deepEqual(a.initial, Buffer.from(`n,a=${GOOGLE_USER},\x01host=127.0.0.1\x01port=${up.port}\x01auth=Bearer ${token}\x01\x01`, 'utf8'));
        assert.equal(a.reply, '235 2.7.0 Accepted');
      }
      assert.deepEqual(up.protocolErrors, []);
      assert.ok(verified.length > 0 && verified.every((v) => v.ok), JSON.stringify(verified));
      const chosen = await relay.waitForLog((l) => l.event === 'upstream_auth_mechanism');
      assert.equal(chosen.method, 'OAUTHBEARER');
      assert.equal(chosen.configured, 'auto');
      assert.deepEqual(chosen.offered, GMAIL);
      assert.equal(await relay.metric('smtp_relay_upstream_auth_refused'), 0);
      assertNoSecretsLogged(relay);
      assertNoSaslLogged(relay, up);
    } finally {
      await relay.stop();
      await up.stop();
    }
  });

  test('an upstream that offers only XOAUTH2 (Exchange Online) gets XOAUTH2: user=<user>^Aauth=Bearer <token>^A^A', async () => {
    verified.length = 0;
    const up = await saslUpstream(EXCHANGE, MICROSOFT_AUDIENCE, MAILBOX);
    const relay = await relayFor(up, microsoft());
    try {
      const replies = await send(relay, 3, 'exchange');
      assert.deepEqual(replies.filter((r) => !r.startsWith('250')), [], 'every message accepted');
      await up.waitForMessages(3);
      const token = endpoint.issued.at(-1)!;
      assert.ok(up.auths.length >= 1);
      for (const a of up.auths) {
        assert.equal(a.mechanism, 'XOAUTH2');
        assert.deepEqual(a.initial, Buffer.from(`user=${MAILBOX}\x01auth=Bearer ${token}\x01\x01`, 'utf8'));
      }
      assert.equal((await relay.waitForLog((l) => l.event === 'upstream_auth_mechanism')).method, 'XOAUTH2');
      assertNoSecretsLogged(relay);
    } finally {
      await relay.stop();
      await up.stop();
    }
  });

  test('mechanism: XOAUTH2 is used though OAUTHBEARER is offered; mechanism: OAUTHBEARER is sent to an upstream that does not offer it, whose refusal shows with its words', async () => {
    const gmail = await saslUpstream(GMAIL, GOOGLE_AUDIENCE, GOOGLE_USER);
    const forcedX = await relayFor(gmail, google('    mechanism: XOAUTH2\n'));
    try {
      assert.deepEqual((await send(forcedX, 1, 'forced xoauth2', GOOGLE_USER)).map((r) => r.slice(0, 3)), ['250']);
      assert.deepEqual(gmail.auths.map((a) => a.mechanism), ['XOAUTH2']);
      assertNoSecretsLogged(forcedX);
    } finally {
      await forcedX.stop();
      await gmail.stop();
    }
    const exchange = await saslUpstream(EXCHANGE, MICROSOFT_AUDIENCE, MAILBOX);
    const forcedB = await relayFor(exchange, `    mechanism: OAUTHBEARER\n${microsoft()}`);
    try {
      const [reply] = await send(forcedB, 1, 'forced oauthbearer');
      assert.match(reply!, /^451 4\.7\.0 .*Upstream authentication failed, try again later \(upstream said: 504 5\.7\.4 Unrecognized authentication type\)/);
      const line = await forcedB.waitForLog((l) => l.event === 'upstream_auth_refused');
      assert.equal(line.method, 'OAUTHBEARER');
      assert.equal(line.upstreamReply, '504 5.7.4 Unrecognized authentication type');
      assert.match(String(line.hint), /mechanism at auto/);
      assert.equal(await forcedB.metric('smtp_relay_upstream_auth_refused'), 1);
      assert.deepEqual(exchange.auths, [], 'the upstream never took an OAUTHBEARER message');
      assertNoSecretsLogged(forcedB);
    } finally {
      await forcedB.stop();
      await exchange.stop();
    }
  });

  test('a refused token: the 334 JSON error challenge is answered with a lone ^A, then 535; the client gets 451 with the upstream\'s words, the log names the challenge, the gauge shows it; a token younger than a minute is neither fetched again nor retried', async () => {
    const up = await saslUpstream(GMAIL, GOOGLE_AUDIENCE, GOOGLE_USER);
    refusal = { challenge: { status: 'invalid_token', schemes: 'bearer', scope: GOOGLE_AUDIENCE }, code: 535, message: '5.7.8 Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials' };
    const before = endpoint.requests.google;
    const relay = await relayFor(up, google());
    try {
      const [reply] = await send(relay, 1, 'refused', GOOGLE_USER);
      assert.match(reply!, /^451 4\.7\.0 .*Upstream authentication failed, try again later \(upstream said: 535 5\.7\.8 Username and Password not accepted/);
      assert.equal(up.auths.length, 1, 'no second AUTH with the same token');
      const [a] = up.auths;
      assert.equal(a!.mechanism, 'OAUTHBEARER');
      assert.deepEqual(a!.followUp, ['AQ=='], 'the client answered the error challenge with a lone ^A');
      assert.match(a!.reply, /^535 5\.7\.8 /);
      assert.deepEqual(up.protocolErrors, []);
      assert.equal(endpoint.requests.google - before, 1, 'a token younger than a minute is not fetched again');
      const line = await relay.waitForLog((l) => l.event === 'upstream_auth_refused');
      assert.equal(line.method, 'OAUTHBEARER');
      assert.equal(line.provider, 'google');
      assert.match(String(line.upstreamReply), /^535 5\.7\.8 Username and Password not accepted/);
      assert.deepEqual(line.upstreamChallenge, { status: 'invalid_token', scope: GOOGLE_AUDIENCE, schemes: 'bearer' });
      assert.match(String(line.hint), /domain-wide delegation/);
      assert.equal(await relay.metric('smtp_relay_upstream_auth_refused'), 1);
      assert.ok((await relay.metric('smtp_relay_upstream_errors_total', { kind: 'auth' })) >= 1);
      // GET /upstream: the final reply's words and the challenge decoded, never its base64
      const refused = await upstreamState(relay);
      assert.equal(refused.authRefused, true);
      assert.equal(refused.mechanism, 'OAUTHBEARER');
      assert.match(String(refused.reply), /^535 5\.7\.8 Username and Password not accepted\. For more information, go to https:\/\/support\.google\.com\/mail\/\?p=BadCredentials$/);
      assert.deepEqual(refused.challenge, { status: 'invalid_token', scope: GOOGLE_AUDIENCE, schemes: 'bearer' });
      const challengeB64 = Buffer.from(JSON.stringify({ status: 'invalid_token', schemes: 'bearer', scope: GOOGLE_AUDIENCE })).toString('base64');
      assert.ok(!JSON.stringify(refused).includes(challengeB64.slice(0, 20)), 'the 334 challenge is not echoed');
      refusal = undefined;
      assert.deepEqual((await send(relay, 1, 'fixed', GOOGLE_USER)).map((r) => r.slice(0, 3)), ['250']);
      assert.equal(await relay.metric('smtp_relay_upstream_auth_refused'), 0, 'cleared by the next successful login');
      const cleared = await upstreamState(relay);
      assert.equal(cleared.authRefused, false);
      assert.equal(cleared.challenge, undefined);
      assertNoSecretsLogged(relay, refused, cleared);
      assertNoSaslLogged(relay, up);
      assert.ok(!JSON.stringify([refused, cleared]).includes(up.auths[0]!.initial.toString('base64')), 'no SASL message in GET /upstream');
    } finally {
      refusal = undefined;
      await relay.stop();
      await up.stop();
    }
  });
});
