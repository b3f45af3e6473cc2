// The spool honours RFC 3461: NOTIFY decides which reports go to the sender, RET how much
// of the message comes back, ENVID and ORCPT appear in the report, and the DSN request is
// handed to the upstream (which says whether it took it).
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import pino from 'pino';
import { buildDsn, MAX_RETURNED_BYTES } from '../../../../relay/spool/dsn.js';
import { Scheduler, type SpoolDelivery, type SpoolOutcome } from '../../../../relay/spool/scheduler.js';
import { QUEUE_DEFAULTS } from '../../../../relay/spool/settings.js';
import type { EnqueueEnvelope } from '../../../../relay/spool/store.js';
import { counter, down, FakeClock, MESSAGE, tempSpool, until, type TestSpool } from './fake.js';

const MIN = 60_000;
let open: { t: TestSpool; s: Scheduler }[] = [];
afterEach(async () => {
  for (const { t, s } of open) {
    await s.stop(0);
    await t.cleanup();
  }
  open = [];
});

const ok: SpoolOutcome = { kind: 'accepted', response: '250 2.0.0 Ok: queued as up-1' };
const gone = (who: string): SpoolOutcome => ({ kind: 'permanent', code: 550, message: `5.1.1 Upstream refused recipient(s) <${who}>`, refused: [who] });

async function setup(answer: (e: SpoolDelivery) => SpoolOutcome, delayWarningMs = 0) {
  const t = await tempSpool(new FakeClock());
  const calls: { envelope: SpoolDelivery; message: Buffer }[] = [];
  const s = new Scheduler({
    spool: t.spool,
    deliver: async (envelope, message) => {
      calls.push({ envelope: structuredClone(envelope), message });
      return answer(envelope);
    },
    hostname: 'relay.example.com',
    lifetimeMs: QUEUE_DEFAULTS.lifetimeMs,
    retry: QUEUE_DEFAULTS.retry,
    concurrency: 4,
    delayWarningMs,
    logger: pino({ level: 'silent' }),
    metrics: t.metrics,
    random: () => 0,
    controlPollMs: 60_000,
  });
  s.start();
  open.push({ t, s });
  // each report once (one that cannot be delivered is tried again)
  const reports = () => [...new Set(calls.filter((c) => c.envelope.mailFrom === '').map((c) => c.message.toString()))];
  return { ...t, scheduler: s, calls, reports, enqueue: (e: EnqueueEnvelope, m = MESSAGE) => t.spool.enqueue(e, m) };
}

const idle = (x: { scheduler: Scheduler; spool: TestSpool['spool'] }) => x.scheduler.active === 0 && x.spool.size.messages === 0;

test('the DSN request is handed to the upstream with the envelope, per recipient', async () => {
  const x = await setup(() => ok);
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'b@example.net'], ret: 'HDRS', envid: 'abc', rcptDsn: [{ notify: ['FAILURE'], orcpt: 'rfc822;a@example.net' }, {}] });
  await until(() => idle(x), 'delivery');
  assert.deepEqual(x.calls[0]!.envelope.dsn, { ret: 'HDRS', envid: 'abc', recipients: [{ notify: ['FAILURE'], orcpt: 'rfc822;a@example.net' }, {}] });
  assert.deepEqual(x.reports(), []);
});

test('NOTIFY=NEVER: a permanently refused recipient is not reported; without NOTIFY it is', async () => {
  const x = await setup((e) => (e.rcptTo.includes('gone@example.net') ? gone('gone@example.net') : e.rcptTo.includes('lost@example.net') ? gone('lost@example.net') : ok));
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['gone@example.net', 'lost@example.net'], rcptDsn: [{ notify: ['NEVER'] }, {}] });
  await until(() => idle(x) && x.reports().length === 1, 'one report');
  assert.doesNotMatch(x.reports()[0]!, /gone@example\.net/);
  assert.match(x.reports()[0]!, /Final-Recipient: rfc822; lost@example\.net\r\nAction: failed/);
});

test('NOTIFY=SUCCESS to an upstream that did not take the request: a "relayed" notice with ENVID and ORCPT', async () => {
  const x = await setup(() => ok);
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'b@example.net'], envid: 'env-42', rcptDsn: [{ notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;A@Example.net' }, {}] });
  await until(() => idle(x) && x.reports().length === 1, 'the relayed notice');
  const r = x.reports()[0]!;
  assert.match(r, /\r\nOriginal-Envelope-Id: env-42\r\nReporting-MTA: dns; relay\.example\.com\r\n/);
  assert.match(r, /\r\nOriginal-Recipient: rfc822; A@Example\.net\r\nFinal-Recipient: rfc822; a@example\.net\r\nAction: relayed\r\nStatus: 2\.0\.0\r\nDiagnostic-Code: smtp; 250 2\.0\.0 Ok: queued as up-1\r\n/);
  assert.doesNotMatch(r, /b@example\.net/, 'only the recipient that asked');
  assert.match(r, /Content-Type: text\/rfc822-headers/);
  assert.doesNotMatch(r, /body line/);
  assert.equal(await counter(x.registry, 'smtp_relay_queue_notifications_total', { kind: 'relayed' }), 1);
});

test('NOTIFY=SUCCESS to an upstream that took the request: the relay sends no notice of its own', async () => {
  const x = await setup(() => ({ ...ok, dsnPassed: true }));
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net'], rcptDsn: [{ notify: ['SUCCESS'] }] });
  await until(() => idle(x), 'delivery');
  assert.deepEqual(x.reports(), []);
});

test('a message from the null sender hands its DSN request on as given, and gets no "relayed" notice', async () => {
  const x = await setup(() => ok);
  await x.enqueue({ mailFrom: '', rcptTo: ['a@example.net'], envid: 'pf-1', rcptDsn: [{ notify: ['SUCCESS'] }] });
  await until(() => idle(x), 'delivery');
  assert.deepEqual(x.calls[0]!.envelope.dsn, { envid: 'pf-1', recipients: [{ notify: ['SUCCESS'] }] });
  assert.deepEqual(x.reports().filter((r) => r.includes('Action:')), []);
  assert.equal(x.calls.length, 1, 'nothing but the message itself');
});

test('a delay warning only for recipients whose NOTIFY includes DELAY (or who gave none)', async () => {
  const x = await setup(() => down, 10 * MIN);
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['quiet@example.net', 'delay@example.net'], rcptDsn: [{ notify: ['FAILURE'] }, { notify: ['DELAY'] }] });
  await x.enqueue({ mailFrom: 'other@example.com', rcptTo: ['q2@example.net'], rcptDsn: [{ notify: ['SUCCESS', 'FAILURE'] }] });
  for (let i = 0; i < 6; i++) {
    await until(() => x.scheduler.active === 0, 'attempt');
    x.clock.advance(5 * MIN);
    await new Promise((r) => setTimeout(r, 10));
  }
  await until(() => x.scheduler.active === 0, 'attempts');
  const warnings = x.reports().filter((r) => /Action: delayed/.test(r));
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /To: <app@example\.com>/);
  assert.match(warnings[0]!, /Final-Recipient: rfc822; delay@example\.net/);
  assert.doesNotMatch(warnings[0]!, /quiet@example\.net/);
});

test('RET=FULL returns the whole message in a failure report; RET=HDRS only its header section', async () => {
  const x = await setup((e) => gone(e.rcptTo[0]!));
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['full@example.net'], ret: 'FULL' });
  await x.enqueue({ mailFrom: 'app@example.com', rcptTo: ['hdrs@example.net'], ret: 'HDRS' });
  await until(() => idle(x) && x.reports().length === 2, 'two reports');
  const full = x.reports().find((r) => r.includes('full@example.net'))!;
  const hdrs = x.reports().find((r) => r.includes('hdrs@example.net'))!;
  assert.match(full, /Content-Type: message\/rfc822\r\n[^]*Subject: hello\r\n[^]*\r\n\r\nbody line\r\n/);
  assert.match(hdrs, /Content-Type: text\/rfc822-headers\r\n/);
  assert.doesNotMatch(hdrs, /body line/);
});

test('a message from the null sender that fails permanently produces no report, whatever its NOTIFY', async () => {
  const x = await setup((e) => gone(e.rcptTo[0]!));
  await x.enqueue({ mailFrom: '', rcptTo: ['gone@example.net'], rcptDsn: [{ notify: ['SUCCESS', 'FAILURE', 'DELAY'] }] });
  await until(() => idle(x), 'removal');
  assert.equal(x.calls.length, 1);
  assert.equal(await counter(x.registry, 'smtp_relay_queue_notifications_total'), 0);
});

test('RET=FULL of a message over the limit returns its headers and says so', () => {
  const big = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), Buffer.alloc(MAX_RETURNED_BYTES, 'a')]);
  const text = buildDsn({ kind: 'failed', hostname: 'relay.example.com', to: 'app@example.com', queueId: 'q', arrival: 0, now: 0, recipients: [{ address: 'x@example.net', diagnostic: '550 5.1.1 no' }], original: big, ret: 'FULL' }).toString();
  assert.match(text, /only its header section is returned/);
  assert.match(text, /Content-Type: text\/rfc822-headers/);
  assert.ok(text.length < 10_000);
});
