// relay/proxy-header.ts: a PROXY v2 header becomes the equivalent v1 line, or is refused
// with a reason; the reader puts back what followed the header. Headers written out in
// hex from haproxy's doc/proxy-protocol.txt (2.2); the socket side against the real relay
// is test/relay/proxy-v2.test.ts.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { MAX_V1_LENGTH, MAX_V2_LENGTH, ProxyHeaderError, crc32c, parseV1, parseV2, readProxyHeader, type HeaderOutcome } from '../../../relay/proxy-header.js';

const SIG = '0d0a0d0a000d0a515549540a';
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
/** TCP4 203.0.113.5:40000 -> 10.0.0.1:587 */
const TCP4_ADDR = 'cb007105 0a000001 9c40 024b';

describe('parseV1', () => {
  it('TCP4, TCP6 and UNKNOWN lines as spec 2.1 writes them', () => {
    assert.deepEqual(parseV1(Buffer.from('PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n')), { line: 'PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n', client: '192.168.0.1' });
    assert.equal(parseV1(Buffer.from('PROXY TCP6 2001:db8::25 2001:db8:ff::1 0 65535\r\n')).client, '2001:db8::25');
    // UNKNOWN: the rest of the line is ignored, so no address from it reaches smtp-server
    assert.deepEqual(parseV1(Buffer.from('PROXY UNKNOWN 203.0.113.9 10.0.0.1 1 2\r\n')), { line: 'PROXY UNKNOWN\r\n' });
    const tcp6 = `PROXY TCP6 ${'ffff:'.repeat(7)}ffff ${'ffff:'.repeat(7)}ffff 65535 65535\r\n`;
    assert.equal(parseV1(Buffer.from(tcp6)).line, tcp6);
    // the spec's worst case, 107 bytes
    const longest = `PROXY UNKNOWN ${'ffff:'.repeat(7)}ffff ${'ffff:'.repeat(7)}ffff 65535 65535\r\n`;
    assert.equal(longest.length, MAX_V1_LENGTH);
    assert.equal(parseV1(Buffer.from(longest)).line, 'PROXY UNKNOWN\r\n');
  });

  it('refuses a line that is not exactly the spec\'s, saying what is wrong', () => {
    const refused: [string, RegExp][] = [
      ['PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n', /CRLF/],
      ['PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n', /malformed/],
      ['PROXY TCP4 host.example 5.6.7.8 1 2\r\n', /family TCP4/],
      ['PROXY TCP6 1.2.3.4 ::1 1 2\r\n', /family TCP6/],
      ['PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n', /port/],
      ['PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n', /port/],
      ['PROXY UNKNOWN\r\r\n', /malformed|CRLF/],
      [`PROXY TCP4 1.2.3.4 5.6.7.8 1 2${' '.repeat(MAX_V1_LENGTH)}\r\n`, /longer than 107/],
    ];
    for (const [line, why] of refused) assert.throws(() => parseV1(Buffer.from(line, 'latin1')), (e: unknown) => e instanceof ProxyHeaderError && why.test(e.message), JSON.stringify(line));
  });

  it('the reader refuses a v1 line without CRLF once 107 bytes have come', async () => {
    assert.equal((await read([Buffer.from('PROXY TCP4 ' + '1'.repeat(90))], { timeoutMs: 300 })).outcome.result, 'timeout');
    const { outcome } = await read([Buffer.from('PROXY TCP4 ' + '1'.repeat(96))]);
    assert.deepEqual(outcome, { result: 'invalid', detail: 'v1 line longer than 107 bytes' });
  });
});

describe('parseV2', () => {
  it('a TCP4 header as HAProxy sends it becomes a PROXY TCP4 line', () => {
    const h = parseV2(hex(`${SIG} 21 11 000c ${TCP4_ADDR}`));
    assert.deepEqual(h, { line: 'PROXY TCP4 203.0.113.5 10.0.0.1 40000 587\r\n', command: 'PROXY', client: '203.0.113.5', tlvs: [] });
  });

  it('a TCP6 header becomes a PROXY TCP6 line with compressed addresses', () => {
    const h = parseV2(hex(`${SIG} 21 21 0024 20010db8000000000000000000000025 20010db800ff00000000000000000001 9c41 01d1`));
    assert.equal(h.line, 'PROXY TCP6 2001:db8::25 2001:db8:ff::1 40001 465\r\n');
  });

  it('LOCAL becomes PROXY UNKNOWN whatever address block it carries', () => {
    assert.equal(parseV2(hex(`${SIG} 20 00 0000`)).line, 'PROXY UNKNOWN\r\n');
    assert.equal(parseV2(hex(`${SIG} 20 11 000c ${TCP4_ADDR}`)).command, 'LOCAL');
  });

  it('TLVs are listed and skipped; a matching CRC32C passes, a wrong one is refused', () => {
    const vpce = Buffer.from('\x01vpce-08d2bf15fac5001c9', 'latin1');
    const body = Buffer.concat([hex(TCP4_ADDR), hex(`ea ${vpce.length.toString(16).padStart(4, '0')}`), vpce, hex('03 0004 00000000')]);
    const header = Buffer.concat([hex(`${SIG} 21 11`), Buffer.from([0, body.length]), body]);
    header.writeUInt32BE(crc32c(header), header.length - 4);
    assert.deepEqual(parseV2(header).tlvs, [0xea, 0x03]);
    header[header.length - 1]! ^= 1;
    assert.throws(() => parseV2(header), /CRC32C checksum does not match/);
  });

  it('CRC32C has the standard check value', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  });

  for (const [name, h, message] of [
    ['version 1', `${SIG} 11 11 000c ${TCP4_ADDR}`, /version/],
    ['an unassigned command', `${SIG} 22 11 000c ${TCP4_ADDR}`, /command/],
    ['an unassigned family', `${SIG} 21 41 000c ${TCP4_ADDR}`, /family/],
    ['UDP', `${SIG} 21 12 000c ${TCP4_ADDR}`, /transport/],
    ['AF_UNSPEC with PROXY', `${SIG} 21 00 0000`, /family/],
    ['a length short of the addresses', `${SIG} 21 11 0008 cb007105 0a000001`, /shorter/],
    ['a length that does not match the bytes given', `${SIG} 21 11 000d ${TCP4_ADDR}`, /length/],
    ['a TLV past the end', `${SIG} 21 11 0010 ${TCP4_ADDR} 04 0005 00`, /past the end/],
    ['a truncated TLV', `${SIG} 21 11 000e ${TCP4_ADDR} 04 00`, /truncated TLV/],
  ] as const) {
    it(`refuses ${name}`, () => {
      assert.throws(() => parseV2(hex(h)), (err: Error) => err instanceof ProxyHeaderError && message.test(err.message));
    });
  }
});

/** Runs readProxyHeader on a real loopback socket fed `writes`; resolves with its outcome and what the socket then yields. */
async function read(writes: Buffer[], opts: { end?: boolean; timeoutMs?: number } = {}): Promise<{ outcome: HeaderOutcome; after: string }> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const socket = await accepted;
  const outcome = new Promise<HeaderOutcome>((r) => readProxyHeader(socket, opts.timeoutMs ?? 2000, r));
  for (const w of writes) {
    client.write(w);
    await new Promise((r) => setTimeout(r, 2));
  }
  if (opts.end) client.end();
  const o = await outcome;
  let after = '';
  if (o.result === 'v1' || o.result === 'v2') {
    await new Promise((r) => setImmediate(r));
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (after += d));
    await new Promise((r) => setTimeout(r, 20));
  }
  client.destroy();
  socket.destroy();
  server.close();
  return { outcome: o, after };
}

describe('readProxyHeader', () => {
  it('v2 split byte by byte: the v1 line and the bytes after the header are put back', async () => {
    const bytes = [...hex(`${SIG} 21 11 000c ${TCP4_ADDR}`), ...Buffer.from('EHLO x\r\n')];
    const { outcome, after } = await read(bytes.map((b) => Buffer.from([b])));
    assert.equal(outcome.result, 'v2');
    assert.equal(after, 'PROXY TCP4 203.0.113.5 10.0.0.1 40000 587\r\nEHLO x\r\n');
  });

  it('a well-formed v1 line is put back as it came for smtp-server', async () => {
    const { outcome, after } = await read([Buffer.from('PRO'), Buffer.from('XY TCP4 1.2.3.4 5.6.7.8 1 2\r\nEHLO')]);
    assert.equal(outcome.result, 'v1');
    assert.equal(after, 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nEHLO');
  });

  it('a length field over the bound is refused before the rest arrives', async () => {
    const { outcome } = await read([hex(`${SIG} 21 11 ${(MAX_V2_LENGTH + 1).toString(16).padStart(4, '0')}`)]);
    assert.equal(outcome.result, 'invalid');
  });

  it('neither signature: refused at the first byte that differs', async () => {
    assert.equal((await read([Buffer.from('PROXZ')])).outcome.result, 'invalid');
    assert.equal((await read([hex('0d0a0d0a01')])).outcome.result, 'invalid');
  });

  it('a header cut short by the peer, and one that never completes', async () => {
    assert.deepEqual((await read([hex(`${SIG} 21 11`)], { end: true })).outcome, { result: 'closed', bytes: 14 });
    assert.deepEqual((await read([hex(`${SIG} 21`)], { timeoutMs: 100 })).outcome, { result: 'timeout' });
  });
});
