import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LoginState, refusalWords, upstreamReport, type LoginRecord } from '../../../relay/upstream-login.js';

const cfg = { host: 'smtp.example.net', port: 587, usernameFile: '/u', oauth2: undefined };

describe('the upstream refusal words shown in status (refusalWords)', () => {
  it("Exchange's 5.7.139 keeps its code and words", () => {
    const r = '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. [SN4PR0401CA0044.namprd04.prod.outlook.com 2024-01-01T00:00:00.000Z 08DC]';
    const w = refusalWords(r);
    assert.match(w, /^535 5\.7\.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant\. Visit https:\/\/aka\.ms\/smtp_auth_disabled/);
    assert.ok(w.length <= 200);
  });

  it("Gmail's two-line 535 becomes one line", () => {
    const w = refusalWords('535-5.7.8 Username and Password not accepted. For more information, go to\n535 5.7.8  https://support.google.com/mail/?p=BadCredentials 6a1803df08f44-6d8da80ba0fsm29346376d6.31 - gsmtp');
    assert.equal(w, '535-5.7.8 Username and Password not accepted. For more information, go to 535 5.7.8 https://support.google.com/mail/?p=BadCredentials 6a1803df08f44-6d8da80ba0fsm29346376d6.31 - gsmtp');
  });

  it('a 334 error challenge is decoded to its fields, never echoed as base64', () => {
    const b64 = Buffer.from(JSON.stringify({ status: 'invalid_token', scope: 'https://mail.google.com/', schemes: 'bearer' })).toString('base64');
    const w = refusalWords(`334 ${b64}`);
    assert.equal(w, '334 error challenge: status=invalid_token scope=https://mail.google.com/ schemes=bearer');
    assert.equal(refusalWords('334 VXNlcm5hbWU6'), '334 (challenge not shown)', 'a 334 that is not JSON is left out');
  });

  it('the secret sent and anything like an encoded credential are cut out; control characters and length bounded', () => {
    const token = 'ya29.a0AfB_byC' + 'x'.repeat(120);
    const w = refusalWords(`535 5.7.3 bad token ${token} for user\x00\x1b[31m and password hunter22`, ['hunter22', 'abc']);
    assert.ok(!w.includes('xxxxxxxxxx'), w);
    assert.ok(!w.includes('hunter22'), w);
    assert.match(w, /^535 5\.7\.3 bad token ya29\.\[redacted\] for user\?\?\[31m and password \[redacted\]$/);
    const plain = Buffer.from('\0relay@example.com\0a-long-upstream-password').toString('base64');
    assert.ok(!refusalWords(`535 ${plain}`).includes(plain));
    assert.equal(refusalWords('535 ' + 'word '.repeat(100)).length, 200);
    assert.equal(refusalWords(undefined), '');
  });
});

describe('the relay upstream report (upstreamReport)', () => {
  const t = (s: number) => Date.parse('2026-01-01T00:00:00Z') + s * 1000;

  it('no login yet: not refused, nothing else to say', () => {
    assert.deepEqual(upstreamReport(cfg, [], 'relay-0'), { pod: 'relay-0', host: 'smtp.example.net', port: 587, authentication: 'password', authRefused: false });
    assert.equal(upstreamReport({ host: 'h', port: 25 }, [], 'p').authentication, 'none');
  });

  it('a refusal, then another: refused since the first, with the latest words; a success clears it', () => {
    const s = new LoginState();
    s.refused('XOAUTH2', '535 5.7.3 first', undefined, t(1));
    s.refused('XOAUTH2', '535 5.7.3 second', undefined, t(5));
    const r = upstreamReport({ ...cfg, oauth2: {} as never }, [s.record], 'relay-0');
    assert.equal(r.authRefused, true);
    assert.equal(r.authentication, 'oauth2');
    assert.equal(r.since, '2026-01-01T00:00:01.000Z');
    assert.equal(r.lastRefusal, '2026-01-01T00:00:05.000Z');
    assert.equal(r.reply, '535 5.7.3 second');
    assert.equal(r.mechanism, 'XOAUTH2');
    s.succeeded('XOAUTH2', t(9));
    const ok = upstreamReport(cfg, [s.record], 'relay-0');
    assert.deepEqual(ok, { pod: 'relay-0', host: 'smtp.example.net', port: 587, authentication: 'password', authRefused: false, mechanism: 'XOAUTH2', lastSuccess: '2026-01-01T00:00:09.000Z' });
  });

  it('several processes: refused when the latest login anywhere was refused, not when a later one succeeded elsewhere', () => {
    const refusedAt3: LoginRecord = { mechanism: 'PLAIN', refusal: { since: t(3), at: t(3), reply: '535 no', mechanism: 'PLAIN' } };
    const okAt5: LoginRecord = { mechanism: 'PLAIN', lastSuccess: t(5) };
    const okAt1: LoginRecord = { mechanism: 'PLAIN', lastSuccess: t(1) };
    assert.equal(upstreamReport(cfg, [refusedAt3, okAt5], 'p').authRefused, false);
    const r = upstreamReport(cfg, [okAt1, refusedAt3], 'p');
    assert.equal(r.authRefused, true);
    assert.equal(r.reply, '535 no');
    assert.equal(r.lastSuccess, '2026-01-01T00:00:01.000Z');
    // a streak that began before another process's success is shown from that success on
    const longStreak: LoginRecord = { refusal: { since: t(0), at: t(8), reply: '535 still', mechanism: 'PLAIN' } };
    assert.equal(upstreamReport(cfg, [longStreak, okAt5], 'p').since, '2026-01-01T00:00:05.000Z');
  });
});
