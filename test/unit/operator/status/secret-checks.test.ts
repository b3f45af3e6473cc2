import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Reason } from '../../../../operator/api/v1alpha1.js';
import { checkPassword, checkTlsSecret, checkUpstreamCaSecret, checkUpstreamCredentialsSecret, readUserPassword } from '../../../../operator/status/secret-checks.js';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const policy = { minLength: 16 };

const cases: Array<[string, string, string | undefined]> = [
  ['a password of exactly the minimum length is accepted', 'abcdefghijklmnop', undefined],
  ['a password one character short is refused as too short', 'abcdefghijklmno', 'TooShort'],
  ['length counts characters, not bytes: 15 umlauts are too short', 'ü'.repeat(15), 'TooShort'],
  ['16 multi-byte characters are long enough', 'üöäß€漢字🙂abcdefgh', undefined],
  ['a password with a newline (often a trailing one from echo) is refused', 'abcdefghijklmnop\n', 'ControlCharacter'],
  ['a password with NUL, which AUTH PLAIN cannot carry, is refused', 'abcdefgh\u0000ijklmnop', 'ControlCharacter'],
  ['a password that is the user name is refused', 'billing-app-user', 'SameAsUserName'],
  ['a password repeating one character is refused', 'a'.repeat(20), 'SingleCharacter'],
  ['a password above 512 characters is refused', 'ab'.repeat(300), 'TooLong'],
];
for (const [name, password, reason] of cases) {
  test(name, () => {
    assert.equal(checkPassword(password, policy, 'billing-app-user')?.reason, reason);
  });
}

test("a refusal message names the policy and never contains the password", () => {
  const p = checkPassword('short-secret', policy, 'u');
  assert.ok(p);
  assert.match(p.message, /12 characters; the policy \(spec.auth.passwordPolicy.minLength\) requires at least 16/);
  assert.ok(!p.message.includes('short-secret'));
});

test('reading a user Secret: basic-auth or Opaque with a password; otherwise a message saying what to fix', () => {
  assert.deepEqual(readUserPassword({ type: 'kubernetes.io/basic-auth', data: { password: b64('pw') } }, 's'), { password: 'pw' });
  assert.deepEqual(readUserPassword({ type: 'Opaque', data: { password: b64('pw') } }, 's'), { password: 'pw' });
  const wrongType = readUserPassword({ type: 'kubernetes.io/tls', data: {} }, 'billing-smtp');
  assert.equal('reason' in wrongType && wrongType.reason, Reason.UserSecretInvalid);
  assert.match('message' in wrongType ? wrongType.message : '', /Secret billing-smtp has type kubernetes.io\/tls/);
  const noPassword = readUserPassword({ type: 'kubernetes.io/basic-auth', data: { username: b64('u') } }, 'billing-smtp');
  assert.match('message' in noPassword ? noPassword.message : '', /has no "password" key/);
});

test('upstream credentials: missing Secret, missing keys and a trailing newline are each explained', () => {
  assert.equal(checkUpstreamCredentialsSecret(undefined, 'up')?.reason, Reason.UpstreamCredentialsNotFound);
  assert.match(checkUpstreamCredentialsSecret({ data: { username: b64('u') } }, 'up')?.message ?? '', /lacks "password"/);
  assert.match(checkUpstreamCredentialsSecret({ data: { username: b64('u'), password: b64('p\n') } }, 'up')?.message ?? '', /line break/);
  assert.equal(checkUpstreamCredentialsSecret({ data: { username: b64('u'), password: b64('p') } }, 'up'), undefined);
});

const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
test('the upstream CA and a given TLS Secret must hold PEM data', () => {
  const ref = { name: 'ca', key: 'ca.crt' };
  assert.equal(checkUpstreamCaSecret(undefined, ref)?.reason, Reason.UpstreamCaNotFound);
  assert.equal(checkUpstreamCaSecret({ data: { 'ca.crt': b64('junk') } }, ref)?.reason, Reason.UpstreamCaInvalid);
  assert.equal(checkUpstreamCaSecret({ data: { 'ca.crt': b64(PEM) } }, ref), undefined);
  assert.equal(checkTlsSecret(undefined, 't')?.reason, Reason.TlsSecretNotFound);
  assert.equal(checkTlsSecret({ data: { 'tls.crt': b64(PEM) } }, 't')?.reason, Reason.TlsSecretInvalid);
  assert.equal(checkTlsSecret({ data: { 'tls.crt': b64(PEM), 'tls.key': b64('-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n') } }, 't'), undefined);
});
