// A Debian Postfix as an app host's MTA: a null client that hands every message to a
// smarthost (the relay) over STARTTLS with the certificate verified and SASL AUTH, as
// the docs tell users to set it up. An instance of its own: config_directory,
// queue_directory and data_directory in a temporary directory, started with
// `postfix -c DIR start` (as root) and stopped with `postfix -c DIR stop`; it listens on
// no port (mail comes in through its sendmail) and never reads or changes /etc/postfix.
//
//   const pf = await startPostfixClient({ dir, myhostname: 'app.example.com', relayhost: port, caFile, sasl });
//   await pf.sendmail(['-f', 'app@example.com', '-N', 'success,failure', 'x@example.net'], message);
//   await pf.stop();
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';

export interface PostfixClientOptions {
  /** Parent directory; the instance lives in a new directory under it. */
  dir: string;
  /** myhostname: the domain of its MAILER-DAEMON@ and of its Reporting-MTA. */
  myhostname: string;
  /** Port of the default smarthost on localhost (relayhost = [localhost]:port). */
  relayhost: number;
  /** Other smarthosts by recipient domain (transport_maps), e.g. {'queue.example': 2525}. */
  transports?: Record<string, number>;
  /** The CA that signed the smarthosts' certificates (which must name "localhost"). */
  caFile: string;
  /** The smarthost login. */
  sasl: { user: string; pass: string };
}

export interface PostfixClient {
  /** The instance's config_directory. */
  configDir: string;
  /** Runs Postfix's sendmail of this instance (`-C` config_directory) with `message` on stdin. */
  sendmail(args: string[], message: string, timeoutMs?: number): Promise<void>;
  /** Its log (maillog_file), for failure messages. */
  maillog(): Promise<string>;
  /** Messages still in its queue (postqueue -j lines). */
  queued(): string[];
  stop(): Promise<void>;
}

/**
 * Postfix's daemons as Debian's master.cf has them (chroot off: an instance's paths are
 * not in a jail), without smtpd: each instance adds its own listeners. Shared with the
 * bench's Postfix (bench/targets.ts).
 */
export const POSTFIX_MASTER_CF_SERVICES = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsproxy  unix  -       -       n       -       0       tlsproxy
`;

function need(bin: string): string {
  const p = path.join('/usr/sbin', bin);
  if (!existsSync(p)) throw new Error(`${p} not found: install the Debian package postfix (test/harness/debian-packages.sh installs it)`);
  return p;
}

export async function startPostfixClient(o: PostfixClientOptions): Promise<PostfixClient> {
  if (process.getuid?.() !== 0) throw new Error('a Postfix instance of its own needs root (postfix -c DIR start); make test runs as root');
  const postfix = need('postfix');
  const sendmail = need('sendmail');
  need('postqueue');
  const base = await fs.mkdtemp(path.join(o.dir, 'postfix-'));
  const etc = path.join(base, 'etc');
  const queue = path.join(base, 'queue');
  const data = path.join(base, 'data');
  for (const d of [etc, queue, data]) await fs.mkdir(d, { recursive: true });
  const uid = Number(execFileSync('id', ['-u', 'postfix']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postfix']).toString().trim());
  await fs.chown(data, uid, gid);
  // Postfix's unprivileged daemons must reach the queue: every parent directory traversable.
  for (let d = base; d !== path.dirname(d); d = path.dirname(d)) {
    const st = await fs.stat(d);
    if ((st.mode & 0o005) !== 0o005) await fs.chmod(d, st.mode | 0o005);
    if (d === o.dir) break;
  }
  const maillog = path.join(base, 'maillog');
  const transports = Object.entries(o.transports ?? {})
    .map(([domain, port]) => `${domain}=smtp:[localhost]:${port}`)
    .join(', ');
  await fs.writeFile(
    path.join(etc, 'main.cf'),
    `compatibility_level = 3.6
queue_directory = ${queue}
data_directory = ${data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = ${o.myhostname}
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery on this null client
relay_domains =
mynetworks = 127.0.0.0/8
relayhost = [localhost]:${o.relayhost}
${transports ? `transport_maps = inline:{ ${transports} }` : ''}
smtp_host_lookup = native
disable_dns_lookups = yes
smtpd_peername_lookup = no
maillog_file_prefixes = ${base}
maillog_file = ${maillog}
biff = no
append_dot_mydomain = no
# every retry soon: a test waits for outcomes, not for Postfix's backoff
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
# the smarthost: STARTTLS required with its certificate verified against the test CA
# and the next-hop name (localhost), then SASL AUTH (Cyrus, PLAIN via libsasl2-modules)
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = nexthop
smtp_tls_CAfile = ${o.caFile}
smtp_tls_loglevel = 1
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:${o.sasl.user}:${o.sasl.pass}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
`,
  );
  // no inet service at all: mail comes in through sendmail (postdrop) and pickup
  await fs.writeFile(path.join(etc, 'master.cf'), POSTFIX_MASTER_CF_SERVICES);
  const run = (...args: string[]) => execFileSync(postfix, ['-c', etc, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  const readLog = () => fs.readFile(maillog, 'utf8').catch(() => '');
  try {
    run('check');
    // A table Postfix cannot read defers every message ("address resolver failure"): fail here instead.
    if (transports) {
      const [domain, port] = Object.entries(o.transports!)[0]!;
      const found = execFileSync('/usr/sbin/postmap', ['-c', etc, '-q', domain, `inline:{ ${transports} }`], { timeout: 10_000 }).toString().trim();
      if (found !== `smtp:[localhost]:${port}`) throw new Error(`transport_maps lookup of ${domain} gave ${JSON.stringify(found)}`);
    }
    run('start');
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    throw new Error(`postfix -c ${etc} start failed: ${err.stderr?.toString() || err.message}\n${(await readLog()).slice(-2000)}`);
  }
  let stopped = false;
  const stopSync = () => {
    if (stopped) return;
    stopped = true;
    try {
      run('stop');
    } catch {
      /* already down */
    }
  };
  // Whatever happens to the test process, its Postfix does not outlive it.
  process.once('exit', stopSync);
  return {
    configDir: etc,
    sendmail: (args, message, timeoutMs = 30_000) =>
      new Promise<void>((resolve, reject) => {
        const child = execFile(sendmail, ['-C', etc, ...args], { timeout: timeoutMs }, (err, _stdout, stderr) =>
          err ? reject(new Error(`sendmail ${args.join(' ')}: ${err.message} ${stderr}`)) : resolve(),
        );
        child.stdin!.end(message.replace(/\r\n/g, '\n'));
      }),
    maillog: readLog,
    queued: () => {
      try {
        return execFileSync('/usr/sbin/postqueue', ['-c', etc, '-j'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 })
          .toString()
          .split('\n')
          .filter((l) => l.trim());
      } catch {
        return [];
      }
    },
    stop: async () => {
      const pid = Number((await fs.readFile(path.join(queue, 'pid', 'master.pid'), 'utf8').catch(() => '')).trim());
      stopSync();
      process.off('exit', stopSync);
      // postfix stop returns once master was told; wait (bounded) until it has exited
      const alive = () => {
        try {
          return pid > 0 && (process.kill(pid, 0), true);
        } catch {
          return false;
        }
      };
      const end = Date.now() + 10_000;
      while (alive() && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
      await fs.rm(base, { recursive: true, force: true });
    },
  };
}
