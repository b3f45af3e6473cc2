// Issue 18 as a user met it: a Debian Postfix on the app host as the relay's client
// (relayhost pointing at the relay, STARTTLS with the certificate verified, SASL AUTH;
// test/harness/support/postfix.ts), mail handed to it with `sendmail -N ... -V ...`.
// Two relays behind it, chosen by recipient domain (transport_maps): one in queue mode,
// which advertises DSN and hands the request on to its upstream, and one in inline mode,
// which does not advertise DSN, so Postfix writes the notices itself ("relayed", and the
// bounce of a refused recipient) and sends them with the null sender through the relay.
// Both relays deliver to one real upstream (test/harness/support/sink.ts) that advertises
// DSN and refuses gone@ recipients; every notice must reach the envelope sender there.

import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseReport } from '../harness/support/dsn-report.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startPostfixClient, type PostfixClient } from '../harness/support/postfix.js';
import { startSink, type Sink, type SinkMessage } from '../harness/support/sink.js';
import { delay, message, startRelay, tempDir, type RelayProcess } from './harness.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com', 'MAILER-DAEMON@app.example.com'] };
const SENDER = 'app@example.com';

let pki: Pki;
let sink: Sink;
let queued: RelayProcess;
let inline: RelayProcess;
let postfix: PostfixClient;
const dirs: string[] = [];

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki, dsn: true, behaviour: { refuseRecipients: ['gone@queue.example', 'gone@inline.example'] } });
  const upstream = { host: sink.host, port: sink.port, caFile: pki.ca.certFile };
  const dir = await tempDir('relay-dsn-postfix-');
  dirs.push(dir);
  queued = await startRelay({ dir, cert: await pki.issue({ name: 'queued' }), users: [APP], upstream, queue: `{directory: ${join(dir, 'spool')}}` });
  const dir2 = await tempDir('relay-dsn-postfix-inline-');
  dirs.push(dir2);
  inline = await startRelay({ dir: dir2, cert: await pki.issue({ name: 'inline' }), users: [APP], upstream });
  postfix = await startPostfixClient({
    dir: dirs[dirs.push(await tempDir('postfix-client-')) - 1]!,
    myhostname: 'app.example.com',
    relayhost: inline.ports.submission,
    transports: { 'queue.example': queued.ports.submission },
    caFile: pki.ca.certFile,
    sasl: { user: APP.name, pass: APP.password },
  });
});

after(async () => {
  await postfix?.stop();
  await queued?.stop();
  await inline?.stop();
  await sink?.stop();
  await pki?.cleanup();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** Waits (bounded) for a message at the sink; on timeout the error shows Postfix's log and queue. */
async function arrives(pred: (m: SinkMessage) => boolean, what: string, ms = 60_000): Promise<SinkMessage> {
  const end = Date.now() + ms;
  for (;;) {
    const m = sink.messages.find(pred);
    if (m) return m;
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${what}; Postfix queue: ${postfix.queued().join('\n')}\nPostfix log (tail):\n${(await postfix.maillog()).slice(-3000)}`);
    }
    await delay(100);
  }
}

const has = (m: SinkMessage, re: RegExp) => re.test(m.raw.toString('latin1'));
const noticeTo = (who: string, re: RegExp) => (m: SinkMessage) => m.mailFrom === '' && m.rcptTo.includes(who) && has(m, re);

describe('Postfix as the client, queue mode: the DSN request travels to the upstream', () => {
  test('sendmail -N success,failure -V envid123 -R hdrs: the upstream gets ENVID, RET, NOTIFY and ORCPT as Postfix sent them', async () => {
    await postfix.sendmail(['-f', SENDER, '-N', 'success,failure', '-V', 'envid123', '-R', 'hdrs', 'ok@queue.example'], message(SENDER, 'ok@queue.example', 'postfix queued dsn'));
    const got = await arrives((m) => has(m, /Subject: postfix queued dsn/), 'the message at the upstream');
    assert.equal(got.mailFrom, SENDER);
    assert.deepEqual(got.rcptTo, ['ok@queue.example']);
    // Postfix verified the relay's certificate and logged in (the relay's trace says ESMTPSA).
    assert.match(await postfix.maillog(), /Verified TLS connection established to localhost\[127\.0\.0\.1\]:\d+/);
    assert.match(got.raw.toString('latin1'), /^Received: from app\.example\.com \(\[127\.0\.0\.1\]\)\r\n\tby relay\.test\.example with ESMTPSA \(TLSv1\.[23]/);
    assert.match(got.commands[0]!, /^MAIL FROM:<app@example\.com> SIZE=\d+ RET=HDRS ENVID=envid123$/, got.commands.join(' | '));
    // Postfix gives the original recipient as ORCPT; the relay hands it on unchanged.
    assert.deepEqual(got.commands.slice(1), ['RCPT TO:<ok@queue.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok@queue.example']);
    // The upstream took the request: neither the relay nor Postfix sends a "relayed" notice.
    const end = Date.now() + 15_000;
    while ((await queued.metric('smtp_relay_queue_messages')) !== 0 && Date.now() < end) await delay(100);
    assert.equal(await queued.metric('smtp_relay_queue_notifications_total', { kind: 'relayed' }), 0);
    assert.equal(sink.messages.filter(noticeTo(SENDER, /envid123/)).length, 0);
    // Postfix saw DSN at the relay, so it wrote no notice either (it logs each one it writes).
    while (postfix.queued().length && Date.now() < end) await delay(100);
    assert.deepEqual(postfix.queued(), []);
    assert.doesNotMatch(await postfix.maillog(), /sender delivery status notification/);
  });

  test('a recipient the upstream refuses: the relay\'s failure report, with ENVID, reaches the envelope sender', async () => {
    await postfix.sendmail(['-f', SENDER, '-N', 'failure', '-V', 'envid124', 'gone@queue.example'], message(SENDER, 'gone@queue.example', 'postfix queued refused'));
    const report = await arrives(noticeTo(SENDER, /Original-Envelope-Id: envid124/), 'the relay\'s failure report');
    assert.match(report.raw.toString('latin1'), /^From: Mail Delivery System <MAILER-DAEMON@relay\.test\.example>\r$/m);
    const p = await parseReport(report.raw);
    assert.equal(p.contentType, 'multipart/report');
    assert.equal(p.reportType, 'delivery-status');
    assert.equal(p.perMessage['Original-Envelope-Id'], 'envid124');
    assert.equal(p.perRecipient.length, 1);
    assert.equal(p.perRecipient[0]!['Original-Recipient'], 'rfc822; gone@queue.example');
    assert.equal(p.perRecipient[0]!['Final-Recipient'], 'rfc822; gone@queue.example');
    assert.equal(p.perRecipient[0]!['Action'], 'failed');
    assert.equal(p.perRecipient[0]!['Status'], '5.1.1');
    assert.match(p.returned, /Subject: postfix queued refused/);
  });
});

describe('Postfix as the client, inline mode: Postfix\'s own notices travel through the relay with the null sender', () => {
  test('sendmail -N success,failure -V envid125: no DSN at the relay, so Postfix sends a "relayed" notice from <>, which the relay accepts and delivers', async () => {
    await postfix.sendmail(['-f', SENDER, '-N', 'success,failure', '-V', 'envid125', 'ok@inline.example'], message(SENDER, 'ok@inline.example', 'postfix inline dsn'));
    const got = await arrives((m) => has(m, /Subject: postfix inline dsn/), 'the message at the upstream');
    // Inline mode offers no DSN: nothing of the request reaches the upstream.
    assert.match(got.commands[0]!, /^MAIL FROM:<app@example\.com> SIZE=\d+$/, got.commands.join(' | '));
    assert.deepEqual(got.commands.slice(1), ['RCPT TO:<ok@inline.example>']);
    const notice = await arrives(noticeTo(SENDER, /envid125/), 'Postfix\'s "relayed" notice');
    assert.match(await postfix.maillog(), /sender delivery status notification/);
    assert.deepEqual(notice.commands.slice(1), [`RCPT TO:<${SENDER}>`]);
    assert.match(notice.commands[0]!, /^MAIL FROM:<> /);
    assert.match(notice.raw.toString('latin1'), /^From: Mail Delivery System <MAILER-DAEMON@app\.example\.com>\r$/m);
    const p = await parseReport(notice.raw);
    assert.equal(p.contentType, 'multipart/report');
    assert.equal(p.perMessage['Original-Envelope-Id'], 'envid125');
    assert.equal(p.perMessage['Reporting-MTA'], 'dns; app.example.com');
    assert.equal(p.perRecipient[0]!['Final-Recipient'], 'rfc822; ok@inline.example');
    assert.equal(p.perRecipient[0]!['Action'], 'relayed');
    assert.match(p.perRecipient[0]!['Diagnostic-Code']!, /Ok: relayed, id /, 'the relay\'s own 250 reply, as Postfix saw it');
    assert.match(p.perRecipient[0]!['Status']!, /^2\./);
  });

  test('a recipient the upstream refuses: the relay answers 5xx, Postfix bounces from <>, and the bounce reaches the envelope sender', async () => {
    await postfix.sendmail(['-f', SENDER, '-N', 'failure', '-V', 'envid126', 'gone@inline.example'], message(SENDER, 'gone@inline.example', 'postfix inline refused'));
    const bounce = await arrives(noticeTo(SENDER, /envid126/), 'Postfix\'s bounce');
    assert.match(bounce.raw.toString('latin1'), /^From: Mail Delivery System <MAILER-DAEMON@app\.example\.com>\r$/m);
    const p = await parseReport(bounce.raw);
    assert.equal(p.contentType, 'multipart/report');
    assert.equal(p.perMessage['Original-Envelope-Id'], 'envid126');
    assert.equal(p.perRecipient[0]!['Final-Recipient'], 'rfc822; gone@inline.example');
    assert.equal(p.perRecipient[0]!['Action'], 'failed');
    assert.match(p.perRecipient[0]!['Diagnostic-Code']!, /Upstream refused/);
    assert.equal(sink.messages.filter((m) => has(m, /^Subject: postfix inline refused\r$/m) && m.mailFrom !== '').length, 0, 'never delivered');
  });
});
