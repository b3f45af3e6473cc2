/**
 * The runc runner of the container kubelet stand-in, against the real image from
 * `make image` under real runc: the hardened pod spec the operator writes must give a
 * non-root process with no capabilities, no privilege escalation, RuntimeDefault seccomp,
 * a read-only root and cgroup limits; binding a port below 1024 must fail as in a cluster;
 * read-only volumes must be read-only; each pod has its own IP; nothing is left behind.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { V1Container, V1PodSpec } from '@kubernetes/client-node';
import { createPki } from '../support/pki.js';
import { unpackImage, type UnpackedImage } from './image.js';
import { createPodNetwork, proxyHostPort, type PodNetwork } from './netns.js';
import { buildRuntimeSpec, ContainerConfigError, RuncRunner, resolveArgs, type RunningContainer } from './runc.js';

const here = dirname(fileURLToPath(import.meta.url));

/** The pod-level securityContext the operator writes for relay pods. */
function hardenedPod(extra: Partial<V1PodSpec> = {}): V1PodSpec {
  return {
    containers: [],
    securityContext: {
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      fsGroup: 65532,
      seccompProfile: { type: 'RuntimeDefault' },
    },
    ...extra,
  };
}
const hardenedContainer = (c: Partial<V1Container>): V1Container => ({
  name: 'relay',
  securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
  ...c,
});

async function waitFor<T>(what: string, fn: () => T | undefined, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const out = (c: RunningContainer): string => readFileSync(c.stdoutPath, 'utf8');
const err = (c: RunningContainer): string => readFileSync(c.stderrPath, 'utf8');

/** Runs `node -e script` to completion; returns the container, its status and stdout. */
async function runNode(runner: RuncRunner, id: string, script: string, opts: {
  pod?: V1PodSpec; container?: Partial<V1Container>; network?: PodNetwork; volumes?: Record<string, { hostPath: string }>;
} = {}): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const c = await runner.start({
    id,
    pod: opts.pod ?? hardenedPod(),
    container: hardenedContainer({ command: ['node', '-e', script], ...opts.container }),
    ...(opts.network ? { network: opts.network } : {}),
    ...(opts.volumes ? { volumes: opts.volumes } : {}),
  });
  let timer: NodeJS.Timeout | undefined;
  const st = await Promise.race([
    c.exited,
    new Promise<never>((_, rej) => { timer = setTimeout(() => rej(new Error(`${id} still running after 30s`)), 30_000); }),
  ]).finally(() => clearTimeout(timer));
  const res = { exitCode: st.exitCode, stdout: out(c), stderr: err(c) };
  await c.delete();
  return res;
}

async function retry<T>(fn: () => Promise<T>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** The first reply line of an SMTP server, then QUIT. */
function smtpBanner(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, timeout: 5000 });
    s.setEncoding('utf8');
    let data = '';
    s.on('data', (d) => {
      data += d;
      const nl = data.indexOf('\r\n');
      if (nl >= 0) {
        s.end('QUIT\r\n');
        resolve(data.slice(0, nl));
      }
    });
    s.on('timeout', () => { s.destroy(); reject(new Error('timeout')); });
    s.on('error', reject);
  });
}

function tcpGreeting(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, timeout: 5000 });
    let data = '';
    s.setEncoding('utf8');
    s.on('data', (d) => { data += d; });
    s.on('end', () => resolve(data));
    s.on('timeout', () => { s.destroy(); reject(new Error('timeout')); });
    s.on('error', reject);
  });
}

describe('runc runner: buildRuntimeSpec (pod spec -> OCI config)', () => {
  const image = { rootfs: mkdtempSync(join(tmpdir(), 'srop-fake-rootfs-')), config: { User: '65532:65532', Entrypoint: ['node', '/app/dist/entrypoint.js'], Cmd: ['--help'], Env: ['PATH=/usr/bin', 'A=image'], WorkingDir: '/app' } };
  mkdirSync(join(image.rootfs, 'etc'));
  writeFileSync(join(image.rootfs, 'etc/passwd'), 'root:x:0:0::/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n');
  writeFileSync(join(image.rootfs, 'etc/group'), 'root:x:0:\nnonroot:x:65532:\nmail:x:8:nonroot\n');
  const ctx = { image, rootPath: '/nonexistent/rootfs', etcDir: mkdtempSync(join(tmpdir(), 'srop-etc-')) };
  after(() => { rmSync(image.rootfs, { recursive: true, force: true }); rmSync(ctx.etcDir, { recursive: true, force: true }); });

  it('follows the Kubernetes command/args rules and $(VAR) expansion', () => {
    const env = new Map([['PORT', '2587']]);
    assert.deepEqual(resolveArgs({ name: 'c' }, image.config, env), ['node', '/app/dist/entrypoint.js', '--help']);
    assert.deepEqual(resolveArgs({ name: 'c', args: ['relay', 'serve', '--port=$(PORT)'] }, image.config, env),
      ['node', '/app/dist/entrypoint.js', 'relay', 'serve', '--port=2587']);
    assert.deepEqual(resolveArgs({ name: 'c', command: ['node'], args: ['-e', '$$(PORT) $(NOPE)'] }, image.config, env),
      ['node', '-e', '$(PORT) $(NOPE)']);
  });

  it('maps the hardened securityContext: user, groups, no caps, no new privileges, ro root, RuntimeDefault seccomp, limits', () => {
    const spec = buildRuntimeSpec({
      id: 'x', pod: hardenedPod({ securityContext: { ...hardenedPod().securityContext, supplementalGroups: [4000] } }),
      container: hardenedContainer({ args: ['relay'], env: [{ name: 'A', value: 'mine' }, { name: 'B', value: '$(A)-b' }],
        resources: { limits: { memory: '128Mi', cpu: '500m' }, requests: { cpu: '100m' } } }),
    }, ctx);
    assert.deepEqual(spec.process.user, { uid: 65532, gid: 65532, additionalGids: [8, 4000] });
    assert.deepEqual(spec.process.capabilities, { bounding: [], effective: [], permitted: [] });
    assert.equal(spec.process.noNewPrivileges, true);
    assert.equal(spec.root.readonly, true);
    assert.deepEqual(spec.process.env, ['PATH=/usr/bin', 'A=mine', 'B=mine-b']);
    assert.equal(spec.process.cwd, '/app');
    assert.equal(spec.linux.seccomp?.defaultAction, 'SCMP_ACT_ERRNO');
    const allowed = new Set(spec.linux.seccomp?.syscalls.filter((s) => s.action === 'SCMP_ACT_ALLOW' && !s.args).flatMap((s) => s.names));
    assert.ok(allowed.has('read') && allowed.has('accept4') && allowed.has('epoll_wait'));
    for (const denied of ['mount', 'umount2', 'unshare', 'setns', 'pivot_root', 'keyctl', 'reboot', 'kexec_load', 'init_module', 'bpf', 'chroot']) {
      assert.ok(!allowed.has(denied), `${denied} must not be allowed without capabilities`);
    }
    assert.deepEqual(spec.linux.resources.memory, { limit: 128 * 1024 * 1024 });
    assert.deepEqual(spec.linux.resources.cpu, { shares: 102, period: 100000, quota: 50000 });
    assert.ok(!spec.linux.namespaces.some((n) => n.type === 'network'), 'no pod network given: host network');
    const writable = spec.mounts.filter((m) => !(m.options ?? []).includes('ro')).map((m) => m.destination);
    assert.deepEqual(writable.sort(), ['/dev', '/dev/mqueue', '/dev/pts', '/dev/shm', '/proc'].sort(),
      'no writable place beyond the runtime defaults');
  });

  it('refuses what a kubelet refuses', () => {
    assert.throws(() => buildRuntimeSpec({ id: 'x', pod: hardenedPod({ securityContext: { runAsNonRoot: true, runAsUser: 0 } }),
      container: { name: 'c' } }, ctx), ContainerConfigError);
    assert.throws(() => buildRuntimeSpec({ id: 'x', pod: { containers: [], securityContext: { runAsNonRoot: true } },
      container: { name: 'c' } }, { ...ctx, image: { ...image, config: { ...image.config, User: 'nonroot' } } }), /non-numeric user/);
    assert.throws(() => buildRuntimeSpec({ id: 'x', pod: hardenedPod({ securityContext: { sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] } }),
      container: { name: 'c' } }, ctx), /pod network namespace/);
    assert.throws(() => buildRuntimeSpec({ id: 'x', pod: hardenedPod(), container: hardenedContainer({ env: [{ name: 'S', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }] }) }, ctx),
      /resolved by the caller/);
  });
});

describe('runc runner: containers from the project image under runc', { timeout: 240_000 }, () => {
  let image: UnpackedImage;
  let runner: RuncRunner;
  const networks: PodNetwork[] = [];
  const scratch = mkdtempSync(join(tmpdir(), 'srop-runc-test-'));

  before(async () => {
    image = await unpackImage(); // fails with "run 'make image' first" when there is no image
    runner = await RuncRunner.create({ image });
  });
  after(async () => {
    await runner?.close();
    for (const n of networks) await n.release();
    rmSync(scratch, { recursive: true, force: true });
  });
  const podNetwork = async (): Promise<PodNetwork> => {
    const n = await createPodNetwork();
    networks.push(n);
    return n;
  };

  it('runs as uid 65532 with no capabilities, no new privileges, seccomp, on a read-only root, with cgroup limits', async () => {
    const script = `
      const fs = require('fs');
      const status = Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').split('\\n').filter(Boolean).map((l) => l.split(/:\\s*/)));
      const tryWrite = (p) => { try { fs.writeFileSync(p, 'x'); return 'written'; } catch (e) { return e.code; } };
      const read = (p) => { try { return fs.readFileSync(p, 'utf8').trim(); } catch (e) { return e.code; } };
      console.log(JSON.stringify({
        uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(),
        capEff: status.CapEff, capPrm: status.CapPrm, capBnd: status.CapBnd, noNewPrivs: status.NoNewPrivs, seccomp: status.Seccomp,
        writeRoot: tryWrite('/probe'), writeApp: tryWrite('/app/probe'), writeTmp: tryWrite('/tmp/probe'),
        memLimit: read('/sys/fs/cgroup/memory/memory.limit_in_bytes'), cpuQuota: read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us'),
        hostname: require('os').hostname(), cwd: process.cwd(),
      }));`;
    const r = await runNode(runner, 'hardened', script, {
      container: { resources: { limits: { memory: '128Mi', cpu: '500m' } } },
      network: await podNetwork(),
    });
    assert.equal(r.exitCode, 0, r.stderr);
    const got = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(got['uid'], 65532);
    assert.equal(got['gid'], 65532);
    assert.deepEqual(got['groups'], [65532]);
    assert.equal(got['capEff'], '0000000000000000');
    assert.equal(got['capPrm'], '0000000000000000');
    assert.equal(got['capBnd'], '0000000000000000');
    assert.equal(got['noNewPrivs'], '1');
    assert.equal(got['seccomp'], '2', 'a seccomp filter is active');
    assert.equal(got['writeRoot'], 'EROFS');
    assert.equal(got['writeApp'], 'EROFS');
    assert.equal(got['writeTmp'], 'EROFS', 'no emptyDir at /tmp in the pod spec: /tmp is part of the read-only root');
    assert.equal(got['cwd'], '/app');
    // cgroup v1 here (memory, cpu controllers); on cgroup v2 these files differ.
    if (existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')) {
      assert.equal(got['memLimit'], String(128 * 1024 * 1024));
      assert.equal(got['cpuQuota'], '50000');
    }
  });

  it('a non-root process cannot bind port 587 (EACCES) but binds 2587; pods get their own IPs on the same port', async () => {
    const script = `
      const net = require('net');
      const listen = (port) => new Promise((res) => { const s = net.createServer((c) => c.end('hello from ' + require('os').hostname() + '\\n'));
        s.once('error', (e) => res({ port, error: e.code })); s.listen(port, '0.0.0.0', () => res({ port, server: s })); });
      (async () => {
        const low = await listen(587);
        const high = await listen(2587);
        console.log(JSON.stringify({ low: low.error ?? 'bound', high: high.error ?? 'bound' }));
        process.on('SIGTERM', () => { console.log('SIGTERM'); process.exit(0); });
      })();`;
    const netA = await podNetwork();
    const netB = await podNetwork();
    assert.notEqual(netA.podIP, netB.podIP);
    const a = await runner.start({ id: 'listen-a', pod: hardenedPod(), container: hardenedContainer({ command: ['node', '-e', script] }), network: netA, podName: 'pod-a' });
    const b = await runner.start({ id: 'listen-b', pod: hardenedPod(), container: hardenedContainer({ command: ['node', '-e', script] }), network: netB, podName: 'pod-b' });
    for (const c of [a, b]) {
      const line = await waitFor(`${c.id} listening`, () => out(c).split('\n').find((l) => l.startsWith('{')));
      assert.deepEqual(JSON.parse(line), { low: 'EACCES', high: 'bound' }, err(c));
    }
    // Both listen on 2587, each on its own pod IP, reachable from the host.
    assert.equal(await tcpGreeting(netA.podIP, 2587), 'hello from pod-a\n');
    assert.equal(await tcpGreeting(netB.podIP, 2587), 'hello from pod-b\n');
    // SIGTERM reaches the program (PID 1 in its pid namespace) and its exit code is reported.
    await a.kill('SIGTERM');
    assert.equal((await a.exited).exitCode, 0);
    assert.match(out(a), /SIGTERM/);
    await b.kill('SIGKILL');
    const stB = await b.exited;
    assert.equal(stB.exitCode, 137);
    assert.equal(stB.signal, 'SIGKILL');
    assert.equal(stB.oomKilled, false);
    await a.delete();
    await b.delete();
  });

  it('binds port 587 as non-root only with the pod sysctl net.ipv4.ip_unprivileged_port_start in its own netns', async () => {
    const script = `require('net').createServer().once('error', (e) => { console.log(e.code); process.exit(0); })
      .listen(587, () => { console.log('bound'); process.exit(0); });`;
    const pod = hardenedPod({ securityContext: { ...hardenedPod().securityContext, sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] } });
    const withSysctl = await runNode(runner, 'sysctl-587', script, { pod, network: await podNetwork() });
    assert.equal(withSysctl.stdout.trim(), 'bound', withSysctl.stderr);
    // The host's own setting is untouched.
    assert.equal(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim() !== '0', true);
  });

  it('capabilities.add NET_BIND_SERVICE does not let a non-root process bind 587 (no ambient caps, as with containerd)', async () => {
    const script = `require('net').createServer().once('error', (e) => { console.log(e.code); process.exit(0); })
      .listen(587, () => { console.log('bound'); process.exit(0); });`;
    const r = await runNode(runner, 'netbind-cap', script, {
      network: await podNetwork(),
      container: { securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'], add: ['NET_BIND_SERVICE'] } } },
    });
    assert.equal(r.stdout.trim(), 'EACCES', r.stderr);
  });

  it('a pod reaches only its host address; a host loopback service is reachable through proxyHostPort', async () => {
    const net = await podNetwork();
    const hostServer = createServer((c) => c.end('from host loopback\n'));
    await new Promise<void>((r) => hostServer.listen(0, '127.0.0.1', () => r()));
    const hostPort = (hostServer.address() as AddressInfo).port;
    const proxy = await proxyHostPort(net, 0, { port: hostPort });
    try {
      const script = `
        const net = require('net');
        const get = (host, port) => new Promise((res) => { const s = net.connect({ host, port, timeout: 2000 });
          let d = ''; s.on('data', (x) => d += x); s.on('end', () => res(d.trim())); s.on('timeout', () => { s.destroy(); res('timeout'); }); s.on('error', (e) => res(e.code)); });
        (async () => console.log(JSON.stringify({
          proxied: await get('${net.hostIP}', ${proxy.port}),
          loopback: await get('127.0.0.1', ${hostPort}),
          elsewhere: await get('198.18.255.254', 25),
        })))();`;
      const r = await runNode(runner, 'reach', script, { network: net });
      assert.equal(r.exitCode, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { proxied: 'from host loopback', loopback: 'ECONNREFUSED', elsewhere: 'ENETUNREACH' });
    } finally {
      await proxy.close();
      await new Promise((r) => hostServer.close(r));
    }
  });

  it('a read-only volume mount is read-only; a writable one is writable; nothing else is', async () => {
    const config = join(scratch, 'config');
    const data = join(scratch, 'data');
    mkdirSync(config);
    mkdirSync(data);
    chmodSync(data, 0o777); // an emptyDir, as the kubelet makes it
    writeFileSync(join(config, 'relay.yaml'), 'hello: world\n');
    const pod = hardenedPod({ volumes: [{ name: 'config', configMap: { name: 'c' } }, { name: 'data', emptyDir: {} }] });
    const script = `
      const fs = require('fs');
      const tryWrite = (p) => { try { fs.writeFileSync(p, 'x'); return 'written'; } catch (e) { return e.code; } };
      console.log(JSON.stringify({ read: fs.readFileSync('/etc/smtp-relay/relay.yaml', 'utf8'),
        writeConfig: tryWrite('/etc/smtp-relay/new'), writeData: tryWrite('/var/spool/relay/ok'), writeEtc: tryWrite('/etc/probe') }));`;
    const r = await runNode(runner, 'volumes', script, {
      pod,
      container: { volumeMounts: [{ name: 'config', mountPath: '/etc/smtp-relay', readOnly: true }, { name: 'data', mountPath: '/var/spool/relay' }] },
      volumes: { config: { hostPath: config }, data: { hostPath: data } },
    });
    assert.equal(r.exitCode, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { read: 'hello: world\n', writeConfig: 'EROFS', writeData: 'written', writeEtc: 'EROFS' });
    assert.equal(readFileSync(join(data, 'ok'), 'utf8'), 'x');
    assert.ok(!existsSync(join(config, 'new')));
  });

  it("runs the image's entrypoint with the operator subcommand", async (t) => {
    if (!existsSync(join(image.rootfs, 'app/dist/operator/main.js'))) {
      t.diagnostic('this image build has no dist/operator/main.js yet: checked the entrypoint usage instead');
    }
    const hasOperator = existsSync(join(image.rootfs, 'app/dist/operator/main.js'));
    const c = await runner.start({ id: 'entrypoint-op', pod: hardenedPod(), container: hardenedContainer({ args: hasOperator ? ['operator', '--help'] : ['--help'] }) });
    const st = await c.exited;
    const text = out(c) + err(c);
    await c.delete();
    assert.equal(st.exitCode, 0, text);
    assert.match(text, hasOperator ? /smtp-relay-operator/ : /operator \[flags\]/);
  });

  it("runs the image's entrypoint: the relay CLI when the build has it, else node itself", async () => {
    const hasRelay = existsSync(join(image.rootfs, 'app/dist/relay/main.js'));
    const c = await runner.start({
      id: 'entrypoint',
      pod: hardenedPod(),
      container: hardenedContainer(hasRelay ? { args: ['relay', '--help'] } : { command: ['node', '--version'] }),
    });
    const st = await c.exited;
    const text = out(c) + err(c);
    await c.delete();
    if (hasRelay) {
      assert.equal(st.exitCode, 0, text);
      assert.match(text, /serve|check-config|usage/i);
    } else {
      assert.equal(st.exitCode, 0, text);
      assert.match(text, /^v24\./);
    }
  });

  it('the relay serves SMTP in its container under the hardened pod spec (check-config, serve, readyz, SIGTERM)', async (t) => {
    if (!existsSync(join(image.rootfs, 'app/dist/relay/main.js'))) {
      assert.fail('this image has no dist/relay/main.js: rebuild it with make image');
    }
    const net = await podNetwork();
    const pki = await createPki();
    t.after(() => pki.cleanup());
    const cert = await pki.issue({ name: 'relay', dnsNames: ['relay.example.com'], ips: [net.podIP] });
    // Volumes as the kubelet materializes them: Secret files group-readable by fsGroup 65532.
    const vol = (name: string, files: Record<string, string>): string => {
      const dir = join(scratch, `relay-${name}`);
      mkdirSync(dir);
      for (const [f, content] of Object.entries(files)) {
        writeFileSync(join(dir, f), content);
        chownSync(join(dir, f), 0, 65532);
        chmodSync(join(dir, f), 0o440);
      }
      return dir;
    };
    const hash = execFileSync(process.execPath, [join(here, '../../../relay/main.js'), 'hash-password'],
      { input: 'a long random password for the test', encoding: 'utf8' }).trim();
    const config = [
      'version: 1',
      'hostname: relay.example.com',
      'listeners: [{name: submission, port: 2587, mode: starttls}, {name: submissions, port: 2465, mode: implicit}]',
      'tls: {certFile: /etc/smtp-relay/tls/tls.crt, keyFile: /etc/smtp-relay/tls/tls.key}',
      'auth: {usersFile: /etc/smtp-relay/users/users.yaml}',
      `access: {allowedCidrs: ["${net.hostIP}/32"]}`,
      `upstream: {host: ${net.hostIP}, port: 2525, tls: starttls}`,
      'metrics: {port: 9090}',
      'workers: 1',
    ].join('\n') + '\n';
    const volumes = {
      config: { hostPath: vol('config', { 'relay.yaml': config }) },
      tls: { hostPath: vol('tls', { 'tls.crt': cert.chainPem, 'tls.key': cert.keyPem }) },
      users: { hostPath: vol('users', { 'users.yaml': `users:\n  - {name: app, passwordHash: "${hash}", allowedSenders: ["app@example.com"]}\n` }) },
    };
    const pod = hardenedPod({ volumes: [
      { name: 'config', configMap: { name: 'relay-config' } },
      { name: 'tls', secret: { secretName: 'relay-tls', defaultMode: 0o440 } },
      { name: 'users', secret: { secretName: 'relay-users', defaultMode: 0o440 } },
    ] });
    const volumeMounts = [
      { name: 'config', mountPath: '/etc/smtp-relay/config', readOnly: true },
      { name: 'tls', mountPath: '/etc/smtp-relay/tls', readOnly: true },
      { name: 'users', mountPath: '/etc/smtp-relay/users', readOnly: true },
    ];
    const check = await runner.start({ id: 'relay-check', pod, network: net, volumes, container: hardenedContainer({
      args: ['relay', 'check-config', '--config', '/etc/smtp-relay/config/relay.yaml'], volumeMounts }) });
    const checkStatus = await check.exited;
    assert.equal(checkStatus.exitCode, 0, out(check) + err(check));
    await check.delete();

    const relay = await runner.start({ id: 'relay-serve', pod, network: net, podName: 'relay-0', volumes, container: hardenedContainer({
      args: ['relay', 'serve', '--config', '/etc/smtp-relay/config/relay.yaml'], volumeMounts,
      resources: { limits: { memory: '256Mi', cpu: '1' }, requests: { cpu: '100m', memory: '64Mi' } } }) });
    t.after(() => relay.delete());
    const banner = await retry(() => smtpBanner(net.podIP, 2587), 15_000);
    assert.match(banner, /^220 relay\.example\.com ESMTP/, out(relay) + err(relay));
    const ready = await retry(async () => {
      const r = await fetch(`http://${net.podIP}:9090/readyz`);
      if (r.status !== 200) throw new Error(`readyz ${r.status}`);
      return r.status;
    }, 15_000);
    assert.equal(ready, 200);
    await relay.kill('SIGTERM');
    const st = await relay.exited;
    assert.equal(st.exitCode, 0, err(relay));
  });

  it('the memory limit is enforced: a container allocating past it is OOM-killed (137, oomKilled)', async () => {
    const script = `const keep = []; for (let i = 0; i < 64; i++) { keep.push(Buffer.alloc(8 << 20, 1)); } console.log('survived');`;
    const c = await runner.start({ id: 'oom', pod: hardenedPod(), container: hardenedContainer({
      command: ['node', '-e', script], resources: { limits: { memory: '96Mi' } } }) });
    const st = await c.exited;
    const stdout = out(c);
    await c.delete();
    assert.equal(stdout, '', 'must not get past 512 MiB under a 96 MiB limit');
    assert.equal(st.exitCode, 137);
    assert.equal(st.oomKilled, true);
  });

  it('a pod spec that cannot work fails at start and leaves nothing behind', async () => {
    await assert.rejects(runner.start({ id: 'bad', pod: hardenedPod({ securityContext: { runAsNonRoot: true, runAsUser: 0 } }),
      container: { name: 'c', command: ['node', '--version'] } }), ContainerConfigError);
    assert.ok(!existsSync(join(runner.dir, 'bundles', 'bad')));
    assert.deepEqual(await runner.list(), []);
  });

  it('a failing program reports its exit code and stderr', async () => {
    const r = await runNode(runner, 'fails', "console.error('boom'); process.exit(3)");
    assert.equal(r.exitCode, 3);
    assert.equal(r.stderr, 'boom\n');
  });

  const startCrashChild = async (): Promise<{ child: ReturnType<typeof spawn>; info: { pid: number; dir: string; netns: string; bundle: string } }> => {
    const child = spawn(process.execPath, [join(here, 'crash-child.js')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let line = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => { line += d; });
    const info = await waitFor('crash child to start its container', () => {
      const l = line.split('\n')[0];
      return line.includes('\n') && l ? (JSON.parse(l) as { pid: number; dir: string; netns: string; bundle: string }) : undefined;
    }, 30_000);
    return { child, info };
  };

  it('cleans up when the test process is ended by SIGTERM', async () => {
    const { child, info } = await startCrashChild();
    assert.ok(processAlive(info.pid));
    child.kill('SIGTERM');
    const [, signal] = await new Promise<[number | null, string | null]>((r) => child.once('exit', (c, s) => r([c, s])));
    assert.equal(signal, 'SIGTERM', 'the process still dies of the signal');
    assert.ok(!processAlive(info.pid), 'container killed');
    assert.ok(!existsSync(info.dir), 'runner state removed');
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(info.dir), 'no mounts left');
    assert.ok(!execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(info.netns), 'netns deleted');
  });

  it('cleans up after a crashed (SIGKILLed) test process: containers, mounts, netns', async () => {
    const { child, info } = await startCrashChild();
    assert.ok(processAlive(info.pid));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    assert.ok(processAlive(info.pid), 'the container outlives its crashed owner until reaped');
    // The next runner and pod network reap what the dead one left.
    const next = await RuncRunner.create({ image });
    const n = await podNetwork();
    await n.release();
    await waitFor('container process gone', () => (processAlive(info.pid) ? undefined : true));
    assert.ok(!existsSync(info.dir));
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(info.dir), 'no mounts left');
    assert.ok(!execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(info.netns), 'netns deleted');
    await next.close();
    assert.ok(!existsSync(next.dir));
  });
});

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
}
