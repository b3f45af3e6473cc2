// CIDR matching for the allow-list and the PROXY protocol trust list (IPv4 and IPv6;
// an IPv4-mapped IPv6 peer such as ::ffff:10.1.2.3 matches its IPv4 ranges).

import ipaddr from 'ipaddr.js';

type Range = [ipaddr.IPv4 | ipaddr.IPv6, number];

export class CidrSet {
  private readonly ranges: Range[];

  constructor(cidrs: string[]) {
    this.ranges = cidrs.map((c) => {
      if (c.includes('/')) return ipaddr.parseCIDR(c);
      const a = ipaddr.parse(c);
      return [a, a.kind() === 'ipv4' ? 32 : 128];
    });
  }

  get size(): number {
    return this.ranges.length;
  }

  has(address: string | undefined): boolean {
    if (!address || !ipaddr.isValid(address)) return false;
    let a = ipaddr.parse(address);
    if (a.kind() === 'ipv6' && (a as ipaddr.IPv6).isIPv4MappedAddress()) a = (a as ipaddr.IPv6).toIPv4Address();
    return this.ranges.some(([net, bits]) => net.kind() === a.kind() && a.match(net, bits));
  }
}

/** The canonical form of an address for per-IP keys (IPv4-mapped IPv6 becomes IPv4). */
export function canonicalIp(address: string): string {
  try {
    return ipaddr.process(address).toString();
  } catch {
    return address;
  }
}
