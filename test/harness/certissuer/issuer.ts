/**
 * A STAND-IN for cert-manager's controllers (no cert-manager runs here), for the tests and
 * `make demo`. It plays cert-manager's part against the real API server, with cert-manager's
 * real CRDs, the way a CA Issuer behaves:
 *
 * - Issuers / ClusterIssuers (cert-manager.io/v1): marked Ready=True (reason KeyPairVerified,
 *   as the CA issuer does once its key pair is loaded); all are served by one test CA that
 *   this stand-in creates (openssl), `issuer.caPem` being its certificate.
 *   `ensureClusterIssuer(name)` creates one.
 * - Certificates: for each, checks the referenced Issuer/ClusterIssuer (issuerRef.kind,
 *   default Issuer, group cert-manager.io); when missing or not Ready, the Certificate gets
 *   Ready=False / Issuing=True with cert-manager's reasons and messages and nothing is issued.
 *   Otherwise it issues a key (privateKey: algorithm RSA/ECDSA/Ed25519, size, encoding
 *   PKCS1/PKCS8, rotationPolicy) and a certificate (commonName, dnsNames, ipAddresses, uris,
 *   emailAddresses, usages (default digital signature + key encipherment), isCA, duration
 *   (default 2160h), notBefore = now) into spec.secretName as a kubernetes.io/tls Secret with
 *   tls.crt (leaf + CA), tls.key and ca.crt, the annotations cert-manager sets
 *   (cert-manager.io/certificate-name, issuer-name/kind/group, common-name, alt-names,
 *   ip-sans, uri-sans, email-sans), the `controller.cert-manager.io/fao` label and
 *   spec.secretTemplate's labels/annotations; then sets status: Ready=True (reason Ready,
 *   "Certificate is up to date and has not expired"), notBefore, notAfter, renewalTime
 *   (notAfter - renewBefore, default a third of the duration, or renewBeforePercentage),
 *   revision (+1 per issuance), observedGeneration on the conditions.
 * - Re-issues when the Secret is missing or was changed (key/cert mismatch, wrong names), when
 *   the spec changed (generation), at renewalTime, and on demand: `renew(ns, name)` does what
 *   `cmctl renew` does (Issuing=True, reason ManuallyTriggered, on the status), and the
 *   stand-in reacts to that condition whoever set it.
 *
 * Not done: CertificateRequest objects, ACME, private key reuse checks beyond
 * rotationPolicy Never, keystores, additionalOutputFormats, nameConstraints.
 */
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey, generateKeyPair, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { KubeConfig } from '@kubernetes/client-node';
import { Kube, KubeError, MEDIA_MERGE_PATCH, type KubeObject } from '../../../operator/runtime/kube.js';
import { Informer } from '../../../operator/runtime/informer.js';

const run = promisify(execFile);
const genKeyPair = promisify(generateKeyPair);

const GROUP = 'cert-manager.io';
const CERTIFICATE = { group: GROUP, version: 'v1', plural: 'certificates', kind: 'Certificate', namespaced: true };
const ISSUER = { group: GROUP, version: 'v1', plural: 'issuers', kind: 'Issuer', namespaced: true };
const CLUSTER_ISSUER = { group: GROUP, version: 'v1', plural: 'clusterissuers', kind: 'ClusterIssuer', namespaced: false };
const SECRET = { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true };

interface Condition { type: string; status: string; reason?: string; message?: string; lastTransitionTime?: string; observedGeneration?: number }

interface Certificate extends KubeObject {
  spec: {
    secretName: string;
    issuerRef: { name: string; kind?: string; group?: string };
    commonName?: string;
    dnsNames?: string[];
    ipAddresses?: string[];
    uris?: string[];
    emailAddresses?: string[];
    usages?: string[];
    isCA?: boolean;
    duration?: string;
    renewBefore?: string;
    renewBeforePercentage?: number;
    privateKey?: { algorithm?: string; size?: number; encoding?: string; rotationPolicy?: string };
    secretTemplate?: { labels?: Record<string, string>; annotations?: Record<string, string> };
  };
  status?: { conditions?: Condition[]; notBefore?: string; notAfter?: string; renewalTime?: string; revision?: number };
}

interface Issuer extends KubeObject {
  spec?: Record<string, unknown>;
  status?: { conditions?: Condition[] };
}

interface Secret extends KubeObject {
  type?: string;
  data?: Record<string, string>;
}

const USAGES: Record<string, { ku?: string; eku?: string }> = {
  'signing': { ku: 'digitalSignature' },
  'digital signature': { ku: 'digitalSignature' },
  'content commitment': { ku: 'nonRepudiation' },
  'key encipherment': { ku: 'keyEncipherment' },
  'key agreement': { ku: 'keyAgreement' },
  'data encipherment': { ku: 'dataEncipherment' },
  'cert sign': { ku: 'keyCertSign' },
  'crl sign': { ku: 'cRLSign' },
  'encipher only': { ku: 'encipherOnly' },
  'decipher only': { ku: 'decipherOnly' },
  'server auth': { eku: 'serverAuth' },
  'client auth': { eku: 'clientAuth' },
  'code signing': { eku: 'codeSigning' },
  'email protection': { eku: 'emailProtection' },
  'timestamping': { eku: 'timeStamping' },
  'ocsp signing': { eku: 'OCSPSigning' },
  'ipsec end system': { eku: 'ipsecEndSystem' },
  'ipsec tunnel': { eku: 'ipsecTunnel' },
  'ipsec user': { eku: 'ipsecUser' },
  'microsoft sgc': { eku: 'msSGC' },
  'netscape sgc': { eku: 'nsSGC' },
};

/** Go duration ("2160h", "1h30m", "90s") in milliseconds. */
export function parseGoDuration(s: string): number {
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g;
  const unit: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let consumed = 0;
  for (const m of s.matchAll(re)) {
    total += Number(m[1]) * (unit[m[2] ?? 's'] ?? 0);
    consumed += m[0].length;
  }
  if (consumed !== s.length || s.length === 0) throw new Error(`invalid duration ${JSON.stringify(s)}`);
  return total;
}

const iso = (d: Date): string => d.toISOString().replace(/\.\d+Z$/, 'Z');
function asnTime(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
}
const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

export interface CertIssuerOptions {
  kubeconfig: KubeConfig;
  log?: (line: string) => void;
  /** Resync period (renewal checks); default 2 s. */
  resyncMs?: number;
}

export interface IssuedRecord { namespace: string; name: string; revision: number; serial: string; at: Date }

export class CertIssuerStandIn {
  readonly kube: Kube;
  caPem = '';
  /** Every issuance, in order (for tests). */
  readonly issued: IssuedRecord[] = [];
  private dir = '';
  private certs!: Informer<Certificate>;
  private issuers!: Informer<Issuer>;
  private clusterIssuers!: Informer<Issuer>;
  private secrets!: Informer<Secret>;
  private timer?: NodeJS.Timeout;
  private busy = false;
  private again = false;
  private stopped = false;
  /** openssl ca keeps its state in files: one issuance at a time. */
  private queue: Promise<unknown> = Promise.resolve();
  private readonly o: CertIssuerOptions;
  /** Revisions issued whose status the cache has not shown yet (no double issuance). */
  private readonly pending = new Map<string, { revision: number; secretRV: number }>();

  private constructor(o: CertIssuerOptions) {
    this.o = o;
    this.kube = new Kube(o.kubeconfig);
  }

  static async start(o: CertIssuerOptions): Promise<CertIssuerStandIn> {
    const s = new CertIssuerStandIn(o);
    await s.init();
    return s;
  }

  private log(line: string): void {
    this.o.log?.(`cert-issuer: ${line}`);
  }

  private async openssl(args: string[]): Promise<string> {
    try {
      const { stdout } = await run('openssl', args, { cwd: this.dir, maxBuffer: 16 << 20 });
      return stdout;
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string };
      if (e.code === 'ENOENT') throw new Error('openssl not found: apt-get install -y openssl');
      throw new Error(`openssl ${args[0]}: ${e.stderr ?? e.message}`);
    }
  }

  private async init(): Promise<void> {
    this.dir = await mkdtemp(join(tmpdir(), 'cert-issuer-'));
    await writeFile(join(this.dir, 'index.txt'), '');
    await writeFile(join(this.dir, 'serial'), `1${randomBytes(8).toString('hex').slice(1)}\n`);
    await writeFile(join(this.dir, 'ca.cnf'), [
      '[ca]', 'default_ca = c', '[c]', `dir = ${this.dir}`, 'database = $dir/index.txt', 'serial = $dir/serial',
      'new_certs_dir = $dir', 'certificate = $dir/ca.crt', 'private_key = $dir/ca.key', 'default_md = sha256',
      'policy = p', 'unique_subject = no', 'copy_extensions = none', 'email_in_dn = no',
      '[p]', 'commonName = optional', '[req]', 'distinguished_name = dn', 'prompt = no', '[dn]',
      '[v3_ca]', 'basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash', '',
    ].join('\n'));
    await this.openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'ca.key']);
    await this.openssl(['req', '-new', '-x509', '-config', 'ca.cnf', '-extensions', 'v3_ca', '-key', 'ca.key',
      '-subj', `/CN=cert-issuer stand-in CA ${randomBytes(3).toString('hex')}`, '-days', '365', '-out', 'ca.crt']);
    this.caPem = await readFile(join(this.dir, 'ca.crt'), 'utf8');

    const strip = <T extends KubeObject>(x: T): T => { delete x.metadata?.managedFields; return x; };
    this.certs = new Informer<Certificate>({ kube: this.kube, resource: CERTIFICATE, transform: strip, watchTimeoutSeconds: 60 });
    this.issuers = new Informer<Issuer>({ kube: this.kube, resource: ISSUER, transform: strip, watchTimeoutSeconds: 60 });
    this.clusterIssuers = new Informer<Issuer>({ kube: this.kube, resource: CLUSTER_ISSUER, transform: strip, watchTimeoutSeconds: 60 });
    // Only the Secrets cert-manager writes (and would manage): labelled controller.cert-manager.io/fao.
    this.secrets = new Informer<Secret>({ kube: this.kube, resource: SECRET, transform: strip, watchTimeoutSeconds: 60 });
    for (const inf of [this.certs, this.issuers, this.clusterIssuers, this.secrets] as Informer<KubeObject>[]) {
      inf.on({ add: () => this.kick(), update: () => this.kick(), delete: () => this.kick() });
      inf.start();
    }
    await Promise.all([this.certs.waitForSync(), this.issuers.waitForSync(), this.clusterIssuers.waitForSync(), this.secrets.waitForSync()]);
    this.timer = setInterval(() => this.kick(), this.o.resyncMs ?? 2000);
    this.kick();
  }

  /** Creates (or keeps) a ClusterIssuer served by the stand-in's CA. */
  async ensureClusterIssuer(name: string): Promise<void> {
    try {
      await this.kube.request('POST', `/apis/${GROUP}/v1/clusterissuers`, {
        body: { apiVersion: `${GROUP}/v1`, kind: 'ClusterIssuer', metadata: { name }, spec: { ca: { secretName: `${name}-ca` } } },
      });
    } catch (err) {
      if (!(err instanceof KubeError && err.code === 409)) throw err;
    }
    const end = Date.now() + 15_000;
    while (Date.now() < end) {
      const ci = await this.kube.getOrUndefined<Issuer>(`/apis/${GROUP}/v1/clusterissuers/${name}`);
      if (ci?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) return;
      this.kick();
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`ClusterIssuer ${name} not Ready`);
  }

  /** What `cmctl renew` does: asks for a re-issue through the Issuing condition. */
  async renew(namespace: string, name: string): Promise<void> {
    const c = await this.kube.get<Certificate>(`/apis/${GROUP}/v1/namespaces/${namespace}/certificates/${name}`);
    const conditions = (c.status?.conditions ?? []).filter((x) => x.type !== 'Issuing');
    conditions.push({ type: 'Issuing', status: 'True', reason: 'ManuallyTriggered', message: 'Certificate re-issuance manually triggered', lastTransitionTime: iso(new Date()), observedGeneration: c.metadata?.generation ?? 1 });
    await this.kube.request('PATCH', `/apis/${GROUP}/v1/namespaces/${namespace}/certificates/${name}/status`, { contentType: MEDIA_MERGE_PATCH, body: { status: { conditions } } });
    this.kick();
  }

  /** Resolves when the Certificate has revision >= `revision` and is Ready. */
  async waitForRevision(namespace: string, name: string, revision: number, timeoutMs = 30_000): Promise<Certificate> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const c = await this.kube.getOrUndefined<Certificate>(`/apis/${GROUP}/v1/namespaces/${namespace}/certificates/${name}`);
      if (c && (c.status?.revision ?? 0) >= revision && c.status?.conditions?.some((x) => x.type === 'Ready' && x.status === 'True')) return c;
      if (Date.now() > end) throw new Error(`Certificate ${namespace}/${name} did not reach revision ${revision}: ${JSON.stringify(c?.status ?? {})}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    void this.syncAll().catch((err) => this.log(`sync: ${String(err)}`)).finally(() => {
      this.busy = false;
      if (this.again && !this.stopped) {
        this.again = false;
        setImmediate(() => this.kick());
      }
    });
  }

  private async syncAll(): Promise<void> {
    for (const [inf, res] of [[this.issuers, ISSUER], [this.clusterIssuers, CLUSTER_ISSUER]] as const) {
      for (const iss of inf.list()) {
        if (iss.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True' && c.observedGeneration === iss.metadata?.generation)) continue;
        const ns = iss.metadata?.namespace;
        const path = `/apis/${GROUP}/v1${res.namespaced && ns ? `/namespaces/${ns}` : ''}/${res.plural}/${iss.metadata?.name}/status`;
        await this.kube.request('PATCH', path, {
          contentType: MEDIA_MERGE_PATCH,
          body: { status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KeyPairVerified', message: 'Signing CA verified', lastTransitionTime: iso(new Date()), observedGeneration: iss.metadata?.generation }] } },
        }).catch((err) => this.log(`issuer status: ${String(err)}`));
      }
    }
    for (const cert of this.certs.list()) {
      if (cert.metadata?.deletionTimestamp) continue;
      await this.syncCertificate(cert).catch((err) => this.log(`${cert.metadata?.namespace}/${cert.metadata?.name}: ${String(err)}`));
    }
  }

  private issuerOf(cert: Certificate): { issuer?: Issuer; kind: string; group: string; name: string } {
    const ref = cert.spec.issuerRef;
    const kind = ref.kind || 'Issuer';
    const group = ref.group || GROUP;
    if (group !== GROUP) return { kind, group, name: ref.name };
    const issuer = kind === 'ClusterIssuer' ? this.clusterIssuers.get('', ref.name) : this.issuers.get(cert.metadata?.namespace ?? '', ref.name);
    return { ...(issuer ? { issuer } : {}), kind, group, name: ref.name };
  }

  /** Why the current Secret does not do (cert-manager's issuing reasons), or undefined. */
  private reissueReason(cert: Certificate, secret: Secret | undefined): { reason: string; message: string } | undefined {
    const gen = cert.metadata?.generation ?? 1;
    const issuing = cert.status?.conditions?.find((c) => c.type === 'Issuing' && c.status === 'True');
    if (issuing?.reason === 'ManuallyTriggered') return { reason: 'ManuallyTriggered', message: issuing.message ?? 'Certificate re-issuance manually triggered' };
    if (!secret) return { reason: 'DoesNotExist', message: 'Issuing certificate as Secret does not exist' };
    const crt = Buffer.from(secret.data?.['tls.crt'] ?? '', 'base64').toString('utf8');
    const key = Buffer.from(secret.data?.['tls.key'] ?? '', 'base64').toString('utf8');
    if (!crt || !key) return { reason: 'MissingData', message: 'Issuing certificate as Secret does not contain a certificate' };
    let x: X509Certificate;
    try {
      x = new X509Certificate(crt);
      if (!x.checkPrivateKey(createPrivateKey(key))) return { reason: 'InvalidKeyPair', message: 'Issuing certificate as Secret contains a private key that does not match the certificate' };
    } catch {
      return { reason: 'InvalidCertificate', message: 'Issuing certificate as Secret contains an invalid certificate' };
    }
    const sans = (x.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('DNS:')).map((s) => s.slice(4)).sort();
    if (JSON.stringify(sans) !== JSON.stringify([...(cert.spec.dnsNames ?? [])].sort())) {
      return { reason: 'SecretMismatch', message: 'Issuing certificate as Secret was previously issued for a different set of DNS names' };
    }
    const ready = cert.status?.conditions?.find((c) => c.type === 'Ready');
    if (ready?.observedGeneration !== undefined && ready.observedGeneration < gen && ready.status === 'True') {
      return { reason: 'SecretMismatch', message: 'Issuing certificate as the Certificate spec changed' };
    }
    if (cert.status?.renewalTime && Date.parse(cert.status.renewalTime) <= Date.now()) return { reason: 'Renewing', message: 'Renewing certificate as renewal was scheduled at ' + cert.status.renewalTime };
    if (Date.parse(x.validTo) <= Date.now()) return { reason: 'Expired', message: `Certificate expired on ${x.validTo}` };
    return undefined;
  }

  private async patchStatus(cert: Certificate, status: Record<string, unknown>): Promise<void> {
    await this.kube.request('PATCH', `/apis/${GROUP}/v1/namespaces/${cert.metadata?.namespace}/certificates/${cert.metadata?.name}/status`, {
      contentType: MEDIA_MERGE_PATCH, body: { status },
    });
  }

  private condition(cert: Certificate, type: string, status: string, reason: string, message: string): Condition {
    const old = cert.status?.conditions?.find((c) => c.type === type);
    return {
      type, status, reason, message,
      lastTransitionTime: old && old.status === status && old.lastTransitionTime ? old.lastTransitionTime : iso(new Date()),
      observedGeneration: cert.metadata?.generation ?? 1,
    };
  }

  private async syncCertificate(cert: Certificate): Promise<void> {
    const ns = cert.metadata?.namespace ?? '';
    const name = cert.metadata?.name ?? '';
    const key = `${ns}/${name}/${cert.metadata?.uid}`;
    const pending = this.pending.get(key);
    const secret = this.secrets.get(ns, cert.spec.secretName);
    if (pending !== undefined) {
      if ((cert.status?.revision ?? 0) < pending.revision || Number(secret?.metadata?.resourceVersion ?? 0) < pending.secretRV) return;
      this.pending.delete(key);
    }
    const why = this.reissueReason(cert, secret);
    const ready = cert.status?.conditions?.find((c) => c.type === 'Ready');
    if (!why) {
      if (ready?.status !== 'True' || ready.observedGeneration !== cert.metadata?.generation) {
        await this.patchStatus(cert, { conditions: [this.condition(cert, 'Ready', 'True', 'Ready', 'Certificate is up to date and has not expired')] });
      }
      return;
    }
    const { issuer, kind, group, name: issuerName } = this.issuerOf(cert);
    const issuerReady = issuer?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
    if (!issuer || !issuerReady) {
      const msg = !issuer
        ? `Referenced "${kind}" not found: ${kind.toLowerCase()}.${group} "${issuerName}" not found`
        : `Referenced issuer does not have a Ready status condition`;
      const conditions = [
        this.condition(cert, 'Ready', 'False', why.reason, why.message),
        this.condition(cert, 'Issuing', 'True', why.reason, `${why.message}; ${msg}`),
      ];
      const same = JSON.stringify(cert.status?.conditions?.map((c) => [c.type, c.status, c.reason, c.message])) === JSON.stringify(conditions.map((c) => [c.type, c.status, c.reason, c.message]));
      if (!same) await this.patchStatus(cert, { conditions });
      return;
    }
    const out = await this.issue(cert);
    const secretBody: Secret & { type: string } = {
      apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls',
      metadata: {
        name: cert.spec.secretName, namespace: ns,
        labels: { ...(cert.spec.secretTemplate?.labels ?? {}), 'controller.cert-manager.io/fao': 'true' },
        annotations: {
          ...(cert.spec.secretTemplate?.annotations ?? {}),
          'cert-manager.io/certificate-name': name,
          'cert-manager.io/issuer-name': issuerName,
          'cert-manager.io/issuer-kind': kind,
          'cert-manager.io/issuer-group': group,
          'cert-manager.io/common-name': cert.spec.commonName ?? '',
          'cert-manager.io/alt-names': (cert.spec.dnsNames ?? []).join(','),
          'cert-manager.io/ip-sans': (cert.spec.ipAddresses ?? []).join(','),
          'cert-manager.io/uri-sans': (cert.spec.uris ?? []).join(','),
          ...(cert.spec.emailAddresses?.length ? { 'cert-manager.io/email-sans': cert.spec.emailAddresses.join(',') } : {}),
        },
      },
      data: { 'tls.crt': b64(out.certPem + this.caPem), 'tls.key': b64(out.keyPem), 'ca.crt': b64(this.caPem) },
    };
    let written: Secret | undefined;
    if (secret) {
      // Keep what others put on the Secret; replace data, type, our labels and annotations.
      const merged = { ...secretBody, metadata: { ...secretBody.metadata, resourceVersion: secret.metadata?.resourceVersion,
        labels: { ...(secret.metadata?.labels ?? {}), ...secretBody.metadata?.labels }, annotations: { ...(secret.metadata?.annotations ?? {}), ...secretBody.metadata?.annotations } } };
      written = await this.kube.request<Secret>('PUT', `/api/v1/namespaces/${ns}/secrets/${cert.spec.secretName}`, { body: merged });
    } else {
      try {
        written = await this.kube.request<Secret>('POST', `/api/v1/namespaces/${ns}/secrets`, { body: secretBody });
      } catch (err) {
        if (!(err instanceof KubeError && err.code === 409)) throw err;
        return; // appeared meanwhile: next sync
      }
    }
    const revision = (cert.status?.revision ?? 0) + 1;
    const durationMs = cert.spec.duration ? parseGoDuration(cert.spec.duration) : 2160 * 3_600_000;
    let renewBeforeMs = durationMs / 3;
    if (cert.spec.renewBefore) renewBeforeMs = parseGoDuration(cert.spec.renewBefore);
    else if (cert.spec.renewBeforePercentage !== undefined) renewBeforeMs = durationMs * cert.spec.renewBeforePercentage / 100;
    const renewal = new Date(out.notAfter.getTime() - renewBeforeMs);
    // Issuing is removed once issued, as cert-manager does.
    const conditions = [this.condition(cert, 'Ready', 'True', 'Ready', 'Certificate is up to date and has not expired')];
    this.pending.set(key, { revision, secretRV: Number(written?.metadata?.resourceVersion ?? 0) });
    await this.patchStatus(cert, { conditions, notBefore: iso(out.notBefore), notAfter: iso(out.notAfter), renewalTime: iso(renewal), revision });
    this.issued.push({ namespace: ns, name, revision, serial: out.serial, at: new Date() });
    this.log(`issued ${ns}/${name} revision ${revision} (serial ${out.serial}, ${why.reason}) into Secret ${cert.spec.secretName}`);
  }

  private issue(cert: Certificate): Promise<{ certPem: string; keyPem: string; notBefore: Date; notAfter: Date; serial: string }> {
    const p = this.queue.then(() => this.issueNow(cert));
    this.queue = p.catch(() => undefined);
    return p;
  }

  private async issueNow(cert: Certificate): Promise<{ certPem: string; keyPem: string; notBefore: Date; notAfter: Date; serial: string }> {
    const s = cert.spec;
    const pk = s.privateKey ?? {};
    const alg = (pk.algorithm ?? 'RSA').toUpperCase();
    const encoding = pk.encoding ?? 'PKCS1';
    const base = `${cert.metadata?.namespace}-${cert.metadata?.name}-${randomBytes(4).toString('hex')}`.replace(/[^A-Za-z0-9._-]/g, '_');
    let keyPem: string;
    let opensslKey: string;
    if (alg === 'RSA') {
      const size = pk.size ?? 2048;
      const { privateKey } = await genKeyPair('rsa', { modulusLength: size });
      opensslKey = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      keyPem = encoding === 'PKCS8' ? opensslKey : (privateKey.export({ type: 'pkcs1', format: 'pem' }) as string);
    } else if (alg === 'ECDSA') {
      const curve = { 256: 'prime256v1', 384: 'secp384r1', 521: 'secp521r1' }[pk.size ?? 256];
      if (!curve) throw new Error(`ECDSA size ${pk.size} not supported`);
      const { privateKey } = await genKeyPair('ec', { namedCurve: curve });
      opensslKey = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      keyPem = encoding === 'PKCS8' ? opensslKey : (privateKey.export({ type: 'sec1', format: 'pem' }) as string);
    } else if (alg === 'ED25519') {
      const { privateKey } = await genKeyPair('ed25519');
      opensslKey = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
      keyPem = opensslKey;
    } else {
      throw new Error(`privateKey.algorithm ${pk.algorithm} not supported`);
    }
    const usages = s.usages && s.usages.length > 0 ? s.usages : ['digital signature', 'key encipherment'];
    const ku = new Set<string>();
    const eku = new Set<string>();
    for (const u of usages) {
      const m = USAGES[u];
      if (!m) throw new Error(`unknown usage ${u}`);
      if (m.ku) ku.add(m.ku);
      if (m.eku) eku.add(m.eku);
    }
    if (s.isCA) ku.add('keyCertSign');
    const sans = [
      ...(s.dnsNames ?? []).map((d) => `DNS:${d}`),
      ...(s.ipAddresses ?? []).map((i) => `IP:${i}`),
      ...(s.uris ?? []).map((u) => `URI:${u}`),
      ...(s.emailAddresses ?? []).map((e) => `email:${e}`),
    ];
    const ext = [
      '[leaf]',
      `basicConstraints = critical, CA:${s.isCA ? 'TRUE' : 'FALSE'}`,
      ...(ku.size ? [`keyUsage = critical, ${[...ku].join(', ')}`] : []),
      ...(eku.size ? [`extendedKeyUsage = ${[...eku].join(', ')}`] : []),
      'authorityKeyIdentifier = keyid',
      // Critical when the subject is empty (RFC 5280 4.2.1.6), as cert-manager writes it.
      ...(sans.length ? [`subjectAltName = ${s.commonName ? '' : 'critical, '}${sans.join(', ')}`] : []),
      '',
    ].join('\n');
    await writeFile(join(this.dir, `${base}.ext`), ext);
    await writeFile(join(this.dir, `${base}.key`), opensslKey, { mode: 0o600 });
    const subj = s.commonName ? `/CN=${s.commonName.replace(/[\\/=+]/g, (c) => '\\' + c)}` : '/';
    await this.openssl(['req', '-new', '-config', 'ca.cnf', '-key', `${base}.key`, '-subj', subj, '-out', `${base}.csr`]);
    const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000);
    const durationMs = s.duration ? parseGoDuration(s.duration) : 2160 * 3_600_000;
    const notAfter = new Date(notBefore.getTime() + durationMs);
    await this.openssl(['ca', '-batch', '-notext', '-config', 'ca.cnf', '-extfile', `${base}.ext`, '-extensions', 'leaf',
      '-startdate', asnTime(notBefore), '-enddate', asnTime(notAfter), '-in', `${base}.csr`, '-out', `${base}.crt`]);
    const certPem = await readFile(join(this.dir, `${base}.crt`), 'utf8');
    for (const f of ['ext', 'key', 'csr']) await rm(join(this.dir, `${base}.${f}`), { force: true });
    return { certPem, keyPem, notBefore, notAfter, serial: new X509Certificate(certPem).serialNumber };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await Promise.all([this.certs?.stop(), this.issuers?.stop(), this.clusterIssuers?.stop(), this.secrets?.stop()]);
    await this.queue.catch(() => undefined);
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

