// Test PKI built with the openssl CLI: a CA plus server, client and S/MIME
// (emailProtection) certificates issued from it, written into a temp dir.
// Real certificates, so TLS verification and `openssl smime -verify` run
// exactly as they would in production.
//
//   const pki = await createPki();                     // CA "Test CA <random>"
//   const srv = await pki.issue({ name: 'server' });   // SANs localhost, 127.0.0.1, ::1
//   const rot = await pki.issue({ name: 'server-2' }); // second cert, same CA (rotation)
//   const old = await pki.issue({ name: 'expired', notBefore: -2 * DAY, notAfter: -DAY });
//   await pki.cleanup();
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type KeyType = 'ec' | 'rsa';
export type CertUsage = 'server' | 'client' | 'email';

export const DAY = 24 * 60 * 60 * 1000;

export interface CertFiles {
  /** PEM certificate (leaf only). */
  certFile: string;
  certPem: string;
  /** PEM private key (PKCS#8). */
  keyFile: string;
  keyPem: string;
  /** Leaf followed by the CA certificate. */
  chainFile: string;
  chainPem: string;
  /** The issuing CA certificate. */
  caFile: string;
  caPem: string;
}

export interface IssueOptions {
  /** File base name in the PKI dir (unique per PKI); default "<usage>-<n>". */
  name?: string;
  /** Subject CN; default "localhost" (server/client) or the first email. */
  commonName?: string;
  /** DNS names; default ["localhost"] for server/client. */
  dnsNames?: string[];
  /** IP addresses; default ["127.0.0.1", "::1"] for server/client. */
  ips?: string[];
  /** rfc822Name SANs; needed for 'email' certificates. */
  emails?: string[];
  /** Default 'server'. */
  usage?: CertUsage;
  /** Key type; default the PKI's (ECDSA P-256 unless createPki said rsa). */
  keyType?: KeyType;
  /** Validity start/end as milliseconds relative to now; default -1h and +30 days. */
  notBefore?: number;
  notAfter?: number;
}

export interface Pki {
  dir: string;
  /** The CA certificate and its key. */
  ca: { certFile: string; certPem: string; keyFile: string; keyPem: string };
  issue(opts?: IssueOptions): Promise<CertFiles>;
  cleanup(): Promise<void>;
}

export interface PkiOptions {
  /** CA subject CN; default "smtp-relay test CA <random>". */
  caName?: string;
  /** Default 'ec' (P-256: fast to generate). */
  keyType?: KeyType;
  /** CA validity in days; default 365. */
  caDays?: number;
}

async function openssl(args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run('openssl', args, { cwd, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new Error('openssl CLI not found: install it (Debian: apt-get install openssl)');
    }
    throw new Error(`openssl ${args[0]} failed: ${e.stderr ?? e.message}`);
  }
}

async function genKey(file: string, type: KeyType, cwd: string): Promise<void> {
  const args =
    type === 'ec'
      ? ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file]
      : ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', file];
  await openssl(args, cwd);
}

/** openssl ca -startdate/-enddate format (UTCTime/GeneralizedTime, "Z"). */
function asnTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return (
    String(d.getUTCFullYear()) +
    p(d.getUTCMonth() + 1) +
    p(d.getUTCDate()) +
    p(d.getUTCHours()) +
    p(d.getUTCMinutes()) +
    p(d.getUTCSeconds()) +
    'Z'
  );
}

/** Subject attribute values in openssl "/CN=..." form; escape the separators. */
function dnValue(s: string): string {
  return s.replace(/[\\/=+]/g, (c) => '\\' + c);
}

export async function createPki(opts: PkiOptions = {}): Promise<Pki> {
  const dir = await mkdtemp(join(tmpdir(), 'smtp-relay-pki-'));
  const keyType = opts.keyType ?? 'ec';
  const caName = opts.caName ?? `smtp-relay test CA ${randomBytes(4).toString('hex')}`;
  const caKeyFile = join(dir, 'ca.key');
  const caCertFile = join(dir, 'ca.crt');

  await writeFile(join(dir, 'index.txt'), '');
  await writeFile(join(dir, 'serial'), randomBytes(8).toString('hex').replace(/^./, '1') + '\n');
  await writeFile(
    join(dir, 'ca.cnf'),
    [
      '[ca]',
      'default_ca = testca',
      '[testca]',
      `dir = ${dir}`,
      'database = $dir/index.txt',
      'serial = $dir/serial',
      'new_certs_dir = $dir',
      `certificate = ${caCertFile}`,
      `private_key = ${caKeyFile}`,
      'default_md = sha256',
      'policy = anything',
      'unique_subject = no',
      'copy_extensions = none',
      'email_in_dn = no',
      '[anything]',
      'commonName = supplied',
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      '[v3_ca]',
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
  );
  await genKey(caKeyFile, keyType, dir);
  await openssl(
    [
      'req', '-new', '-x509', '-config', 'ca.cnf', '-extensions', 'v3_ca', '-key', caKeyFile,
      '-subj', `/CN=${dnValue(caName)}`, '-days', String(opts.caDays ?? 365), '-sha256', '-out', caCertFile,
    ],
    dir,
  );
  const caPem = await readFile(caCertFile, 'utf8');
  const caKeyPem = await readFile(caKeyFile, 'utf8');

  let counter = 0;
  const used = new Set<string>();
  // openssl ca keeps state (serial, index) in files: issue one at a time.
  let queue: Promise<unknown> = Promise.resolve();

  async function issueNow(o: IssueOptions): Promise<CertFiles> {
    const usage = o.usage ?? 'server';
    const name = o.name ?? `${usage}-${++counter}`;
    if (!/^[A-Za-z0-9._-]+$/.test(name) || used.has(name)) {
      throw new Error(`pki.issue: name "${name}" must be unique and file-name safe`);
    }
    used.add(name);
    const emails = o.emails ?? [];
    const dnsNames = o.dnsNames ?? (usage === 'email' ? [] : ['localhost']);
    const ips = o.ips ?? (usage === 'email' ? [] : ['127.0.0.1', '::1']);
    const cn = o.commonName ?? (usage === 'email' ? emails[0] ?? 'sender' : dnsNames[0] ?? 'localhost');
    const sans = [
      ...dnsNames.map((d) => `DNS:${d}`),
      ...ips.map((ip) => `IP:${ip}`),
      ...emails.map((e) => `email:${e}`),
    ];
    const eku = { server: 'serverAuth', client: 'clientAuth', email: 'emailProtection' }[usage];
    const ku =
      usage === 'email' ? 'digitalSignature, nonRepudiation, keyEncipherment' : 'digitalSignature, keyEncipherment';
    const extFile = join(dir, `${name}.ext`);
    await writeFile(
      extFile,
      [
        '[leaf]',
        'basicConstraints = critical, CA:FALSE',
        `keyUsage = critical, ${ku}`,
        `extendedKeyUsage = ${eku}`,
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid',
        ...(sans.length ? [`subjectAltName = ${sans.join(', ')}`] : []),
        '',
      ].join('\n'),
    );
    const keyFile = join(dir, `${name}.key`);
    const csrFile = join(dir, `${name}.csr`);
    const certFile = join(dir, `${name}.crt`);
    const chainFile = join(dir, `${name}.chain.crt`);
    await genKey(keyFile, o.keyType ?? keyType, dir);
    await openssl(['req', '-new', '-config', 'ca.cnf', '-key', keyFile, '-subj', `/CN=${dnValue(cn)}`, '-out', csrFile], dir);
    const now = Date.now();
    await openssl(
      [
        'ca', '-batch', '-notext', '-config', 'ca.cnf', '-extfile', extFile, '-extensions', 'leaf',
        '-startdate', asnTime(now + (o.notBefore ?? -60 * 60 * 1000)),
        '-enddate', asnTime(now + (o.notAfter ?? 30 * DAY)),
        '-in', csrFile, '-out', certFile,
      ],
      dir,
    );
    const certPem = await readFile(certFile, 'utf8');
    const keyPem = await readFile(keyFile, 'utf8');
    const chainPem = certPem + caPem;
    await writeFile(chainFile, chainPem);
    return { certFile, certPem, keyFile, keyPem, chainFile, chainPem, caFile: caCertFile, caPem };
  }

  return {
    dir,
    ca: { certFile: caCertFile, certPem: caPem, keyFile: caKeyFile, keyPem: caKeyPem },
    issue(o: IssueOptions = {}) {
      const p = queue.then(() => issueNow(o));
      queue = p.catch(() => undefined);
      return p;
    },
    async cleanup() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}
