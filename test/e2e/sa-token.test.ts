/**
 * ServiceAccount-token logins on the one-node cluster (test/e2e/env.ts; issue 15): the real
 * kube-apiserver issues the tokens and its discovery endpoints give the operator (installed with
 * the chart, as a pod) the issuer and keys; the real kubelet projects the token into an app pod.
 *
 * - an app pod with only its ServiceAccount, a projected token (the relay's audience) and the
 *   binding Secret mounted as files sends mail through the relay's Service by its DNS name;
 *   no password exists anywhere for that app;
 * - each is refused with 535 and its own reason in the relay's log: a token for another
 *   audience, a token of another ServiceAccount, a token signed by another key (with the
 *   cluster key's kid), an expired token;
 * - a ServiceAccount deleted: its token (still within its lifetime) is refused once the relay
 *   pods have the users file without it; created again under the same name: the old account's
 *   token stays refused (uid), the new account's token works.
 *
 * The expired and the foreign-key tokens are minted by the test: the API server issues tokens
 * of at least 10 minutes, and the test does not wait that long. The expired one is signed with
 * the cluster's own signing key (the control plane's --service-account-signing-key-file) and
 * carries exactly the claims a TokenRequest token of this cluster carries (copied from one);
 * a control token minted the same way but not expired is accepted, so its expiry is what the
 * relay refuses.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SignJWT, decodeJwt, decodeProtectedHeader, importPKCS8, generateKeyPair } from 'jose';
import { createPrivateKey } from 'node:crypto';
import { nodePod } from '../harness/cluster/testpods.js';
import { Environment, RELAY_NAMESPACE, startEnvironment, waitFor } from './env.js';

const RELAY = 'tokens';
const AUDIENCE = `smtprelay.dev/${RELAY_NAMESPACE}/${RELAY}`;
const TO = 'someone@example.net';

describe('ServiceAccount-token logins on the one-node cluster', { timeout: 900_000 }, () => {
  let env: Environment;

  const createAccount = (name: string) =>
    env.kube.request('POST', `/api/v1/namespaces/${RELAY_NAMESPACE}/serviceaccounts`, { body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace: RELAY_NAMESPACE } } });
  const tokenFor = async (account: string, audience = AUDIENCE) =>
    (await env.kube.request<{ status: { token: string } }>('POST', `/api/v1/namespaces/${RELAY_NAMESPACE}/serviceaccounts/${account}/token`, {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [audience], expirationSeconds: 600 } },
    })).status.token;
  const send = (user: string, token: string, from: string) => env.send({ relay: RELAY, user, password: token, from, to: TO, retries: 3 });
  const relayLog = async () => (await Promise.all((await env.relayPods(RELAY)).map((p) => env.node.logs(RELAY_NAMESPACE, p.name, 'relay')))).join('\n');
  /** A 535 for this login, and the relay's reason for it in an auth_failure line. */
  const refused = async (user: string, token: string, from: string, reason: RegExp) => {
    await assert.rejects(send(user, token, from), (err: { responseCode?: number }) => err.responseCode === 535, `${user}: 535 expected`);
    await waitFor(`the relay to log why (${reason})`, async () =>
      (await relayLog()).split('\n').some((l) => l.includes('"event":"auth_failure"') && reason.test(l)), 15_000, 250);
  };

  before(async () => {
    env = await startEnvironment({ ...(process.env['E2E_DEBUG'] ? { log: (l) => console.error(l) } : {}) });
    await env.kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: RELAY_NAMESPACE } } });
    for (const a of ['reports', 'other', 'temp']) await createAccount(a);
    await env.applyRelay({
      name: RELAY,
      replicas: 1,
      dkim: false,
      users: [
        { name: 'reports', serviceAccount: { namespace: RELAY_NAMESPACE, name: 'reports' }, allowedSenders: ['reports@example.com'] },
        { name: 'temp', serviceAccount: { namespace: RELAY_NAMESPACE, name: 'temp' }, allowedSenders: ['temp@example.com'] },
      ],
      // this test makes several refused logins from the host on purpose: none may lock it out
      lockout: { maxFailures: 50, window: '15m', duration: '15m' },
    });
    await env.waitRelayReady(RELAY);
    await env.waitEndpoints(RELAY, 1);
  });

  after(async () => {
    await env?.stop();
  });

  it('an app pod sends with its projected token and its binding Secret, and no password exists for it', async () => {
    const binding = await env.kube.get<{ type: string; data: Record<string, string> }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/${RELAY}-binding-reports`);
    const b = Object.fromEntries(Object.entries(binding.data).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
    assert.equal(binding.type, 'servicebinding.io/smtp');
    assert.equal(b['password'], undefined, 'the binding of a ServiceAccount user holds no password');
    assert.equal(b['audience'], AUDIENCE);
    assert.equal(b['host'], `${RELAY}.${RELAY_NAMESPACE}.svc`);
    // no password Secret, no hash in the users file
    assert.equal(await env.kube.getOrUndefined(`/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/${RELAY}-user-reports`), undefined);
    const users = await env.kube.get<{ data: Record<string, string> }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/secrets/${RELAY}-users`);
    const usersYaml = Buffer.from(users.data['users.yaml']!, 'base64').toString('utf8');
    assert.match(usersYaml, /name: reports/);
    assert.doesNotMatch(usersYaml.slice(usersYaml.indexOf('name: reports')).split(/\n {2}- /)[0]!, /passwordHash/);

    // The app: what a Deployment from docs/api.md runs. Only the binding files and the token.
    const script = `
      const fs = require('fs');
      const nodemailer = require('nodemailer');
      const b = (k) => fs.readFileSync('/bindings/smtp/' + k, 'utf8');
      const t = nodemailer.createTransport({
        host: b('host'), port: Number(b('port')), secure: b('tls') === 'implicit', requireTLS: true,
        tls: { ca: b('ca.crt') },
        auth: { user: b('username'), pass: fs.readFileSync('/var/run/secrets/smtp/token', 'utf8'), method: 'PLAIN' },
        connectionTimeout: 10000, greetingTimeout: 10000, socketTimeout: 30000,
      });
      t.sendMail({ from: 'reports@example.com', to: '${TO}', subject: 'from a pod with a projected token', text: 'no password' })
        .then((i) => { console.log('SENT ' + i.response); process.exit(0); }, (e) => { console.log('FAILED ' + e.message); process.exit(1); });`;
    const pod = nodePod(RELAY_NAMESPACE, 'reports-app', script, { restartPolicy: 'Never', labels: { app: 'reports' } });
    pod.spec!.serviceAccountName = 'reports';
    pod.spec!.volumes = [
      { name: 'smtp-token', projected: { sources: [{ serviceAccountToken: { audience: b['audience']!, expirationSeconds: 600, path: 'token' } }] } },
      { name: 'smtp-binding', secret: { secretName: `${RELAY}-binding-reports` } },
    ];
    pod.spec!.containers[0]!.volumeMounts = [
      { name: 'smtp-token', mountPath: '/var/run/secrets/smtp', readOnly: true },
      { name: 'smtp-binding', mountPath: '/bindings/smtp', readOnly: true },
    ];
    const before = env.sink.messages.length;
    await env.kube.request('POST', `/api/v1/namespaces/${RELAY_NAMESPACE}/pods`, { body: pod });
    const phase = await waitFor('the app pod to finish', async () => {
      const p = await env.kube.get<{ status?: { phase?: string } }>(`/api/v1/namespaces/${RELAY_NAMESPACE}/pods/reports-app`);
      return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed' ? p.status.phase : undefined;
    }, 120_000, 500);
    const out = env.node.logs(RELAY_NAMESPACE, 'reports-app');
    assert.equal(phase, 'Succeeded', `the app pod failed: ${out}`);
    assert.match(out, /SENT 250 /);
    const [msg] = (await env.sink.waitForMessages(before + 1, 30_000)).slice(before);
    assert.equal(msg!.mailFrom, 'reports@example.com');
    assert.match(msg!.raw.toString('utf8'), /Subject: from a pod with a projected token/);
    const log = await relayLog();
    assert.ok(log.split('\n').some((l) => l.includes('"event":"auth_success"') && l.includes('"user":"reports"') && l.includes('reports-app')), 'auth_success names the pod the token was bound to');
  });

  it('refuses a token for another audience, of another ServiceAccount, signed by another key, or expired', async () => {
    assert.match((await send('reports', await tokenFor('reports'), 'reports@example.com')).response, /^250 /, 'the right token, from the host');
    await refused('reports', await tokenFor('reports', `smtprelay.dev/${RELAY_NAMESPACE}/another-relay`), 'reports@example.com', /claim aud invalid/);
    await refused('reports', await tokenFor('other'), 'reports@example.com', /token of another ServiceAccount/);

    // Minted with the claims of a real token of this cluster (and the kid of its key).
    const real = await tokenFor('reports');
    const claims = decodeJwt(real);
    const { kid } = decodeProtectedHeader(real);
    const now = Math.floor(Date.now() / 1000);
    const mint = (key: Parameters<SignJWT['sign']>[0], iat: number, exp: number) =>
      new SignJWT({ ...claims, iat, nbf: iat, exp }).setProtectedHeader({ alg: 'RS256', kid: kid! }).sign(key);
    const { privateKey: foreign } = await generateKeyPair('RS256');
    await refused('reports', await mint(foreign, now, now + 600), 'reports@example.com', /signature invalid/);
    const clusterKey = await importPKCS8(createPrivateKey(readFileSync(join(env.cp.dir, 'sa.key'))).export({ type: 'pkcs8', format: 'pem' }) as string, 'RS256');
    assert.match((await send('reports', await mint(clusterKey, now, now + 600), 'reports@example.com')).response, /^250 /, "the cluster's key, not expired: accepted (the mint is faithful)");
    await refused('reports', await mint(clusterKey, now - 1200, now - 600), 'reports@example.com', /token expired/);
  });

  it('a deleted ServiceAccount\'s token is refused within its lifetime; re-created, the old token stays refused and a new one works', async () => {
    const oldToken = await tokenFor('temp');
    assert.match((await send('temp', oldToken, 'temp@example.com')).response, /^250 /);

    let reloads = await env.usersReloads(RELAY);
    await env.kube.request('DELETE', `/api/v1/namespaces/${RELAY_NAMESPACE}/serviceaccounts/temp`);
    await waitFor('CredentialsReady=False (ServiceAccountNotFound)', async () =>
      (await env.relay(RELAY)).status?.conditions?.some((c) => c.type === 'CredentialsReady' && c.status === 'False' && c.reason === 'ServiceAccountNotFound' && /temp/.test(c.message ?? '')), 60_000);
    await env.waitUsersReloaded(RELAY, reloads);
    // the relay no longer knows the user: a token of it cannot log in, whatever it carries
    await refused('temp', oldToken, 'temp@example.com', /"user":"\(unknown user\)"/);

    reloads = await env.usersReloads(RELAY);
    await createAccount('temp');
    await waitFor('CredentialsReady=True again', async () =>
      (await env.relay(RELAY)).status?.conditions?.some((c) => c.type === 'CredentialsReady' && c.status === 'True'), 60_000);
    await env.waitUsersReloaded(RELAY, reloads);
    await refused('temp', oldToken, 'temp@example.com', /token of a deleted ServiceAccount of that name/);
    assert.match((await send('temp', await tokenFor('temp'), 'temp@example.com')).response, /^250 /, "the new account's token");
  });
});
