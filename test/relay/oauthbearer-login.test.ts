// The relay's OAUTHBEARER login (relay/upstream-oauth2.ts oauthBearerHandler) run by
// nodemailer's own SMTPConnection, as relay/upstream.ts runs it, against an upstream
// played by the test on loopback (test/harness/support/sasl-upstream.ts) over verified
// TLS, with the relay's token cache (TokenSource) on a fake clock: what a refused token
// does to the cache and to the exchange, which the relay-process suite
// (oauth2-upstream.test.ts) cannot reach without waiting a minute.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { BearerRefused, bearerLogin, oauthBearerHandler, TokenError, TokenSource, type Grant, type TokenRequester } from '../../relay/upstream-oauth2.js';
import { createPki, type CertFiles, type Pki } from '../harness/support/pki.js';
import { startSaslUpstream, type SaslRefusal, type SaslUpstream } from '../harness/support/sasl-upstream.js';

const USER = 'relay@example.com';
let pki: Pki;
let cert: CertFiles;

before(async () => {
  pki = await createPki({ caName: 'oauthbearer test CA' });
  cert = await pki.issue({ name: 'sasl-upstream' });
});
after(async () => {
  await pki?.cleanup();
});

/** A token source on a fake clock whose endpoint hands out tok-1, tok-2, ... (or fails while `down`). */
function tokens() {
  let now = 1_700_000_000_000;
  let n = 0;
  const state = { down: false };
  const request: TokenRequester = async () => {
    if (state.down) throw new TokenError('token endpoint answered HTTP 503: temporarily_unavailable', 'refused');
    return { accessToken: `tok-${++n}`, expiresIn: 3600 };
  };
  const grant: Grant = { provider: 'generic', user: USER, tokenUrl: 'https://idp.example.net/token', form: async () => new URLSearchParams() };
  return {
    source: new TokenSource(grant, { tls: {}, timeoutMs: 1000, now: () => now, request }),
    requests: () => n,
    state,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

/** The upstream refuses the tokens in `refused` (with the RFC 7628 error challenge), accepts others. */
function upstream(refused: Set<string>, refusal: SaslRefusal = { challenge: { status: 'invalid_token', schemes: 'bearer', scope: 'smtp' } }): Promise<SaslUpstream> {
  return startSaslUpstream({ cert, mechanisms: ['OAUTHBEARER'], check: async (_m, _u, token) => (refused.has(token ?? '') ? refusal : undefined) });
}

/** Connect and log in as relay/upstream.ts does; the error of a failed login. */
async function login(up: SaslUpstream, t: ReturnType<typeof tokens>): Promise<(Error & { code?: string; response?: string }) | undefined> {
  const conn = new SMTPConnection({
    host: up.host,
    port: up.port,
    requireTLS: true,
    tls: { ca: cert.caPem, rejectUnauthorized: true },
    customAuth: { OAUTHBEARER: oauthBearerHandler },
    connectionTimeout: 5000,
    socketTimeout: 5000,
    logger: false,
  });
  conn.on('error', () => undefined);
  try {
    await new Promise<void>((resolve, reject) => {
      conn.once('error', reject);
      conn.connect(() => resolve());
    });
    const token = await t.source.get();
    return await new Promise((resolve) => conn.login({ method: 'OAUTHBEARER', user: USER, options: bearerLogin(t.source, up, token) }, (err) => resolve(err ?? undefined)));
  } finally {
    conn.close();
  }
}

describe('OAUTHBEARER login and the token cache', () => {
  test('a refused token older than a minute is renewed once: the second AUTH carries the new token and succeeds, and the cache keeps it', async () => {
    const t = tokens();
    assert.equal(await t.source.get(), 'tok-1');
    t.advance(61_000);
    const up = await upstream(new Set(['tok-1']));
    try {
      assert.equal(await login(up, t), undefined);
      assert.deepEqual(
        up.auths.map((a) => [a.token, a.followUp, a.reply.slice(0, 3)]),
        [
          ['tok-1', ['AQ=='], '535'],
          ['tok-2', [], '235'],
        ],
      );
      assert.deepEqual(up.auths[1]!.initial, Buffer.from(`n,a=${USER},\x01host=127.0.0.1\x01port=${up.port}\x01auth=Bearer tok-2\x01\x01`));
      assert.equal(t.requests(), 2);
      assert.equal(await t.source.get(), 'tok-2', 'the renewed token is the cached one');
      assert.deepEqual(up.protocolErrors, []);
    } finally {
      await up.stop();
    }
  });

  test('when the renewed token is refused too, the login fails after exactly two AUTHs with the last refusal and the challenge', async () => {
    const t = tokens();
    await t.source.get();
    t.advance(61_000);
    const up = await upstream(new Set(['tok-1', 'tok-2', 'tok-3']));
    try {
      const err = await login(up, t);
      assert.ok(err instanceof BearerRefused, String(err));
      assert.equal(err.code, 'EAUTH');
      assert.match(err.response ?? '', /^535 5\.7\.8 /);
      assert.deepEqual(err.challenge, { status: 'invalid_token', scope: 'smtp', schemes: 'bearer' });
      assert.deepEqual(up.auths.map((a) => a.token), ['tok-1', 'tok-2']);
      assert.ok(up.auths.every((a) => a.followUp.join() === 'AQ=='));
      assert.equal(t.requests(), 2, 'renewed once');
    } finally {
      await up.stop();
    }
  });

  test('a refused token younger than a minute is not renewed and not sent again', async () => {
    const t = tokens();
    await t.source.get();
    t.advance(30_000);
    const up = await upstream(new Set(['tok-1']));
    try {
      const err = await login(up, t);
      assert.equal(err?.code, 'EAUTH');
      assert.deepEqual(up.auths.map((a) => a.token), ['tok-1']);
      assert.equal(t.requests(), 1);
    } finally {
      await up.stop();
    }
  });

  test("a failed renewal ends the login with the upstream's refusal (EAUTH), not the token error", async () => {
    const t = tokens();
    await t.source.get();
    t.advance(61_000);
    t.state.down = true;
    const up = await upstream(new Set(['tok-1']));
    try {
      const err = await login(up, t);
      assert.ok(err instanceof BearerRefused, String(err));
      assert.equal(err.code, 'EAUTH');
      assert.match(err.response ?? '', /^535 /);
      assert.deepEqual(up.auths.map((a) => a.token), ['tok-1']);
    } finally {
      await up.stop();
    }
  });

  test('an upstream that answers the ^A with a second challenge (not RFC 7628) gets the exchange cancelled ("*") and the login fails', async () => {
    const t = tokens();
    const up = await upstream(new Set(['tok-1']), { challenge: { status: 'invalid_token' }, again: true });
    try {
      const err = await login(up, t);
      assert.ok(err instanceof BearerRefused);
      assert.match(err.response ?? '', /^501 5\.7\.0 Authentication cancelled/);
      assert.deepEqual(up.auths[0]!.followUp, ['AQ==', '*']);
    } finally {
      await up.stop();
    }
  });
});
