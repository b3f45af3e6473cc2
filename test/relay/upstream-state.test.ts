// GET /upstream (relay/control.ts, relay/upstream-login.ts) against the real relay process:
// the upstream (test/harness/support/sink.ts, a real smtp-server with PLAIN/LOGIN) refuses
// the relay's password, and the endpoint shows the refusal with the upstream's words and
// none of the password; a later login that succeeds clears it. The same behind the control
// token (401 without it), in a 2-worker inline relay (a worker logs in, the primary
// answers) and in a 2-worker queue-mode relay (the primary logs in). Token logins
// (XOAUTH2, OAUTHBEARER with its 334 challenge): test/relay/oauth2-upstream.test.ts.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import { createPki, type Pki } from '../harness/support/pki.js';
import { waitFor } from '../harness/support/poll.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { SecretDir, sendPooled, startRelay, tempDir, type RelayProcess } from './harness.js';
import { control } from './control-client.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const TOKEN = 'ctl-token-upstream-7c1e5a9d3b';
const UPSTREAM_USER = 'relay@example.com';
const RIGHT = 'upstream-password-Vq83-right';
const WRONG = 'upstream-password-Vq83-WRONG';

let pki: Pki;
let dir: string;
let tokenDir: SecretDir;
let credentials: SecretDir;

before(async () => {
  pki = await createPki();
  dir = await tempDir('relay-upstream-state-');
  tokenDir = await SecretDir.create(dir, 'control-token', { token: `${TOKEN}\n` });
  // the relay logs in with WRONG until a test says otherwise
  credentials = await SecretDir.create(dir, 'upstream-credentials', { username: UPSTREAM_USER, password: WRONG });
});

after(async () => {
  await pki?.cleanup();
});

/** The sink takes `accepted.pass` as it is at each AUTH: a test changes it to fix the login. */
async function upstream(): Promise<{ sink: Sink; accepted: { user: string; pass: string } }> {
  const accepted = { user: UPSTREAM_USER, pass: RIGHT };
  return { sink: await startSink({ pki, auth: accepted }), accepted };
}

async function relayFor(sink: Sink, o: { workers?: number; queue?: string } = {}): Promise<RelayProcess> {
  return startRelay({
    dir,
    cert: await pki.issue({ name: `relay-${Date.now()}` }),
    users: [APP],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    upstreamExtra: `  usernameFile: ${credentials.file('username')}\n  passwordFile: ${credentials.file('password')}\n`,
    metricsExtra: `controlTokenFile: ${tokenDir.file('token')}`,
    ...(o.workers ? { workers: o.workers } : {}),
    ...(o.queue ? { queue: o.queue } : {}),
  });
}

const send = (relay: RelayProcess, tag: string) => sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 1, tag });

async function upstreamState(relay: RelayProcess): Promise<Record<string, unknown>> {
  const r = await control(relay, 'GET', '/upstream', TOKEN);
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json;
}

/** Neither password (nor its base64 in a SASL message) in anything the relay said. */
function assertNoPassword(relay: RelayProcess, ...answers: unknown[]): void {
  const text = JSON.stringify(answers) + JSON.stringify(relay.logs) + relay.stderr;
  for (const p of [RIGHT, WRONG]) {
    assert.ok(!text.includes(p), 'a password was shown');
    assert.ok(!text.includes(Buffer.from(`\0${UPSTREAM_USER}\0${p}`).toString('base64')), 'an AUTH PLAIN message was shown');
  }
}

describe('GET /upstream', () => {
  test('a refused password shows with the upstream\'s words and mechanism, no password; a later good login clears it; no or a wrong bearer token: 401', async () => {
    const { sink, accepted } = await upstream();
    const relay = await relayFor(sink);
    try {
      for (const token of [undefined, `${TOKEN}x`, TOKEN.slice(0, -1)]) {
        const r = await control(relay, 'GET', '/upstream', token);
        assert.equal(r.status, 401, `token ${token === undefined ? 'absent' : 'wrong'}`);
        assert.deepEqual(r.json, { error: 'unauthorized' });
      }
      assert.equal((await control(relay, 'POST', '/upstream', TOKEN)).status, 405);
      const fresh = await upstreamState(relay);
      assert.deepEqual(fresh, { pod: fresh.pod, host: '127.0.0.1', port: sink.port, authentication: 'password', authRefused: false }, 'no login yet');

      const [reply] = await send(relay, 'refused');
      assert.match(reply!, /^451 4\.7\.0 .*Upstream authentication failed/);
      const refused = await upstreamState(relay);
      assert.equal(refused.authRefused, true);
      assert.equal(refused.reply, '535 5.7.8 Authentication credentials invalid', 'the upstream\'s code and words');
      assert.equal(refused.mechanism, 'PLAIN', 'nodemailer takes the first mechanism the upstream offers');
      assert.ok(Date.parse(String(refused.since)) <= Date.now() && refused.since === refused.lastRefusal, JSON.stringify(refused));
      assert.equal(refused.lastSuccess, undefined);
      assert.equal(await relay.metric('smtp_relay_upstream_auth_refused'), 1);

      const [again] = await send(relay, 'refused again');
      assert.match(again!, /^451 /);
      const still = await upstreamState(relay);
      assert.equal(still.since, refused.since, 'refused since the first refusal');
      assert.ok(Date.parse(String(still.lastRefusal)) > Date.parse(String(refused.lastRefusal)));

      accepted.pass = WRONG; // the upstream now takes what the relay sends
      assert.deepEqual((await send(relay, 'fixed')).map((r) => r.slice(0, 3)), ['250']);
      const cleared = await upstreamState(relay);
      assert.equal(cleared.authRefused, false);
      assert.equal(cleared.reply, undefined);
      assert.equal(cleared.since, undefined);
      assert.equal(cleared.mechanism, 'PLAIN');
      assert.ok(Date.parse(String(cleared.lastSuccess)) >= Date.parse(String(still.lastRefusal)));
      assertNoPassword(relay, refused, still, cleared);
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
      await sink.stop();
    }
  });

  test('a 2-worker inline relay: the primary answers with what its workers saw (the refusal in one, cleared by a success in any)', async () => {
    const { sink, accepted } = await upstream();
    const relay = await relayFor(sink, { workers: 2 });
    try {
      assert.equal((await upstreamState(relay)).authRefused, false);
      const [reply] = await send(relay, 'refused');
      assert.match(reply!, /^451 /);
      const refused = await upstreamState(relay);
      assert.equal(refused.authRefused, true, JSON.stringify(refused));
      assert.equal(refused.reply, '535 5.7.8 Authentication credentials invalid');
      // the refusal came from a worker: the primary itself has no upstream in inline mode
      const worker = await relay.waitForLog((l) => l.event === 'upstream_auth_refused');
      assert.ok(worker.worker, 'logged by a worker');
      accepted.pass = WRONG;
      // round robin: two sends reach both workers
      for (const tag of ['fixed 1', 'fixed 2']) assert.deepEqual((await send(relay, tag)).map((r) => r.slice(0, 3)), ['250']);
      const cleared = await upstreamState(relay);
      assert.equal(cleared.authRefused, false, JSON.stringify(cleared));
      assert.ok(cleared.lastSuccess);
      assertNoPassword(relay, refused, cleared);
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
      await sink.stop();
    }
  });

  test('a 2-worker queue-mode relay: the primary delivers, and its own refusal shows; the retry that logs in clears it', async () => {
    const { sink, accepted } = await upstream();
    const relay = await relayFor(sink, { workers: 2, queue: `{directory: ${join(dir, `spool-${Date.now()}`)}, retry: {initialDelay: 1s, maxDelay: 1s}}` });
    try {
      assert.deepEqual((await send(relay, 'queued')).map((r) => r.slice(0, 3)), ['250'], 'queued');
      const refused = await waitFor('the refusal in GET /upstream', async () => {
        const s = await upstreamState(relay);
        return s.authRefused ? s : undefined;
      }, 15_000);
      assert.equal(refused.reply, '535 5.7.8 Authentication credentials invalid');
      assert.ok(!(await relay.waitForLog((l) => l.event === 'upstream_auth_refused')).worker, 'logged by the primary');
      accepted.pass = WRONG;
      await sink.waitForMessages(1, 15_000);
      const cleared = await waitFor('the refusal cleared', async () => {
        const s = await upstreamState(relay);
        return s.authRefused ? undefined : s;
      }, 5_000);
      assert.ok(cleared.lastSuccess);
      assertNoPassword(relay, refused, cleared);
    } finally {
      assert.equal(await relay.stop(), 0, relay.stderr);
      await sink.stop();
    }
  });
});
