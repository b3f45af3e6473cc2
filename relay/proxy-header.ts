// The PROXY protocol header of a trusted peer (a load balancer), read before smtp-server
// sees the socket. Both versions are framed and checked here and parsed with
// proxy-protocol-js: a version 1 line (text, "PROXY TCP4 ...\r\n") is checked strictly
// (parseV1) and handed on as its canonical line; version 2 (binary: HAProxy's
// send-proxy-v2, AWS NLB, GCP) as the equivalent v1 line. smtp-server then reads that
// line (its own v1 reader is lax: any token that is an IP address, no family or port
// check, and a refusal nobody counts), so everything after the header (the connect
// phase's allow-list, limits and lockout on the client address, the implicit-TLS
// handshake) runs as before, and every malformed header of either version is refused
// and counted the same way. The two signatures cannot be confused: v1 starts with "PROXY ", v2 with
// "\r\n\r\n\0\r\nQUIT\n"; anything else from a trusted peer is refused.
// Spec: haproxy's doc/proxy-protocol.txt (sections 2.1, 2.2).

import type net from 'node:net';
import ipaddr from 'ipaddr.js';
import { isIPv4, isIPv6 } from 'node:net';
import { AddressFamilyType, Command, INETProtocol, IPv4ProxyAddress, IPv6ProxyAddress, TransportProtocol, V1ProxyProtocol, V2ProxyProtocol } from 'proxy-protocol-js';

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** The longest v1 line, CRLF included (spec 2.1: "PROXY TCP6" with two full IPv6 addresses and ports). */
export const MAX_V1_LENGTH = 107;
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Signature, version/command, family/transport, length. */
const V2_FIXED = 16;
/**
 * The most address and TLV bytes accepted after the fixed 16 (the length field allows
 * 65535). An IPv6 address block is 36 bytes; what HAProxy, AWS NLB (VPC endpoint id),
 * GCP (PSC connection id) and Azure (Private Link id) add as TLVs is well under 1 KiB.
 * A header past this is refused before it is buffered.
 */
export const MAX_V2_LENGTH = 4096;

const PP2_TYPE_CRC32C = 0x03;

/** What the relay hands smtp-server in place of a v1 line. */
export interface V1Header {
  /** The canonical line, CRLF included: "PROXY TCP4|TCP6 src dst sport dport" or "PROXY UNKNOWN". */
  line: string;
  /** The client address (TCP4, TCP6). */
  client?: string;
}

/** What the relay hands smtp-server in place of a v2 header. */
export interface V2Header {
  /** The equivalent v1 line, CRLF included: "PROXY TCP4|TCP6 src dst sport dport" or "PROXY UNKNOWN" (LOCAL). */
  line: string;
  command: 'PROXY' | 'LOCAL';
  /** The client address (PROXY command only). */
  client?: string;
  /** Types of the TLVs carried (ignored, listed for the log). */
  tlvs: number[];
}

export class ProxyHeaderError extends Error {}

/** CRC32C (Castagnoli, RFC 4960 appendix B), reflected, table-driven. */
const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

export function crc32c(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) crc = CRC32C_TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const PORT = /^(0|[1-9][0-9]{0,4})$/;

/**
 * Parses one complete v1 line (CRLF included, at most MAX_V1_LENGTH bytes) strictly, as
 * spec 2.1 has it: "PROXY", one space, TCP4 or TCP6, the source and destination address
 * of that family, the source and destination port (decimal, 0-65535, no leading zero),
 * single spaces, CRLF. "PROXY UNKNOWN" may be followed by anything, which is ignored (the
 * balancer's own address counts, as for v2 LOCAL). Throws ProxyHeaderError naming what is
 * wrong.
 */
export function parseV1(line: Buffer): V1Header {
  if (line.length > MAX_V1_LENGTH) throw new ProxyHeaderError(`v1 line longer than ${MAX_V1_LENGTH} bytes`);
  const text = line.toString('latin1');
  if (!text.endsWith('\r\n') || text.indexOf('\n') !== text.length - 1) throw new ProxyHeaderError('v1 line does not end with CRLF');
  if (/^PROXY UNKNOWN(?: [^\r\n]*)?\r\n$/.test(text)) return { line: 'PROXY UNKNOWN\r\n' };
  let parsed: V1ProxyProtocol;
  try {
    parsed = V1ProxyProtocol.parse(text);
  } catch {
    throw new ProxyHeaderError('malformed v1 line (want "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>")');
  }
  const family = parsed.inetProtocol;
  const isFamily = family === INETProtocol.TCP4 ? isIPv4 : family === INETProtocol.TCP6 ? isIPv6 : undefined;
  if (!isFamily) throw new ProxyHeaderError('malformed v1 line (UNKNOWN with addresses)');
  const src = parsed.source.ipAddress;
  const dst = parsed.destination.ipAddress;
  if (!isFamily(src) || !isFamily(dst)) throw new ProxyHeaderError(`v1 address not of family ${family}`);
  // The parser's port pattern is [0-9]+: the range and leading zeros are checked on the text.
  const ports = text.slice(0, -2).split(' ').slice(4);
  if (ports.length !== 2 || !ports.every((p) => PORT.test(p) && Number(p) <= 65535)) throw new ProxyHeaderError('v1 port out of range');
  return { line: `PROXY ${family} ${src} ${dst} ${ports[0]} ${ports[1]}\r\n`, client: src };
}

function address(bytes: number[]): string {
  return ipaddr.fromByteArray(bytes).toString();
}

/**
 * Parses one complete v2 header (exactly 16 + its length field bytes). Throws
 * ProxyHeaderError naming what is wrong. Refused: a version other than 2, commands other
 * than LOCAL and PROXY, and with PROXY anything but TCP over IPv4 or IPv6 (UDP, Unix
 * sockets, AF_UNSPEC: no client address the relay could apply its policy to), a TLV
 * running past the header, a CRC32C TLV that does not match.
 */
export function parseV2(header: Buffer): V2Header {
  if (header.length < V2_FIXED || !header.subarray(0, 12).equals(V2_SIGNATURE)) throw new ProxyHeaderError('not a PROXY v2 header');
  const length = header.readUInt16BE(14);
  if (header.length !== V2_FIXED + length) throw new ProxyHeaderError('header length does not match its length field');
  let parsed: V2ProxyProtocol;
  try {
    parsed = V2ProxyProtocol.parse(header);
  } catch (err) {
    throw new ProxyHeaderError(String((err as { message?: string }).message ?? err));
  }
  if (parsed.command === Command.LOCAL) {
    // a connection of the balancer itself (health checks): its own address counts, the rest is ignored (spec 2.2)
    return { line: 'PROXY UNKNOWN\r\n', command: 'LOCAL', tlvs: [] };
  }
  const a = parsed.proxyAddress;
  let family: 'TCP4' | 'TCP6';
  let addrLength: number;
  if (parsed.addressFamilyType === AddressFamilyType.INET && a instanceof IPv4ProxyAddress) [family, addrLength] = ['TCP4', 12];
  else if (parsed.addressFamilyType === AddressFamilyType.INET6 && a instanceof IPv6ProxyAddress) [family, addrLength] = ['TCP6', 36];
  else throw new ProxyHeaderError('unsupported address family (only IPv4 and IPv6)');
  if (parsed.transportProtocol !== TransportProtocol.STREAM) throw new ProxyHeaderError('unsupported transport (only TCP)');
  const tlvs = checkTlvs(header, V2_FIXED + addrLength);
  const src = address(a.sourceAddress.address);
  const dst = address(a.destinationAddress.address);
  return { line: `PROXY ${family} ${src} ${dst} ${a.sourcePort} ${a.destinationPort}\r\n`, command: 'PROXY', client: src, tlvs };
}

/** Walks the TLVs from `offset` to the end of the header; checks a CRC32C TLV (spec 2.2.3). */
function checkTlvs(header: Buffer, offset: number): number[] {
  const types: number[] = [];
  let crcAt = -1;
  while (offset < header.length) {
    if (offset + 3 > header.length) throw new ProxyHeaderError('truncated TLV');
    const type = header[offset]!;
    const len = header.readUInt16BE(offset + 1);
    if (offset + 3 + len > header.length) throw new ProxyHeaderError('TLV runs past the end of the header');
    if (type === PP2_TYPE_CRC32C) {
      if (len !== 4 || crcAt >= 0) throw new ProxyHeaderError('malformed CRC32C TLV');
      crcAt = offset + 3;
    }
    types.push(type);
    offset += 3 + len;
  }
  if (crcAt >= 0) {
    const copy = Buffer.from(header);
    copy.fill(0, crcAt, crcAt + 4);
    if (crc32c(copy) !== header.readUInt32BE(crcAt)) throw new ProxyHeaderError('CRC32C checksum does not match');
  }
  return types;
}

/** What a trusted peer sent first. */
export type HeaderOutcome =
  | { result: 'v1'; header: V1Header }
  | { result: 'v2'; header: V2Header }
  /** Malformed, unsupported or too long: refuse. */
  | { result: 'invalid'; detail: string }
  | { result: 'timeout' }
  /** Closed (or reset) before a complete header; `bytes` received. */
  | { result: 'closed'; bytes: number };

function startsLike(buf: Buffer, prefix: Buffer): boolean {
  const n = Math.min(buf.length, prefix.length);
  return buf.subarray(0, n).equals(prefix.subarray(0, n));
}

/** Decides on what has arrived so far; undefined: more bytes needed. */
function decide(buf: Buffer): { outcome: HeaderOutcome; consumed: number; replacement?: string } | undefined {
  if (buf.length === 0) return undefined;
  const v1 = startsLike(buf, V1_PREFIX);
  const v2 = startsLike(buf, V2_SIGNATURE);
  if (!v1 && !v2) return { outcome: { result: 'invalid', detail: 'not a PROXY protocol header' }, consumed: 0 };
  if (v1) {
    const lf = buf.indexOf(0x0a);
    if (lf < 0) return buf.length >= MAX_V1_LENGTH ? { outcome: { result: 'invalid', detail: `v1 line longer than ${MAX_V1_LENGTH} bytes` }, consumed: 0 } : undefined;
    try {
      const header = parseV1(buf.subarray(0, lf + 1));
      return { outcome: { result: 'v1', header }, consumed: lf + 1, replacement: header.line };
    } catch (err) {
      return { outcome: { result: 'invalid', detail: (err as Error).message }, consumed: 0 };
    }
  }
  if (buf.length < V2_FIXED) return undefined;
  const length = buf.readUInt16BE(14);
  if (length > MAX_V2_LENGTH) return { outcome: { result: 'invalid', detail: `header longer than ${MAX_V2_LENGTH} bytes` }, consumed: 0 };
  if (buf.length < V2_FIXED + length) return undefined;
  try {
    const header = parseV2(buf.subarray(0, V2_FIXED + length));
    return { outcome: { result: 'v2', header }, consumed: V2_FIXED + length, replacement: header.line };
  } catch (err) {
    return { outcome: { result: 'invalid', detail: (err as Error).message }, consumed: 0 };
  }
}

/**
 * Reads the start of `socket` until its PROXY header is known, then calls `done` once.
 * A v1 line is replaced by its canonical form (V1Header.line), a v2 header by its v1 line
 * (V2Header.line), and the bytes after it are put back. Before `done` the socket is left
 * paused, with no listener of this reader on it but a no-op 'error' one: the caller hands
 * it on (a later tick, see relay/server.ts) or destroys it. At most 16 + MAX_V2_LENGTH
 * bytes plus one read are held (a v1 line is refused past MAX_V1_LENGTH).
 */
export function readProxyHeader(socket: net.Socket, timeoutMs: number, done: (outcome: HeaderOutcome) => void): void {
  let buf: Buffer = Buffer.alloc(0);
  let finished = false;
  const finish = (outcome: HeaderOutcome, putBack?: Buffer) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.removeListener('readable', onReadable);
    socket.removeListener('end', onEnd);
    socket.removeListener('close', onEnd);
    socket.removeListener('error', onEnd);
    if (putBack?.length) socket.unshift(putBack);
    done(outcome);
  };
  const onReadable = () => {
    let chunk: Buffer | null;
    while (!finished && (chunk = socket.read() as Buffer | null) !== null) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const d = decide(buf);
      if (!d) continue;
      if (d.outcome.result === 'invalid') return finish(d.outcome);
      const rest = buf.subarray(d.consumed);
      finish(d.outcome, d.replacement === undefined ? rest : Buffer.concat([Buffer.from(d.replacement, 'latin1'), rest]));
    }
  };
  const onEnd = () => finish({ result: 'closed', bytes: buf.length });
  const timer = setTimeout(() => finish({ result: 'timeout' }), timeoutMs);
  socket.on('error', () => undefined);
  socket.on('readable', onReadable);
  socket.once('end', onEnd);
  socket.once('close', onEnd);
  socket.once('error', onEnd);
}
