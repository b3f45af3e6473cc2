/**
 * The cert-manager stand-in against the real API server with cert-manager's CRDs: a missing
 * issuer gives Ready=False with cert-manager's message and no Secret; with the ClusterIssuer
 * the Secret is written as cert-manager writes it (type, keys, annotations, labels) holding a
 * certificate with the requested names, usages, key and duration; status carries notBefore,
 * notAfter, renewalTime and revision; renew() (cmctl renew) and a spec change re-issue with a
 * new key; a deleted Secret is re-issued.
 */
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadCertificate } from '../../../relay/certificate.js';
import { startControlPlane, type ControlPlane } from '../controlplane/harness.js';
import { Kube } from '../../../operator/runtime/kube.js';
import { CertIssuerStandIn, parseGoDuration } from './issuer.js';
import { waitFor } from '../support/poll.js';

const NS = 'certs';

interface Secret { type: string; data: Record<string, string>; metadata: { labels?: Record<string, string>; annotations?: Record<string, string> } }
interface Cert { metadata: { generation: number }; status?: { conditions?: { type: string; status: string; reason?: string; message?: string }[]; notBefore?: string; notAfter?: string; renewalTime?: string; revision?: number } }

describe('certificate issuer stand-in (cert-manager)', { timeout: 180_000 }, () => {
  let cp: ControlPlane;
  let kube: Kube;
  let issuer: CertIssuerStandIn;
  const certPath = `/apis/cert-manager.io/v1/namespaces/${NS}/certificates/web`;
  const secret = (): Promise<Secret> => kube.get<Secret>(`/api/v1/namespaces/${NS}/secrets/web-tls`);

  before(async () => {
    cp = await startControlPlane({ controllerManager: false });
    kube = new Kube(cp.kubeconfig);
    issuer = await CertIssuerStandIn.start({ kubeconfig: cp.kubeconfig });
    await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: NS } } });
  });
  after(async () => {
    await issuer?.stop();
    await cp?.stop();
  });

  it('parses Go durations', () => {
    assert.equal(parseGoDuration('2160h'), 2160 * 3_600_000);
    assert.equal(parseGoDuration('1h30m'), 5_400_000);
    assert.throws(() => parseGoDuration('10d'));
  });

  it('waits for a missing ClusterIssuer with cert-manager\'s condition, then issues as cert-manager does', async () => {
    await kube.request('POST', `/apis/cert-manager.io/v1/namespaces/${NS}/certificates`, {
      body: {
        apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'web', namespace: NS },
        spec: {
          secretName: 'web-tls', dnsNames: ['relay.example.com', 'relay.certs.svc'],
          issuerRef: { name: 'test-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' },
          usages: ['server auth', 'digital signature', 'key encipherment'], duration: '24h',
          privateKey: { algorithm: 'RSA', size: 2048, encoding: 'PKCS8', rotationPolicy: 'Always' },
          secretTemplate: { labels: { app: 'relay' } },
        },
      },
    });
    const pendingCert = await waitFor('Ready=False', async () => {
      const c = await kube.get<Cert>(certPath);
      return c.status?.conditions?.find((x) => x.type === 'Ready' && x.status === 'False') ? c : undefined;
    });
    const issuing = pendingCert.status?.conditions?.find((x) => x.type === 'Issuing');
    assert.equal(issuing?.status, 'True');
    assert.match(issuing?.message ?? '', /Referenced "ClusterIssuer" not found: clusterissuer\.cert-manager\.io "test-ca" not found/);
    await assert.rejects(secret(), /404/);

    await issuer.ensureClusterIssuer('test-ca');
    const c = await issuer.waitForRevision(NS, 'web', 1);
    assert.equal(c.status?.revision, 1);
    assert.equal(c.status?.conditions?.find((x) => x.type === 'Ready')?.reason, 'Ready');
    assert.equal(c.status?.conditions?.some((x) => x.type === 'Issuing'), false);
    const s = await secret();
    assert.equal(s.type, 'kubernetes.io/tls');
    assert.deepEqual(Object.keys(s.data).sort(), ['ca.crt', 'tls.crt', 'tls.key']);
    assert.equal(s.metadata.annotations?.['cert-manager.io/certificate-name'], 'web');
    assert.equal(s.metadata.annotations?.['cert-manager.io/issuer-name'], 'test-ca');
    assert.equal(s.metadata.annotations?.['cert-manager.io/issuer-kind'], 'ClusterIssuer');
    assert.equal(s.metadata.annotations?.['cert-manager.io/alt-names'], 'relay.example.com,relay.certs.svc');
    assert.equal(s.metadata.labels?.['app'], 'relay');
    assert.equal(s.metadata.labels?.['controller.cert-manager.io/fao'], 'true');
    const pem = Buffer.from(s.data['tls.crt']!, 'base64').toString();
    const keyPem = Buffer.from(s.data['tls.key']!, 'base64').toString();
    const ca = new X509Certificate(Buffer.from(s.data['ca.crt']!, 'base64'));
    const x = new X509Certificate(pem);
    assert.ok(x.verify(ca.publicKey), 'signed by ca.crt');
    assert.ok(x.checkPrivateKey(createPrivateKey(keyPem)));
    assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----/, 'PKCS8');
    assert.equal(createPrivateKey(keyPem).asymmetricKeyDetails?.modulusLength, 2048);
    assert.equal(x.subjectAltName, 'DNS:relay.example.com, DNS:relay.certs.svc');
    assert.equal(x.keyUsage?.includes('1.3.6.1.5.5.7.3.1'), true, 'serverAuth EKU');
    const nb = Date.parse(c.status!.notBefore!);
    const na = Date.parse(c.status!.notAfter!);
    assert.equal(na - nb, 24 * 3_600_000);
    assert.equal(Date.parse(x.validTo), na);
    assert.equal(Date.parse(c.status!.renewalTime!), na - 8 * 3_600_000, 'renewal at 2/3 of the duration');
    // No commonName: an empty subject, as cert-manager issues it; the relay loads such a pair.
    assert.equal(x.subject ?? '', '');
    const dir = await mkdtemp(join(tmpdir(), 'issued-'));
    await writeFile(join(dir, 'tls.crt'), pem);
    await writeFile(join(dir, 'tls.key'), keyPem);
    const loaded = loadCertificate(join(dir, 'tls.crt'), join(dir, 'tls.key'), { minVersion: 'TLSv1.2', ciphers: 'ECDHE+AESGCM' });
    assert.match(loaded.subject, /relay\.example\.com/);
    await rm(dir, { recursive: true, force: true });
  });

  it('re-issues on renew (cmctl renew), on a spec change and when the Secret is deleted', async () => {
    const serial1 = new X509Certificate(Buffer.from((await secret()).data['tls.crt']!, 'base64')).serialNumber;
    const key1 = (await secret()).data['tls.key'];
    await issuer.renew(NS, 'web');
    await issuer.waitForRevision(NS, 'web', 2);
    const s2 = await secret();
    assert.notEqual(new X509Certificate(Buffer.from(s2.data['tls.crt']!, 'base64')).serialNumber, serial1);
    assert.notEqual(s2.data['tls.key'], key1, 'rotationPolicy Always: a new key');

    await kube.request('PATCH', certPath, { contentType: 'application/merge-patch+json', body: { spec: { dnsNames: ['relay2.example.com'] } } });
    await issuer.waitForRevision(NS, 'web', 3);
    const x3 = new X509Certificate(Buffer.from((await secret()).data['tls.crt']!, 'base64'));
    assert.equal(x3.subjectAltName, 'DNS:relay2.example.com');

    await kube.request('DELETE', `/api/v1/namespaces/${NS}/secrets/web-tls`);
    await issuer.waitForRevision(NS, 'web', 4);
    await secret();
    // No double issuance: one record per revision.
    assert.deepEqual(issuer.issued.filter((r) => r.name === 'web').map((r) => r.revision), [1, 2, 3, 4]);
  });

  it('honours the private key settings (ECDSA P-384, default PKCS1/SEC1 encoding), commonName and usages; a namespaced Issuer', async () => {
    await kube.request('POST', `/apis/cert-manager.io/v1/namespaces/${NS}/issuers`, {
      body: { apiVersion: 'cert-manager.io/v1', kind: 'Issuer', metadata: { name: 'local', namespace: NS }, spec: { ca: { secretName: 'x' } } },
    });
    await kube.request('POST', `/apis/cert-manager.io/v1/namespaces/${NS}/certificates`, {
      body: {
        apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'client', namespace: NS },
        spec: {
          secretName: 'client-tls', commonName: 'billing-client', dnsNames: ['billing.example.com'], usages: ['client auth', 'digital signature'],
          issuerRef: { name: 'local' }, duration: '2h', renewBeforePercentage: 25, privateKey: { algorithm: 'ECDSA', size: 384 },
        },
      },
    });
    const c = await issuer.waitForRevision(NS, 'client', 1);
    const s = await kube.get<Secret>(`/api/v1/namespaces/${NS}/secrets/client-tls`);
    assert.equal(s.metadata.annotations?.['cert-manager.io/issuer-kind'], 'Issuer');
    assert.equal(s.metadata.annotations?.['cert-manager.io/common-name'], 'billing-client');
    const keyPem = Buffer.from(s.data['tls.key']!, 'base64').toString();
    assert.match(keyPem, /^-----BEGIN EC PRIVATE KEY-----/, 'cert-manager\'s default encoding PKCS1 (SEC1 for EC)');
    assert.equal(createPrivateKey(keyPem).asymmetricKeyDetails?.namedCurve, 'secp384r1');
    const x = new X509Certificate(Buffer.from(s.data['tls.crt']!, 'base64').toString());
    assert.equal(x.subject, 'CN=billing-client');
    assert.deepEqual(x.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'clientAuth only');
    const na = Date.parse(c.status!.notAfter!);
    assert.equal(na - Date.parse(c.status!.notBefore!), 2 * 3_600_000);
    assert.equal(Date.parse(c.status!.renewalTime!), na - 0.25 * 2 * 3_600_000);
  });

  it('re-issues by itself at renewalTime', async () => {
    await kube.request('POST', `/apis/cert-manager.io/v1/namespaces/${NS}/certificates`, {
      body: {
        apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'short', namespace: NS },
        spec: { secretName: 'short-tls', dnsNames: ['short.example.com'], issuerRef: { name: 'test-ca', kind: 'ClusterIssuer' }, duration: '1h', renewBefore: '59m57s', privateKey: { algorithm: 'ECDSA' } },
      },
    });
    const first = await issuer.waitForRevision(NS, 'short', 1);
    const renewAt = Date.parse(first.status!.renewalTime!);
    assert.ok(renewAt - Date.parse(first.status!.notBefore!) === 3000);
    const second = await issuer.waitForRevision(NS, 'short', 2, 20_000);
    assert.ok(Date.parse(second.status!.notBefore!) >= renewAt - 1000, 'not before renewalTime');
  });
});
