/**
 * The container kubelet stand-in against the real control plane and the image `make image`
 * built: a Deployment's pods are bound and run under runc, with env and volumes from
 * Secrets/ConfigMaps/downward API/service-account token; readiness makes the Deployment and
 * the Service's EndpointSlice real; a Secret update reaches the running pod through the
 * atomic writer's `..data` swap without a restart; a killed container is restarted; a pod
 * spec that cannot work (non-root binding port 80, a write to the read-only root) crash-loops
 * and is never Ready; deletion sends SIGTERM and leaves nothing running.
 */
import assert from 'node:assert/strict';
import { lstatSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startControlPlane, type ControlPlane } from '../controlplane/harness.js';
import { Kube } from '../../../operator/runtime/kube.js';
import { unpackImage } from './image.js';
import { ContainerKubelet } from './kubelet.js';
import { httpGet } from '../support/http.js';
import { waitFor } from '../support/poll.js';

const NS = 'kubelet-test';

// A small server run with the image's node: answers what the container sees.
const SERVER = `
const http = require('http'), https = require('https'), fs = require('fs');
const SA = '/var/run/secrets/kubernetes.io/serviceaccount';
process.on('SIGTERM', () => { console.log('got SIGTERM'); process.exit(0); });
http.createServer((q, s) => {
  if (q.url === '/readyz') return s.end('ok');
  if (q.url === '/info') {
    let token = null; try { token = fs.readFileSync(SA + '/token', 'utf8').length; } catch {}
    return s.end(JSON.stringify({
      env: { POD_NAME: process.env.POD_NAME, POD_NS: process.env.POD_NS, POD_IP: process.env.POD_IP, FROM_SECRET: process.env.FROM_SECRET, FROM_CM: process.env.FROM_CM, GREETING: process.env.GREETING },
      password: fs.readFileSync('/etc/creds/password', 'utf8'),
      setting: fs.readFileSync('/etc/settings/setting', 'utf8'),
      uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(),
      token, ns: fs.existsSync(SA + '/namespace') ? fs.readFileSync(SA + '/namespace', 'utf8') : null,
      tmpWritable: (() => { try { fs.writeFileSync('/tmp/x', 'y'); return true; } catch { return false; } })(),
    }));
  }
  if (q.url === '/api') {
    https.get({ host: 'kubernetes.default.svc', port: 443, path: '/api', ca: fs.readFileSync(SA + '/ca.crt'),
      headers: { Authorization: 'Bearer ' + fs.readFileSync(SA + '/token', 'utf8') } }, (r) => {
      let b = ''; r.on('data', (d) => (b += d)); r.on('end', () => s.end(JSON.stringify({ status: r.statusCode, body: b })));
    }).on('error', (e) => s.end(JSON.stringify({ error: e.message })));
    return;
  }
  s.statusCode = 404; s.end();
}).listen(8080, () => console.log('listening'));
`;

const hardenedSecurity = {
  runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' },
};

function deployment(name: string, replicas: number, container: Record<string, unknown>, podExtra: Record<string, unknown> = {}): object {
  return {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name, namespace: NS },
    spec: {
      replicas, selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          terminationGracePeriodSeconds: 5,
          securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [{ name: 'main', image: 'smtp-relay-operator:dev', securityContext: hardenedSecurity, ...container }],
          ...podExtra,
        },
      },
    },
  };
}

interface PodLite { metadata: { name: string; uid: string; deletionTimestamp?: string }; spec: { nodeName?: string }; status?: { phase?: string; podIP?: string; conditions?: { type: string; status: string }[]; containerStatuses?: { ready: boolean; restartCount: number; state: Record<string, { reason?: string }> }[] } }

describe('container kubelet (stand-in) on the local control plane', { timeout: 600_000 }, () => {
  let cp: ControlPlane;
  let kubelet: ContainerKubelet;
  let kube: Kube;
  const pods = async (app: string): Promise<PodLite[]> =>
    (await kube.get<{ items: PodLite[] }>(`/api/v1/namespaces/${NS}/pods`, { query: { labelSelector: `app=${app}` } })).items;

  before(async () => {
    const image = await unpackImage();
    cp = await startControlPlane();
    kube = new Kube(cp.kubeconfig);
    kubelet = await ContainerKubelet.start({ kubeconfig: cp.kubeconfig, image, backoffBaseMs: 1000, backoffMaxMs: 4000,
      ...(process.env['KUBELET_DEBUG'] ? { log: (l: string) => console.error(l) } : {}) });
    await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: NS } } });
    await waitFor('default ServiceAccount', () => kube.getOrUndefined(`/api/v1/namespaces/${NS}/serviceaccounts/default`));
  });
  after(async () => {
    await kubelet?.stop();
    await cp?.stop();
  });

  it('registers a Ready Node with capacity', async () => {
    const node = await kube.get<{ status: { conditions: { type: string; status: string }[]; capacity: Record<string, string> } }>(`/api/v1/nodes/${kubelet.nodeName}`);
    assert.equal(node.status.conditions.find((c) => c.type === 'Ready')?.status, 'True');
    assert.ok(Number(node.status.capacity['cpu']) >= 1);
    assert.match(node.status.capacity['memory'] ?? '', /^\d+Ki$/);
  });

  it('runs a Deployment: binding, env, volumes, readiness, EndpointSlice, live Secret update, restart, deletion', async () => {
    await kube.request('POST', `/api/v1/namespaces/${NS}/secrets`, { body: { metadata: { name: 'creds' }, stringData: { password: 'first-password', token: 'tok' } } });
    await kube.request('POST', `/api/v1/namespaces/${NS}/configmaps`, { body: { metadata: { name: 'settings' }, data: { setting: 'on', greeting: 'hello' } } });
    await kube.request('POST', `/api/v1/namespaces/${NS}/services`, { body: { metadata: { name: 'web' }, spec: { selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }] } } });
    await kube.request('POST', `/apis/apps/v1/namespaces/${NS}/deployments`, {
      body: deployment('web', 2, {
        command: ['node', '-e', SERVER],
        ports: [{ name: 'http', containerPort: 8080 }],
        env: [
          { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
          { name: 'POD_NS', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
          { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
          { name: 'FROM_SECRET', valueFrom: { secretKeyRef: { name: 'creds', key: 'token' } } },
          { name: 'FROM_CM', valueFrom: { configMapKeyRef: { name: 'settings', key: 'greeting' } } },
          { name: 'GREETING', value: '$(FROM_CM) world' },
        ],
        readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 1 },
        livenessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 2 },
        volumeMounts: [
          { name: 'creds', mountPath: '/etc/creds', readOnly: true },
          { name: 'settings', mountPath: '/etc/settings', readOnly: true },
          { name: 'tmp', mountPath: '/tmp' },
        ],
      }, {
        volumes: [
          { name: 'creds', secret: { secretName: 'creds', defaultMode: 0o440, items: [{ key: 'password', path: 'password' }] } },
          { name: 'settings', configMap: { name: 'settings' } },
          { name: 'tmp', emptyDir: {} },
        ],
      }),
    });

    const dep = await waitFor('Deployment web readyReplicas=2', async () => {
      const d = await kube.get<{ status?: { readyReplicas?: number; availableReplicas?: number } }>(`/apis/apps/v1/namespaces/${NS}/deployments/web`);
      return d.status?.readyReplicas === 2 ? d : undefined;
    }, 120_000);
    assert.equal(dep.status?.availableReplicas, 2);
    const list = await pods('web');
    assert.equal(list.length, 2);
    for (const p of list) {
      assert.equal(p.spec.nodeName, kubelet.nodeName, 'bound to the stand-in node');
      assert.equal(p.status?.phase, 'Running');
      assert.match(p.status?.podIP ?? '', /^198\.1[89]\./);
      assert.equal(p.status?.conditions?.find((c) => c.type === 'Ready')?.status, 'True');
      assert.equal(p.status?.containerStatuses?.[0]?.ready, true);
    }
    assert.notEqual(list[0]?.status?.podIP, list[1]?.status?.podIP, 'each pod has its own IP');

    // EndpointSlice from kube-controller-manager, with both pod IPs ready.
    const ips = list.map((p) => p.status?.podIP).sort();
    await waitFor('EndpointSlice with both pods ready', async () => {
      const sl = await kube.get<{ items: { endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[]; ports?: { port?: number }[] }[] }>(
        `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`, { query: { labelSelector: 'kubernetes.io/service-name=web' } });
      const ready = sl.items.flatMap((s) => (s.endpoints ?? []).filter((e) => e.conditions?.ready).flatMap((e) => e.addresses)).sort();
      return JSON.stringify(ready) === JSON.stringify(ips) && sl.items[0]?.ports?.[0]?.port === 8080;
    });

    // What the container sees.
    const p0 = list[0]!;
    const info = JSON.parse((await httpGet(p0.status!.podIP!, 8080, '/info')).body) as Record<string, unknown>;
    assert.deepEqual(info['env'], { POD_NAME: p0.metadata.name, POD_NS: NS, POD_IP: p0.status!.podIP, FROM_SECRET: 'tok', FROM_CM: 'hello', GREETING: 'hello world' });
    assert.equal(info['password'], 'first-password');
    assert.equal(info['setting'], 'on');
    assert.equal(info['uid'], 65532);
    assert.ok((info['groups'] as number[]).includes(65532), 'fsGroup is a supplementary group');
    assert.equal(info['tmpWritable'], true, 'emptyDir is writable');
    assert.ok((info['token'] as number) > 100, 'service-account token mounted (automount on)');
    assert.equal(info['ns'], NS);
    const api = JSON.parse((await httpGet(p0.status!.podIP!, 8080, '/api')).body) as { status?: number; error?: string };
    assert.equal(api.status, 200, `in-cluster API access from the pod: ${JSON.stringify(api)}`);

    // Atomic-writer layout on the host side.
    const memDir = join((kubelet as unknown as { dir: string }).dir, 'pods', p0.metadata.uid, 'memory');
    const volDir = join(memDir, 'creds');
    const mount = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === memDir);
    assert.match(mount ?? '', / - tmpfs /, 'secret volumes on a tmpfs, never on disk');
    assert.equal(readlinkSync(join(volDir, 'password')), '..data/password');
    assert.match(readlinkSync(join(volDir, '..data')), /^\.\.\d{4}_\d\d_\d\d_/);
    const st = statSync(join(volDir, 'password'));
    assert.equal(st.mode & 0o777, 0o440);
    assert.equal(st.gid, 65532, 'fsGroup owns secret files');
    const firstData = readlinkSync(join(volDir, '..data'));

    // Secret update reaches the running pod without a restart.
    await kube.request('PATCH', `/api/v1/namespaces/${NS}/secrets/creds`, { contentType: 'application/merge-patch+json', body: { stringData: { password: 'second-password' } } });
    await waitFor('new password visible in the pod', async () => {
      const i = JSON.parse((await httpGet(p0.status!.podIP!, 8080, '/info')).body) as { password: string };
      return i.password === 'second-password';
    }, 30_000);
    assert.notEqual(readlinkSync(join(volDir, '..data')), firstData, '..data swapped');
    assert.equal(lstatSync(join(volDir, 'password')).isSymbolicLink(), true);
    const after1 = (await pods('web')).find((p) => p.metadata.uid === p0.metadata.uid)!;
    assert.equal(after1.status?.containerStatuses?.[0]?.restartCount, 0, 'no restart for a Secret update');

    // A killed container is restarted (restartPolicy Always) and becomes Ready again.
    await kubelet.killContainer(NS, p0.metadata.name, 'main', 'SIGKILL');
    await waitFor('restarted and ready', async () => {
      const p = (await pods('web')).find((x) => x.metadata.uid === p0.metadata.uid);
      const cs = p?.status?.containerStatuses?.[0];
      return cs && cs.restartCount === 1 && cs.ready ? true : undefined;
    }, 60_000);

    // Deletion: SIGTERM, pods gone, nothing running.
    await kube.request('DELETE', `/apis/apps/v1/namespaces/${NS}/deployments/web`, { body: { propagationPolicy: 'Foreground' } });
    await waitFor('web pods gone', async () => ((await pods('web')).length === 0 ? true : undefined), 60_000);
    assert.match(kubelet.logs(NS, p0.metadata.name, 'main'), /got SIGTERM/);
    assert.equal(kubelet.runningPods().filter((p) => p.name.startsWith('web-')).length, 0);
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(memDir), 'the tmpfs is unmounted');
  });

  it('a pod spec that cannot work fails as in a cluster: CrashLoopBackOff, never Ready', async () => {
    // Non-root, no capabilities, no sysctl: binding port 80 is refused (EACCES).
    await kube.request('POST', `/apis/apps/v1/namespaces/${NS}/deployments`, {
      body: deployment('lowport', 1, {
        command: ['node', '-e', "require('net').createServer().listen(80, () => console.log('bound 80'))"],
        readinessProbe: { tcpSocket: { port: 80 }, periodSeconds: 1 },
      }),
    });
    // A write to the read-only root filesystem.
    await kube.request('POST', `/apis/apps/v1/namespaces/${NS}/deployments`, {
      body: deployment('rootwrite', 1, { command: ['node', '-e', "require('fs').writeFileSync('/app/x', 'y'); setInterval(() => {}, 1000)"] }),
    });
    for (const app of ['lowport', 'rootwrite']) {
      const p = await waitFor(`${app} in CrashLoopBackOff`, async () => {
        const [x] = await pods(app);
        const cs = x?.status?.containerStatuses?.[0];
        return cs && cs.restartCount >= 2 && cs.state['waiting']?.reason === 'CrashLoopBackOff' ? x : undefined;
      }, 60_000);
      assert.equal(p.status?.conditions?.find((c) => c.type === 'Ready')?.status, 'False');
      const d = await kube.get<{ status?: { readyReplicas?: number } }>(`/apis/apps/v1/namespaces/${NS}/deployments/${app}`);
      assert.equal(d.status?.readyReplicas ?? 0, 0);
    }
    // The same spec with the pod sysctl a cluster would need binds port 80 and becomes Ready.
    await kube.request('POST', `/apis/apps/v1/namespaces/${NS}/deployments`, {
      body: deployment('lowport-sysctl', 1, {
        command: ['node', '-e', "require('net').createServer().listen(80, () => console.log('bound 80'))"],
        readinessProbe: { tcpSocket: { port: 80 }, periodSeconds: 1 },
      }, { securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' }, sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] } }),
    });
    await waitFor('lowport-sysctl Ready', async () => {
      const d = await kube.get<{ status?: { readyReplicas?: number } }>(`/apis/apps/v1/namespaces/${NS}/deployments/lowport-sysctl`);
      return d.status?.readyReplicas === 1 ? true : undefined;
    }, 60_000);
    await kube.request('DELETE', `/apis/apps/v1/namespaces/${NS}/deployments/lowport-sysctl`, { body: { propagationPolicy: 'Foreground' } });
    const lowLog = kubelet.logs(NS, (await pods('lowport'))[0]!.metadata.name);
    assert.match(lowLog, /EACCES/);
    assert.doesNotMatch(lowLog, /bound 80/);
    assert.match(kubelet.logs(NS, (await pods('rootwrite'))[0]!.metadata.name), /EROFS|read-only file system/);
    for (const app of ['lowport', 'rootwrite']) await kube.request('DELETE', `/apis/apps/v1/namespaces/${NS}/deployments/${app}`, { body: { propagationPolicy: 'Foreground' } });
    await waitFor('all pods gone', async () => ((await kube.get<{ items: unknown[] }>(`/api/v1/namespaces/${NS}/pods`)).items.length === 0 ? true : undefined), 60_000);
    assert.deepEqual(kubelet.containerPids(), []);
  });

  it('restarts a container whose liveness probe fails (SIGTERM, SIGKILL after the grace period, a new container)', async () => {
    await kube.request('POST', `/apis/apps/v1/namespaces/${NS}/deployments`, {
      body: deployment('unhealthy', 1, {
        command: ['node', '-e', "require('http').createServer((q, s) => { s.statusCode = q.url === '/healthz' ? 500 : 200; s.end(); }).listen(8080)"],
        ports: [{ name: 'http', containerPort: 8080 }],
        livenessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 1, failureThreshold: 2 },
      }, { terminationGracePeriodSeconds: 2 }),
    });
    const p = await waitFor('liveness restart', async () => {
      const [x] = await pods('unhealthy');
      const cs = x?.status?.containerStatuses?.[0] as { restartCount: number; lastState?: { terminated?: { exitCode: number } } } | undefined;
      return cs && cs.restartCount >= 1 && cs.lastState?.terminated ? cs : undefined;
    }, 60_000);
    // node is PID 1 of the container and has no SIGTERM handler here: PID 1 ignores it (as in a
    // cluster), so the kubelet's SIGKILL after the grace period ends it: 128+9.
    assert.equal(p.lastState?.terminated?.exitCode, 137, 'SIGKILL after the grace period');
    await kube.request('DELETE', `/apis/apps/v1/namespaces/${NS}/deployments/unhealthy`, { body: { propagationPolicy: 'Foreground' } });
    await waitFor('unhealthy gone', async () => ((await pods('unhealthy')).length === 0 ? true : undefined), 60_000);
  });

  it('leaves a pod Pending whose nodeSelector the node does not satisfy (as the scheduler would)', async () => {
    await kube.request('POST', `/api/v1/namespaces/${NS}/pods`, {
      body: { metadata: { name: 'picky', labels: { app: 'picky' } }, spec: { nodeSelector: { disktype: 'ssd' }, containers: [{ name: 'main', image: 'smtp-relay-operator:dev', command: ['node', '-e', 'setInterval(() => {}, 1000)'] }] } },
    });
    await new Promise((r) => setTimeout(r, 3000));
    const [p] = await pods('picky');
    assert.equal(p?.spec.nodeName, undefined, 'not bound');
    assert.equal(p?.status?.phase, 'Pending');
    await kube.request('DELETE', `/api/v1/namespaces/${NS}/pods/picky`);
    await waitFor('picky gone', async () => ((await pods('picky')).length === 0 ? true : undefined), 10_000);
  });

  it('stop() leaves no container process and removes the Node', async () => {
    const pids = kubelet.containerPids();
    await kubelet.stop();
    for (const pid of pids) assert.throws(() => process.kill(pid, 0));
    await assert.rejects(kube.get(`/api/v1/nodes/${kubelet.nodeName}`), /404/);
  });
});
