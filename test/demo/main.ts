/**
 * `make demo`: the main job of smtp-relay-operator on one machine, without Docker.
 *
 * Starts a real one-node Kubernetes (test/harness/cluster/: control plane, kubelet, containerd +
 * runc, CNI, kube-proxy, scheduler, CoreDNS, cert-manager, kube-router) with a CA ClusterIssuer,
 * an upstream SMTP sink, installs the operator with its Helm chart (a pod of the node), applies
 * an SmtpRelay, waits for Ready, sends a message through the relay's Service over STARTTLS +
 * AUTH with the generated credentials, shows that the upstream received it DKIM-signed, prints
 * the relay metrics that moved, then (interactive) leaves everything running with a how-to
 * until Ctrl-C.
 * With DEMO_ONCE=1, or without a terminal, it stops after the test message. Exit status 0 only
 * if the message arrived (DKIM-signed). Every process it started is stopped at the end.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { verifyDkim } from '../harness/support/dkim-verify.js';
import { Environment, RELAY_NAMESPACE, startEnvironment, UPSTREAM_HOSTNAME, waitFor } from '../e2e/env.js';

const RELAY = 'outbound';
const t0 = Date.now();
let stepStart = Date.now();
let stepTitle = '';
let stepNo = 0;

const secs = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;
function endStep(): void {
  if (stepTitle) console.log(`      done in ${secs(Date.now() - stepStart)}`);
  stepTitle = '';
}
function step(title: string): void {
  endStep();
  stepNo++;
  stepTitle = title;
  stepStart = Date.now();
  console.log(`[${String(stepNo).padStart(2)}] ${title}`);
}
const info = (line: string): void => console.log(`      ${line}`);

function metricLines(text: string, names: RegExp): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !names.test(line)) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function main(): Promise<number> {
  const once = process.env['DEMO_ONCE'] === '1' || !process.stdin.isTTY;
  const verbose = process.env['DEMO_VERBOSE'] === '1';
  console.log('smtp-relay-operator demo: a real one-node Kubernetes, the operator and relays as its pods, mail through the relay');
  let env: Environment | undefined;
  let stopping = false;
  const shutdown = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    step('tear down (pods SIGTERM, node, add-ons, control plane, sink)');
    await env?.stop();
    endStep();
  };
  const onSignal = (): void => {
    console.log('\ninterrupted');
    void shutdown().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let ok = false;
  try {
    env = await startEnvironment({ step, ...(verbose ? { log: (l) => console.log(`      . ${l}`) } : {}) });
    info(`operator pod(s): ${(await env.node.runningPods()).filter((p) => p.namespace === 'smtp-relay-system').map((p) => `${p.name} (${p.podIP})`).join(', ')}`);

    step(`apply SmtpRelay ${RELAY_NAMESPACE}/${RELAY}: 2 replicas, TLS from the ClusterIssuer, user "app" (password generated), DKIM for example.com, upstream ${UPSTREAM_HOSTNAME}:${env.sink.port}`);
    await env.applyRelay({ name: RELAY, replicas: 2 });

    step('wait for the SmtpRelay to be Ready (certificate issued, credentials, pods ready)');
    const relay = await env.waitRelayReady(RELAY);
    for (const c of relay.status?.conditions ?? []) info(`${c.type}=${c.status}${c.reason ? ` (${c.reason})` : ''}`);
    const eps = await env.waitEndpoints(RELAY, 2);
    const svc = await env.serviceEndpoint(RELAY);
    info(`Service ${RELAY} ${svc.ip}:${svc.port} (submission), endpoints: ${eps.map((e) => `${e.ip}:${e.port}`).join(', ')}`);

    step(`read the generated password from Secret ${RELAY_NAMESPACE}/${RELAY}-user-app and send a message to the Service over STARTTLS + AUTH PLAIN`);
    const password = await env.userPassword(RELAY, 'app');
    info(`password: ${password.length} characters (not printed)`);
    const before = await Promise.all(eps.map((e) => env!.metrics(e.ip)));
    const sent = await env.send({ relay: RELAY, user: 'app', password, from: 'app@example.com', to: 'someone@example.net', subject: 'Hello from make demo', text: 'Relayed by smtp-relay-operator.\n', retries: 3 });
    info(`relay Service ${sent.endpoint.ip}:${sent.endpoint.port} (kube-proxy to one of the pods) answered: ${sent.response}`);

    step('check what the upstream sink received');
    const [msg] = await env.sink.waitForMessages(1, 30_000);
    if (!msg) throw new Error('the sink received nothing');
    const raw = msg.raw.toString('utf8');
    const headerBlock = raw.split(/\r?\n\r?\n/)[0] ?? '';
    info(`envelope: MAIL FROM:<${msg.mailFrom}> RCPT TO:<${msg.rcptTo.join('>,<')}>, over TLS: ${msg.secure}`);
    for (const h of headerBlock.split(/\r?\n(?![ \t])/)) {
      if (/^(Received|DKIM-Signature|Subject|From|To):/i.test(h)) info(h.length > 160 ? `${h.replace(/\r?\n[ \t]+/g, ' ').slice(0, 157)}...` : h.replace(/\r?\n[ \t]+/g, ' '));
    }
    const records: Record<string, string> = {};
    for (const r of (await env.relay(RELAY)).status?.dnsRecords ?? []) if (r.type === 'TXT') records[r.name.replace(/\.$/, '').toLowerCase()] = r.value;
    const dkim = await verifyDkim(msg.raw, records);
    info(`DKIM verification with the TXT record from the SmtpRelay status (dkimpy): ${dkim.output.trim()}`);
    const hasReceived = /^Received:/im.test(headerBlock);
    ok = dkim.ok && hasReceived;

    step('relay metrics that moved');
    const re = /^smtp_relay_(messages_total|connections_total|auth_attempts_total|tls_handshakes_total|dkim_signatures_total|upstream_duration_seconds_count|message_bytes_total)/;
    for (const [i, ep] of eps.entries()) {
      const after = await waitFor('metrics', async () => env!.metrics(ep.ip), 10_000);
      const b = metricLines(before[i]!, re);
      const moved = [...metricLines(after, re)].filter(([k, v]) => v !== (b.get(k) ?? 0));
      info(`pod ${ep.ip}:${moved.length === 0 ? ' nothing moved (kube-proxy sent the message to the other pod)' : ''}`);
      for (const [k, v] of moved) info(`  ${k} ${b.get(k) ?? 0} -> ${v}`);
    }

    endStep();
    console.log(ok ? '\nRESULT: the message went through the relay, DKIM-signed, and reached the upstream.' : '\nRESULT: FAILED (see above)');
    if (!once && ok) {
      const passFile = join(env.cp.dir, 'demo-app-password');
      const caFile = join(env.cp.dir, 'demo-relay-ca.crt');
      await writeFile(passFile, password, { mode: 0o600 });
      await writeFile(caFile, env.relayCa);
      console.log(`
Everything is still running. Try it yourself (as root, in another terminal):
  export KUBECONFIG=${env.cp.kubeconfigPath}
  .cache/bin/helm list -A                       # the operator release
  # relay pods: ${(await env.node.runningPods()).filter((p) => p.namespace === RELAY_NAMESPACE).map((p) => `${p.name}=${p.podIP}`).join(' ')}
  # the password of user "app" (from Secret ${RELAY_NAMESPACE}/${RELAY}-user-app) is in ${passFile} (mode 0600)
  swaks --server ${svc.ip}:${svc.port} --tls --tls-verify --tls-ca-path ${caFile} --tls-sni relay.example.com \\
        --auth PLAIN --auth-user app --auth-password "$(cat ${passFile})" --from app@example.com --to someone@example.net
  curl -s http://${eps[0]!.ip}:9090/metrics | grep ^smtp_relay_messages
Press Ctrl-C to stop and clean up.`);
      await new Promise<void>(() => {});
    }
  } catch (err) {
    console.log(`\nFAILED: ${err instanceof Error ? err.message : String(err)}`);
    if (env) {
      for (const p of await env.node.runningPods().catch(() => [])) {
        const logs = env.node.logs(p.namespace, p.name).trim().split('\n').slice(-15).join('\n        ');
        console.log(`      log of ${p.namespace}/${p.name}:\n        ${logs}`);
      }
    }
    ok = false;
  } finally {
    await shutdown();
  }
  console.log(`demo ${ok ? 'succeeded' : 'failed'} in ${secs(Date.now() - t0)}`);
  return ok ? 0 : 1;
}

process.exitCode = await main();
