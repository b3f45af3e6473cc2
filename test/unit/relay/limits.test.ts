// relay/limits.ts: the in-process limits (what a single process and the primary use),
// the IPC pair (IpcLimits in a worker, LimitServer in the primary) joined by an
// in-memory channel, and relay/workers.ts workerCount from a cgroup tree.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { IpcLimits, LimitServer, LocalLimits, type Channel, type LimitCall } from '../../../relay/limits.js';
import { cgroupCpuLimit, workerCount } from '../../../relay/workers.js';
import type { ShedReason } from '../../../relay/connections.js';

const SETTINGS = {
  limits: { maxConnections: 3, maxConnectionsPerIp: 2, maxUnauthenticated: 2, preAuthTimeoutMs: 10_000 },
  lockout: { maxFailures: 3, windowMs: 60_000, durationMs: 120_000 },
};

function local(now = () => 1_000_000) {
  const shed: { listener: string; reason: ShedReason }[] = [];
  const l = new LocalLimits(SETTINGS, (listener, reason) => shed.push({ listener, reason }), now);
  return { l, shed };
}

const conn = (n: number, ip = `10.0.0.${n}`) => ({ key: `k${n}`, ip, listener: 'submission', countedAtAccept: false });

describe('LocalLimits', () => {
  test('per-IP limit counts accepted connections and sessions; closed() releases either', () => {
    const { l } = local();
    assert.equal(l.accept({ key: 'a', ip: '10.0.0.1', listener: 'submissions' }, () => undefined), 'ok');
    assert.equal(l.connect({ ...conn(1, '10.0.0.1'), key: 'b' }, () => undefined), 'ok');
    assert.equal(l.connect({ ...conn(1, '10.0.0.1'), key: 'c' }, () => undefined), 'too_many_connections_per_ip');
    assert.equal(l.accept({ key: 'd', ip: '10.0.0.1', listener: 'submissions' }, () => undefined), 'too_many_connections_per_ip');
    // a session on a connection counted at accept is not counted twice
    assert.equal(l.connect({ key: 'a', ip: '10.0.0.1', listener: 'submissions', countedAtAccept: true }, () => undefined), 'ok');
    l.closed('a');
    l.closed('a'); // idempotent
    assert.equal(l.count('10.0.0.1'), 1);
    l.closed('b');
    assert.equal(l.count('10.0.0.1'), 0);
    assert.equal(l.sessionCount, 0);
  });

  test('full: an unauthenticated connection is shed for a newcomer, an authenticated one never', () => {
    const { l, shed } = local();
    const closedBy: string[] = [];
    for (let i = 1; i <= 3; i++) assert.equal(l.connect(conn(i), (r) => closedBy.push(`k${i}:${r}`)), 'ok');
    // the cap of 2 unauthenticated shed the oldest already
    assert.deepEqual(closedBy, ['k1:unauthenticated_cap']);
    l.closed('k1');
    l.authenticated('k2');
    l.authenticated('k3');
    assert.equal(l.connect(conn(4), () => undefined), 'ok');
    l.authenticated('k4');
    assert.equal(l.connect(conn(5), () => undefined), 'too_many_connections', 'three authenticated sessions: nothing to shed');
    assert.deepEqual(shed, [{ listener: 'submission', reason: 'unauthenticated_cap' }]);
  });

  /** One login through begin and end: the start, and which keys it locked. */
  function login(l: LocalLimits, keys: string[], ok: boolean) {
    const start = l.beginLogin(keys);
    assert.ok(!(start instanceof Promise), 'no check running: the login starts at once');
    if ('lockedMs' in start) return { lockedMs: start.lockedMs, locked: [] as boolean[] };
    return { lockedMs: 0, locked: l.endLogin(start.token, ok ? { ok: true, forgive: keys[1]! } : { ok: false }) };
  }

  test('lockout: the maxFailures-th failure locks every key given; success clears only its key', () => {
    const { l } = local();
    assert.deepEqual(login(l, ['ip:a', 'user:x'], false).locked, [false, false]);
    login(l, ['ip:a', 'user:x'], true);
    assert.deepEqual(login(l, ['ip:a', 'user:x'], false).locked, [false, false]);
    assert.deepEqual(login(l, ['ip:a', 'user:x'], false).locked, [true, false], 'ip:a failed 3 times, user:x twice since its success');
    assert.equal(l.lockedFor(['ip:a']), 120_000);
    assert.equal(login(l, ['ip:a', 'user:y'], true).lockedMs, 120_000, 'a locked key refuses before any check');
    assert.equal(l.lockedFor(['ip:b', 'user:x']), 0);
  });

  test('logins arriving at once: no more than maxFailures (3) checks can fail per key; the others wait, then find the key locked', async () => {
    const { l } = local();
    const starts = Array.from({ length: 6 }, () => l.beginLogin([`ip:10.0.0.${Math.random()}`, 'user:victim']));
    const now = starts.filter((s) => !(s instanceof Promise)) as { token: number }[];
    assert.equal(now.length, 3, 'three checks run');
    assert.equal(l.waitingLogins, 3);
    const later = starts.filter((s) => s instanceof Promise) as Promise<{ lockedMs: number } | { token: number }>[];
    const locked = now.map((s) => l.endLogin(s.token, { ok: false }));
    assert.deepEqual(
      locked.map((x) => x[1]),
      [false, false, true],
    );
    const after = await Promise.all(later);
    assert.ok(after.every((s) => 'lockedMs' in s && s.lockedMs > 0), 'the three that waited are refused as locked, never checked');
  });

  test('logins of one user that succeed let the waiting ones in; a wait is bounded by the sweep', async () => {
    let t = 1_000_000;
    const { l } = local(() => t);
    const a = l.beginLogin(['ip:1', 'user:u']) as { token: number };
    const b = l.beginLogin(['ip:2', 'user:u']) as { token: number };
    const c = l.beginLogin(['ip:3', 'user:u']) as { token: number };
    const d = l.beginLogin(['ip:4', 'user:u']);
    assert.ok(d instanceof Promise);
    l.endLogin(a.token, { ok: true, forgive: 'user:u' });
    const dStart = await d;
    assert.ok('token' in dStart, 'a check ended: the fourth runs');
    const e = l.beginLogin(['ip:5', 'user:u']);
    assert.ok(e instanceof Promise);
    t += 31_000;
    l.sweep();
    assert.deepEqual(await e, { lockedMs: 1000 }, 'waited too long: refused for a second');
    for (const s of [b, c, dStart as { token: number }]) l.endLogin(s.token, { ok: undefined });
    assert.ok(!(l.beginLogin(['ip:6', 'user:u']) instanceof Promise), 'nothing running: at once');
  });

  test('rate: rateTake counts only when it admits; rateWait never counts', () => {
    const { l } = local();
    const limit = { messages: 2, perMs: 60_000 };
    assert.equal(l.rateWait('u', limit), 0);
    assert.equal(l.rateTake('u', limit), 0);
    assert.equal(l.rateTake('u', limit), 0);
    assert.ok(l.rateTake('u', limit) > 0);
    assert.ok(l.rateWait('u', limit) > 0);
  });
});

/** Two workers' IpcLimits and the primary's LimitServer, joined by in-memory channels (answers on a later tick, like IPC). */
function cluster(n: number) {
  const { l, shed } = local();
  const handlers: ((m: unknown) => void)[] = [];
  const server = new LimitServer(l, (worker, m) => setImmediate(() => handlers[worker]!(structuredClone(m))));
  const workers = Array.from({ length: n }, (_, i) => {
    const ch: Channel = {
      send: (m) => setImmediate(() => server.handle(i, structuredClone(m) as LimitCall)),
      onMessage: (h) => (handlers[i] = h),
    };
    return new IpcLimits(ch);
  });
  return { l, shed, server, workers };
}

describe('IpcLimits and LimitServer', () => {
  test('two workers share one lockout, one connection table and one rate limit', async () => {
    const { l, workers } = cluster(2);
    const [a, b] = workers as [IpcLimits, IpcLimits];
    const fail = async (w: IpcLimits, ip: string) => {
      const s = await w.beginLogin([`ip:${ip}`, 'user:v']);
      assert.ok('token' in s);
      return (await w.endLogin(s.token, { ok: false }))[1];
    };
    assert.equal(await fail(a, '1'), false);
    assert.equal(await fail(b, '2'), false);
    assert.equal(await fail(a, '3'), true, 'the third failure, whichever worker saw the first two');
    assert.ok('lockedMs' in (await b.beginLogin(['ip:4', 'user:v'])));
    assert.equal(await a.connect(conn(1, '10.1.0.1'), () => undefined), 'ok');
    assert.equal(await b.connect(conn(2, '10.1.0.1'), () => undefined), 'ok');
    assert.equal(await b.connect(conn(3, '10.1.0.1'), () => undefined), 'too_many_connections_per_ip');
    a.closed('k1');
    assert.equal(await b.connect(conn(3, '10.1.0.1'), () => undefined), 'ok', 'released by the other worker, in order');
    const limit = { messages: 1, perMs: 60_000 };
    assert.equal(await a.rateTake('u', limit), 0);
    assert.ok((await b.rateTake('u', limit)) > 0);
    assert.equal(l.sessionCount, 2);
  });

  test('a shed reaches the worker that holds the connection', async () => {
    const { workers } = cluster(2);
    const [a, b] = workers as [IpcLimits, IpcLimits];
    const shedOnA = new Promise<ShedReason>((resolve) => void a.connect(conn(1), resolve));
    await b.connect(conn(2), () => assert.fail('k2 is the newcomer'));
    await b.connect(conn(3), () => undefined); // the cap (2): k1, the oldest, goes
    assert.equal(await shedOnA, 'unauthenticated_cap');
  });

  test('a worker that dies gives its connections and its running checks back', async () => {
    const { l, server, workers } = cluster(2);
    await workers[0]!.connect(conn(1, '10.2.0.1'), () => undefined);
    await workers[1]!.connect(conn(2, '10.2.0.1'), () => undefined);
    for (let i = 0; i < 3; i++) assert.ok('token' in (await workers[0]!.beginLogin([`ip:${i}`, 'user:w'])));
    const waiting = workers[1]!.beginLogin(['ip:9', 'user:w']);
    assert.equal(server.releaseWorker(0), 1);
    assert.equal(l.count('10.2.0.1'), 1);
    assert.ok('token' in (await waiting), 'the dead worker\'s checks ended without counting: the waiting login runs');
  });
});

describe('workerCount', () => {
  const tree = (files: Record<string, string>) => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cgroup-'));
    for (const [f, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
      fs.writeFileSync(path.join(root, f), text);
    }
    return root;
  };

  test('a number is taken as it is; auto without a quota is the core count', () => {
    assert.equal(workerCount(3), 3);
    const root = tree({ 'self.cgroup': '0::/\n', 'fs/cpu.max': 'max 100000\n' });
    assert.equal(workerCount('auto', { cgroupRoot: path.join(root, 'fs'), procSelfCgroup: path.join(root, 'self.cgroup'), cores: 8 }), 8);
  });

  test('cgroup v2: cpu.max of the cgroup or an ancestor, rounded up, at most the cores', () => {
    const root = tree({ 'self.cgroup': '0::/kubepods/pod1/c1\n', 'fs/kubepods/pod1/cpu.max': '250000 100000\n', 'fs/kubepods/pod1/c1/cpu.max': 'max 100000\n' });
    const o = { cgroupRoot: path.join(root, 'fs'), procSelfCgroup: path.join(root, 'self.cgroup') };
    assert.equal(cgroupCpuLimit(o.cgroupRoot, o.procSelfCgroup), 3, '2.5 CPUs: 3 workers');
    assert.equal(workerCount('auto', { ...o, cores: 16 }), 3);
    assert.equal(workerCount('auto', { ...o, cores: 2 }), 2);
  });

  test('cgroup v2 inside a container (its namespace root): /sys/fs/cgroup/cpu.max', () => {
    const root = tree({ 'self.cgroup': '0::/\n', 'fs/cpu.max': '150000 100000\n' });
    assert.equal(cgroupCpuLimit(path.join(root, 'fs'), path.join(root, 'self.cgroup')), 2);
  });

  test('cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us; -1 is no quota', () => {
    const root = tree({
      'self.cgroup': '12:memory:/x\n4:cpu,cpuacct:/\n',
      'fs/cpu,cpuacct/cpu.cfs_quota_us': '100000\n',
      'fs/cpu,cpuacct/cpu.cfs_period_us': '100000\n',
    });
    assert.equal(cgroupCpuLimit(path.join(root, 'fs'), path.join(root, 'self.cgroup')), 1);
    const none = tree({ 'self.cgroup': '4:cpu,cpuacct:/\n', 'fs/cpu,cpuacct/cpu.cfs_quota_us': '-1\n', 'fs/cpu,cpuacct/cpu.cfs_period_us': '100000\n' });
    assert.equal(cgroupCpuLimit(path.join(none, 'fs'), path.join(none, 'self.cgroup')), undefined);
  });

  test('this machine: auto gives at least one worker and at most its cores', () => {
    const n = workerCount('auto');
    assert.ok(n >= 1 && n <= os.availableParallelism());
  });
});
