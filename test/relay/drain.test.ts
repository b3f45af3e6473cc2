// The operator's drain (relay/control.ts) against the real relay process: the control
// endpoints' authentication, a drain with the upstream up (not ready, new mail 421, the
// queue delivered at once), a restart of a draining relay (it comes back draining) and
// DELETE /drain (it takes mail again). The same with a 2-worker relay, where the primary
// serves the endpoints and orders its workers. Hand-off between siblings: handoff.test.ts.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createPki, type Pki } from '../harness/support/pki.js';
import { waitFor } from '../harness/support/poll.js';
import { closedPort, startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, SecretDir, restartRelay, sendPooled, startRelay, tempDir, type RelayProcess } from './harness.js';
import { control, greetingCode, readyz } from './control-client.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const TOKEN = 'ctl-token-5f1c0e9a7d3b4c2e8a6f';
const TOKEN2 = 'ctl-token-rotated-0b9e1d2c3a4f';

let pki: Pki;
let dir: string;
let cert: Awaited<ReturnType<Pki['issue']>>;

before(async () => {
  pki = await createPki();
  dir = await tempDir('relay-drain-');
  cert = await pki.issue({ name: 'relay' });
});

after(async () => {
  await pki?.cleanup();
});

describe('control endpoints', () => {
  let relay: RelayProcess;
  let bare: RelayProcess;
  let tokenDir: SecretDir;

  before(async () => {
    tokenDir = await SecretDir.create(dir, 'control-token', { token: `${TOKEN}\n` });
    const upstream = { host: '127.0.0.1', port: await closedPort(), caFile: pki.ca.certFile };
    relay = await startRelay({ dir, cert, users: [APP], upstream, metricsExtra: `controlTokenFile: ${tokenDir.file('token')}` });
    bare = await startRelay({ dir, cert, users: [APP], upstream });
  });

  after(async () => {
    assert.equal(await relay?.stop(), 0, relay?.stderr);
    assert.equal(await bare?.stop(), 0, bare?.stderr);
  });

  test('no token or a wrong one: 401 with a JSON error; the right one: 200; rotated token applies at once; never logged', async () => {
    for (const [method, path] of [
      ['GET', '/queue'],
      ['POST', '/drain'],
      ['DELETE', '/drain'],
    ] as const) {
      const none = await control(relay, method, path);
      assert.equal(none.status, 401, `${method} ${path} without a token`);
      assert.equal(none.json.error, 'unauthorized');
      const wrong = await control(relay, method, path, `${TOKEN}x`);
      assert.equal(wrong.status, 401, `${method} ${path} with a wrong token`);
      const prefix = await control(relay, method, path, TOKEN.slice(0, -1));
      assert.equal(prefix.status, 401, `${method} ${path} with a prefix of the token`);
    }
    assert.equal(await readyz(relay), 200, 'nothing above drained it');
    const ok = await control(relay, 'GET', '/queue', TOKEN);
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.json, { draining: false, messages: 0, bytes: 0, oldestSeconds: 0, handedOff: 0 }, 'inline mode: nothing queued');
    await tokenDir.update({ token: `${TOKEN2}\n` });
    assert.equal((await control(relay, 'GET', '/queue', TOKEN)).status, 401, 'the old token after a rotation');
    assert.equal((await control(relay, 'GET', '/queue', TOKEN2)).status, 200, 'the new one');
    assert.equal((await control(relay, 'POST', '/drain', TOKEN2, { handoff: ['not a target'] })).status, 400, 'a bad hand-off list');
    assert.equal((await control(relay, 'POST', '/drain', TOKEN2, { other: 1 })).status, 400, 'an unknown field');
    assert.equal((await control(relay, 'PUT', '/drain', TOKEN2)).status, 405);
    assert.equal(await readyz(relay), 200, 'refused requests changed nothing');
    await waitFor('the refusals logged', () => relay.logs.filter((l) => l.event === 'control_unauthorized').length >= 9, 10_000);
    const logged = JSON.stringify(relay.logs) + relay.stderr;
    assert.ok(!logged.includes(TOKEN) && !logged.includes(TOKEN2) && !logged.includes(TOKEN.slice(0, -1)), 'no token (nor a wrong one) in the logs');
  });

  test('without metrics.controlTokenFile the endpoints answer 404, with or without a token', async () => {
    assert.equal((await control(bare, 'GET', '/queue')).status, 404);
    assert.equal((await control(bare, 'POST', '/drain', TOKEN)).status, 404);
    assert.equal((await control(bare, 'DELETE', '/drain', TOKEN)).status, 404);
    assert.equal(await readyz(bare), 200);
  });

  test('inline mode: a drain refuses new connections and MAIL with 421 4.3.2, /readyz is false; DELETE /drain undoes it', async () => {
    const idle = await RawSmtp.connect(relay.ports.submission);
    assert.equal(idle.greeting?.code, 220);
    const r = await control(relay, 'POST', '/drain', TOKEN2);
    assert.equal(r.status, 200);
    assert.equal(r.json.draining, true);
    assert.equal(await readyz(relay), 503);
    const c = await RawSmtp.connect(relay.ports.submission);
    assert.equal(c.greeting?.code, 421);
    assert.match(c.greeting!.text, /4\.3\.2/);
    c.close();
    // the idle session is told at once
    const bye = await idle.read(5000);
    assert.equal(bye?.code, 421);
    idle.close();
    assert.equal((await control(relay, 'DELETE', '/drain', TOKEN2)).json.draining, false);
    assert.equal(await readyz(relay), 200);
    assert.equal(await greetingCode(relay), 220);
  });
});

for (const workers of [1, 2]) {
  describe(`drain in queue mode (${workers} worker${workers > 1 ? 's' : ''})`, () => {
    let relay: RelayProcess;
    let sink: Sink | undefined;
    let port: number;
    let spool: string;

    before(async () => {
      port = await closedPort();
      const d = await tempDir(`relay-drain-q${workers}-`);
      spool = join(d, 'spool');
      const tokenDir = await SecretDir.create(d, 'control-token', { token: TOKEN });
      relay = await startRelay({
        dir: d,
        cert,
        users: [APP],
        upstream: { host: '127.0.0.1', port, caFile: pki.ca.certFile },
        // a long backoff: without the drain the messages would wait ten minutes
        queue: `{directory: ${spool}, retry: {initialDelay: 10m, maxDelay: 1h}}`,
        metricsExtra: `controlTokenFile: ${tokenDir.file('token')}`,
        workers,
      });
    });

    after(async () => {
      assert.equal(await relay?.stop(), 0, relay?.stderr);
      await sink?.stop();
    });

    test('with the upstream up: not ready at once, new mail 421, every deferred message delivered now, GET /queue says 0', async () => {
      const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 40, tag: `drain${workers}` });
      assert.equal(replies.filter((x) => x.startsWith('250 ')).length, 40, replies.join(' | '));
      await waitFor('every message tried once (deferred)', async () => (await relay.metric('smtp_relay_queue_deliveries_total', { result: 'deferred' })) >= 40, 30_000);
      const q = await control(relay, 'GET', '/queue', TOKEN);
      assert.equal(q.json.messages, 40);
      assert.ok((q.json.bytes as number) > 0);
      sink = await startSink({ pki, port });
      const d = await control(relay, 'POST', '/drain', TOKEN, {});
      assert.equal(d.status, 200);
      assert.equal(d.json.draining, true);
      assert.equal(await readyz(relay), 503, 'not ready at once');
      assert.ok(existsSync(join(spool, 'draining.json')), 'the drain marker is written');
      const c = await RawSmtp.connect(relay.ports.submission);
      assert.equal(c.greeting?.code, 421, 'a new connection gets 421');
      c.close();
      const got = await sink.waitForMessages(40, 30_000);
      assert.equal(new Set(got.map((m) => /Subject: (drain\d \d+)/.exec(m.raw.toString('latin1'))?.[1])).size, 40);
      await waitFor('GET /queue says 0', async () => {
        const j = (await control(relay, 'GET', '/queue', TOKEN)).json;
        return j.messages === 0 && j.bytes === 0;
      }, 20_000);
      const done = await control(relay, 'GET', '/queue', TOKEN);
      assert.deepEqual({ ...done.json, oldestSeconds: 0 }, { draining: true, messages: 0, bytes: 0, oldestSeconds: 0, handedOff: 0 });
      assert.equal(sink.messages.length, 40, 'each exactly once');
    });

    test('a session in DATA when the drain starts finishes: its message is stored (250), then the client hears 421', async () => {
      assert.equal((await control(relay, 'DELETE', '/drain', TOKEN)).status, 200);
      await waitFor('ready', async () => (await readyz(relay)) === 200, 10_000);
      const c = await RawSmtp.connect(relay.ports.submission);
      assert.equal((await c.cmd('EHLO client.example'))?.code, 250);
      await c.starttls();
      assert.equal((await c.cmd('EHLO client.example'))?.code, 250);
      assert.equal((await c.login(APP.name, APP.password))?.code, 235);
      assert.equal((await c.cmd('MAIL FROM:<app@example.com>'))?.code, 250);
      assert.equal((await c.cmd('RCPT TO:<late@example.net>'))?.code, 250);
      assert.equal((await c.cmd('DATA'))?.code, 354);
      c.write(`From: app@example.com\r\nTo: late@example.net\r\nSubject: indata${workers}\r\n`);
      assert.equal((await control(relay, 'POST', '/drain', TOKEN)).json.draining, true);
      assert.equal(await greetingCode(relay), 421, 'new connections are refused meanwhile');
      const before = sink!.messages.length;
      const done = await c.cmd('\r\nbody\r\n.');
      assert.equal(done?.code, 250, done?.text);
      const bye = await c.read(5000);
      assert.equal(bye?.code, 421, 'told after its transaction');
      c.close();
      await waitFor('the message delivered', () => sink!.messages.length > before && sink!.messages.some((m) => m.raw.includes(`Subject: indata${workers}`)), 20_000);
    });

    test('a draining relay restarted comes back draining (not ready, refusing mail) until DELETE /drain', async () => {
      assert.equal(await relay.stop(), 0, relay.stderr);
      relay = await restartRelay(relay);
      await relay.waitForLog((l) => l.event === 'drain_restored', 10_000);
      assert.equal(await readyz(relay), 503);
      assert.equal(await greetingCode(relay), 421);
      assert.equal((await control(relay, 'GET', '/queue', TOKEN)).json.draining, true);
      const del = await control(relay, 'DELETE', '/drain', TOKEN);
      assert.equal(del.status, 200);
      assert.equal(del.json.draining, false);
      assert.ok(!existsSync(join(spool, 'draining.json')), 'the marker is removed');
      await waitFor('ready again', async () => (await readyz(relay)) === 200, 10_000);
      const delivered = sink!.messages.length;
      const replies = await sendPooled(relay, { ca: pki.ca.certPem, user: APP, from: 'app@example.com', n: 3, tag: `after${workers}` });
      assert.equal(replies.filter((x) => x.startsWith('250 ')).length, 3, replies.join(' | '));
      await sink!.waitForMessages(delivered + 3, 20_000);
      // and a restart now comes back taking mail
      assert.equal(await relay.stop(), 0, relay.stderr);
      relay = await restartRelay(relay);
      assert.equal(await readyz(relay), 200);
      assert.equal(await greetingCode(relay), 220);
    });
  });
}
