import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword, parseHash, verifyPassword } from '../../relay/password.js';
import { relayFixture } from './fixtures.js';
import { buildUsersFile, buildUsersSecret, cachingHasher, readUsersSecret, type PasswordHasher } from './users.js';

// The relay's real scrypt, with a small N so the tests stay fast.
function realHasher(): PasswordHasher & { hashes: number; verifies: number } {
  const h = {
    hashes: 0,
    verifies: 0,
    async hash(password: string) {
      h.hashes++;
      return hashPassword(password, { N: 1024, r: 8, p: 1 });
    },
    async verify(password: string, passwordHash: string) {
      h.verifies++;
      const parsed = parseHash(passwordHash);
      return typeof parsed !== 'string' && verifyPassword(password, parsed);
    },
  };
  return h;
}

const relay = relayFixture({
  hostname: 'relay.example.com',
  tls: { issuerRef: { name: 'ca' } },
  upstream: { host: 'smtp.example.net' },
  auth: {
    users: [
      { name: 'billing', allowedSenders: ['billing@example.com'], rateLimit: { messages: 10, per: '1m' } },
      { name: 'alerts', allowedSenders: ['*@alerts.example.com'] },
    ],
  },
});
const passwords = new Map([
  ['billing', 'billing-password-0123456789'],
  ['alerts', 'alerts-password-0123456789'],
]);

test('a reconcile with unchanged passwords writes a byte-identical hashed Secret (hashes kept, not re-salted)', async () => {
  const hasher = realHasher();
  const first = buildUsersSecret(relay, await buildUsersFile(relay, passwords, undefined, hasher));
  assert.equal(hasher.hashes, 2);
  const again = buildUsersSecret(relay, await buildUsersFile(relay, passwords, readUsersSecret(first), hasher));
  assert.equal(hasher.hashes, 2, 'no new hash');
  assert.equal(JSON.stringify(again), JSON.stringify(first));
});

test('a changed password gets a new hash; the other user keeps its hash', async () => {
  const hasher = realHasher();
  const before = await buildUsersFile(relay, passwords, undefined, hasher);
  const changed = new Map(passwords).set('alerts', 'a-completely-new-password-42');
  const after = await buildUsersFile(relay, changed, before, hasher);
  assert.equal(after.users[0]!.passwordHash, before.users[0]!.passwordHash);
  assert.notEqual(after.users[1]!.passwordHash, before.users[1]!.passwordHash);
  const parsed = parseHash(after.users[1]!.passwordHash);
  assert.ok(typeof parsed !== 'string' && (await verifyPassword('a-completely-new-password-42', parsed)));
});

test('the hashed Secret holds hashes, senders and rate limits but never a plaintext password', async () => {
  const secret = buildUsersSecret(relay, await buildUsersFile(relay, passwords, undefined, realHasher()));
  const text = Buffer.from(secret.data['users.yaml']!, 'base64').toString('utf8');
  for (const p of passwords.values()) assert.ok(!text.includes(p), 'plaintext must not appear');
  assert.match(text, /passwordHash: scrypt\$1024\$8\$1\$/);
  assert.deepEqual(readUsersSecret(secret)?.users.map((u) => [u.name, u.allowedSenders, u.rateLimit]), [
    ['billing', ['billing@example.com'], { messages: 10, per: '1m' }],
    ['alerts', ['*@alerts.example.com'], undefined],
  ]);
  assert.equal(secret.type, 'Opaque');
  assert.equal(secret.metadata.name, 'outbound-users');
});

test('a user without an accepted password is left out of the users file', async () => {
  const file = await buildUsersFile(relay, new Map([['alerts', 'alerts-password-0123456789']]), undefined, realHasher());
  assert.deepEqual(file.users.map((u) => u.name), ['alerts']);
});

test('a removed user disappears and a malformed existing hash is replaced', async () => {
  const hasher = realHasher();
  const existing = { users: [{ name: 'billing', passwordHash: 'not-a-hash', allowedSenders: [] }, { name: 'gone', passwordHash: 'x', allowedSenders: [] }] };
  const file = await buildUsersFile(relay, passwords, existing, hasher);
  assert.deepEqual(file.users.map((u) => u.name), ['billing', 'alerts']);
  assert.match(file.users[0]!.passwordHash, /^scrypt\$/);
});

test('an unreadable existing Secret reads as none', () => {
  assert.equal(readUsersSecret(undefined), undefined);
  assert.equal(readUsersSecret({ data: {} }), undefined);
  assert.equal(readUsersSecret({ data: { 'users.yaml': Buffer.from(': : not yaml [').toString('base64') } }), undefined);
  assert.equal(readUsersSecret({ data: { 'users.yaml': Buffer.from('users: 3').toString('base64') } }), undefined);
});

test('the caching hasher verifies an unchanged password with scrypt only once, and never caches a failure', async () => {
  const inner = realHasher();
  const hasher = cachingHasher(inner);
  const hash = await hasher.hash('some-password-123456');
  assert.equal(await hasher.verify('some-password-123456', hash), true);
  assert.equal(await hasher.verify('some-password-123456', hash), true);
  assert.equal(inner.verifies, 1);
  assert.equal(await hasher.verify('wrong-password-123456', hash), false);
  assert.equal(await hasher.verify('wrong-password-123456', hash), false);
  assert.equal(inner.verifies, 3);
});

test('the caching hasher stays bounded', async () => {
  let calls = 0;
  const counting: PasswordHasher = { hash: async (p) => p, verify: async () => (calls++, true) };
  const bounded = cachingHasher(counting, 3);
  for (const p of ['a', 'b', 'c', 'd']) await bounded.verify(p, 'h');
  await bounded.verify('a', 'h'); // evicted: verified again
  await bounded.verify('d', 'h'); // still cached
  assert.equal(calls, 5);
});
