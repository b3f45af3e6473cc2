// Both sides of the hand-off (relay/handoff.ts) over plain loopback HTTP standing in
// for the peer channel (relay/peers.ts adds TLS pinning and the token; the relay-level
// test/relay/handoff.test.ts runs the real one): three receivers with real spools, one
// draining (503), one full (507), one taking it; the sender goes round them.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createHandoffMetrics, HandoffSender, serveHandoff, type PeerLink } from '../../../relay/handoff.js';
import type { EntryState, StoredEnvelope } from '../../../relay/spool/types.js';
import { FakeClock, MESSAGE, counter, tempSpool, type TestSpool } from './spool/fake.js';

const servers: http.Server[] = [];
const spools: TestSpool[] = [];
after(async () => {
  for (const s of servers) s.close();
  for (const t of spools) await t.cleanup();
});

/** A receiver: its spool behind POST /v1/handoff on a loopback HTTP server; "host:port". */
async function receiver(o: { accepting: boolean; maxMessages?: number }) {
  const t = await tempSpool(new FakeClock(), { maxBytes: 1 << 30, maxMessages: o.maxMessages ?? 1000, minFreeBytes: 0 });
  spools.push(t);
  const routes = new Map<string, (req: http.IncomingMessage, res: http.ServerResponse) => void | Promise<void>>();
  const registry = new Registry();
  const state = { accepting: o.accepting };
  serveHandoff({ route: (p, h) => routes.set(p, h) }, { spool: t.spool, accepting: () => state.accepting, maxMessageBytes: 1 << 20, logger: pino({ level: 'silent' }), counter: createHandoffMetrics(registry) });
  const server = http.createServer((req, res) => {
    const h = routes.get((req.url ?? '').split('?')[0]!);
    if (h) void h(req, res);
    else res.writeHead(404).end();
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { spool: t.spool, registry, state, addr: `127.0.0.1:${(server.address() as AddressInfo).port}` };
}

const link = (siblings: string[]): Pick<PeerLink, 'peers' | 'request'> => ({
  peers: () => siblings,
  request: async (peer, path, body) => {
    const res = await fetch(`http://${peer}${path}`, { method: 'POST', body });
    return { status: res.status, body: Buffer.from(await res.arrayBuffer()) };
  },
});

const env = (n: number): StoredEnvelope => ({ id: `00000000${n}0123456789`.slice(-19), created: Date.UTC(2026, 0, 1) + n, mailFrom: 'app@example.com', rcptTo: ['done@example.net', 'x@example.net'], rcptDsn: [{}, { notify: ['FAILURE'] }] });
const state = (e: StoredEnvelope): EntryState => ({
  held: false,
  warned: false,
  recipients: [
    { address: e.rcptTo[0]!, status: 'delivered', attempts: 1, nextAttempt: 0 },
    { address: e.rcptTo[1]!, status: 'failed-temporary', attempts: 2, nextAttempt: e.created + 60_000, lastError: '451 4.4.1 down' },
  ],
});

test('a draining sibling (503) and a full one (507) are passed over; the third stores the pending part durably', async () => {
  const draining = await receiver({ accepting: false });
  const full = await receiver({ accepting: true, maxMessages: 1 });
  await full.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, MESSAGE); // now full
  const ok = await receiver({ accepting: true });
  const registry = new Registry();
  const sent = createHandoffMetrics(registry);
  const sender = new HandoffSender({ channel: link([]), logger: pino({ level: 'silent' }), counter: sent });
  sender.setTargets([draining.addr, full.addr, ok.addr]);
  for (let n = 1; n <= 4; n++) {
    const e = env(n);
    assert.equal(await sender.send(e, state(e), MESSAGE), true, `message ${n}`);
  }
  assert.equal(sender.sent, 4);
  assert.equal(ok.spool.size.messages, 4);
  const got = ok.spool.get(env(1).id)!;
  assert.deepEqual(got.envelope.rcptTo, ['x@example.net'], 'only the recipient still to be delivered');
  assert.deepEqual(got.envelope.rcptDsn, [{ notify: ['FAILURE'] }]);
  assert.equal(got.envelope.created, env(1).created);
  assert.deepEqual(got.state.recipients.map((r) => [r.status, r.attempts, r.lastError]), [['failed-temporary', 2, '451 4.4.1 down']]);
  assert.ok((await ok.spool.body(env(1).id)).equals(MESSAGE));
  assert.equal(draining.spool.size.messages, 0);
  assert.equal(full.spool.size.messages, 1);
  assert.equal(await counter(registry, 'smtp_relay_queue_handoff_total', { direction: 'sent', result: 'ok' }), 4);
  assert.ok((await counter(registry, 'smtp_relay_queue_handoff_total', { direction: 'sent', result: 'refused' })) >= 1);
  assert.ok((await counter(registry, 'smtp_relay_queue_handoff_total', { direction: 'sent', result: 'full' })) >= 1);
  assert.ok((await counter(draining.registry, 'smtp_relay_queue_handoff_total', { direction: 'received', result: 'refused' })) >= 1);
  assert.ok((await counter(full.registry, 'smtp_relay_queue_handoff_total', { direction: 'received', result: 'full' })) >= 1);
  // the same message again (the sender lost the 200): one copy, answered 200
  const e = env(1);
  assert.equal(await sender.send(e, state(e), MESSAGE), true);
  assert.equal(ok.spool.size.messages, 4);
  assert.equal(await counter(ok.registry, 'smtp_relay_queue_handoff_total', { direction: 'received', result: 'duplicate' }), 1);
});

test('nobody takes it: false, nothing stored; round robin spreads messages over the siblings that take them', async () => {
  const a = await receiver({ accepting: false });
  const sender = new HandoffSender({ channel: link([a.addr, '127.0.0.1:1']), logger: pino({ level: 'silent' }), counter: createHandoffMetrics(new Registry()) });
  const e = env(9);
  assert.equal(await sender.send(e, state(e), MESSAGE), false, 'a draining sibling and a closed port');
  assert.equal(sender.sent, 0);
  const b = await receiver({ accepting: true });
  const c = await receiver({ accepting: true });
  const rr = new HandoffSender({ channel: link([b.addr, c.addr]), logger: pino({ level: 'silent' }), counter: createHandoffMetrics(new Registry()) });
  for (let n = 10; n < 20; n++) {
    const x = env(n);
    assert.equal(await rr.send(x, state(x), MESSAGE), true);
  }
  assert.deepEqual([b.spool.size.messages, c.spool.size.messages], [5, 5]);
});

test('a receiver refuses a request that is not a hand-off (400) and one larger than it takes (507)', async () => {
  const r = await receiver({ accepting: true });
  const bad = await fetch(`http://${r.addr}/v1/handoff`, { method: 'POST', body: 'garbage' });
  assert.equal(bad.status, 400);
  assert.match(await bad.text(), /no header line/);
  const big = await fetch(`http://${r.addr}/v1/handoff`, { method: 'POST', body: Buffer.alloc(6 * 1024 * 1024, 0x41) }).then(
    (res) => res.status,
    (err: Error) => `reset: ${err.message}`,
  );
  // the receiver answers 507 and closes without reading the rest (a client still sending may see the reset first)
  assert.ok(big === 507 || String(big).startsWith('reset'), String(big));
  assert.equal(r.spool.size.messages, 0);
});
