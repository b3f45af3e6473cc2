import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { DEFAULT_CIPHERS, FIELD_EFFECTS, RESTART_FIELDS, keepRestartFields, loadConfig, restartNeeded, restartRelevantConfig } from '../../../relay/config.js';
import type { RelayConfig } from '../../../relay/config-types.js';
import { ValidationError } from '../../../relay/validate.js';
import { parseDuration, parseSize } from '../../../relay/units.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-config-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
for (const f of ['tls.crt', 'tls.key', 'users.yaml', 'ca.pem', 'user', 'pass', 'dkim.key']) fs.writeFileSync(path.join(dir, f), 'x');

const BASE = `
version: 1
hostname: relay.example.com
listeners:
  - {name: submission, port: 587, mode: starttls}
  - {name: submissions, port: 465, mode: implicit}
tls: {certFile: tls.crt, keyFile: tls.key}
auth: {usersFile: users.yaml}
access: {allowedCidrs: ["10.0.0.0/8", "fd00::/8"]}
upstream: {host: smtp.example.net, port: 587, tls: starttls}
`;

let n = 0;
function write(text: string): string {
  const f = path.join(dir, `config-${n++}.yaml`);
  fs.writeFileSync(f, text);
  return f;
}

/** Applies `edit` to the base document and returns the problems (or [] when valid). */
function problems(edit: (doc: Record<string, any>) => void): string[] {
  const doc = parse(BASE);
  edit(doc);
  try {
    loadConfig(write(stringify(doc)));
    return [];
  } catch (err) {
    assert.ok(err instanceof ValidationError, String(err));
    return err.problems;
  }
}

describe('relay config', () => {
  test('a minimal config gets every default', () => {
    const s = loadConfig(write(BASE));
    assert.equal(s.hostname, 'relay.example.com');
    assert.deepEqual(s.listeners[0], { name: 'submission', address: '::', port: 587, mode: 'starttls' });
    assert.equal(s.tls.minVersion, 'TLSv1.2');
    assert.equal(s.tls.ciphers, DEFAULT_CIPHERS);
    assert.equal(s.tls.certFile, path.join(dir, 'tls.crt'), 'relative paths resolve against the config directory');
    assert.deepEqual(s.auth.lockout, { maxFailures: 5, windowMs: 600_000, durationMs: 900_000 });
    assert.deepEqual(s.limits, { maxMessageSize: 10 * 1024 * 1024, maxRecipients: 100, maxConnections: 1000, maxConnectionsPerIp: 20, idleTimeoutMs: 60_000, preAuthTimeoutMs: 10_000, maxUnauthenticated: 500 });
    assert.deepEqual(s.access.trustedProxyCidrs, []);
    assert.equal(s.upstream.maxConnections, 5);
    assert.equal(s.upstream.timeout, '60s');
    assert.equal(s.upstream.ehloName, 'relay.example.com');
    assert.deepEqual(s.metrics, { address: '::', port: 9090 });
    const withToken = loadConfig(write(BASE + 'metrics: {controlTokenFile: user}\n'));
    assert.equal(withToken.metrics.controlTokenFile, path.join(dir, 'user'), 'the control token file, resolved');
    assert.equal(s.shutdownGracePeriodMs, 25_000);
    assert.equal(s.workers, 'auto', 'a worker per CPU the container may use unless told');
    assert.deepEqual(s.dkim, []);
  });

  test('a cipher list that only removes weak suites is accepted', () => {
    const list = 'ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:-RC4:!3DES';
    const s = loadConfig(write(BASE.replace('tls: {certFile: tls.crt, keyFile: tls.key}', `tls: {certFile: tls.crt, keyFile: tls.key, ciphers: "${list}"}`)));
    assert.equal(s.tls.ciphers, list);
  });

  test('every optional field is read', () => {
    const s = loadConfig(
      write(
        BASE.replace('tls: {certFile: tls.crt, keyFile: tls.key}', 'tls: {certFile: tls.crt, keyFile: tls.key, minVersion: TLSv1.3, ciphers: "ECDHE-RSA-AES128-GCM-SHA256"}') +
          `limits: {maxMessageSize: 25Mi, maxRecipients: 10, maxConnections: 50, maxConnectionsPerIp: 2, idleTimeout: 2m, preAuthTimeout: 5s, maxUnauthenticated: 20}
dkim: [{domain: Example.com, selector: s1, keyFile: dkim.key}]
metrics: {address: 127.0.0.1, port: 9100}
shutdownGracePeriod: 1m30s
workers: auto
`,
      ),
    );
    assert.equal(s.tls.minVersion, 'TLSv1.3');
    assert.equal(s.limits.maxMessageSize, 25 * 1024 * 1024);
    assert.equal(s.limits.idleTimeoutMs, 120_000);
    assert.equal(s.limits.preAuthTimeoutMs, 5000);
    assert.equal(s.limits.maxUnauthenticated, 20);
    assert.deepEqual(s.dkim, [{ domain: 'example.com', selector: 's1', keyFile: path.join(dir, 'dkim.key') }]);
    assert.equal(s.shutdownGracePeriodMs, 90_000);
    assert.equal(s.workers, 'auto');
    assert.equal(loadConfig(write(BASE + 'workers: 4\n')).workers, 4);
  });

  test('a missing config file', () => {
    assert.throws(() => loadConfig(path.join(dir, 'nope.yaml')), (e: ValidationError) => {
      assert.deepEqual(e.problems, ['cannot read the config file: ENOENT']);
      return true;
    });
  });

  test('a YAML syntax error names the line', () => {
    assert.throws(() => loadConfig(write('version: 1\nlisteners: [\n')), (e: ValidationError) => {
      assert.match(e.problems[0]!, /^YAML syntax: .*line/);
      return true;
    });
  });

  const cases: [string, (d: Record<string, any>) => void, string[]][] = [
    ['a bad CIDR', (d) => (d.access.allowedCidrs = ['10.0.0.0/8', '10.0.0.0/33']), ['access.allowedCidrs[1]: "10.0.0.0/33" is not a valid CIDR (examples: "10.0.0.0/8", "fd00::/8", "192.0.2.7")']],
    ['a bad IPv6 CIDR', (d) => (d.access.proxyProtocol = { trustedCidrs: ['fd00::/129'] }), ['access.proxyProtocol.trustedCidrs[0]: "fd00::/129" is not a valid CIDR (examples: "10.0.0.0/8", "fd00::/8", "192.0.2.7")']],
    [
      'an unknown field',
      (d) => (d.limits = { maxMesageSize: '10Mi' }),
      ['limits.maxMesageSize: unknown field (allowed: maxMessageSize, maxRecipients, maxConnections, maxConnectionsPerIp, idleTimeout, preAuthTimeout, maxUnauthenticated)'],
    ],
    [
      'an unknown top-level field',
      (d) => (d.spool = {}),
      ['spool: unknown field (allowed: version, hostname, listeners, tls, auth, access, upstream, limits, dkim, metrics, shutdownGracePeriod, queue, workers, peers)'],
    ],
    [
      'more unauthenticated connections than connections',
      (d) => (d.limits = { maxConnections: 10, maxUnauthenticated: 11 }),
      ['limits.maxUnauthenticated: 11 is more than limits.maxConnections (10)'],
    ],
    ['workers: 0', (d) => (d.workers = 0), ['workers: 0 is out of range 1..64']],
    ['workers: a word', (d) => (d.workers = 'all'), ['workers: "all" must be a number from 1 to 64, or "auto" (one per CPU the container may use)']],
    ['a pre-auth timeout under a second', (d) => (d.limits = { preAuthTimeout: '500ms' }), ['limits.preAuthTimeout: "500ms" is too short (minimum 1000 ms)']],
    ['two listeners on one port', (d) => (d.listeners[1].port = 587), ['listeners[1].port: port 587 is already used by listeners[0] (submission)']],
    ['metrics on a listener port', (d) => (d.metrics = { port: 465 }), ['metrics.port: port 465 is already used by listeners[1] (submissions)']],
    ['a missing control token file', (d) => (d.metrics = { controlTokenFile: 'none.token' }), ['metrics.controlTokenFile: cannot read "none.token": ENOENT']],
    ['a control token file that is not a string', (d) => (d.metrics = { controlTokenFile: 3 }), ['metrics.controlTokenFile: must be a string, got 3']],
    ['a missing certificate file', (d) => (d.tls.certFile = 'missing.crt'), ['tls.certFile: cannot read "missing.crt": ENOENT']],
    ['a missing users file', (d) => (d.auth.usersFile = '/nonexistent/users.yaml'), ['auth.usersFile: cannot read "/nonexistent/users.yaml": ENOENT']],
    ['a missing DKIM key', (d) => (d.dkim = [{ domain: 'example.com', selector: 's1', keyFile: 'none.key' }]), ['dkim[0].keyFile: cannot read "none.key": ENOENT']],
    ['a missing required field', (d) => delete d.upstream.host, ['upstream.host: required field is missing']],
    ['a bad mode', (d) => (d.listeners[0].mode = 'plain'), ['listeners[0].mode: "plain" is not one of starttls, implicit']],
    ['a bad port', (d) => (d.listeners[0].port = 70000), ['listeners[0].port: 70000 is not a valid port (1..65535)']],
    ['a bad listener address', (d) => (d.listeners[0].address = 'localhost'), ['listeners[0].address: "localhost" is not a valid IP address']],
    ['a duplicate listener name', (d) => (d.listeners[1].name = 'submission'), ['listeners[1].name: "submission" is used by another listener']],
    ['no listeners', (d) => (d.listeners = []), ['listeners: at least one listener is required']],
    ['TLS 1.1', (d) => (d.tls.minVersion = 'TLSv1.1'), ['tls.minVersion: "TLSv1.1" is not one of TLSv1.2, TLSv1.3']],
    ['weak ciphers', (d) => (d.tls.ciphers = 'DEFAULT:RC4'), ['tls.ciphers: "DEFAULT:RC4" enables weak or null ciphers']],
    ['a null cipher by name', (d) => (d.tls.ciphers = 'ECDHE-RSA-AES128-GCM-SHA256:NULL-SHA256'), ['tls.ciphers: "ECDHE-RSA-AES128-GCM-SHA256:NULL-SHA256" enables weak or null ciphers']],
    ['an anonymous cipher by name', (d) => (d.tls.ciphers = 'ADH-AES256-GCM-SHA384'), ['tls.ciphers: "ADH-AES256-GCM-SHA384" enables weak or null ciphers']],
    ['3DES and RC4 by name', (d) => (d.tls.ciphers = 'DES-CBC3-SHA:RC4-SHA'), ['tls.ciphers: "DES-CBC3-SHA:RC4-SHA" enables weak or null ciphers']],
    ['a bad duration', (d) => (d.limits = { idleTimeout: '10 minutes' }), ['limits.idleTimeout: "10 minutes" is not a duration (examples: "30s", "10m", "1h")']],
    ['a bad size', (d) => (d.limits = { maxMessageSize: '10MB' }), ['limits.maxMessageSize: "10MB" is not a size (bytes, or a number with Ki, Mi or Gi)']],
    ['a wrong version', (d) => (d.version = 2), ['version: 2 is not supported (must be 1)']],
    ['a bad type', (d) => (d.limits = { maxRecipients: 'many' }), ['limits.maxRecipients: must be an integer, got "many"']],
    ['username without password file', (d) => (d.upstream.usernameFile = 'user'), ['upstream.passwordFile: usernameFile and passwordFile must be given together']],
    ['a bad hostname', (d) => (d.hostname = 'relay example'), ['hostname: "relay example" is not a valid host name']],
  ];
  for (const [name, edit, expected] of cases) {
    test(`rejects ${name}`, () => assert.deepEqual(problems(edit), expected));
  }

  test('all problems are reported at once', () => {
    const p = problems((d) => {
      d.access.allowedCidrs = ['nope'];
      d.listeners[0].port = 0;
    });
    assert.equal(p.length, 2);
  });

  test('a listener on a specific address may share a port number with one on another address', () => {
    assert.deepEqual(
      problems((d) => {
        d.listeners = [
          { name: 'a', address: '127.0.0.1', port: 587, mode: 'starttls' },
          { name: 'b', address: '127.0.0.2', port: 587, mode: 'starttls' },
        ];
      }),
      [],
    );
  });

  test('restartNeeded names the fields that a live reload cannot apply', () => {
    const a = loadConfig(write(BASE));
    const b = loadConfig(write(BASE.replace('port: 465', 'port: 2465').replace('10.0.0.0/8', '10.1.0.0/16')));
    assert.deepEqual(restartNeeded(a, b), ['listeners']);
  });

  /** The fields the loader accepts at `where` (from its own "unknown field" message). */
  function accepted(where: 'top' | 'auth'): string[] {
    const out = problems((d) => (where === 'top' ? (d.zzz = 1) : (d.auth.zzz = 1)));
    const m = /unknown field \(allowed: ([^)]*)\)/.exec(out.join('\n'));
    assert.ok(m, `no "allowed" list in ${JSON.stringify(out)}`);
    return m[1]!.split(', ').sort();
  }

  test('every field the loader accepts is either reloaded in place or on the restart list (a new field fails here until it is listed)', () => {
    assert.deepEqual(accepted('top'), Object.keys(FIELD_EFFECTS).sort());
    assert.deepEqual(accepted('auth'), Object.keys(FIELD_EFFECTS.auth).sort());
    assert.deepEqual([...RESTART_FIELDS], ['version', 'hostname', 'listeners', 'tls', 'metrics', 'auth.usersFile', 'auth.serviceAccountTokens', 'queue', 'workers', 'peers']);
  });

  test('a reload keeps every restart field at its running value and takes the rest; the warning names each one, auth.usersFile included', () => {
    const a = loadConfig(write(BASE));
    fs.writeFileSync(path.join(dir, 'other-users.yaml'), 'x');
    const b = loadConfig(
      write(
        BASE.replace('usersFile: users.yaml}', 'usersFile: other-users.yaml, lockout: {maxFailures: 3}}')
          .replace('hostname: relay.example.com', 'hostname: other.example.com')
          .replace('10.0.0.0/8', '10.1.0.0/16'),
      ),
    );
    assert.deepEqual(restartNeeded(a, b), ['hostname', 'auth.usersFile']);
    const kept = keepRestartFields(a, b);
    assert.equal(kept.hostname, 'relay.example.com');
    assert.equal(kept.auth.usersFile, a.auth.usersFile);
    assert.equal(kept.auth.lockout.maxFailures, 3);
    assert.deepEqual(kept.access.allowedCidrs, ['10.1.0.0/16', 'fd00::/8']);
    assert.equal(a.auth.lockout.maxFailures, 5, 'the running settings are not modified');
  });

  test('the operator\'s restart hash input holds exactly the restart fields, under the names pods were hashed with before', () => {
    const doc = parse(BASE) as RelayConfig;
    assert.deepEqual(Object.keys(restartRelevantConfig(doc)), ['version', 'hostname', 'listeners', 'tls', 'metrics', 'usersFile', 'serviceAccountTokens', 'queue', 'workers', 'peers']);
    assert.equal(restartRelevantConfig(doc).usersFile, 'users.yaml');
    // absent, so the canonical JSON (and the hash) of a relay without token logins is what it was
    assert.equal(restartRelevantConfig(doc).serviceAccountTokens, undefined);
  });
});

describe('relay config: peers', () => {
  fs.writeFileSync(path.join(dir, 'peer-token'), 'c2VjcmV0LXBlZXItdG9rZW4tMzItYnl0ZXM=\n');
  fs.writeFileSync(path.join(dir, 'short-token'), 'abc\n');
  fs.writeFileSync(path.join(dir, 'spaced-token'), 'a token with spaces in it\n');

  test('peers: defaults and every field', () => {
    const s = loadConfig(write(BASE + 'peers: {port: 9091, tokenFile: peer-token}\n'));
    assert.deepEqual(s.peers, { address: '::', port: 9091, tokenFile: path.join(dir, 'peer-token'), addresses: [], refreshIntervalMs: 10_000 });
    const t = loadConfig(
      write(BASE + 'peers: {address: 10.0.0.5, port: 9091, tokenFile: peer-token, service: relay-peers.mail.svc.cluster.local, addresses: ["10.0.0.6:9091", "[fd00::7]:9091", "relay-1.example:9091"], refreshInterval: 30s}\n'),
    );
    assert.deepEqual(t.peers, {
      address: '10.0.0.5',
      port: 9091,
      tokenFile: path.join(dir, 'peer-token'),
      service: 'relay-peers.mail.svc.cluster.local',
      addresses: ['10.0.0.6:9091', '[fd00::7]:9091', 'relay-1.example:9091'],
      refreshIntervalMs: 30_000,
    });
    assert.equal(loadConfig(write(BASE)).peers, undefined);
  });

  test('peers: bad values are named', () => {
    const bad = (peers: unknown) => problems((d) => (d.peers = peers));
    assert.deepEqual(bad({ tokenFile: 'peer-token' }), ['peers.port: required field is missing']);
    assert.deepEqual(bad({ port: 9091 }), ['peers.tokenFile: required field is missing']);
    assert.deepEqual(bad({ port: 70000, tokenFile: 'peer-token' }), ['peers.port: 70000 is not a valid port (1..65535)']);
    assert.deepEqual(bad({ port: 9091, tokenFile: 'missing-token' }), ['peers.tokenFile: cannot read "missing-token": ENOENT']);
    assert.match(bad({ port: 9091, tokenFile: 'short-token' })[0]!, /^peers\.tokenFile: the token in "short-token" is 3 characters long; at least 16/);
    assert.match(bad({ port: 9091, tokenFile: 'spaced-token' })[0]!, /printable ASCII without spaces/);
    assert.deepEqual(bad({ port: 9091, tokenFile: 'peer-token', address: 'all' }), ['peers.address: "all" is not a valid IP address']);
    assert.deepEqual(bad({ port: 9091, tokenFile: 'peer-token', service: 'not a name' }), ['peers.service: "not a name" is not a DNS name (e.g. "smtp-relay-peers.mail.svc.cluster.local")']);
    assert.deepEqual(bad({ port: 9091, tokenFile: 'peer-token', addresses: ['10.0.0.6', 'fd00::7:9091', '10.0.0.6:0', 'ok.example:9091'] }), [
      'peers.addresses[0]: "10.0.0.6" is not "host:port" (an IPv6 address in brackets: "[fd00::7]:9091")',
      'peers.addresses[1]: "fd00::7:9091" is not "host:port" (an IPv6 address in brackets: "[fd00::7]:9091")',
      'peers.addresses[2]: "10.0.0.6:0" is not "host:port" (an IPv6 address in brackets: "[fd00::7]:9091")',
    ]);
    assert.deepEqual(bad({ port: 9091, tokenFile: 'peer-token', refreshInterval: '10ms' }), ['peers.refreshInterval: "10ms" is too short (minimum 1000 ms)']);
    assert.deepEqual(bad({ port: 9091, tokenFile: 'peer-token', token: 'x' }), ['peers.token: unknown field (allowed: port, tokenFile, address, service, addresses, refreshInterval)']);
    assert.deepEqual(bad({ port: 9090, tokenFile: 'peer-token' }), ['peers.port: port 9090 is already used by metrics']);
  });
});

describe('units', () => {
  test('durations', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('2d'), 172_800_000);
    assert.equal(parseDuration('10'), undefined);
    assert.equal(parseDuration('-1s'), undefined);
  });
  test('sizes', () => {
    assert.equal(parseSize(1024), 1024);
    assert.equal(parseSize('512Ki'), 524288);
    assert.equal(parseSize('10Mi'), 10485760);
    assert.equal(parseSize('10M'), undefined);
    assert.equal(parseSize(1.5), undefined);
  });
});
