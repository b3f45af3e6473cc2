// An idle-connection flood, as issue 16 describes it: `perIp` TCP connections from each
// of `addresses` (loopback addresses, 127.x.y.z) that never start TLS or AUTH, each one
// reopened at once when the relay closes it, until stop() or `maxOpens` opens in all.
// Used by test/relay/flood.test.ts and by the bench's flood scenario (bench/flood.ts).

import net from 'node:net';

export interface IdleFlood {
  /** Connections opened so far. */
  readonly opens: number;
  /** Connections open (or connecting) now. */
  readonly open: number;
  stop(): void;
}

export function startIdleFlood(port: number, addresses: string[], perIp: number, maxOpens: number): IdleFlood {
  let opens = 0;
  let stopped = false;
  const sockets = new Set<net.Socket>();
  const open = (localAddress: string) => {
    if (stopped || opens >= maxOpens) return;
    opens++;
    const s = net.connect({ host: '127.0.0.1', port, localAddress });
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('data', () => undefined); // read the greeting and the 421, say nothing
    s.on('close', () => {
      sockets.delete(s);
      // reconnect at once: the attacker keeps the pressure on
      setImmediate(() => open(localAddress));
    });
  };
  for (const a of addresses) for (let i = 0; i < perIp; i++) open(a);
  return {
    get opens() {
      return opens;
    },
    get open() {
      return sockets.size;
    },
    stop() {
      stopped = true;
      for (const s of sockets) s.destroy();
    },
  };
}
