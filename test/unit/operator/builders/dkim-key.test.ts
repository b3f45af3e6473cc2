import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync, verify, sign } from 'node:crypto';
import { Reason } from '../../../../operator/api/v1alpha1.js';
import { buildGeneratedDkimSecret, dkimRecordFromSecret, dkimTxtRecord, generateDkimPrivateKey } from '../../../../operator/builders/dkim-key.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const entry = { domain: 'example.com', selector: 'relay1' };

test('the RSA TXT record is v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo> at <selector>._domainkey.<domain>', () => {
  const pem = generateDkimPrivateKey();
  const record = dkimTxtRecord(entry, createPublicKey(pem));
  assert.equal(record.type, 'TXT');
  assert.equal(record.name, 'relay1._domainkey.example.com');
  const m = /^v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)$/.exec(record.value);
  assert.ok(m, record.value);
  // The published key verifies what the private key signs: the record is the real public key.
  const pub = createPublicKey({ key: Buffer.from(m[1]!, 'base64'), format: 'der', type: 'spki' });
  const sig = sign('sha256', Buffer.from('hello'), createPrivateKey(pem));
  assert.ok(verify('sha256', Buffer.from('hello'), pub, sig));
  assert.equal(createPrivateKey(pem).asymmetricKeyDetails?.modulusLength, 2048);
});

test('the Ed25519 TXT record carries the raw 32-byte key (RFC 8463)', () => {
  const { publicKey } = generateKeyPairSync('ed25519');
  const record = dkimTxtRecord(entry, publicKey);
  const m = /^v=DKIM1; k=ed25519; p=([A-Za-z0-9+/=]+)$/.exec(record.value);
  assert.ok(m);
  assert.equal(Buffer.from(m[1]!, 'base64').length, 32);
  assert.deepEqual(Buffer.from(m[1]!, 'base64'), Buffer.from(publicKey.export({ format: 'jwk' }).x ?? '', 'base64url'));
});

test('a DKIM Secret that is missing, lacks its key, holds junk or a weak key says what to fix', () => {
  assert.equal((dkimRecordFromSecret(entry, undefined, 'k') as { reason: string }).reason, Reason.DkimSecretNotFound);
  assert.equal((dkimRecordFromSecret(entry, { data: {} }, 'k') as { reason: string }).reason, Reason.DkimKeyInvalid);
  const junk = dkimRecordFromSecret(entry, { data: { 'private.key': b64('junk') } }, 'k') as { reason: string; message: string };
  assert.equal(junk.reason, Reason.DkimKeyInvalid);
  assert.match(junk.message, /not a usable RSA or Ed25519 PEM private key/);
  const weak = generateKeyPairSync('rsa', { modulusLength: 512 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  assert.match((dkimRecordFromSecret(entry, { data: { 'private.key': b64(weak) } }, 'k') as { message: string }).message, /512 bits/);
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  assert.equal((dkimRecordFromSecret(entry, { data: { 'private.key': b64(ec) } }, 'k') as { reason: string }).reason, Reason.DkimKeyInvalid);
});

test('a generated DKIM Secret round-trips to the record of its key; a custom key name is honoured', () => {
  const pem = generateDkimPrivateKey();
  const relay = relayFixture();
  const secret = buildGeneratedDkimSecret(relay, entry, pem);
  assert.equal(secret.metadata.name, 'outbound-dkim-relay1-example-com');
  assert.equal(secret.metadata.annotations?.['smtprelay.dev/dkim-record'], 'relay1._domainkey.example.com');
  const got = dkimRecordFromSecret(entry, secret, secret.metadata.name) as { record: { value: string } };
  assert.equal(got.record.value, dkimTxtRecord(entry, createPublicKey(pem)).value);
  const custom = dkimRecordFromSecret({ ...entry, secretRef: { name: 'x', key: 'dkim.pem' } }, { data: { 'dkim.pem': b64(pem) } }, 'x');
  assert.ok('record' in custom);
});
