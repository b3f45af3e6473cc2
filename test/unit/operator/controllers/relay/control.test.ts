// The operator's client of the relay control endpoints, against a loopback server
// answering as the contract says (and as a broken relay might).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { controlAddress, getQueue, hostPort, startDrain, stopDrain } from '../../../../../operator/controllers/relay/control.js';

async function serve(handler: (req: IncomingMessage, body: string, res: ServerResponse) => void): Promise<{ address: string; close: () => Promise<void> }> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => handler(req, body, res));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

test('GET /queue, POST /drain with the hand-off list, DELETE /drain: bearer token, JSON body', async () => {
  const seen: Array<[string | undefined, string | undefined, string | undefined, string]> = [];
  const s = await serve((req, body, res) => {
    seen.push([req.method, req.url, req.headers.authorization, body]);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(req.method === 'GET' ? JSON.stringify({ draining: true, messages: 3, bytes: 900, oldestSeconds: 12, handedOff: 1 }) : '{}');
  });
  try {
    assert.deepEqual(await getQueue(s.address, 'tok'), { draining: true, messages: 3, bytes: 900, oldestSeconds: 12, handedOff: 1 });
    await startDrain(s.address, 'tok', ['10.0.0.1:9091']);
    await stopDrain(s.address, 'tok');
    assert.deepEqual(seen, [
      ['GET', '/queue', 'Bearer tok', ''],
      ['POST', '/drain', 'Bearer tok', '{"handoff":["10.0.0.1:9091"]}'],
      ['DELETE', '/drain', 'Bearer tok', ''],
    ]);
  } finally {
    await s.close();
  }
});

test('a refusal, or an answer that is not a queue state, is an error that names neither the token nor the body', async () => {
  let answer: [number, string] = [401, '{"error":"unauthorized"}'];
  const s = await serve((_req, _body, res) => {
    res.writeHead(answer[0], { 'content-type': 'application/json' });
    res.end(answer[1]);
  });
  try {
    await assert.rejects(getQueue(s.address, 'secret-token'), (err: Error) => err.message === 'GET /queue: HTTP 401' && !err.message.includes('secret-token'));
    answer = [200, '{"draining":"yes","messages":1}'];
    await assert.rejects(getQueue(s.address, 't'), /not a queue state/);
    answer = [200, '{"draining":true,"messages":-1}'];
    await assert.rejects(getQueue(s.address, 't'), /messages is not a count/);
    answer = [500, ''];
    await assert.rejects(startDrain(s.address, 't', []), /POST \/drain: HTTP 500/);
  } finally {
    await s.close();
  }
});

test('addresses: the metrics port on the pod IP, IPv6 in brackets', () => {
  assert.equal(controlAddress('10.1.2.3'), '10.1.2.3:9090');
  assert.equal(controlAddress('fd00::5'), '[fd00::5]:9090');
  assert.equal(hostPort('fd00::5', 9091), '[fd00::5]:9091');
});
