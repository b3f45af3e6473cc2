/**
 * A TCP proxy on loopback between a client and a server (e.g. the operator and
 * kube-apiserver; TLS passes through untouched), for network faults the server itself
 * cannot make:
 *
 *   const proxy = await FaultProxy.start({ host: '127.0.0.1', port });
 *   proxy.port                    where clients connect
 *   proxy.freeze() -> number      every open connection stops forwarding in both directions
 *                                 and is left open: no FIN, no RST, nothing more arrives (a
 *                                 middlebox that lost the flow, a stuck peer). A server-side
 *                                 close is not passed on either. New connections work.
 *   proxy.cut() -> number         every open connection is reset now (a broken network path)
 *   proxy.open                    connections open (frozen ones included)
 *   await proxy.stop()            closes the listener and every connection
 */
import net from 'node:net';

interface Pair {
  client: net.Socket;
  server: net.Socket;
  frozen: boolean;
}

export class FaultProxy {
  private readonly pairs = new Set<Pair>();

  private constructor(private readonly listener: net.Server, readonly port: number) {}

  static async start(target: { host: string; port: number }): Promise<FaultProxy> {
    let self: FaultProxy | undefined;
    const listener = net.createServer((client) => self?.accept(client, target));
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(0, '127.0.0.1', () => resolve());
    });
    const addr = listener.address();
    if (!addr || typeof addr !== 'object') throw new Error('fault proxy: no port');
    self = new FaultProxy(listener, addr.port);
    return self;
  }

  get open(): number {
    return this.pairs.size;
  }

  private accept(client: net.Socket, target: { host: string; port: number }): void {
    const server = net.connect(target);
    const pair: Pair = { client, server, frozen: false };
    this.pairs.add(pair);
    const close = () => {
      this.pairs.delete(pair);
      client.destroy();
      server.destroy();
    };
    // the client's own close always ends the pair; the server's only while not frozen
    const serverClosed = () => {
      if (!pair.frozen) close();
    };
    client.on('error', close);
    client.on('close', close);
    server.on('error', serverClosed);
    server.on('close', serverClosed);
    client.pipe(server);
    server.pipe(client);
  }

  freeze(): number {
    let n = 0;
    for (const p of this.pairs) {
      if (p.frozen) continue;
      p.frozen = true;
      p.client.unpipe(p.server);
      p.server.unpipe(p.client);
      // read and drop whatever comes, so neither side's writes ever block or fail
      p.client.on('data', () => undefined);
      p.server.on('data', () => undefined);
      p.client.resume();
      p.server.resume();
      n++;
    }
    return n;
  }

  cut(): number {
    let n = 0;
    for (const p of [...this.pairs]) {
      this.pairs.delete(p);
      p.client.resetAndDestroy();
      p.server.destroy();
      n++;
    }
    return n;
  }

  async stop(): Promise<void> {
    for (const p of this.pairs) {
      p.client.destroy();
      p.server.destroy();
    }
    this.pairs.clear();
    await new Promise<void>((r) => this.listener.close(() => r()));
  }
}
