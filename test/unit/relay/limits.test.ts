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

  test('lockout: the maxFailures-th failure locks every key given; success clears only its key', () => {
    const { l } = local();
    assert.deepEqual(l.failed(['ip:a', 'user:x']), [false, false]);
    l.succeeded('user:x');
    assert.deepEqual(l.failed(['ip:a', 'user:x']), [false, false]);
    assert.deepEqual(l.failed(['ip:a', 'user:x']), [true, false], 'ip:a failed 3 times, user:x twice since its success');
    assert.equal(l.lockedFor(['ip:a']), 120_000);
    assert.equal(l.lockedFor(['ip:b', 'user:x']), 0);
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
    assert.deepEqual(await a.failed(['user:v']), [false]);
    assert.deepEqual(await b.failed(['user:v']), [false]);
    assert.deepEqual(await a.failed(['user:v']), [true], 'the third failure, whichever worker saw the first two');
    assert.ok((await b.lockedFor(['user:v'])) > 0);
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

  test('a worker that dies gives its connections back', async () => {
    const { l, server, workers } = cluster(2);
    await workers[0]!.connect(conn(1, '10.2.0.1'), () => undefined);
    await workers[1]!.connect(conn(2, '10.2.0.1'), () => undefined);
    assert.equal(server.releaseWorker(0), 1);
    assert.equal(l.count('10.2.0.1'), 1);
    assert.equal(workers[0]!.pending, 0);
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
