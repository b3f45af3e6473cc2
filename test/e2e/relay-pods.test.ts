/**
 * End to end on the one-node cluster (see test/e2e/env.ts): the operator installed with its
 * chart and the relay pods it creates are scheduled by kube-scheduler and run by the real
 * kubelet under containerd + runc; cert-manager issues the relays' certificates from a CA
 * ClusterIssuer; the upstream is a sink on the host, reached by the relays through a Service.
 *
 * - the demo flow with 2 replicas: each replica (its pod address) relays a message
 *   over STARTTLS + AUTH with the generated password; the upstream gets it DKIM-signed
 *   (dkimpy verifies it with the TXT record from the SmtpRelay status) with a Received header;
 * - the relay pod runs with the exact securityContext the operator writes (checked on the pod
 *   object and on the container process the runtime started, read from /proc: uid/gid, no
 *   capabilities, no_new_privs, seccomp filter, read-only root) and serves mail;
 * - certificate rotation: cert-manager re-issues (a renewal as `cmctl renew` asks for it),
 *   new connections get the new certificate through the real kubelet's atomic Secret volume
 *   update, without a restart, while a client sending in a loop to the Service sees no failure;
 * - a user's password changed in its Secret: the new one works, the old one fails, no restart;
 * - a relay pod's process killed: the kubelet restarts it, and mail sent with retries during
 *   the crash is all delivered;
 * - a relay given 2 CPUs runs a primary and 2 worker processes in its pod (the operator writes
 *   `workers: 2`), and mail on new connections goes through both workers.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { verifyDkim } from '../harness/support/dkim-verify.js';
import { E2E_RESOURCES, Environment, RELAY_NAMESPACE, servedCertificateSerial, startEnvironment, waitFor, type Endpoint } from './env.js';

const RELAY = 'outbound';

describe('end to end: operator + relay pods on the one-node cluster', { timeout: 900_000 }, () => {
  let env: Environment;
  let endpoints: Endpoint[];
  let password: string;

  before(async () => {
    env = await startEnvironment({ ...(process.env['E2E_DEBUG'] ? { log: (l) => console.error(l) } : {}) });
    await env.applyRelay({ name: RELAY, replicas: 2 });
    await env.waitRelayReady(RELAY);
    endpoints = await env.waitEndpoints(RELAY, 2);
    password = await env.userPassword(RELAY, 'app');
  });
  after(async () => {
    await env?.stop();
  });

  const dkimRecords = async (): Promise<Record<string, string>> => {
    const out: Record<string, string> = {};
    for (const r of (await env.relay(RELAY)).status?.dnsRecords ?? []) if (r.type === 'TXT') out[r.name.replace(/\.$/, '').toLowerCase()] = r.value;
    return out;
  };

  it('relays a DKIM-signed message through each replica of the Service', async () => {
    const base = env.sink.messages.length;
    for (const [i, ep] of endpoints.entries()) {
      const r = await env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: `rcpt${i}@example.net`, subject: `replica ${i}`, endpoint: ep });
      assert.match(r.response, /^250 /);
    }
    const msgs = (await env.sink.waitForMessages(base + 2, 30_000)).slice(base);
    const records = await dkimRecords();
    for (const [i, m] of msgs.entries()) {
      assert.equal(m.mailFrom, 'app@example.com');
      assert.deepEqual(m.rcptTo, [`rcpt${i}@example.net`]);
      assert.equal(m.secure, true, 'relay -> upstream over STARTTLS');
      const head = m.raw.toString('utf8').split('\r\n\r\n')[0] ?? '';
      assert.match(head, /^Received: from [^\r\n]*\r\n\tby relay\.example\.com with ESMTPSA/m);
      assert.match(head, /^DKIM-Signature: [\s\S]*?d=example\.com;[\s\S]*?s=relay1;/m);
      const v = await verifyDkim(m.raw, records);
      assert.ok(v.ok, v.output);
    }
    // Each replica accepted exactly one (its own /metrics).
    for (const ep of endpoints) {
      assert.match(await env.metrics(ep.ip), /^smtp_relay_messages_total\{result="accepted"\} 1$/m, `replica ${ep.ip}`);
    }
  });

  it('runs the relay with the exact securityContext the operator writes, and it serves mail', async () => {
    const dep = await env.kube.get<{ spec: { template: { spec: { securityContext: unknown; containers: { name: string; securityContext: unknown }[] } } } }>(`/apis/apps/v1/namespaces/${RELAY_NAMESPACE}/deployments/${RELAY}`);
    const podSpec = dep.spec.template.spec;
    assert.deepEqual(podSpec.securityContext, { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } });
    const csc = podSpec.containers[0]!.securityContext;
    assert.deepEqual(csc, {
      runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, allowPrivilegeEscalation: false, privileged: false,
      readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' },
    });
    const pods = (await env.node.runningPods()).filter((p) => p.namespace === RELAY_NAMESPACE);
    assert.equal(pods.length, 2);
    for (const p of pods) {
      // The running pod carries the same spec (from the API server) ...
      const obj = await env.kube.get<{ spec: { securityContext: unknown; containers: { securityContext: unknown }[] } }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/pods/${p.name}`);
      assert.deepEqual(obj.spec.securityContext, podSpec.securityContext);
      assert.deepEqual(obj.spec.containers[0]!.securityContext, csc);
      // ... and the process the runtime started (containerd's task of the relay container) runs under it.
      assert.deepEqual(Object.keys(p.containerIds), ['relay']);
      const pid = p.pids[0]!;
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const field = (n: string): string => new RegExp(`^${n}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
      assert.match(field('Uid'), /^65532\s+65532\s+65532\s+65532$/);
      assert.match(field('Gid'), /^65532\s+65532\s+65532\s+65532$/);
      assert.equal(field('CapEff'), '0000000000000000');
      assert.equal(field('CapPrm'), '0000000000000000');
      assert.equal(field('CapBnd'), '0000000000000000');
      assert.equal(field('NoNewPrivs'), '1');
      assert.equal(field('Seccomp'), '2', 'seccomp filter mode');
      const rootMount = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').find((l) => l.split(' ')[4] === '/');
      assert.match(rootMount?.split(' ')[5] ?? '', /(^|,)ro(,|$)/, 'root filesystem read-only');
      assert.ok(p.podIP && endpoints.some((e) => e.ip === p.podIP), 'this pod is a ready endpoint');
    }
    // It serves mail under that spec (again, after the checks).
    const r = await env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: 'hardened@example.net', endpoint: endpoints[1]! });
    assert.match(r.response, /^250 /);
  });

  it('rotates the certificate through the atomic-writer update without a restart, while a client keeps sending', async () => {
    const podsBefore = await env.relayPods(RELAY);
    const cert = await env.kube.get<{ status?: { revision?: number } }>(`/apis/cert-manager.io/v1/namespaces/${RELAY_NAMESPACE}/certificates/${RELAY}-tls`);
    const rev = cert.status?.revision ?? 1;
    const oldSerials = await Promise.all(endpoints.map((ep) => servedCertificateSerial(ep, env.relayCa)));
    assert.equal(oldSerials[0], oldSerials[1]);

    // A client sending in a loop to the Service (kube-proxy spreads its connections over both pods) during the rotation.
    let stop = false;
    let sent = 0;
    const failures: string[] = [];
    const loop = (async () => {
      for (let i = 0; !stop && i < 200; i++) {
        try {
          await env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: `loop${i}@example.net` });
          sent++;
        } catch (err) {
          failures.push(String(err));
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 1000));
    await env.issuer.renew(RELAY_NAMESPACE, `${RELAY}-tls`);
    const renewed = await env.issuer.waitForRevision(RELAY_NAMESPACE, `${RELAY}-tls`, rev + 1);
    assert.equal(renewed.status?.revision, rev + 1);
    const newSerials = await waitFor('both replicas serving the new certificate', async () => {
      const s = await Promise.all(endpoints.map((ep) => servedCertificateSerial(ep, env.relayCa)));
      return s.every((x) => x !== oldSerials[0]) ? s : undefined;
    }, 60_000);
    assert.equal(newSerials[0], newSerials[1]);
    await new Promise((r) => setTimeout(r, 1000));
    stop = true;
    await loop;
    assert.deepEqual(failures, [], 'no failure seen by the sending client');
    assert.ok(sent >= 3, `the client kept sending (${sent})`);
    const podsAfter = await env.relayPods(RELAY);
    assert.deepEqual(podsAfter.map((p) => [p.uid, p.restarts]).sort(), podsBefore.map((p) => [p.uid, p.restarts]).sort(), 'same pods, no restart');
  });

  it('a changed user password reaches the running relays without a restart; the old one is refused', async () => {
    const podsBefore = await env.relayPods(RELAY);
    const newPassword = randomBytes(24).toString('base64url');
    const reloads = await env.usersReloads(RELAY);
    assert.equal(reloads.size, 2);
    await env.kube.request('PATCH', `/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/${RELAY}-user-app`, {
      contentType: 'application/merge-patch+json', body: { stringData: { password: newPassword } },
    });
    // The operator rewrites the users Secret, the kubelet updates the pods' volume, each relay reloads.
    await env.waitUsersReloaded(RELAY, reloads);
    for (const ep of endpoints) {
      const r = await env.send({ relay: RELAY, user: 'app', password: newPassword, from: 'app@example.com', to: 'newpass@example.net', endpoint: ep });
      assert.match(r.response, /^250 /, `new password accepted by ${ep.ip}`);
      await assert.rejects(
        env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: 'oldpass@example.net', endpoint: ep }),
        (err: { responseCode?: number }) => err.responseCode === 535,
        'the old password is refused with 535',
      );
    }
    password = newPassword;
    const podsAfter = await env.relayPods(RELAY);
    assert.deepEqual(podsAfter.map((p) => [p.uid, p.restarts]).sort(), podsBefore.map((p) => [p.uid, p.restarts]).sort(), 'same pods, no restart');
  });

  it('a killed relay process is restarted by the kubelet and mail sent with retries is not lost', async () => {
    const [victim] = await env.relayPods(RELAY);
    assert.ok(victim);
    const base = env.sink.messages.length;
    const subjects: string[] = [];
    for (let i = 0; i < 12; i++) {
      if (i === 4) await env.node.killContainer(RELAY_NAMESPACE, victim.name, 'relay', 'SIGKILL');
      const subject = `kill-test ${i} ${randomBytes(4).toString('hex')}`;
      // A client of the Service with retries: reconnects (kube-proxy picks a ready pod) after a connection failure or 4xx.
      await env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: 'kill@example.net', subject, retries: 20 });
      subjects.push(subject);
    }
    const got = (await env.sink.waitForMessages(base + subjects.length, 30_000)).slice(base);
    const gotSubjects = got.map((m) => /^Subject: (.*)$/m.exec(m.raw.toString('utf8'))?.[1]?.trim());
    for (const s of subjects) assert.ok(gotSubjects.includes(s), `delivered: ${s}`);
    const restarted = await waitFor('the killed pod restarted and Ready again', async () => {
      const p = (await env.relayPods(RELAY)).find((x) => x.uid === victim.uid);
      return p && p.restarts === victim.restarts + 1 && p.ready ? p : undefined;
    }, 60_000);
    assert.equal(restarted.name, victim.name, 'the same pod, restarted in place');
    await env.waitEndpoints(RELAY, 2);
  });

  it('a deleted relay pod is replaced by its ReplicaSet and mail sent with retries meanwhile is not lost', async () => {
    const [victim] = await env.relayPods(RELAY);
    assert.ok(victim);
    const base = env.sink.messages.length;
    const subjects: string[] = [];
    for (let i = 0; i < 8; i++) {
      if (i === 2) await env.kube.request('DELETE', `/api/v1/namespaces/${RELAY_NAMESPACE}/pods/${victim.name}`);
      const subject = `delete-test ${i} ${randomBytes(4).toString('hex')}`;
      await env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: 'deleted@example.net', subject, retries: 20 });
      subjects.push(subject);
    }
    const got = (await env.sink.waitForMessages(base + subjects.length, 30_000)).slice(base);
    const gotSubjects = got.map((m) => /^Subject: (.*)$/m.exec(m.raw.toString('utf8'))?.[1]?.trim());
    for (const s of subjects) assert.ok(gotSubjects.includes(s), `delivered: ${s}`);
    const pods = await waitFor('two ready relay pods, the deleted one replaced', async () => {
      const p = await env.relayPods(RELAY);
      return p.length === 2 && p.every((x) => x.ready) && !p.some((x) => x.uid === victim.uid) ? p : undefined;
    }, 120_000);
    assert.equal(pods.length, 2);
    assert.match(env.node.logs(RELAY_NAMESPACE, victim.name), /SIGTERM|shutting down|drain/i, 'the deleted pod got SIGTERM');
    const eps = await env.waitEndpoints(RELAY, 2);
    assert.ok(eps.every((e) => pods.some((p) => p.ip === e.ip)), 'endpoints follow the new pod');
  });

  it('a relay with a queue (emptyDir) runs in queue mode in its pod: 250 "queued as", then delivered from the spool', async () => {
    await env.applyRelay({ name: 'queued', replicas: 1, dkim: false, queue: { storage: { ephemeral: true, size: '128Mi' } } });
    await env.waitRelayReady('queued');
    const [ep] = await env.waitEndpoints('queued', 1);
    const queuedPassword = await env.userPassword('queued', 'app');
    const base = env.sink.messages.length;
    const r = await env.send({ relay: 'queued', user: 'app', password: queuedPassword, from: 'app@example.com', to: 'queued@example.net', subject: 'through the spool', endpoint: ep! });
    assert.match(r.response, /^250 2\.0\.0 Ok: queued as /);
    const [m] = (await env.sink.waitForMessages(base + 1, 30_000)).slice(base);
    assert.deepEqual(m!.rcptTo, ['queued@example.net']);
    await waitFor('the delivery counted by the pod', async () => /^smtp_relay_queue_deliveries_total\{result="delivered"\} 1$/m.test(await env.metrics(ep!.ip)), 15_000);
  });

  it('a relay with a 2-CPU limit runs 2 worker processes in its pod, and mail goes through both', async () => {
    await env.applyRelay({ name: 'cores', replicas: 1, dkim: false, resources: E2E_RESOURCES });
    await env.waitRelayReady('cores');
    const [ep] = await env.waitEndpoints('cores', 1);
    const config = await env.kube.request<{ data: Record<string, string> }>('GET', `/api/v1/namespaces/${RELAY_NAMESPACE}/configmaps/cores-config`);
    assert.match(Object.values(config.data).join('\n'), /^workers: 2$/m, 'the operator wrote workers: 2');
    const pod = (await env.relayPods('cores'))[0]!;
    /** The workers (their `worker` field) that logged `event`. */
    const workersThatLogged = (event: string) =>
      new Set(
        env.node
          .logs(RELAY_NAMESPACE, pod.name)
          .split('\n')
          .flatMap((l) => {
            try {
              const j = JSON.parse(l) as { event?: string; worker?: number };
              return j.event === event && j.worker !== undefined ? [j.worker] : [];
            } catch {
              return [];
            }
          }),
      );
    await waitFor('two workers ready in the pod', async () => workersThatLogged('worker_ready').size === 2, 30_000);
    const coresPassword = await env.userPassword('cores', 'app');
    const base = env.sink.messages.length;
    const count = 8;
    for (let i = 0; i < count; i++) {
      const r = await env.send({ relay: 'cores', user: 'app', password: coresPassword, from: 'app@example.com', to: `core${i}@example.net`, subject: `core ${i}`, endpoint: ep! });
      assert.match(r.response, /^250 /);
    }
    const got = (await env.sink.waitForMessages(base + count, 30_000)).slice(base);
    // the primary hands connections to its workers in turn (node:cluster round robin)
    assert.equal(workersThatLogged('auth_success').size, 2, 'both workers served logins');
    assert.deepEqual(got.map((m) => m.rcptTo[0]).sort(), Array.from({ length: count }, (_, i) => `core${i}@example.net`).sort());
    // the primary's /metrics sums the workers' series: every message counted once
    const metrics = await env.metrics(ep!.ip);
    const accepted = [...metrics.matchAll(/^smtp_relay_messages_total\{[^}]*result="accepted"[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
    assert.equal(accepted, count, metrics.split('\n').filter((l) => l.startsWith('smtp_relay_messages_total')).join('\n'));
  });
});
