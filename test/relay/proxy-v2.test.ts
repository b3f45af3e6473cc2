// PROXY protocol v2 against the real relay process, on both listener kinds. The headers
// are built here byte by byte from haproxy's doc/proxy-protocol.txt (section 2.2), not
// with the parser the relay uses: as HAProxy's send-proxy-v2 sends them (TCP4, TCP6, no
// TLVs; LOCAL for health checks) and as AWS NLB does (PP2_TYPE_AWS 0xEA with the VPC
// endpoint id), with a CRC32C TLV computed by a bitwise CRC of our own. Loopback only:
// 127.0.0.6 is the trusted balancer (itself not allowed), 127.0.1.0/24 the allowed clients.

import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, delay, startRelay, tempDir, type RelayProcess, stopAll } from './harness.js';

let pki: Pki;
let sink: Sink;
let relay: RelayProcess;

const CAROL = { name: 'carol', password: 'carol-password-123', allowedSenders: ['carol@example.com'] };
const BALANCER = '127.0.0.6';
/** A trusted peer that is itself allowed: its LOCAL connections get a session. */
const ALLOWED_BALANCER = '127.0.1.200';

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki });
  relay = await startRelay({
    dir: await tempDir('relay-proxy-v2-'),
    cert: await pki.issue({ name: 'relay' }),
    users: [CAROL],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    access: `  allowedCidrs: ["127.0.1.0/24", "::1/128", "2001:db8:1::/48"]\n  proxyProtocol: {trustedCidrs: ["${BALANCER}/32", "${ALLOWED_BALANCER}/32"]}`,
    limits: '{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: 200, maxConnectionsPerIp: 50, idleTimeout: 30s, preAuthTimeout: 3s}',
  });
});

after(() => stopAll(relay, sink, pki));

// --- v2 headers, per the spec ---

const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const LOCAL = 0x20; // version 2, command LOCAL
const PROXY = 0x21; // version 2, command PROXY
const TCP4 = 0x11;
const TCP6 = 0x21;

function ipv4Bytes(a: string): number[] {
  return a.split('.').map(Number);
}

/** 16 bytes of an IPv6 address (full or with one "::"), written out by hand. */
function ipv6Bytes(a: string): number[] {
  const [head, tail] = a.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff]);
}

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];

function tlv(type: number, value: number[]): number[] {
  return [type, ...u16(value.length), ...value];
}

/** A v2 header: signature, ver/cmd, fam/proto, length, then `body` (addresses and TLVs). */
function v2(verCmd: number, famProto: number, body: number[], length = body.length): Buffer {
  return Buffer.from([...SIGNATURE, verCmd, famProto, ...u16(length), ...body]);
}

function tcp4(src: string, dst: string, sport: number, dport: number): number[] {
  return [...ipv4Bytes(src), ...ipv4Bytes(dst), ...u16(sport), ...u16(dport)];
}

function tcp6(src: string, dst: string, sport: number, dport: number): number[] {
  return [...ipv6Bytes(src), ...ipv6Bytes(dst), ...u16(sport), ...u16(dport)];
}

/** CRC32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit. */
function crc32cBitwise(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const b of data) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** Fills in the CRC32C TLV (spec 2.2.3: computed over the whole header with the field zeroed). */
function withCrc(header: Buffer): Buffer {
  const at = header.indexOf(Buffer.from([0x03, 0x00, 0x04, 0, 0, 0, 0]), 16) + 3;
  assert.ok(at > 16, 'the header has a zeroed CRC32C TLV');
  header.writeUInt32BE(crc32cBitwise(header), at);
  return header;
}

/** As AWS NLB sends it for a PrivateLink connection: PP2_TYPE_AWS (0xEA), subtype 0x01, the VPC endpoint id. */
function awsNlb(src: string, dst: string, sport: number, dport: number, crc: boolean): Buffer {
  const vpce = [0x01, ...Buffer.from('vpce-08d2bf15fac5001c9', 'latin1')];
  const body = [...tcp4(src, dst, sport, dport), ...tlv(0xea, vpce), ...(crc ? tlv(0x03, [0, 0, 0, 0]) : []), ...tlv(0x04, [0, 0, 0])];
  const h = v2(PROXY, TCP4, body);
  return crc ? withCrc(h) : h;
}

// --- clients ---

const portOf = (listener: 'starttls' | 'implicit') => (listener === 'starttls' ? relay.ports.submission : relay.ports.submissions);

async function connectFrom(localAddress: string, port: number): Promise<net.Socket> {
  const s = net.connect({ host: '127.0.0.1', port, localAddress });
  s.on('error', () => undefined);
  await new Promise((r) => s.once('connect', r));
  return s;
}

/**
 * Sends `header` (in pieces of `split` bytes when given) from `from`, then speaks SMTP: on
 * the STARTTLS listener the greeting in plaintext, on the implicit one after a handshake.
 */
async function session(listener: 'starttls' | 'implicit', header: Buffer, opts: { from?: string; split?: number; pipelined?: boolean } = {}): Promise<RawSmtp & { firstReply?: number }> {
  const raw = await connectFrom(opts.from ?? BALANCER, portOf(listener));
  if (opts.split) {
    for (let i = 0; i < header.length; i += opts.split) {
      raw.write(header.subarray(i, i + opts.split));
      await delay(5);
    }
  } else if (!opts.pipelined) raw.write(header);
  if (listener === 'starttls') {
    if (opts.pipelined) raw.write(Buffer.concat([header, Buffer.from('EHLO client.test\r\n')]));
    return wrap(raw);
  }
  // header and ClientHello in one segment when pipelined
  if (opts.pipelined) {
    raw.cork();
    raw.write(header);
  }
  const t = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' });
  if (opts.pipelined) process.nextTick(() => raw.uncork());
  t.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    t.once('secureConnect', () => resolve());
    t.once('close', () => reject(new Error('closed before the TLS handshake completed')));
  });
  return wrap(t);
}

/** RawSmtp over an already connected socket (its constructor is private; connect() dials). */
function wrap(socket: net.Socket | tls.TLSSocket): RawSmtp {
  const Ctor = RawSmtp as unknown as new (s: net.Socket | tls.TLSSocket) => RawSmtp;
  return new Ctor(socket);
}

async function login(c: RawSmtp, listener: 'starttls' | 'implicit'): Promise<void> {
  assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  if (listener === 'starttls') {
    await c.starttls();
    assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
  }
  assert.equal((await c.login(CAROL.name, CAROL.password))?.code, 235);
}

/** Sends `bytes` from the balancer; resolves with what came back and whether the relay closed within `ms`. */
async function sendRaw(listener: 'starttls' | 'implicit', bytes: Buffer, opts: { from?: string; ms?: number; close?: boolean } = {}): Promise<{ got: string; closed: boolean }> {
  const s = await connectFrom(opts.from ?? BALANCER, portOf(listener));
  let got = '';
  s.setEncoding('latin1');
  s.on('data', (d: string) => (got += d));
  s.write(bytes);
  if (opts.close) s.end();
  const closed = await Promise.race([new Promise<boolean>((r) => s.once('close', () => r(true))), delay(opts.ms ?? 2000).then(() => false)]);
  s.destroy();
  return { got, closed };
}

const rejected = (reason: string) => relay.metric('smtp_relay_connections_total', { result: 'rejected', reason });

describe('PROXY v2 as HAProxy sends it (send-proxy-v2, no TLVs)', () => {
  for (const listener of ['starttls', 'implicit'] as const) {
    test(`TCP4 on the ${listener} listener: the client address in the header is the session's`, async () => {
      const client = listener === 'starttls' ? '127.0.1.10' : '127.0.1.11';
      const c = await session(listener, v2(PROXY, TCP4, tcp4(client, '10.0.0.1', 40001, 587)));
      assert.equal((await c.read())?.code, 220);
      await login(c, listener);
      c.close();
      const line = await relay.waitForLog((l) => l.event === 'session' && l.clientIp === client);
      assert.equal(line.user, CAROL.name);
      assert.equal(line.listener, listener === 'starttls' ? 'submission' : 'submissions');
    });

    test(`TCP6 on the ${listener} listener`, async () => {
      const client = listener === 'starttls' ? '2001:db8:1::10' : '2001:db8:1:0:0:0:0:11';
      const c = await session(listener, v2(PROXY, TCP6, tcp6(client, '2001:db8:ff::1', 40002, 465)));
      assert.equal((await c.read())?.code, 220);
      await login(c, listener);
      c.close();
      const want = listener === 'starttls' ? '2001:db8:1::10' : '2001:db8:1::11';
      await relay.waitForLog((l) => l.event === 'auth_success' && l.clientIp === want);
    });

    test(`a client outside the allow-list in the header gets 554 on the ${listener} listener, logged with its address`, async () => {
      const before = await relay.metric('smtp_relay_connections_total', { result: 'rejected', reason: 'ip_not_allowed' });
      const client = listener === 'starttls' ? '198.51.100.7' : '198.51.100.8';
      const c = await session(listener, v2(PROXY, TCP4, tcp4(client, '10.0.0.1', 40003, 587)));
      const r = await c.read();
      assert.equal(r?.code, 554, r?.text);
      c.close();
      await relay.waitForLog((l) => l.event === 'connection_refused' && l.clientIp === client && l.reason === 'ip_not_allowed');
      assert.equal((await relay.metric('smtp_relay_connections_total', { result: 'rejected', reason: 'ip_not_allowed' })) - before, 1);
      // an IPv6 client outside the allow-list too
      const d = await session(listener, v2(PROXY, TCP6, tcp6('2001:db8:2::7', '2001:db8:ff::1', 40004, 587)));
      assert.equal((await d.read())?.code, 554);
      d.close();
    });

    test(`LOCAL (a health check) on the ${listener} listener: the balancer's own address counts`, async () => {
      // the balancer itself is not allowed: 554, logged with its own address
      const c = await session(listener, v2(LOCAL, 0x00, []));
      assert.equal((await c.read())?.code, 554);
      c.close();
      await relay.waitForLog((l) => l.event === 'connection_refused' && l.clientIp === BALANCER && l.listener === (listener === 'starttls' ? 'submission' : 'submissions'));
      // an allowed balancer gets its session; an address block sent with LOCAL is skipped (spec: length always counts)
      const d = await session(listener, v2(LOCAL, TCP4, tcp4('198.51.100.9', '10.0.0.1', 1, 2)), { from: ALLOWED_BALANCER });
      assert.equal((await d.read())?.code, 220);
      await login(d, listener);
      d.close();
      await relay.waitForLog((l) => l.event === 'session' && l.clientIp === ALLOWED_BALANCER && l.user === CAROL.name);
    });
  }
});

describe('PROXY v2 as AWS NLB sends it (TLVs)', () => {
  for (const listener of ['starttls', 'implicit'] as const) {
    test(`VPC endpoint id TLV, CRC32C and NOOP TLVs on the ${listener} listener are skipped; the client is served`, async () => {
      const client = listener === 'starttls' ? '127.0.1.20' : '127.0.1.21';
      const c = await session(listener, awsNlb(client, '10.0.0.1', 40010, 587, true));
      assert.equal((await c.read())?.code, 220);
      await login(c, listener);
      c.close();
      await relay.waitForLog((l) => l.event === 'auth_success' && l.clientIp === client);
      // without the CRC32C TLV too
      const d = await session(listener, awsNlb(client, '10.0.0.1', 40011, 587, false));
      assert.equal((await d.read())?.code, 220);
      d.close();
    });
  }

  test('the CRC32C helper of this test matches the standard check value', () => {
    assert.equal(crc32cBitwise(Buffer.from('123456789')), 0xe3069283);
  });
});

describe('how the header arrives', () => {
  for (const listener of ['starttls', 'implicit'] as const) {
    test(`split byte by byte over many TCP writes on the ${listener} listener`, async () => {
      const client = listener === 'starttls' ? '127.0.1.30' : '127.0.1.31';
      const c = await session(listener, awsNlb(client, '10.0.0.1', 40020, 587, true), { split: 1 });
      assert.equal((await c.read())?.code, 220);
      await login(c, listener);
      c.close();
      await relay.waitForLog((l) => l.event === 'auth_success' && l.clientIp === client);
    });

    test(`in the same write as what follows it on the ${listener} listener`, async () => {
      const client = listener === 'starttls' ? '127.0.1.32' : '127.0.1.33';
      const c = await session(listener, v2(PROXY, TCP4, tcp4(client, '10.0.0.1', 40021, 587)), { pipelined: true });
      assert.equal((await c.read())?.code, 220);
      if (listener === 'starttls') {
        assert.equal((await c.read())?.code, 250, 'the EHLO sent with the header');
        await c.starttls();
        assert.equal((await c.cmd('EHLO client.test'))?.code, 250);
        assert.equal((await c.login(CAROL.name, CAROL.password))?.code, 235);
      } else {
        await login(c, listener);
      }
      c.close();
      await relay.waitForLog((l) => l.event === 'auth_success' && l.clientIp === client);
    });
  }
});

describe('v1 next to v2', () => {
  for (const listener of ['starttls', 'implicit'] as const) {
    test(`PROXY v1 from the trusted peer still works on the ${listener} listener`, async () => {
      const client = listener === 'starttls' ? '127.0.1.40' : '127.0.1.41';
      const c = await session(listener, Buffer.from(`PROXY TCP4 ${client} 10.0.0.1 40030 587\r\n`));
      assert.equal((await c.read())?.code, 220);
      await login(c, listener);
      c.close();
      await relay.waitForLog((l) => l.event === 'auth_success' && l.clientIp === client);
      const d = await session(listener, Buffer.from('PROXY TCP4 198.51.100.10 10.0.0.1 40031 587\r\n'), { split: 1 });
      assert.equal((await d.read())?.code, 554);
      d.close();
    });
  }
});

describe('malformed PROXY v1 lines from the trusted peer', () => {
  // Each is refused before smtp-server sees it, counted as proxy_header_invalid like a bad
  // v2 header (smtp-server's own v1 reader would refuse some with "* BAD", uncounted, and
  // let others through: a family that does not match, a port out of range).
  const lines: [string, string][] = [
    ['an address that is not an IP', 'PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n'],
    ['fields missing', 'PROXY TCP4 127.0.1.60\r\n'],
    ['an IPv4 address under TCP6', 'PROXY TCP6 127.0.1.60 10.0.0.1 1 2\r\n'],
    ['an IPv6 address under TCP4', 'PROXY TCP4 2001:db8:1::60 10.0.0.1 1 2\r\n'],
    ['a port past 65535', 'PROXY TCP4 127.0.1.60 10.0.0.1 65536 587\r\n'],
    ['a port with a leading zero', 'PROXY TCP4 127.0.1.60 10.0.0.1 0587 587\r\n'],
    ['a bare LF', 'PROXY TCP4 127.0.1.60 10.0.0.1 1 2\n'],
    ['two spaces', 'PROXY TCP4  127.0.1.60 10.0.0.1 1 2\r\n'],
    ['an unknown family', 'PROXY UDP4 127.0.1.60 10.0.0.1 1 2\r\n'],
    ['a line past 107 bytes', `PROXY TCP4 127.0.1.60 10.0.0.1 1 2${' '.repeat(100)}\r\n`],
    ['no CRLF within 107 bytes', 'PROXY ' + 'A'.repeat(200)],
  ];
  for (const listener of ['starttls', 'implicit'] as const) {
    test(`each is refused and counted on the ${listener} listener, without a reply; the relay keeps serving`, async () => {
      const before = await rejected('proxy_header_invalid');
      for (const [name, line] of lines) {
        const out = await sendRaw(listener, Buffer.from(line, 'latin1'), { ms: 1500 });
        assert.equal(out.got, '', `${name}: nothing written back`);
        assert.ok(out.closed, `${name}: closed by the relay at once`);
      }
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline && (await rejected('proxy_header_invalid')) - before < lines.length) await delay(50);
      assert.equal((await rejected('proxy_header_invalid')) - before, lines.length);
      await relay.waitForLog((l) => l.event === 'connection_refused' && l.reason === 'proxy_header_invalid' && /v1 address not of family TCP6/.test(String(l.detail)));
      await relay.waitForLog((l) => l.event === 'connection_refused' && l.reason === 'proxy_header_invalid' && /v1 line longer than 107 bytes/.test(String(l.detail)));
      assert.equal(relay.exitCode, null, 'relay still running');
      const c = await session(listener, Buffer.from('PROXY TCP4 127.0.1.61 10.0.0.1 40061 587\r\n'));
      assert.equal((await c.read())?.code, 220);
      c.close();
    });
  }

  test('PROXY UNKNOWN: whatever follows is ignored, the balancer\'s own address counts', async () => {
    // from the balancer that is not itself allowed: refused at connect, even though the line names an allowed client
    const no = await session('starttls', Buffer.from('PROXY UNKNOWN 127.0.1.62 10.0.0.1 1 2\r\n'));
    assert.equal((await no.read())?.code, 554);
    no.close();
    const yes = await session('starttls', Buffer.from('PROXY UNKNOWN\r\n'), { from: ALLOWED_BALANCER });
    assert.equal((await yes.read())?.code, 220);
    yes.close();
  });
});

describe('PROXY v2 from an untrusted peer', () => {
  test('STARTTLS listener: no header is expected (greeted at once), and the header is not honoured', async () => {
    const client = '127.0.1.99';
    const c = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.1.1' });
    assert.equal(c.greeting?.code, 220, 'greeted before any header');
    c.write(v2(PROXY, TCP4, tcp4(client, '10.0.0.1', 40040, 587)));
    // smtp-server reads it as lines; its signature ends in "QUIT\n" (on purpose, spec 2.2), so it may end the session
    const r = await c.cmd('EHLO client.test').catch(() => null);
    assert.ok(!r || r.code !== 250 || !r.text.includes(client), `no session for the header's address: ${r?.text}`);
    c.close();
    await delay(300); // longer than the relay holds back a log line (relay/main.ts LOG_DESTINATION: 100 ms)
    assert.ok(!relay.logs.some((l) => l.clientIp === client), 'the address in the header appears nowhere');
  });

  test('implicit-TLS listener: the header is not a TLS ClientHello, so no session', async () => {
    const before = await relay.metric('smtp_relay_tls_failures_total');
    const out = await sendRaw('implicit', v2(PROXY, TCP4, tcp4('127.0.1.98', '10.0.0.1', 40041, 465)), { from: '127.0.1.1' });
    assert.ok(!out.got.includes('220'), JSON.stringify(out));
    assert.ok(out.closed, 'closed by the relay');
    await delay(300); // longer than the relay holds back a log line (relay/main.ts LOG_DESTINATION: 100 ms)
    assert.ok(!relay.logs.some((l) => l.clientIp === '127.0.1.98'));
    assert.ok((await relay.metric('smtp_relay_tls_failures_total')) > before, 'counted as a failed handshake');
  });
});

describe('malformed v2 headers from the trusted peer', () => {
  const addr = tcp4('127.0.1.50', '10.0.0.1', 40050, 587);
  const cases: [string, Buffer][] = [
    ['version nibble 1', v2(0x11, TCP4, addr)],
    ['version nibble 3', v2(0x31, TCP4, addr)],
    ['command 2 (unassigned)', v2(0x22, TCP4, addr)],
    ['address family 4 (unassigned)', v2(PROXY, 0x41, addr)],
    ['transport 3 (unassigned)', v2(PROXY, 0x13, addr)],
    ['UDP over IPv4', v2(PROXY, 0x12, addr)],
    ['a Unix socket', v2(PROXY, 0x31, Array(216).fill(0x41))],
    ['AF_UNSPEC with the PROXY command', v2(PROXY, 0x00, [])],
    ['a length shorter than the IPv4 address block', v2(PROXY, TCP4, addr.slice(0, 8))],
    ['a length past the 4 KiB bound', v2(PROXY, TCP4, addr, 0xffff)],
    ['a TLV running past the header', v2(PROXY, TCP4, [...addr, 0xea, 0x00, 0x40, 0x01, 0x02])],
    ['a truncated TLV header', v2(PROXY, TCP4, [...addr, 0x04, 0x00])],
    ['a CRC32C that does not match', (() => {
      const h = awsNlb('127.0.1.50', '10.0.0.1', 40050, 587, true);
      h[h.length - 1]! ^= 0xff; // flip a NOOP byte after the checksum was computed
      return h;
    })()],
    ['a CRC32C TLV of the wrong length', v2(PROXY, TCP4, [...addr, ...tlv(0x03, [0, 0])])],
    ['a broken signature', Buffer.concat([Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0b]), v2(PROXY, TCP4, addr).subarray(12)])],
    ['neither v1 nor v2', Buffer.from('EHLO client.test\r\n')],
  ];

  for (const listener of ['starttls', 'implicit'] as const) {
    test(`each is refused and counted on the ${listener} listener, without a reply, and the relay keeps serving`, async () => {
      const before = await rejected('proxy_header_invalid');
      for (const [name, bytes] of cases) {
        const out = await sendRaw(listener, bytes, { ms: 1500 });
        assert.equal(out.got, '', `${name}: nothing written back`);
        assert.ok(out.closed, `${name}: closed by the relay at once`);
      }
      // counted per connection, by listener; a log line per refusal with what was wrong
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline && (await rejected('proxy_header_invalid')) - before < cases.length) await delay(50);
      assert.equal((await rejected('proxy_header_invalid')) - before, cases.length);
      await relay.waitForLog((l) => l.event === 'connection_refused' && l.reason === 'proxy_header_invalid' && l.detail === 'CRC32C checksum does not match');
      await relay.waitForLog((l) => l.event === 'connection_refused' && l.reason === 'proxy_header_invalid' && /longer than 4096/.test(String(l.detail)));
      assert.equal(relay.exitCode, null, 'relay still running');
      const c = await session(listener, v2(PROXY, TCP4, tcp4('127.0.1.51', '10.0.0.1', 40051, 587)));
      assert.equal((await c.read())?.code, 220);
      c.close();
    });

    test(`a header truncated and then closed by the peer is refused on the ${listener} listener; a silent close is not counted`, async () => {
      const before = await rejected('proxy_header_invalid');
      const full = awsNlb('127.0.1.52', '10.0.0.1', 40052, 587, true);
      // cut in the signature, in the fixed part, in the address block, in a TLV; a length past the data
      for (const cut of [5, 14, 20, full.length - 2]) {
        await sendRaw(listener, full.subarray(0, cut), { close: true, ms: 1500 });
      }
      await sendRaw(listener, v2(PROXY, TCP4, tcp4('127.0.1.52', '10.0.0.1', 1, 2), 100), { close: true, ms: 1500 });
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline && (await rejected('proxy_header_invalid')) - before < 5) await delay(50);
      assert.equal((await rejected('proxy_header_invalid')) - before, 5);
      await relay.waitForLog((l) => l.reason === 'proxy_header_invalid' && /closed after 5 bytes/.test(String(l.detail)));
      // a balancer's plain TCP check: connect, send nothing, close
      const s = await connectFrom(BALANCER, portOf(listener));
      s.end();
      await delay(300);
      assert.equal((await rejected('proxy_header_invalid')) - before, 5);
      assert.equal(relay.exitCode, null);
    });
  }

  test('a header that never completes is closed after preAuthTimeout (3 s here) and counted', async () => {
    const before = await rejected('proxy_header_timeout');
    const started = Date.now();
    const [a, b] = await Promise.all([
      sendRaw('starttls', v2(PROXY, TCP4, tcp4('127.0.1.53', '10.0.0.1', 1, 2)).subarray(0, 20), { ms: 8000 }),
      sendRaw('implicit', Buffer.alloc(0), { ms: 8000 }),
    ]);
    assert.ok(a.closed && b.closed, 'both closed by the relay');
    assert.equal(a.got + b.got, '');
    const took = Date.now() - started;
    assert.ok(took >= 2500 && took < 7000, `closed after about 3 s (${took} ms)`);
    assert.equal((await rejected('proxy_header_timeout')) - before, 2);
  });
});
