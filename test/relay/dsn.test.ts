// Delivery status notifications end to end (issue 18): the real relay process in queue
// mode and in inline mode, a raw SMTP client sending the RFC 3461 parameters, and a real
// upstream (test/harness/support/sink.ts) that refuses one recipient permanently: one that
// does not advertise DSN (the relay sends the "relayed" notices itself) and one that does
// (the relay hands the parameters on; the sink records the MAIL/RCPT lines it got). The
// notifications that reach the upstream are read back with Python's email package, a
// real MIME parser, as multipart/report with a message/delivery-status part.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseReport } from '../harness/support/dsn-report.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink, type SinkMessage } from '../harness/support/sink.js';
import { RawSmtp, delay, message, startRelay, tempDir, type RelayProcess } from './harness.js';

const APP = { name: 'app', password: 'app-password-0123456789', allowedSenders: ['app@example.com', 'MAILER-DAEMON@app.example.com'] };
const RATED = { name: 'rated', password: 'rated-password-0123456789', allowedSenders: ['MAILER-DAEMON@rated.example.com'], rateLimit: { messages: 1, per: '1h' } };
const PLAIN = { name: 'plain', password: 'plain-password-0123456789', allowedSenders: ['plain@example.com'] };

let pki: Pki;
let sink: Sink;
let dsnSink: Sink;
let queued: RelayProcess;
let inline: RelayProcess;
let queuedDsnUp: RelayProcess;

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki, behaviour: { refuseRecipients: ['gone@example.net'] } });
  const upstream = { host: sink.host, port: sink.port, caFile: pki.ca.certFile };
  const dir = await tempDir('relay-dsn-');
  const cert = await pki.issue({ name: 'relay' });
  queued = await startRelay({ dir, cert, users: [APP, PLAIN, RATED], upstream, queue: `{directory: ${join(dir, 'spool')}, retry: {initialDelay: 1s, maxDelay: 2s}}` });
  const dir2 = await tempDir('relay-dsn-inline-');
  inline = await startRelay({ dir: dir2, cert: await pki.issue({ name: 'relay2' }), users: [APP], upstream });
  dsnSink = await startSink({ pki, dsn: true, behaviour: { refuseRecipients: ['gone@example.net'] } });
  const dir3 = await tempDir('relay-dsn-up-');
  queuedDsnUp = await startRelay({
    dir: dir3,
    cert: await pki.issue({ name: 'relay3' }),
    users: [APP],
    upstream: { host: dsnSink.host, port: dsnSink.port, caFile: pki.ca.certFile },
    queue: `{directory: ${join(dir3, 'spool')}, retry: {initialDelay: 1s, maxDelay: 2s}}`,
  });
});

after(async () => {
  await queued?.stop();
  await inline?.stop();
  await queuedDsnUp?.stop();
  await sink?.stop();
  await dsnSink?.stop();
  await pki?.cleanup();
});

/** A session past STARTTLS and AUTH; the EHLO reply after TLS. */
async function session(relay: RelayProcess, user: { name: string; password: string }): Promise<{ c: RawSmtp; ehlo: string }> {
  const c = await RawSmtp.connect(relay.ports.submission);
  await c.cmd('EHLO client.test');
  await c.starttls();
  const ehlo = (await c.cmd('EHLO client.test'))!.text;
  assert.equal((await c.login(user.name, user.password))?.code, 235);
  return { c, ehlo };
}

/** MAIL, RCPTs, DATA; every reply in order. */
async function transaction(c: RawSmtp, mail: string, rcpts: string[], body: string): Promise<string[]> {
  const out = [(await c.cmd(mail))!.text];
  for (const r of rcpts) out.push((await c.cmd(r))!.text);
  if (!out.slice(1).some((r) => r.startsWith('250'))) return out;
  out.push((await c.cmd('DATA'))!.text);
  out.push((await c.cmd(body.replace(/\r\n$/, '') + '\r\n.'))!.text);
  return out;
}

const reportsTo = (who: string): SinkMessage[] => sink.messages.filter((m) => m.mailFrom === '' && m.rcptTo.includes(who));

async function waitFor<T>(get: () => T | undefined, what: string, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = get();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(50);
  }
}

describe('DSN (RFC 3461) in queue mode', () => {
  test('DSN is advertised in queue mode and not in inline mode, where its parameters are refused with 555', async () => {
    const q = await session(queued, APP);
    assert.match(q.ehlo, /^250[ -]DSN$/m);
    q.c.close();
    const i = await session(inline, APP);
    assert.doesNotMatch(i.ehlo, /DSN/);
    const mail = await i.c.cmd('MAIL FROM:<app@example.com> RET=HDRS ENVID=abc');
    assert.equal(mail?.code, 555, mail?.text);
    assert.match(mail!.text, /RET, ENVID not recognized: DSN is not offered/);
    assert.equal((await i.c.cmd('MAIL FROM:<app@example.com>'))?.code, 250);
    const rcpt = await i.c.cmd('RCPT TO:<x@example.net> NOTIFY=SUCCESS');
    assert.equal(rcpt?.code, 555, rcpt?.text);
    i.c.close();
  });

  test('malformed DSN parameters get 501 with the reason', async () => {
    const { c } = await session(queued, APP);
    const envid = await c.cmd(`MAIL FROM:<app@example.com> ENVID=${'a'.repeat(101)}`);
    assert.equal(envid?.code, 501, envid?.text);
    assert.match(envid!.text, /longer than 100/);
    assert.equal((await c.cmd('MAIL FROM:<app@example.com> RET=HDRS ENVID=abc'))?.code, 250);
    const notify = await c.cmd('RCPT TO:<x@example.net> NOTIFY=FAILURE,FAILURE');
    assert.equal(notify?.code, 501, notify?.text);
    assert.match(notify!.text, /repeated/);
    const orcpt = await c.cmd('RCPT TO:<x@example.net> ORCPT=x@example.net');
    assert.equal(orcpt?.code, 501, orcpt?.text);
    assert.match(orcpt!.text, /ORCPT/); // smtp-server's own check answers first here
    c.close();
  });

  test('NOTIFY=SUCCESS,FAILURE with ORCPT, RET=HDRS and ENVID: a failure report for the refused recipient and a "relayed" notice for the other, both parsed as RFC 3464 reports', async () => {
    const { c } = await session(queued, APP);
    const replies = await transaction(
      c,
      'MAIL FROM:<app@example.com> RET=HDRS ENVID=abc',
      ['RCPT TO:<gone@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;gone@example.net', 'RCPT TO:<ok@example.net> NOTIFY=SUCCESS ORCPT=rfc822;Original+2Bok@example.net'],
      message('app@example.com', 'gone@example.net', 'dsn main', 'The body stays home.'),
    );
    assert.match(replies.at(-1)!, /^250 2\.0\.0 Ok: queued as /, replies.join(' | '));
    c.close();
    const original = await waitFor(() => sink.messages.find((m) => m.mailFrom === 'app@example.com' && /dsn main/.test(m.raw.toString())), 'the delivery');
    assert.deepEqual(original.rcptTo, ['ok@example.net']);
    // This upstream does not advertise DSN: it is sent none of the parameters (RFC 3461 4.2).
    assert.equal(original.commands.length, 2, original.commands.join(' | '));
    assert.match(original.commands[0]!, /^MAIL FROM:<app@example\.com> SIZE=\d+$/);
    assert.equal(original.commands[1], 'RCPT TO:<ok@example.net>');
    const [failed, relayed] = await waitFor(() => {
      const r = reportsTo('app@example.com').map((m) => m.raw.toString('latin1'));
      const f = r.find((x) => /Action: failed/.test(x) && /gone@example\.net/.test(x));
      const s = r.find((x) => /Action: relayed/.test(x));
      return f && s ? [f, s] : undefined;
    }, 'both notices');

    const f = await parseReport(Buffer.from(failed!, 'latin1'));
    assert.equal(f.contentType, 'multipart/report');
    assert.equal(f.reportType, 'delivery-status');
    assert.deepEqual(f.parts, ['text/plain', 'message/delivery-status', 'text/rfc822-headers']);
    assert.equal(f.to, 'app@example.com');
    assert.equal(f.perMessage['Original-Envelope-Id'], 'abc');
    assert.match(f.perMessage['Reporting-MTA']!, /^dns; /);
    assert.equal(f.perRecipient.length, 1);
    assert.equal(f.perRecipient[0]!['Original-Recipient'], 'rfc822; gone@example.net');
    assert.equal(f.perRecipient[0]!['Final-Recipient'], 'rfc822; gone@example.net');
    assert.equal(f.perRecipient[0]!['Action'], 'failed');
    assert.equal(f.perRecipient[0]!['Status'], '5.1.1');
    assert.match(f.returned, /Subject: dsn main/);
    assert.doesNotMatch(f.returned, /The body stays home/, 'RET=HDRS: headers only');

    const s = await parseReport(Buffer.from(relayed!, 'latin1'));
    assert.equal(s.contentType, 'multipart/report');
    assert.equal(s.perMessage['Original-Envelope-Id'], 'abc');
    assert.equal(s.perRecipient.length, 1);
    assert.equal(s.perRecipient[0]!['Original-Recipient'], 'rfc822; Original+ok@example.net', 'xtext decoded');
    assert.equal(s.perRecipient[0]!['Final-Recipient'], 'rfc822; ok@example.net');
    assert.equal(s.perRecipient[0]!['Action'], 'relayed');
    assert.equal(s.perRecipient[0]!['Status'], '2.0.0');
  });

  test('RET=FULL returns the whole message; NOTIFY=NEVER gets no report at all', async () => {
    const before = reportsTo('app@example.com').length;
    const { c } = await session(queued, APP);
    const r1 = await transaction(c, 'MAIL FROM:<app@example.com> RET=FULL', ['RCPT TO:<gone@example.net>'], message('app@example.com', 'gone@example.net', 'dsn full', 'Full body returned.'));
    assert.match(r1.at(-1)!, /^250 /, r1.join(' | '));
    const r2 = await transaction(c, 'MAIL FROM:<app@example.com>', ['RCPT TO:<gone@example.net> NOTIFY=NEVER'], message('app@example.com', 'gone@example.net', 'dsn never'));
    assert.match(r2.at(-1)!, /^250 /, r2.join(' | '));
    c.close();
    const full = await waitFor(() => reportsTo('app@example.com').find((m) => /dsn full/.test(m.raw.toString())), 'the RET=FULL report');
    const p = await parseReport(full.raw);
    assert.deepEqual(p.parts, ['text/plain', 'message/delivery-status', 'message/rfc822']);
    assert.match(p.returned, /Full body returned\./);
    await queued.waitForLog((l) => l.msg === 'delivery status notification queued' && Array.isArray(l.recipients), 5000).catch(() => undefined);
    await delay(3000);
    assert.equal(reportsTo('app@example.com').filter((m) => /dsn never/.test(m.raw.toString())).length, 0);
    assert.equal(reportsTo('app@example.com').length, before + 1);
  });
});

describe('the null sender', () => {
  test('refused for a user without a MAILER-DAEMON address, with the way to allow it', async () => {
    const { c } = await session(queued, PLAIN);
    const r = await c.cmd('MAIL FROM:<>');
    assert.equal(r?.code, 553);
    assert.match(r!.text, /Null sender <> not allowed for user plain: add a MAILER-DAEMON@<your domain> address to its allowedSenders/);
    c.close();
  });

  test('accepted for a user with one, with From: MAILER-DAEMON@ of its domain, and relayed with MAIL FROM:<>', async () => {
    const { c } = await session(queued, APP);
    const body = message('MAILER-DAEMON@app.example.com', 'someone@example.net', 'postfix notice');
    const r = await transaction(c, 'MAIL FROM:<>', ['RCPT TO:<someone@example.net> NOTIFY=NEVER'], body);
    assert.match(r.at(-1)!, /^250 2\.0\.0 Ok: queued as /, r.join(' | '));
    c.close();
    const got = await waitFor(() => sink.messages.find((m) => /postfix notice/.test(m.raw.toString())), 'the notice');
    assert.equal(got.mailFrom, '');
    assert.deepEqual(got.rcptTo, ['someone@example.net']);
  });

  test('refused at DATA when its From: is not among the user\'s allowed senders', async () => {
    const { c } = await session(queued, APP);
    const r = await transaction(c, 'MAIL FROM:<>', ['RCPT TO:<someone@example.net>'], message('ceo@bank.example', 'someone@example.net', 'spoofed notice'));
    assert.match(r.at(-1)!, /^550 5\.7\.1 From: address not allowed for user app/, r.join(' | '));
    c.close();
  });

  test('counts against the user\'s rate limit like any message', async () => {
    const { c } = await session(queued, RATED);
    const first = await transaction(c, 'MAIL FROM:<>', ['RCPT TO:<someone@example.net>'], message('MAILER-DAEMON@rated.example.com', 'someone@example.net', 'rated notice'));
    assert.match(first.at(-1)!, /^250 /, first.join(' | '));
    const second = await c.cmd('MAIL FROM:<>');
    assert.equal(second?.code, 451, second?.text);
    assert.match(second!.text, /4\.7\.1 Message rate limit reached for rated/);
    c.close();
    // delivered before the next test counts what reached the upstream
    await waitFor(() => sink.messages.find((m) => /rated notice/.test(m.raw.toString())), 'the rated notice');
  });

  test('a null-sender message that fails permanently produces no notification', async () => {
    const reportsBefore = sink.messages.filter((m) => m.mailFrom === '').length;
    const notified = await queued.metric('smtp_relay_queue_notifications_total');
    const bounced = await queued.metric('smtp_relay_queue_deliveries_total', { result: 'bounced' });
    const { c } = await session(queued, APP);
    const r = await transaction(c, 'MAIL FROM:<>', ['RCPT TO:<gone@example.net> NOTIFY=FAILURE'], message('MAILER-DAEMON@app.example.com', 'gone@example.net', 'bounce of a bounce'));
    assert.match(r.at(-1)!, /^250 /, r.join(' | '));
    c.close();
    const end = Date.now() + 15_000;
    while ((await queued.metric('smtp_relay_queue_deliveries_total', { result: 'bounced' })) === bounced && Date.now() < end) await delay(100);
    assert.equal(await queued.metric('smtp_relay_queue_deliveries_total', { result: 'bounced' }), bounced + 1, 'refused by the upstream');
    await delay(2000);
    assert.equal(await queued.metric('smtp_relay_queue_notifications_total'), notified);
    assert.equal(sink.messages.filter((m) => m.mailFrom === '').length, reportsBefore);
  });
});

describe('DSN handed to an upstream that advertises it', () => {
  test('RET/ENVID on MAIL and NOTIFY/ORCPT per RCPT go on exactly as received; the relay adds no notice of its own', async () => {
    const relayedBefore = await queuedDsnUp.metric('smtp_relay_queue_notifications_total', { kind: 'relayed' });
    const { c } = await session(queuedDsnUp, APP);
    const replies = await transaction(
      c,
      'MAIL FROM:<app@example.com> RET=HDRS ENVID=id+2Bone',
      [
        'RCPT TO:<ok1@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Original+2Bok@example.net',
        'RCPT TO:<ok2@example.net>',
        'RCPT TO:<ok3@example.net> NOTIFY=NEVER',
        'RCPT TO:<ok4@example.net> notify=delay orcpt=utf-8;ok4@example.net',
      ],
      message('app@example.com', 'ok1@example.net', 'dsn passed on'),
    );
    assert.match(replies.at(-1)!, /^250 2\.0\.0 Ok: queued as /, replies.join(' | '));
    c.close();
    const got = await waitFor(() => dsnSink.messages.find((m) => /dsn passed on/.test(m.raw.toString())), 'the delivery');
    assert.equal(got.mailFrom, 'app@example.com');
    assert.deepEqual(got.rcptTo, ['ok1@example.net', 'ok2@example.net', 'ok3@example.net', 'ok4@example.net']);
    assert.match(got.commands[0]!, /^MAIL FROM:<app@example\.com> SIZE=\d+ RET=HDRS ENVID=id\+2Bone$/, got.commands[0]);
    assert.deepEqual(got.commands.slice(1), [
      'RCPT TO:<ok1@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Original+2Bok@example.net',
      'RCPT TO:<ok2@example.net>',
      'RCPT TO:<ok3@example.net> NOTIFY=NEVER',
      'RCPT TO:<ok4@example.net> NOTIFY=DELAY ORCPT=utf-8;ok4@example.net',
    ]);
    // The message has left the spool (the "relayed" notice, were there one, is queued before that).
    const end = Date.now() + 15_000;
    while ((await queuedDsnUp.metric('smtp_relay_queue_messages')) !== 0 && Date.now() < end) await delay(100);
    assert.equal(await queuedDsnUp.metric('smtp_relay_queue_messages'), 0);
    assert.equal(await queuedDsnUp.metric('smtp_relay_queue_notifications_total', { kind: 'relayed' }), relayedBefore);
    assert.equal(dsnSink.messages.filter((m) => m.mailFrom === '').length, 0, 'no notice reached the upstream');
  });

  test('a recipient the upstream refuses at RCPT is still reported by the relay, per its NOTIFY', async () => {
    const { c } = await session(queuedDsnUp, APP);
    const replies = await transaction(
      c,
      'MAIL FROM:<app@example.com> ENVID=two',
      ['RCPT TO:<gone@example.net> NOTIFY=FAILURE', 'RCPT TO:<ok5@example.net> NOTIFY=SUCCESS'],
      message('app@example.com', 'gone@example.net', 'dsn refused upstream'),
    );
    assert.match(replies.at(-1)!, /^250 /, replies.join(' | '));
    c.close();
    const delivered = await waitFor(() => dsnSink.messages.find((m) => m.mailFrom === 'app@example.com' && /dsn refused upstream/.test(m.raw.toString())), 'the delivery');
    assert.deepEqual(delivered.commands.slice(1), ['RCPT TO:<ok5@example.net> NOTIFY=SUCCESS']);
    const report = await waitFor(() => dsnSink.messages.find((m) => m.mailFrom === '' && m.rcptTo.includes('app@example.com') && /ENVID|Original-Envelope-Id: two/.test(m.raw.toString())), 'the failure report');
    const p = await parseReport(report.raw);
    assert.equal(p.perMessage['Original-Envelope-Id'], 'two');
    assert.deepEqual(p.perRecipient.map((r) => [r['Final-Recipient'], r['Action']]), [['rfc822; gone@example.net', 'failed']]);
    // The relay's own report carries no DSN request: nothing is to be reported about a report.
    assert.deepEqual(report.commands.slice(1), ['RCPT TO:<app@example.com>']);
  });
});
