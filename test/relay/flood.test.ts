// Connection floods from inside the allowed networks: many addresses, each within its
// per-IP limit, holding idle connections that never start TLS or AUTH, and reconnecting
// whenever the relay closes one. The relay sheds the oldest unauthenticated connection
// for a newcomer and closes those that do not authenticate within preAuthTimeout, so a
// legitimate client keeps getting through; authenticated sessions are never shed.
// Loopback only (127.0.0.0/8 source addresses), every loop bounded in count and time.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';
import { RawSmtp, delay, message, startRelay, tempDir, type RelayProcess, stopAll } from './harness.js';
import { startIdleFlood } from '../harness/support/flood.js';

let pki: Pki;
let sink: Sink;
let relay: RelayProcess;

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com'] };
const MAX_CONNECTIONS = 100;
const PER_IP = 20;

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki });
  relay = await startRelay({
    dir: await tempDir('relay-flood-'),
    cert: await pki.issue({ name: 'relay' }),
    users: [APP],
    upstream: { host: '127.0.0.1', port: sink.port, caFile: sink.caFile },
    // maxUnauthenticated defaults to half of maxConnections (50)
    limits: `{maxMessageSize: 64Ki, maxRecipients: 5, maxConnections: ${MAX_CONNECTIONS}, maxConnectionsPerIp: ${PER_IP}, idleTimeout: 30s, preAuthTimeout: 3s}`,
  });
});

after(() => stopAll(relay, sink, pki));

const flood = (port: number, addresses: string[], maxOpens: number) => startIdleFlood(port, addresses, PER_IP, maxOpens);

/** Sends `n` messages, each over a new connection (STARTTLS + AUTH), from 127.0.0.1; the number delivered. */
async function legitimate(n: number): Promise<number> {
  let ok = 0;
  for (let i = 0; i < n; i++) {
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port: relay.ports.submission,
      requireTLS: true,
      auth: { user: APP.name, pass: APP.password },
      tls: { ca: pki.ca.certPem, servername: 'localhost' },
      connectionTimeout: 5000,
      greetingTimeout: 5000,
      socketTimeout: 5000,
    });
    try {
      const info = await t.sendMail({ envelope: { from: 'app@example.com', to: ['rcpt@example.net'] }, raw: message('app@example.com', 'rcpt@example.net', `legit ${i}`) });
      if (/^250 /.test(info.response)) ok++;
    } catch {
      // counted as a failure
    } finally {
      t.close();
    }
  }
  return ok;
}

async function floodRun(addresses: string[], port: number) {
  const rss0 = relay.rssKiB();
  const f = flood(port, addresses, 20_000);
  await delay(1000); // let the flood fill every slot
  const filled = f.open;
  const t0 = Date.now();
  const ok = await legitimate(100);
  const seconds = (Date.now() - t0) / 1000;
  const rss1 = relay.rssKiB();
  f.stop();
  return { ok, filled, opens: f.opens, seconds, rssGrowthMiB: (rss1 - rss0) / 1024, rss1MiB: rss1 / 1024 };
}

describe('connection floods', () => {
  test('the measured flood (every address within its per-IP limit, maxConnections filled): a legitimate client succeeds ≥ 99 % of the time', async () => {
    const shed0 = await relay.metric('smtp_relay_connections_shed_total');
    const addresses = [1, 2, 3, 4, 5].map((i) => `127.0.1.${i}`); // 5 × 20 = maxConnections
    const r = await floodRun(addresses, relay.ports.submission);
    process.stdout.write(`# flood ${addresses.length * PER_IP} idle connections: ${r.ok}/100 delivered in ${r.seconds.toFixed(1)} s, attacker opened ${r.opens}, RSS +${r.rssGrowthMiB.toFixed(1)} MiB (${r.rss1MiB.toFixed(0)} MiB)\n`);
    assert.ok(r.filled >= MAX_CONNECTIONS / 2 - 5, `the flood held every unauthenticated slot (${r.filled} open; maxUnauthenticated ${MAX_CONNECTIONS / 2})`);
    assert.ok(r.ok >= 99, `${r.ok}/100 delivered`);
    assert.ok((await relay.metric('smtp_relay_connections_shed_total')) - shed0 >= 100, 'connections were shed');
    assert.ok(r.rss1MiB < 384, `memory stays bounded: ${r.rss1MiB.toFixed(0)} MiB`);
  });

  test('a flood twice the size, on both listeners (pending TLS handshakes on the implicit one): still ≥ 99 %', async () => {
    const plain = [1, 2, 3, 4, 5].map((i) => `127.0.2.${i}`);
    const implicit = [1, 2, 3, 4, 5].map((i) => `127.0.3.${i}`);
    const f = flood(relay.ports.submissions, implicit, 20_000); // TCP only: never a handshake
    try {
      const r = await floodRun(plain, relay.ports.submission);
      process.stdout.write(`# flood ${(plain.length + implicit.length) * PER_IP} idle connections: ${r.ok}/100 delivered in ${r.seconds.toFixed(1)} s, RSS +${r.rssGrowthMiB.toFixed(1)} MiB (${r.rss1MiB.toFixed(0)} MiB)\n`);
      assert.ok(r.ok >= 99, `${r.ok}/100 delivered`);
      assert.ok(r.rss1MiB < 384, `memory stays bounded: ${r.rss1MiB.toFixed(0)} MiB`);
    } finally {
      f.stop();
    }
  });

  test('a connection that does not authenticate within preAuthTimeout gets 421 4.4.2; an authenticated idle session stays', async () => {
    await delay(500);
    const idle = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.4.1' });
    const authed = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.4.2' });
    await authed.cmd('EHLO x');
    await authed.starttls();
    await authed.cmd('EHLO x');
    assert.equal((await authed.login(APP.name, APP.password))?.code, 235);
    const t0 = Date.now();
    const r = await idle.read(8000);
    assert.equal(r?.code, 421, JSON.stringify(r));
    assert.match(r!.text, /4\.4\.2 Timeout: TLS and AUTH not completed/);
    const waited = Date.now() - t0;
    assert.ok(waited >= 1500 && waited < 6000, `closed after ${waited} ms (preAuthTimeout 3 s, checked each second)`);
    assert.ok((await relay.metric('smtp_relay_connections_shed_total', { reason: 'pre_auth_timeout' })) >= 1);
    assert.equal((await authed.cmd('NOOP'))?.code, 250, 'the authenticated session is still served');
    authed.close();
    idle.close();
  });

  test('authenticated sessions are never shed for unauthenticated ones: at maxConnections of them a newcomer gets 421', async () => {
    await delay(500);
    const sessions: RawSmtp[] = [];
    try {
      for (let i = 0; i < MAX_CONNECTIONS; i++) {
        const c = await RawSmtp.connect(relay.ports.submissions, { localAddress: `127.0.5.${1 + Math.floor(i / PER_IP)}`, implicitTls: true });
        sessions.push(c);
        await c.cmd('EHLO x');
        const r = await c.login(APP.name, APP.password);
        assert.equal(r?.code, 235, `session ${i}: ${JSON.stringify(r)}, ${await relay.metric('smtp_relay_active_connections')} open`);
      }
      const newcomer = await RawSmtp.connect(relay.ports.submission, { localAddress: '127.0.6.1', greeting: false });
      const r = await newcomer.read();
      assert.equal(r?.code, 421);
      assert.match(r!.text, /Too many connections/);
      newcomer.close();
      for (const c of sessions) assert.equal((await c.cmd('NOOP'))?.code, 250);
    } finally {
      for (const c of sessions) c.close();
    }
  });
});
