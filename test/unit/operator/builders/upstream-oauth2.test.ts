import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { generateToken } from '../../../../operator/builders/internal.js';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import YAML from 'yaml';
import { validateConfig } from '../../../../relay/config.js';
import { OAUTH2_MECHANISMS } from '../../../../relay/config-types.js';
import { repoRoot } from '../../../harness/smtprelay/testkit.js';
import { CONFIG_KEY, MOUNT_ROOT, Reason, oauth2SecretSource, type SmtpRelay, type UpstreamOAuth2Spec } from '../../../../operator/api/v1alpha1.js';
import { buildDeployment as buildWithConfig, restartHash } from '../../../../operator/builders/deployment.js';
import { buildConfigMap, buildRelayConfig } from '../../../../operator/builders/relay-config.js';
import { upstreamCondition } from '../../../../operator/status/decisions.js';
import { checkUpstreamOAuth2Secret } from '../../../../operator/status/secret-checks.js';
import { relayFixture } from '../../../harness/smtprelay/fixtures.js';

const INPUTS = { image: 'registry.example.com/smtp-relay:1.0.0' };
const buildDeployment = (r: SmtpRelay, inputs = INPUTS) => buildWithConfig(r, buildRelayConfig(r), inputs);
const b64 = (s: string) => Buffer.from(s).toString('base64');

const microsoft: UpstreamOAuth2Spec = {
  user: 'relay@contoso.com',
  microsoft: { tenantId: 'contoso.onmicrosoft.com', clientId: 'app-1', clientSecretRef: { name: 'm365-app', key: 'secret' } },
};
const google: UpstreamOAuth2Spec = { user: 'sales@example.com', google: { serviceAccountSecretRef: { name: 'sa', key: 'service-account.json' } } };
const generic: UpstreamOAuth2Spec = { user: 'app@example.com', generic: { tokenUrl: 'https://idp.example.com/token', clientId: 'c', clientSecretRef: { name: 'idp', key: 'client-secret' }, scope: 'smtp' } };

const withOAuth2 = (o: UpstreamOAuth2Spec) => relayFixture(undefined, (r) => (r.spec.upstream = { ...r.spec.upstream, host: 'smtp.office365.com', oauth2: o }));

test('spec.upstream.oauth2 becomes the relay config upstream.oauth2 with the secret at its fixed mount path', () => {
  assert.deepEqual(buildRelayConfig(withOAuth2(microsoft)).upstream.oauth2, {
    user: 'relay@contoso.com',
    microsoft: { tenantId: 'contoso.onmicrosoft.com', clientId: 'app-1', clientSecretFile: '/etc/smtp-relay/upstream/oauth2/client-secret' },
  });
  assert.deepEqual(buildRelayConfig(withOAuth2(google)).upstream.oauth2, { user: 'sales@example.com', google: { serviceAccountFile: '/etc/smtp-relay/upstream/oauth2/service-account.json' } });
  assert.deepEqual(buildRelayConfig(withOAuth2(generic)).upstream.oauth2, {
    user: 'app@example.com',
    generic: { tokenUrl: 'https://idp.example.com/token', clientId: 'c', clientSecretFile: '/etc/smtp-relay/upstream/oauth2/client-secret', scope: 'smtp' },
  });
  const sovereign = { ...microsoft, microsoft: { ...microsoft.microsoft!, tokenUrl: 'https://login.microsoftonline.us/t/oauth2/v2.0/token' } };
  assert.equal(buildRelayConfig(withOAuth2(sovereign)).upstream.oauth2?.microsoft?.tokenUrl, 'https://login.microsoftonline.us/t/oauth2/v2.0/token');
  assert.equal(buildRelayConfig(withOAuth2(microsoft)).upstream.usernameFile, undefined);
});

test("the CRD's enum of spec.upstream.oauth2.mechanism is the relay's list", () => {
  const crd: unknown = YAML.parse(readFileSync(join(repoRoot(), 'crds', 'smtprelay.yaml'), 'utf8'));
  const path = ['spec', 'versions', 0, 'schema', 'openAPIV3Schema', 'properties', 'spec', 'properties', 'upstream', 'properties', 'oauth2', 'properties', 'mechanism'];
  const mechanism = path.reduce<unknown>((x, k) => (x as Record<string | number, unknown> | undefined)?.[k], crd) as { enum?: string[]; default?: unknown };
  assert.deepEqual(mechanism.enum, [...OAUTH2_MECHANISMS]);
  assert.equal(mechanism.default, undefined, 'no default: absent means auto, and objects without it render as before');
});

test('spec.upstream.oauth2.mechanism reaches the relay config only when given, and the relay takes each value', () => {
  assert.equal('mechanism' in buildRelayConfig(withOAuth2(microsoft)).upstream.oauth2!, false, 'absent: the relay decides (auto)');
  for (const mechanism of ['auto', 'XOAUTH2', 'OAUTHBEARER'] as const) {
    const relay = withOAuth2({ ...google, mechanism });
    assert.equal(buildRelayConfig(relay).upstream.oauth2?.mechanism, mechanism);
    const dir = mkdtempSync(join(tmpdir(), 'relay-oauth2-mechanism-'));
    try {
      const doc = YAML.parse(buildConfigMap(relay, buildRelayConfig(relay)).data[CONFIG_KEY]!.replaceAll(MOUNT_ROOT, dir)) as Record<string, unknown>;
      for (const f of JSON.stringify(doc).match(new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^"]+`, 'g')) ?? []) {
        mkdirSync(dirname(f), { recursive: true });
        writeFileSync(f, f.endsWith('-token') ? generateToken() : 'x');
      }
      assert.equal(validateConfig(doc, join(dir, 'config/config.yaml'), join(dir, 'config')).upstream.oauth2?.mechanism, mechanism);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('the Deployment mounts exactly the referenced Secret key, whole-directory and read-only; oauth2 changes do not roll the pods', () => {
  for (const [o, file] of [
    [microsoft, 'client-secret'],
    [google, 'service-account.json'],
  ] as const) {
    const pod = buildDeployment(withOAuth2(o), INPUTS).spec.template.spec!;
    const vol = pod.volumes!.find((v) => v.name === 'upstream-oauth2')!;
    const ref = oauth2SecretSource(o)!.ref;
    assert.deepEqual(vol.secret, { secretName: ref.name, defaultMode: 0o440, items: [{ key: ref.key, path: file }] });
    assert.deepEqual(
      pod.containers[0]!.volumeMounts!.find((m) => m.name === 'upstream-oauth2'),
      { name: 'upstream-oauth2', mountPath: '/etc/smtp-relay/upstream/oauth2', readOnly: true },
    );
  }
  assert.equal(restartHash(buildRelayConfig(withOAuth2(microsoft))), restartHash(buildRelayConfig(withOAuth2(google))), 'upstream reloads in place');
  assert.equal(buildDeployment(relayFixture(), INPUTS).spec.template.spec!.volumes!.find((v) => v.name === 'upstream-oauth2'), undefined);
});

test("each rendered oauth2 config passes the relay's own validation (the operator/relay contract)", () => {
  for (const o of [microsoft, google, generic]) {
    const relay = withOAuth2(o);
    const dir = mkdtempSync(join(tmpdir(), 'relay-oauth2-contract-'));
    try {
      const doc = YAML.parse(buildConfigMap(relay, buildRelayConfig(relay)).data[CONFIG_KEY]!.replaceAll(MOUNT_ROOT, dir)) as Record<string, unknown>;
      const files = JSON.stringify(doc).match(new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^"]+`, 'g')) ?? [];
      for (const f of files) {
        mkdirSync(dirname(f), { recursive: true });
        writeFileSync(f, f.endsWith('-token') ? generateToken() : 'x'); // tokens as the operator's internal Secret holds them
      }
      assert.equal(validateConfig(doc, join(dir, 'config/config.yaml'), join(dir, 'config')).upstream.oauth2?.user, o.user);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('an oauth2 Secret that is missing, empty or malformed makes UpstreamReady False naming the field, never the content', () => {
  const ms = oauth2SecretSource(microsoft)!;
  assert.equal(checkUpstreamOAuth2Secret(undefined, ms, 'client-secret')?.reason, Reason.UpstreamOAuth2SecretNotFound);
  assert.match(checkUpstreamOAuth2Secret({ data: {} }, ms, 'client-secret')?.message ?? '', /m365-app \(spec\.upstream\.oauth2\.microsoft\.clientSecretRef\) has no "secret"/);
  assert.equal(checkUpstreamOAuth2Secret({ data: { secret: b64('s3cr3t\n') } }, ms, 'client-secret'), undefined, 'one trailing newline is fine (the relay strips it)');
  const twoLines = checkUpstreamOAuth2Secret({ data: { secret: b64('s3cr3t\nmore') } }, ms, 'client-secret');
  assert.equal(twoLines?.reason, Reason.UpstreamOAuth2SecretInvalid);
  assert.ok(!twoLines?.message.includes('s3cr3t'));
  const gs = oauth2SecretSource(google)!;
  const pem = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const sa = (over: Record<string, unknown>) => ({ data: { 'service-account.json': b64(JSON.stringify({ type: 'service_account', client_email: 'r@p.iam.gserviceaccount.com', private_key: pem, ...over })) } });
  assert.equal(checkUpstreamOAuth2Secret(sa({}), gs, 'service-account'), undefined);
  assert.match(checkUpstreamOAuth2Secret({ data: { 'service-account.json': b64('{') } }, gs, 'service-account')?.message ?? '', /is not JSON/);
  assert.match(checkUpstreamOAuth2Secret(sa({ client_email: undefined }), gs, 'service-account')?.message ?? '', /no client_email/);
  assert.match(checkUpstreamOAuth2Secret(sa({ private_key: 'nope' }), gs, 'service-account')?.message ?? '', /not a PEM private key/);
  const relay = withOAuth2(microsoft);
  assert.deepEqual(upstreamCondition(relay, []), {
    type: 'UpstreamReady',
    status: 'True',
    reason: 'UpstreamConfigured',
    message: 'upstream smtp.office365.com:587 (starttls) with OAuth2 (microsoft) as relay@contoso.com',
  });
});
