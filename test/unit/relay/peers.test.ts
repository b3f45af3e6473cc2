// The sibling channel (relay/peers.ts) on loopback with real TLS: token, key pinning,
// rotation through the previous key, discovery without self, bounded timeouts.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import prom from 'prom-client';
import { PeerChannel, PeerIdentity, readBody, type PeerCertificate } from '../../../relay/peers.js';
import type { PeersSettings } from '../../../relay/config.js';
import { createPki, type CertFiles, type Pki } from '../../harness/support/pki.js';

const TOKEN = 'peer-token-0123456789abcdef-XYZ';
const POLICY = { minVersion: 'TLSv1.2' as const, ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256' };

let pki: Pki;
let dir: string;
let certA: CertFiles;
let certB: CertFiles;
const channels: PeerChannel[] = [];

/** A log sink that keeps every line (to check the token never appears). */
function capture(): { logger: pino.Logger; text: () => string } {
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
  return { logger, text: () => lines.join('') };
}

function files(name: string, cert: CertFiles): { certFile: string; keyFile: string } {
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  fs.writeFileSync(certFile, cert.chainPem);
  fs.writeFileSync(keyFile, cert.keyPem);
  return { certFile, keyFile };
}

async function channel(
  cert: () => PeerCertificate,
  over: Partial<PeersSettings> & { token?: string } = {},
  extra: { lookup?: (n: string) => Promise<string[]>; logger?: pino.Logger; registry?: prom.Registry } = {},
): Promise<{ ch: PeerChannel; registry: prom.Registry }> {
  const tokenFile = path.join(dir, `token-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(tokenFile, `${over.token ?? TOKEN}\n`);
  const registry = extra.registry ?? new prom.Registry();
  const ch = await PeerChannel.start(
    { address: '127.0.0.1', port: 0, tokenFile, addresses: [], refreshIntervalMs: 1000, ...over },
    { certificate: cert, logger: extra.logger ?? pino({ level: 'silent' }), registry, ...(extra.lookup ? { lookup: extra.lookup } : {}) },
  );
  channels.push(ch);
  return { ch, registry };
}

async function sample(registry: prom.Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return (m?.values ?? []).filter((v) => Object.entries(labels).every(([k, l]) => (v.labels as Record<string, unknown>)[k] === l)).reduce((s, v) => s + v.value, 0);
}

before(async () => {
  pki = await createPki();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-peers-'));
  certA = await pki.issue({ name: 'a', dnsNames: ['relay.test'] });
  certB = await pki.issue({ name: 'b', dnsNames: ['relay.test'] });
});

after(async () => {
  for (const c of channels) await c.close();
  await pki.cleanup();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('peer channel', () => {
  test('only a request with the right token reaches a route; the token is never logged', async () => {
    const id = new PeerIdentity(files('tok', certA).certFile, files('tok', certA).keyFile, POLICY);
    const log = capture();
    const { ch: server } = await channel(() => id.get(), {}, { logger: log.logger });
    const seen: string[] = [];
    server.route('/v1/echo', async (req, res) => {
      const body = await readBody(req, res);
      seen.push(body.toString());
      res.writeHead(200).end(Buffer.concat([Buffer.from('echo:'), body]));
    });
    const { ch: good, registry } = await channel(() => id.get());
    const { ch: bad } = await channel(() => id.get(), { token: 'another-token-0123456789abcdef' });
    const target = `127.0.0.1:${server.port}`;

    const ok = await good.request(target, '/v1/echo', Buffer.from('hello'));
    assert.equal(ok.status, 200);
    assert.equal(ok.body.toString(), 'echo:hello');
    assert.equal((await bad.request(target, '/v1/echo', Buffer.from('sneaky'))).status, 401);
    assert.equal((await good.request(target, '/v1/none', Buffer.from(''))).status, 404, 'an authenticated request to an unknown path');
    assert.deepEqual(seen, ['hello'], 'the request with the wrong token never reached the route');

    // no header, a header of another scheme, the token with a suffix: all 401
    for (const auth of [undefined, `Basic ${TOKEN}`, `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`, 'Bearer ']) {
      const status = await rawStatus(server.port, auth);
      assert.equal(status, 401, `Authorization: ${auth}`);
    }
    assert.equal(await rawStatus(server.port, `Bearer ${TOKEN}`), 404, 'the same raw request with the token gets past the check');
    assert.equal(await sample(registry, 'smtp_relay_peer_requests_total', { path: '/v1/echo', result: 'ok' }), 1);
    assert.equal(await sample(registry, 'smtp_relay_peer_requests_total', { path: '/v1/none', result: 'status_404' }), 1);
    assert.ok(!log.text().includes(TOKEN.slice(0, 20)), 'the token is not in the logs');
  });

  test('a server whose certificate has another key is refused before the token is sent', async () => {
    const idA = new PeerIdentity(files('pa', certA).certFile, files('pa', certA).keyFile, POLICY);
    const idB = new PeerIdentity(files('pb', certB).certFile, files('pb', certB).keyFile, POLICY);
    // same CA, same names: only the key differs
    const { ch: stranger } = await channel(() => idB.get());
    let reached = 0;
    stranger.route('/v1/lockout', (_req, res) => void (reached++, res.writeHead(200).end()));
    const { ch: client, registry } = await channel(() => idA.get());
    await assert.rejects(client.request(`127.0.0.1:${stranger.port}`, '/v1/lockout', Buffer.from('x')), (err: NodeJS.ErrnoException) => {
      assert.equal(err.code, 'PEER_KEY_MISMATCH');
      assert.match(err.message, /key is not this relay's/);
      return true;
    });
    assert.equal(reached, 0);
    assert.equal(await sample(registry, 'smtp_relay_peer_requests_total', { result: 'error' }), 1);
    // a plain-text HTTP server (no TLS at all) is refused too
    const plain = net.createServer((s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
    await assert.rejects(client.request(`127.0.0.1:${(plain.address() as net.AddressInfo).port}`, '/v1/lockout', Buffer.from('x'), { timeoutMs: 3000 }));
    plain.close();
  });

  test('after a rotation the rotated replica still reaches the one with the old certificate (previous key), and both once both rotated', async () => {
    const fa = files('rot-a', certA);
    const fb = files('rot-b', certA);
    const idA = new PeerIdentity(fa.certFile, fa.keyFile, POLICY);
    const idB = new PeerIdentity(fb.certFile, fb.keyFile, POLICY);
    const { ch: a } = await channel(() => idA.get());
    const { ch: b } = await channel(() => idB.get());
    for (const ch of [a, b]) ch.route('/v1/ping', (_req, res) => void res.writeHead(204).end());
    // a new client each time: no pooled connection from before the rotation
    const ping = async (from: PeerIdentity, to: PeerChannel) => (await channel(() => from.get())).ch.request(`127.0.0.1:${to.port}`, '/v1/ping', Buffer.alloc(0), { timeoutMs: 3000 });
    assert.equal((await ping(idA, b)).status, 204);

    // B sees the new Secret first
    fs.writeFileSync(fb.certFile, certB.chainPem);
    fs.writeFileSync(fb.keyFile, certB.keyPem);
    assert.equal(idB.reload(), true);
    assert.equal(idB.get().publicKeys.length, 2);
    assert.equal((await ping(idB, a)).status, 204, 'B accepts A through the previous key');
    // A has not rotated yet: B's new key is unknown to it until it does
    await assert.rejects(ping(idA, b), /key is not this relay's/);

    fs.writeFileSync(fa.certFile, certB.chainPem);
    fs.writeFileSync(fa.keyFile, certB.keyPem);
    assert.equal(idA.reload(), true);
    assert.equal((await ping(idA, b)).status, 204);
    assert.equal((await ping(idB, a)).status, 204, 'A now serves the new certificate');
    // a third replica still on the old pair: its key is A's previous one, so A still reaches it
    const idOld = new PeerIdentity(files('rot-old', certA).certFile, files('rot-old', certA).keyFile, POLICY);
    const { ch: old } = await channel(() => idOld.get());
    assert.equal((await ping(idA, old)).status, 404, 'previous key: accepted (no /v1/ping route there)');
    fs.writeFileSync(fa.certFile, certB.chainPem);
    assert.equal(idA.reload(), true, 'the same pair again');
    assert.equal(idA.get().publicKeys.length, 2, 'a renewal with the same key keeps the previous key');

    // a broken pair is refused: the current one stays
    fs.writeFileSync(fa.keyFile, certA.keyPem);
    assert.equal(idA.reload(), false);
    assert.equal((await ping(idB, a)).status, 204);
  });

  test('discovery: the static list and the service, without this relay\'s own address', async () => {
    const f = files('disc', certA);
    const id = new PeerIdentity(f.certFile, f.keyFile, POLICY);
    // "localhost" through the system resolver: 127.0.0.1 and/or ::1, both this host's
    const { ch: self, registry } = await channel(() => id.get(), { service: 'localhost' });
    assert.deepEqual(self.peers(), [], 'localhost at our own port is this relay');
    assert.equal(await sample(registry, 'smtp_relay_peers'), 0);

    const names: string[][] = [['10.1.2.3', 'fd00::7', '127.0.0.1']];
    const { ch, registry: r2 } = await channel(
      () => id.get(),
      { service: 'relay-peers.test', addresses: ['127.0.0.1:1', '127.0.0.1:0', '[::1]:2'], refreshIntervalMs: 1000 },
      { lookup: async () => names[0]! },
    );
    const own = ch.port;
    // the static entry for our own address and port is left out: add it by a reload
    ch.update({ address: '127.0.0.1', port: own, tokenFile: 'ignored', service: 'relay-peers.test', addresses: ['127.0.0.1:1', `127.0.0.1:${own}`, '[::1]:2'], refreshIntervalMs: 1000 });
    await ch.refresh();
    assert.deepEqual(ch.peers(), [`10.1.2.3:${own}`, '127.0.0.1:1', '[::1]:2', `[fd00::7]:${own}`].sort());
    assert.equal(await sample(r2, 'smtp_relay_peers'), 4);
    // the service's records change: the next refresh (every second) sees it
    names[0] = ['10.1.2.4'];
    const deadline = Date.now() + 5000;
    while (!ch.peers().includes(`10.1.2.4:${own}`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(ch.peers(), [`10.1.2.4:${own}`, '127.0.0.1:1', '[::1]:2'].sort());
  });

  test('requests give up at their timeout: a sibling that accepts but never answers', async () => {
    const f = files('slow', certA);
    const id = new PeerIdentity(f.certFile, f.keyFile, POLICY);
    const { ch: server } = await channel(() => id.get());
    server.route('/v1/hang', () => undefined); // never answers
    const { ch: client, registry } = await channel(() => id.get());
    let t = Date.now();
    await assert.rejects(client.request(`127.0.0.1:${server.port}`, '/v1/hang', Buffer.from('x'), { timeoutMs: 300 }), /within 300 ms/);
    let took = Date.now() - t;
    assert.ok(took >= 290 && took < 3000, `gave up after ${took} ms`);
    // a TCP listener that never speaks TLS
    const mute = net.createServer(() => undefined);
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', r));
    t = Date.now();
    await assert.rejects(client.request(`127.0.0.1:${(mute.address() as net.AddressInfo).port}`, '/v1/x', Buffer.from('x'), { timeoutMs: 300 }), /within 300 ms/);
    took = Date.now() - t;
    assert.ok(took >= 290 && took < 3000, `gave up after ${took} ms`);
    mute.close();
    assert.equal(await sample(registry, 'smtp_relay_peer_requests_total', { result: 'timeout' }), 2);
  });
});

/** One HTTPS request with a raw Authorization header (or none): the status. */
function rawStatus(port: number, auth: string | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    import('node:https').then(({ default: https }) => {
      const req = https.request(
        { host: '127.0.0.1', port, method: 'POST', path: '/v1/none', rejectUnauthorized: false, agent: false, headers: auth === undefined ? {} : { Authorization: auth } },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end('x');
    }, reject);
  });
}
