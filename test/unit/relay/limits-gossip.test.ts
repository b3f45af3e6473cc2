// The lockout across replicas in one process: the Lockout's remote entry points, the
// events LocalLimits emits and applies, the batch check, and two LockoutGossips joined
// by real peer channels on loopback (relay/limits-gossip.ts, relay/peers.ts).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import prom from 'prom-client';
import { LocalLimits, type LockoutEvent, type LoginStart } from '../../../relay/limits.js';
import { LockoutGossip, LOCKOUT_PATH, parseBatch } from '../../../relay/limits-gossip.js';
import { PeerChannel, PeerIdentity } from '../../../relay/peers.js';
import { Lockout } from '../../../relay/policy/lockout.js';
import { createPki, type Pki } from '../../harness/support/pki.js';

const LOCKOUT = { maxFailures: 5, windowMs: 60_000, durationMs: 120_000 };
const LIMITS = { maxConnections: 10, maxConnectionsPerIp: 10, maxUnauthenticated: 10, preAuthTimeoutMs: 10_000 };

describe('Lockout: what siblings send', () => {
  test('remote failures count in the window with local ones; the one that reaches maxFailures locks until its time + duration', () => {
    let now = 1_000_000;
    const l = new Lockout(LOCKOUT, () => now);
    assert.equal(l.failRemote('user:a', now - 70_000), false, 'out of the window: ignored');
    assert.equal(l.failureCount('user:a'), 0);
    l.failRemote('user:a', now - 1000);
    l.failRemote('user:a', now + 50_000); // a sibling's clock ahead: taken as now
    l.fail('user:a');
    l.failRemote('user:a', now - 500);
    assert.equal(l.failureCount('user:a'), 4);
    assert.equal(l.failRemote('user:a', now - 100), true, 'the 5th, remote, locks here');
    assert.equal(l.lockedUntil('user:a'), now - 100 + LOCKOUT.durationMs);
    assert.equal(l.failRemote('user:a', now), false, 'a failure for a locked key is ignored');
    assert.equal(l.failureCount('user:a'), 0);
    now += LOCKOUT.durationMs;
    assert.equal(l.lockedFor('user:a'), 0);
  });

  test('a remote lockout: at most one duration from now, the longer end wins, and it clears the failures', () => {
    const now = 1_000_000;
    const l = new Lockout(LOCKOUT, () => now);
    l.fail('ip:10.0.0.1');
    assert.equal(l.lockRemote('ip:10.0.0.1', now + 10 * LOCKOUT.durationMs), true);
    assert.equal(l.lockedFor('ip:10.0.0.1'), LOCKOUT.durationMs, 'clamped');
    assert.equal(l.lockRemote('ip:10.0.0.1', now + 1000), false, 'already locked, for longer');
    assert.equal(l.lockedFor('ip:10.0.0.1'), LOCKOUT.durationMs);
    assert.equal(l.lockRemote('ip:10.0.0.2', now - 1), false, 'ended already');
    assert.deepEqual(l.activeLockouts(), [['ip:10.0.0.1', now + LOCKOUT.durationMs]]);
  });

  test('a remote success forgives the failures up to its time only, and never a lockout', () => {
    let now = 1_000_000;
    const l = new Lockout(LOCKOUT, () => now);
    l.fail('user:b');
    now += 10;
    l.fail('user:b');
    l.succeedRemote('user:b', now - 5);
    assert.equal(l.failureCount('user:b'), 1, 'the later failure stays');
    l.succeedRemote('user:b', now);
    assert.equal(l.failureCount('user:b'), 0);
    l.lockRemote('user:b', now + 1000);
    l.succeedRemote('user:b', now);
    assert.ok(l.lockedFor('user:b') > 0);
  });

  test('the fallback cap lowers the threshold, never raises it, and lifts', () => {
    const l = new Lockout(LOCKOUT, () => 1);
    l.setCap(2);
    assert.equal(l.maxFailures, 2);
    assert.equal(l.fail('user:c'), false);
    assert.equal(l.fail('user:c'), true);
    l.setCap(9);
    assert.equal(l.maxFailures, 5);
    l.setCap(undefined);
    assert.equal(l.maxFailures, 5);
  });
});

describe('LocalLimits: lockout events', () => {
  test('its own logins are told (failure per key, the lockout with its end, a success); applied events are not', async () => {
    const now = 2_000_000;
    const l = new LocalLimits({ limits: LIMITS, lockout: { ...LOCKOUT, maxFailures: 2 } }, () => undefined, () => now);
    const events: LockoutEvent[] = [];
    l.onLockoutEvent = (e) => events.push(e);
    const keys = ['ip:10.0.0.1', 'user:a'];
    for (let i = 0; i < 2; i++) {
      const s = l.beginLogin(keys) as LoginStart;
      assert.ok('token' in s);
      l.endLogin(s.token, { ok: false });
    }
    assert.deepEqual(events, [
      { k: 'f', key: 'ip:10.0.0.1', t: now },
      { k: 'f', key: 'user:a', t: now },
      { k: 'f', key: 'ip:10.0.0.1', t: now },
      { k: 'f', key: 'user:a', t: now },
      { k: 'l', key: 'ip:10.0.0.1', t: now + LOCKOUT.durationMs },
      { k: 'l', key: 'user:a', t: now + LOCKOUT.durationMs },
    ]);
    events.length = 0;
    const s = l.beginLogin(['ip:10.0.0.2', 'user:b']) as LoginStart;
    assert.ok('token' in s);
    l.endLogin(s.token, { ok: true, forgive: 'user:b' });
    assert.deepEqual(events, [{ k: 's', key: 'user:b', t: now }]);
    events.length = 0;
    assert.deepEqual(l.applyRemote([{ k: 'f', key: 'user:c', t: now }, { k: 'f', key: 'user:c', t: now }]), ['user:c']);
    assert.deepEqual(events, [], 'nothing received is sent on');
  });

  test('a login waiting for a running check is refused at once when a sibling locks its key', async () => {
    const now = 2_000_000;
    const l = new LocalLimits({ limits: LIMITS, lockout: { ...LOCKOUT, maxFailures: 1 } }, () => undefined, () => now);
    const first = l.beginLogin(['user:d']) as LoginStart;
    assert.ok('token' in first);
    const waiting = l.beginLogin(['user:d']);
    assert.ok(waiting instanceof Promise, 'one check may fail: the second waits');
    l.applyRemote([{ k: 'l', key: 'user:d', t: now + 60_000 }]);
    const r = await waiting;
    assert.ok('lockedMs' in r && r.lockedMs === 60_000);
  });
});

describe('parseBatch', () => {
  const ok = { origin: 'o1', events: [{ k: 'f', key: 'user:a', t: 1, s: 1 }, { k: 'l', key: 'ip:::1', t: 2, s: 2 }] };
  test('a good batch passes; each bad part is named', () => {
    assert.deepEqual(parseBatch(Buffer.from(JSON.stringify(ok))), ok);
    const bad = (doc: unknown) => parseBatch(Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc)));
    assert.equal(bad('{'), 'not JSON');
    assert.equal(bad({ events: [] }), 'origin missing');
    assert.equal(bad({ origin: 'o', events: {} }), 'events must be a list of at most 2000');
    assert.equal(bad({ origin: 'o', events: [{ k: 'x', key: 'user:a', t: 1, s: 1 }] }), 'an event kind is not f, l or s');
    assert.equal(bad({ origin: 'o', events: [{ k: 'f', key: 'other:a', t: 1, s: 1 }] }), 'an event key is not a lockout key');
    assert.equal(bad({ origin: 'o', events: [{ k: 'f', key: 'user:a', t: 'x', s: 1 }] }), 'an event time is not a number');
    assert.equal(bad({ origin: 'o', events: [{ k: 'f', key: 'user:a', t: 1, s: 2 }, { k: 'f', key: 'user:a', t: 1, s: 2 }] }), 'event numbers must increase');
  });
});

describe('two gossips over real peer channels', () => {
  let pki: Pki;
  let dir: string;
  const closers: (() => Promise<void>)[] = [];
  before(async () => {
    pki = await createPki();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-gossip-'));
  });
  after(async () => {
    for (const c of closers.reverse()) await c();
    await pki.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('failures on one reach the other; a batch sent twice counts once; an unreachable sibling brings the fallback threshold', async () => {
    // both replicas use one certificate, as the pods of one SmtpRelay do
    const cert = await pki.issue({ name: 'shared' });
    fs.writeFileSync(path.join(dir, 'shared.crt'), cert.chainPem);
    fs.writeFileSync(path.join(dir, 'shared.key'), cert.keyPem);
    fs.writeFileSync(path.join(dir, 'token'), 'gossip-token-0123456789abcdef\n');
    const id = new PeerIdentity(path.join(dir, 'shared.crt'), path.join(dir, 'shared.key'), { minVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
    const log = pino({ level: 'silent' });
    const start = async (addresses: string[]) => {
      const registry = new prom.Registry();
      const ch = await PeerChannel.start({ address: '127.0.0.1', port: 0, tokenFile: path.join(dir, 'token'), addresses, refreshIntervalMs: 1000 }, { certificate: () => id.get(), logger: log, registry });
      const limits = new LocalLimits({ limits: LIMITS, lockout: LOCKOUT }, () => undefined);
      const gossip = new LockoutGossip(ch, limits, { logger: log, registry }).start();
      closers.push(async () => {
        await gossip.close();
        await ch.close();
      });
      return { ch, limits, gossip, registry };
    };
    const b = await start([]);
    const a = await start([`127.0.0.1:${b.ch.port}`]);
    b.ch.update({ address: '127.0.0.1', port: 0, tokenFile: '', addresses: [`127.0.0.1:${a.ch.port}`], refreshIntervalMs: 1000 });

    const fail = (l: LocalLimits, keys: string[]) => {
      const s = l.beginLogin(keys) as LoginStart;
      assert.ok('token' in s);
      return l.endLogin(s.token, { ok: false });
    };
    const waitFor = async (what: string, pred: () => boolean, ms = 8000, every = 20) => {
      const end = Date.now() + ms;
      while (!pred()) {
        if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, every));
      }
    };
    // 4 failures on A and the 5th on B: B locks
    // (the first contact already made: the time measured is one batch's)
    await waitFor('A and B to reach each other', () => (a.gossip as unknown as { siblings: Map<string, { away: boolean }> }).siblings.get(`127.0.0.1:${b.ch.port}`)?.away === false);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 4; i++) fail(a.limits, ['user:v']);
    await waitFor('B to count A\'s failures', () => countOf(b.limits, 'user:v') === 4, 8000, 1);
    process.stderr.write(`# propagation of 4 failures from A to B on loopback: ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms\n`);
    assert.deepEqual(fail(b.limits, ['user:v']), [true], 'the 5th failure in total locks on B');
    await waitFor('A to learn the lockout', () => a.limits.lockedFor(['user:v']) > 0);

    // a batch sent again (a lost answer) is applied once
    const body = Buffer.from(JSON.stringify({ origin: 'replayed', events: [{ k: 'f', key: 'user:w', t: Date.now(), s: 1 }] }));
    for (let i = 0; i < 2; i++) assert.equal((await a.ch.request(`127.0.0.1:${b.ch.port}`, LOCKOUT_PATH, body)).status, 204);
    assert.equal(countOf(b.limits, 'user:w'), 1);
    assert.equal((await a.ch.request(`127.0.0.1:${b.ch.port}`, LOCKOUT_PATH, Buffer.from('{'))).status, 400);

    // B goes away: after 3 s A locks at ceil(5 / 2) = 3
    await b.gossip.close();
    await b.ch.close();
    await waitFor('the fallback on A', () => a.limits.lockoutThreshold === 3, 10_000);
    const thr = (await a.registry.getSingleMetric('smtp_relay_lockout_threshold')!.get()).values[0]!.value;
    assert.equal(thr, 3);
    assert.deepEqual([fail(a.limits, ['user:x']), fail(a.limits, ['user:x']), fail(a.limits, ['user:x'])], [[false], [false], [true]]);
  });
});

/** Failures of `key` a LocalLimits counts now (through its lockout). */
function countOf(l: LocalLimits, key: string): number {
  return (l as unknown as { lockout: Lockout }).lockout.failureCount(key);
}
