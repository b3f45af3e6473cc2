// LeaderElector against a loopback HTTP server that plays the Lease endpoint.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Kube } from '../../../../operator/runtime/kube.js';
import { LeaderElector } from '../../../../operator/runtime/leader.js';

/** One Lease in memory; `hang` makes every request wait forever (a dead connection). */
async function leaseServer() {
  let lease: any;
  let rv = 0;
  const state = { hang: false, requests: 0 };
  const hung: ServerResponse[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    state.requests++;
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      if (state.hang) {
        hung.push(res);
        return;
      }
      const send = (code: number, obj: unknown) => {
        res.writeHead(code, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      if (req.method === 'GET') return lease ? send(200, lease) : send(404, { kind: 'Status', code: 404, reason: 'NotFound', message: 'not found' });
      const obj = JSON.parse(body);
      if (req.method === 'PUT' && obj.metadata.resourceVersion !== lease?.metadata.resourceVersion) return send(409, { kind: 'Status', code: 409, reason: 'Conflict', message: 'conflict' });
      lease = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++rv) } };
      send(req.method === 'POST' ? 201 : 200, lease);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const kube = new Kube({ server: `http://127.0.0.1:${port}`, prepare: async () => ({ headers: {} }) });
  const close = async () => {
    for (const res of hung) res.destroy();
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return { kube, state, close };
}

test('a leader whose renewal hangs gives up leadership at the renew deadline, not when the request ends', async () => {
  const srv = await leaseServer();
  let started = 0;
  let stoppedAt = 0;
  const elector = new LeaderElector({
    kube: srv.kube,
    namespace: 'default',
    name: 'hang-test',
    identity: 'me',
    leaseDurationMs: 3000,
    renewDeadlineMs: 1500,
    retryPeriodMs: 200,
    onStartedLeading: () => void started++,
    onStoppedLeading: () => void (stoppedAt = Date.now()),
  });
  try {
    elector.start();
    const t0 = Date.now();
    while (!elector.isLeader() && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
    assert.equal(started, 1, 'it leads');
    await new Promise((r) => setTimeout(r, 500)); // a few renewals
    const hangAt = Date.now();
    srv.state.hang = true;
    while (!stoppedAt && Date.now() - hangAt < 5000) await new Promise((r) => setTimeout(r, 20));
    assert.ok(stoppedAt > 0, 'leadership was given up while the renewal hung');
    assert.ok(stoppedAt - hangAt <= 1500 + 500, `gave up ${stoppedAt - hangAt} ms after the API hung; the renew deadline is 1500 ms`);
    assert.equal(elector.isLeader(), false);
  } finally {
    await srv.close(); // first: a release() against the hung server would wait too
    await elector.release();
  }
});
