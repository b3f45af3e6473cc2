/**
 * End to end (see test/e2e/env.ts): no secret in any output. A realistic run (the operator
 * installed with its chart, relay pods on the one-node cluster, an upstream that requires AUTH) uses
 * every kind of secret the project handles:
 *   - a generated user password, a user-chosen one (then rotated), a wrong guess at it;
 *   - a ServiceAccount token (TokenRequest from the real API server) used as an SMTP login;
 *   - the DKIM private key the operator generates, the relays' TLS private keys;
 *   - the upstream password (basic-auth Secret; a wrong one, which the upstream refuses and
 *     UpstreamReady=False reports with its words), and an OAuth2 client secret (a second relay,
 *     whose token endpoint is unreachable, so its error path is exercised too).
 * Then it collects every container log (operator and relays, from the kubelet's log files), every Event
 * (core and events.k8s.io), the status of every object of the kinds involved, and the
 * operator's and relays' /metrics, and checks that none of those secrets appears in them:
 * as sent, base64-encoded, each line of a PEM body, a JWT's signature.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Environment, CLIENT_CIDRS, CLUSTER_ISSUER, OPERATOR_NAMESPACE, RELAY_HOSTNAME, RELAY_NAMESPACE, UPSTREAM_HOSTNAME, httpGet, startEnvironment, waitFor } from './env.js';
import { KubeError } from '../../operator/runtime/kube.js';

const UPSTREAM = { user: 'relay-at-upstream', pass: 'Upstream-Password-4f9c2e71' };
const BILLING_PASSWORD = 'Billing-Chosen-Password-8d1a';
const BILLING_ROTATED = 'Billing-Rotated-Password-55b0';
const WRONG_GUESS = 'Wrong-Guess-Password-0c7e93';
const OAUTH_CLIENT_SECRET = 'oauth2-client-secret-6a4f0b9d27e1';
const WRONG_UPSTREAM = 'Wrong-Upstream-Password-3e8d71';

describe('end to end: no password, token or private key in any log, Event, status or metric', { timeout: 900_000 }, () => {
  let env: Environment;
  const used = new Map<string, string>(); // secret value -> what it is
  const collected: { source: string; text: string }[] = [];

  before(async () => {
    env = await startEnvironment({ sinkAuth: UPSTREAM, ...(process.env['E2E_DEBUG'] ? { log: (l) => console.error(l) } : {}) });
  });
  after(async () => {
    await env?.stop();
  });

  const post = async (path: string, body: object) => {
    try {
      await env.kube.request('POST', path, { body });
    } catch (err) {
      if (!(err instanceof KubeError && err.code === 409)) throw err;
    }
  };
  const secret = (name: string, type: string, stringData: Record<string, string>) => post(`/api/v1/namespaces/${RELAY_NAMESPACE}/secrets`, { apiVersion: 'v1', kind: 'Secret', metadata: { name }, type, stringData });
  const relayPath = (name: string) => `/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays/${name}`;

  it('runs the flow with every kind of secret', async () => {
    await post('/api/v1/namespaces', { metadata: { name: RELAY_NAMESPACE } });
    await post('/api/v1/namespaces', { metadata: { name: 'apps' } });
    await post('/api/v1/namespaces/apps/serviceaccounts', { metadata: { name: 'reports' } });
    await secret('upstream-ca', 'Opaque', { 'ca.crt': env.sink.caPem });
    await secret('upstream-login', 'kubernetes.io/basic-auth', { username: UPSTREAM.user, password: UPSTREAM.pass });
    await secret('billing-smtp', 'kubernetes.io/basic-auth', { username: 'billing', password: BILLING_PASSWORD });
    await secret('oauth-client', 'Opaque', { 'client-secret': OAUTH_CLIENT_SECRET });
    const base = {
      replicas: 1,
      hostname: RELAY_HOSTNAME,
      tls: { issuerRef: { name: CLUSTER_ISSUER, kind: 'ClusterIssuer' } },
      access: { allowedCidrs: CLIENT_CIDRS },
      dkim: [{ domain: 'example.com', selector: 'relay1' }],
    };
    const upstream = { host: UPSTREAM_HOSTNAME, port: env.sink.port, tls: 'starttls', caSecretRef: { name: 'upstream-ca', key: 'ca.crt' } };
    await post(`/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays`, {
      apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', metadata: { name: 'outbound', namespace: RELAY_NAMESPACE },
      spec: {
        ...base,
        auth: {
          users: [
            { name: 'app', allowedSenders: ['app@example.com'] },
            { name: 'billing', secretRef: { name: 'billing-smtp' }, allowedSenders: ['billing@example.com'] },
            { name: 'reports', serviceAccount: { namespace: 'apps', name: 'reports' }, allowedSenders: ['reports@example.com'] },
          ],
        },
        upstream: { ...upstream, credentialsSecretRef: { name: 'upstream-login' } },
      },
    });
    await post(`/apis/smtprelay.dev/v1alpha1/namespaces/${RELAY_NAMESPACE}/smtprelays`, {
      apiVersion: 'smtprelay.dev/v1alpha1', kind: 'SmtpRelay', metadata: { name: 'oauth', namespace: RELAY_NAMESPACE },
      spec: {
        ...base,
        dkim: [{ domain: 'example.org', selector: 'oauth1' }],
        auth: { users: [{ name: 'app2', allowedSenders: ['app2@example.org'] }] },
        upstream: { ...upstream, oauth2: { user: 'relay@example.org', generic: { tokenUrl: 'https://token.invalid/oauth2/token', clientId: 'relay-client', clientSecretRef: { name: 'oauth-client', key: 'client-secret' } } } },
      },
    });
    await env.waitRelayReady('outbound');
    await env.waitRelayReady('oauth');
    const [ep] = await env.waitEndpoints('outbound', 1);
    const [oauthEp] = await env.waitEndpoints('oauth', 1);
    const appPassword = await env.userPassword('outbound', 'app');
    const app2Password = await env.userPassword('oauth', 'app2');
    const token = (await env.kube.request<{ status: { token: string } }>('POST', '/api/v1/namespaces/apps/serviceaccounts/reports/token', {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [`smtprelay.dev/${RELAY_NAMESPACE}/outbound`], expirationSeconds: 600 } },
    })).status.token;

    const base0 = env.sink.messages.length;
    const send = (user: string, password: string, from: string, endpoint = ep!) => env.send({ relay: 'outbound', user, password, from, to: 'someone@example.net', endpoint, retries: 3 });
    assert.match((await send('app', appPassword, 'app@example.com')).response, /^250 /);
    assert.match((await send('billing', BILLING_PASSWORD, 'billing@example.com')).response, /^250 /);
    assert.match((await send('reports', token, 'reports@example.com')).response, /^250 /, 'a ServiceAccount token login');
    await assert.rejects(env.send({ relay: 'outbound', user: 'billing', password: WRONG_GUESS, from: 'billing@example.com', to: 'x@example.net', endpoint: ep! }), /535|Invalid login|auth/i);
    // rotation: the new password works (hot reload, once the kubelet updated the pod's users file)
    const reloads = await env.usersReloads('outbound');
    await env.kube.request('PATCH', `/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/billing-smtp`, { contentType: 'application/merge-patch+json', body: { stringData: { password: BILLING_ROTATED } } });
    await env.waitUsersReloaded('outbound', reloads);
    await waitFor('the rotated password to work', async () => {
      try {
        return /^250 /.test((await env.send({ relay: 'outbound', user: 'billing', password: BILLING_ROTATED, from: 'billing@example.com', to: 'someone@example.net', endpoint: ep! })).response);
      } catch {
        return false;
      }
    }, 60_000, 2000);
    await env.sink.waitForMessages(base0 + 4, 60_000);
    // the OAuth2 relay accepts, then fails to get a token (its endpoint does not resolve): its error path runs
    await env.send({ relay: 'oauth', user: 'app2', password: app2Password, from: 'app2@example.org', to: 'someone@example.net', endpoint: oauthEp!, retries: 3 }).catch(() => undefined);
    const oauthPod = (await env.relayPods('oauth'))[0]!;
    await waitFor('the OAuth2 relay to report its token failure', async () => /token/i.test(env.node.logs(RELAY_NAMESPACE, oauthPod.name)), 60_000);

    // The upstream refuses the relay's login (a wrong password in its Secret): the operator,
    // polling the pods' GET /upstream through the peers Service's DNS records and the
    // NetworkPolicy's operator rule, sets UpstreamReady=False with the upstream's words.
    await env.kube.request('PATCH', `/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/upstream-login`, { contentType: 'application/merge-patch+json', body: { stringData: { password: WRONG_UPSTREAM } } });
    const upstreamReady = async () => (await env.kube.get<{ status?: { conditions?: { type: string; status: string; reason: string; message: string }[] } }>(relayPath('outbound'))).status?.conditions?.find((c) => c.type === 'UpstreamReady');
    const refusedCondition = await waitFor('UpstreamReady=False (UpstreamAuthRefused) after the upstream refused the login', async () => {
      // each message makes the relay log in again (the kubelet swaps the password file within its sync period)
      await env.send({ relay: 'outbound', user: 'app', password: appPassword, from: 'app@example.com', to: 'someone@example.net', endpoint: ep! }).catch(() => undefined);
      const c = await upstreamReady();
      return c?.status === 'False' && c.reason === 'UpstreamAuthRefused' ? c : undefined;
    }, 180_000, 5000);
    assert.match(refusedCondition.message, /535 5\.7\.8 Authentication credentials invalid/, "the upstream's words");
    assert.match(refusedCondition.message, /outbound-/, 'the pod that was refused');
    const events = await env.kube.get<{ items: { reason: string; type: string }[] }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/events`);
    assert.ok(events.items.some((e) => e.reason === 'UpstreamAuthRefused' && e.type === 'Warning'), 'a Warning Event');
    await env.kube.request('PATCH', `/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/upstream-login`, { contentType: 'application/merge-patch+json', body: { stringData: { password: UPSTREAM.pass } } });

    // every secret this run used
    for (const [v, what] of [
      [UPSTREAM.pass, 'upstream password'], [BILLING_PASSWORD, 'user-chosen password'], [BILLING_ROTATED, 'rotated password'], [WRONG_GUESS, 'a wrong guess at a password'],
      [OAUTH_CLIENT_SECRET, 'OAuth2 client secret'], [WRONG_UPSTREAM, 'a wrong upstream password the upstream refused'], [appPassword, 'generated password'], [app2Password, 'generated password (oauth relay)'], [token, 'ServiceAccount token'],
    ] as const) used.set(v, what);
    for (const ns of [RELAY_NAMESPACE, 'apps', OPERATOR_NAMESPACE]) {
      const list = await env.kube.get<{ items: { metadata: { name: string }; data?: Record<string, string> }[] }>(`/api/v1/namespaces/${ns}/secrets`);
      for (const s of list.items) {
        for (const [k, b64] of Object.entries(s.data ?? {})) {
          const v = Buffer.from(b64, 'base64').toString('utf8');
          if (/PRIVATE KEY/.test(v) || ['password', 'token', 'client-secret', 'tls.key'].includes(k)) used.set(v, `Secret ${ns}/${s.metadata.name} key ${k}`);
        }
      }
    }
    assert.ok([...used.values()].some((w) => /dkim/i.test(w) && /tls|key/i.test(w)) || [...used.keys()].filter((v) => /PRIVATE KEY/.test(v)).length >= 3, `DKIM and TLS private keys are among them: ${[...used.values()].join('; ')}`);

    // every output
    for (const c of env.node.loggedContainers()) {
      const [ns, pod, container] = c.split('/') as [string, string, string];
      collected.push({ source: `log of ${c}`, text: env.node.logs(ns, pod, container) });
    }
    for (const path of ['/api/v1/events', '/apis/events.k8s.io/v1/events']) {
      collected.push({ source: `Events ${path}`, text: JSON.stringify((await env.kube.get<{ items: unknown[] }>(path)).items) });
    }
    for (const path of [
      '/apis/smtprelay.dev/v1alpha1/smtprelays', '/apis/cert-manager.io/v1/certificates', '/apis/cert-manager.io/v1/clusterissuers', '/apis/apps/v1/deployments', '/apis/apps/v1/replicasets',
      '/api/v1/pods', '/api/v1/services', '/apis/policy/v1/poddisruptionbudgets', '/api/v1/namespaces', '/api/v1/nodes', '/apis/coordination.k8s.io/v1/leases',
    ]) {
      const items = (await env.kube.get<{ items: { metadata: { namespace?: string; name: string }; status?: unknown; spec?: unknown }[] }>(path)).items;
      for (const o of items) collected.push({ source: `${path} ${o.metadata.namespace ?? ''}/${o.metadata.name}`, text: JSON.stringify({ status: o.status, spec: o.spec }) });
    }
    for (const relay of ['outbound', 'oauth']) {
      for (const p of await env.relayPods(relay)) if (p.ip) collected.push({ source: `/metrics of ${p.name}`, text: await env.metrics(p.ip) });
    }
    const opPods = await env.kube.get<{ items: { metadata: { name: string }; status?: { podIP?: string } }[] }>(`/api/v1/namespaces/${OPERATOR_NAMESPACE}/pods`);
    for (const p of opPods.items) if (p.status?.podIP) collected.push({ source: `/metrics of ${p.metadata.name}`, text: (await httpGet(p.status.podIP, 8080, '/metrics')).body });
    // the SmtpRelays' own status again, read after everything settled
    for (const name of ['outbound', 'oauth']) collected.push({ source: `SmtpRelay ${name} status`, text: JSON.stringify((await env.kube.get<{ status: unknown }>(relayPath(name))).status) });
  });

  it('the collection is real: logs, Events and statuses that talk about these logins and keys', () => {
    const all = (re: RegExp) => collected.filter((c) => re.test(c.source)).map((c) => c.text).join('\n');
    const logs = all(/^log of /);
    assert.match(all(new RegExp(`^log of ${OPERATOR_NAMESPACE}/`)), /reconciled/, 'the operator log is there');
    assert.match(logs, /"event":"auth_success"/, 'relay logs with logins');
    assert.match(logs, /"event":"auth_failure"/, 'the wrong guess was logged, as a failure');
    assert.match(all(/^Events /), /PasswordGenerated/, 'the operator\'s Events');
    assert.match(all(/^SmtpRelay outbound status/), /"type":"TXT"/, 'the DKIM record in status');
    assert.match(all(/^\/metrics of /), /smtp_relay_auth/, 'relay metrics');
    assert.ok(used.size >= 10, `secrets to look for: ${used.size}`);
  });

  it('none of them appears anywhere, in any form', async () => {
    assert.ok(used.size >= 10 && collected.length > 0, 'the flow ran and its outputs were collected');
    const forms = (v: string): string[] => {
      const out = new Set<string>([v, Buffer.from(v).toString('base64')]);
      const pem = /-----BEGIN [A-Z ]+-----([\s\S]+?)-----END/.exec(v);
      if (pem) {
        const body = pem[1]!.replace(/\s+/g, '');
        out.add(body);
        for (const line of pem[1]!.split(/\r?\n/)) if (line.trim().length >= 40) out.add(line.trim());
      }
      const jwt = v.split('.');
      if (jwt.length === 3 && jwt[2]!.length >= 40) out.add(jwt[2]!);
      return [...out].filter((f) => f.length >= 8);
    };
    // positive control: the matcher finds a secret where it is meant to be (its Secret)
    const held = JSON.stringify(await env.kube.get(`/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/upstream-login`));
    assert.ok(forms(UPSTREAM.pass).some((f) => held.includes(f)), 'the matcher finds the upstream password in its Secret');
    const leaks: string[] = [];
    for (const [v, what] of used) {
      for (const f of forms(v)) {
        for (const c of collected) if (c.text.includes(f)) leaks.push(`${what} (${f === v ? 'as is' : `form ${f.slice(0, 12)}...`}) in ${c.source}`);
      }
    }
    assert.deepEqual(leaks, [], `secrets found in outputs:\n${leaks.join('\n')}`);
    console.log(`# ${used.size} secrets, ${[...used.keys()].reduce((n, v) => n + forms(v).length, 0)} forms, looked for in ${collected.length} outputs (${collected.reduce((n, c) => n + c.text.length, 0)} characters): none found`);
  });
});
