import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword, parseHash, verifyPassword } from '../../../../relay/password.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';
import {
  buildUsersFile,
  buildUsersSecret,
  cachingHasher,
  GENERATED_PASSWORD_COST,
  hasCost,
  readUsersSecret,
  relayPasswordHasher,
  USER_PASSWORD_COST,
  type AcceptedPassword,
  type PasswordCosts,
  type PasswordHasher,
  type ScryptCost,
} from '../../../../operator/builders/users.js';

// The relay's real scrypt; the tests use small costs (generated N=16, user N=1024)
// so they stay fast, except where the production costs themselves are checked.
const COSTS: PasswordCosts = { generated: { N: 16, r: 8, p: 1 }, user: { N: 1024, r: 8, p: 1 } };
function realHasher(): PasswordHasher & { hashes: number; verifies: number; costs: ScryptCost[] } {
  const h = {
    hashes: 0,
    verifies: 0,
    costs: [] as ScryptCost[],
    async hash(password: string, cost: ScryptCost) {
      h.hashes++;
      h.costs.push(cost);
      return hashPassword(password, cost);
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
const user = (password: string): AcceptedPassword => ({ password, generated: false });
const generated = (password: string): AcceptedPassword => ({ password, generated: true });
const passwords = new Map([
  ['billing', user('billing-password-0123456789')],
  ['alerts', user('alerts-password-0123456789')],
]);
const costOf = (hash: string) => {
  const p = parseHash(hash);
  assert.ok(typeof p !== 'string', p as string);
  return { N: p.N, r: p.r, p: p.p };
};
const build = (pw: ReadonlyMap<string, AcceptedPassword>, existing: Parameters<typeof buildUsersFile>[2], hasher: PasswordHasher) =>
  buildUsersFile(relay, pw, existing, hasher, COSTS);

test('a reconcile with unchanged passwords writes a byte-identical hashed Secret (hashes kept, not re-salted)', async () => {
  const hasher = realHasher();
  const first = buildUsersSecret(relay, await build(passwords, undefined, hasher));
  assert.equal(hasher.hashes, 2);
  const again = buildUsersSecret(relay, await build(passwords, readUsersSecret(first), hasher));
  assert.equal(hasher.hashes, 2, 'no new hash');
  assert.equal(JSON.stringify(again), JSON.stringify(first));
});

test('a changed password gets a new hash; the other user keeps its hash', async () => {
  const hasher = realHasher();
  const before = await build(passwords, undefined, hasher);
  const changed = new Map(passwords).set('alerts', user('a-completely-new-password-42'));
  const after = await build(changed, before, hasher);
  assert.equal(after.users[0]!.passwordHash!, before.users[0]!.passwordHash!);
  assert.notEqual(after.users[1]!.passwordHash!, before.users[1]!.passwordHash!);
  const parsed = parseHash(after.users[1]!.passwordHash!);
  assert.ok(typeof parsed !== 'string' && (await verifyPassword('a-completely-new-password-42', parsed)));
});

test('the hashed Secret holds hashes, senders and rate limits but never a plaintext password', async () => {
  const secret = buildUsersSecret(relay, await build(passwords, undefined, realHasher()));
  const text = Buffer.from(secret.data['users.yaml']!, 'base64').toString('utf8');
  for (const p of passwords.values()) assert.ok(!text.includes(p.password), 'plaintext must not appear');
  assert.match(text, /passwordHash: scrypt\$1024\$8\$1\$/);
  assert.deepEqual(readUsersSecret(secret)?.users.map((u) => [u.name, u.allowedSenders, u.rateLimit]), [
    ['billing', ['billing@example.com'], { messages: 10, per: '1m' }],
    ['alerts', ['*@alerts.example.com'], undefined],
  ]);
  assert.equal(secret.type, 'Opaque');
  assert.equal(secret.metadata.name, 'outbound-users');
});

test('a user without an accepted password is left out of the users file', async () => {
  const file = await build(new Map([['alerts', user('alerts-password-0123456789')]]), undefined, realHasher());
  assert.deepEqual(file.users.map((u) => u.name), ['alerts']);
});

test('a removed user disappears and a malformed existing hash is replaced', async () => {
  const hasher = realHasher();
  const existing = { users: [{ name: 'billing', passwordHash: 'not-a-hash', allowedSenders: [] }, { name: 'gone', passwordHash: 'x', allowedSenders: [] }] };
  const file = await build(passwords, existing, hasher);
  assert.deepEqual(file.users.map((u) => u.name), ['billing', 'alerts']);
  assert.match(file.users[0]!.passwordHash!, /^scrypt\$/);
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
  const hash = await hasher.hash('some-password-123456', COSTS.user);
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
  for (const p of ['a', 'b', 'c', 'd']) await bounded.verify(p, `h${p}`);
  await bounded.verify('a', 'ha'); // evicted: verified again
  await bounded.verify('d', 'hd'); // still cached
  assert.equal(calls, 5);
});

// --- scrypt cost: generated passwords cheap, user-chosen ones at the production cost ---

test('the production costs: generated passwords N=1024 r=8 p=1, user-chosen ones the relay default N=32768 r=8 p=1', async () => {
  assert.deepEqual(GENERATED_PASSWORD_COST, { N: 1024, r: 8, p: 1 });
  assert.deepEqual(USER_PASSWORD_COST, { N: 32768, r: 8, p: 1 });
  // The real hasher with the default costs: what the operator writes.
  const file = await buildUsersFile(relay, new Map([['billing', generated('G3neratedRandomPassw0rdOf32Chars')], ['alerts', user('alerts-password-0123456789')]]), undefined, relayPasswordHasher);
  assert.match(file.users[0]!.passwordHash!, /^scrypt\$1024\$8\$1\$/);
  assert.match(file.users[1]!.passwordHash!, /^scrypt\$32768\$8\$1\$/);
  const parsed = parseHash(file.users[1]!.passwordHash!);
  assert.ok(typeof parsed !== 'string' && (await verifyPassword('alerts-password-0123456789', parsed)));
});

test('a generated password is hashed with the generated cost, a user-provided one with the user cost', async () => {
  const hasher = realHasher();
  const file = await build(new Map([['billing', generated('GeneratedGeneratedGenerated12345')], ['alerts', user('alerts-password-0123456789')]]), undefined, hasher);
  assert.deepEqual(costOf(file.users[0]!.passwordHash!), COSTS.generated);
  assert.deepEqual(costOf(file.users[1]!.passwordHash!), COSTS.user);
  assert.deepEqual(hasher.costs, [COSTS.generated, COSTS.user]);
});

test('a generated password the user then edits gets the user cost; so does the same password once it is no longer marked generated', async () => {
  const hasher = realHasher();
  const gen = await build(new Map([['billing', generated('GeneratedGeneratedGenerated12345')]]), undefined, hasher);
  // The user put their own password into the generated Secret (marker no longer matches).
  const edited = await build(new Map([['billing', user('my-own-chosen-password-1')]]), gen, hasher);
  assert.deepEqual(costOf(edited.users[0]!.passwordHash!), COSTS.user);
  // Same plaintext, but now counted as user-chosen (e.g. the marker was removed): re-hashed at the user cost.
  const unmarked = await build(new Map([['billing', user('GeneratedGeneratedGenerated12345')]]), gen, hasher);
  assert.notEqual(unmarked.users[0]!.passwordHash!, gen.users[0]!.passwordHash!);
  assert.deepEqual(costOf(unmarked.users[0]!.passwordHash!), COSTS.user);
});

test('an existing hash of a generated password at the full cost is replaced by a cheap one; then it stays', async () => {
  const hasher = realHasher();
  const pw = new Map([['billing', generated('GeneratedGeneratedGenerated12345')]]);
  const old = await build(new Map([['billing', user('GeneratedGeneratedGenerated12345')]]), undefined, hasher);
  assert.deepEqual(costOf(old.users[0]!.passwordHash!), COSTS.user);
  const cheap = await build(pw, old, hasher);
  assert.deepEqual(costOf(cheap.users[0]!.passwordHash!), COSTS.generated);
  const hashes = hasher.hashes;
  const again = await build(pw, cheap, hasher);
  assert.equal(again.users[0]!.passwordHash!, cheap.users[0]!.passwordHash!);
  assert.equal(hasher.hashes, hashes, 'no re-hash');
});

test('at rest (nothing changed, generated and user passwords) no hash is computed and the Secret is byte-identical', async () => {
  const hasher = realHasher();
  const mixed = new Map([['billing', generated('GeneratedGeneratedGenerated12345')], ['alerts', user('alerts-password-0123456789')]]);
  const first = buildUsersSecret(relay, await build(mixed, undefined, hasher));
  assert.equal(hasher.hashes, 2);
  for (let i = 0; i < 3; i++) {
    const again = buildUsersSecret(relay, await build(mixed, readUsersSecret(first), hasher));
    assert.equal(JSON.stringify(again), JSON.stringify(first));
  }
  assert.equal(hasher.hashes, 2, 'no re-hash at rest');
});

test('hasCost reads the parameters of a stored hash; a malformed hash has no cost', async () => {
  const h = await hashPassword('x-password-0123456789', { N: 16, r: 8, p: 1 });
  assert.equal(hasCost(h, { N: 16, r: 8, p: 1 }), true);
  assert.equal(hasCost(h, { N: 16, r: 8, p: 2 }), false);
  assert.equal(hasCost(h, { N: 32, r: 8, p: 1 }), false);
  assert.equal(hasCost('not-a-hash', { N: 16, r: 8, p: 1 }), false);
});
