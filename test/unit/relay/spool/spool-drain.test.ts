// The scheduler's drain (relay/control.ts starts it) against a real spool with a fake
// clock: deferred messages are tried now, one the upstream defers goes to the hand-off
// (only its recipients still to be delivered), one nobody takes is tried again within
// DRAIN_RETRY_MS; and the receiving spool's adopt keeps the arrival time and attempts.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import pino from 'pino';
import { decodeHandoff, encodeHandoff, pendingPart } from '../../../../relay/handoff.js';
import { DRAIN_RETRY_MS, Scheduler } from '../../../../relay/spool/scheduler.js';
import { QUEUE_DEFAULTS } from '../../../../relay/spool/settings.js';
import type { EntryState, StoredEnvelope } from '../../../../relay/spool/types.js';
import type { DeliveryOutcome } from '../../../../relay/upstream.js';
import { accepted, down, FakeClock, MESSAGE, scriptedDeliver, tempSpool, until, type Call, type TestSpool } from './fake.js';

let open: { t: TestSpool; s?: Scheduler }[] = [];
afterEach(async () => {
  for (const { t, s } of open) {
    await s?.stop(0);
    await t.cleanup();
  }
  open = [];
});

async function setup(answer: (c: Call, n: number) => DeliveryOutcome) {
  const t = await tempSpool(new FakeClock());
  const d = scriptedDeliver(answer);
  const s = new Scheduler({
    spool: t.spool,
    deliver: d.deliver,
    hostname: 'relay.example.com',
    lifetimeMs: QUEUE_DEFAULTS.lifetimeMs,
    retry: QUEUE_DEFAULTS.retry,
    concurrency: 4,
    delayWarningMs: 0,
    logger: pino({ level: 'silent' }),
    metrics: t.metrics,
    random: () => 0,
    controlPollMs: 60_000,
  });
  s.start();
  open.push({ t, s });
  return { ...t, scheduler: s, calls: d.calls };
}

const refusedTemp = (who: string[]): DeliveryOutcome => ({ kind: 'temporary', code: 450, message: '4.2.1 later', refused: who });

test('a drain tries every deferred message now and hands what the upstream defers to a sibling: only the recipients still to be delivered', async () => {
  let upstreamUp = false;
  const x = await setup((c) => (upstreamUp && !c.envelope.rcptTo.includes('slow@example.net') ? accepted : c.envelope.rcptTo.includes('slow@example.net') && upstreamUp ? refusedTemp(['slow@example.net']) : down));
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'slow@example.net'], rcptDsn: [{ notify: ['FAILURE'] }, { orcpt: 'rfc822;slow@example.net' }], envid: 'E1' }, MESSAGE);
  await until(() => x.calls.length === 1 && x.scheduler.active === 0, 'the first attempt');
  const id = [...x.spool.ids()][0]!;
  assert.equal(x.spool.get(id)!.state.recipients[0]!.status, 'failed-temporary');
  const created = x.spool.get(id)!.envelope.created;
  // past the moments after an upstream failure in which a drain goes straight to a sibling
  x.clock.advance(6000);
  // the upstream comes back for a@ only; slow@ keeps failing
  upstreamUp = true;
  const handed: { envelope: StoredEnvelope; state: EntryState; body: Buffer }[] = [];
  x.scheduler.setDrain({
    handoff: async (e, s, b) => {
      handed.push({ ...pendingPart(e, s), body: b });
      return true;
    },
  });
  await until(() => handed.length === 1 && x.spool.size.messages === 0, 'the hand-off and the removal');
  // the backoff (1 minute) was not waited for: the clock stood still
  assert.deepEqual(x.calls.map((c) => c.envelope.rcptTo), [['a@example.net', 'slow@example.net'], ['a@example.net', 'slow@example.net'], ['a@example.net']]);
  const h = handed[0]!;
  assert.deepEqual(h.envelope.rcptTo, ['slow@example.net'], 'the delivered recipient stays behind');
  assert.deepEqual(h.envelope.rcptDsn, [{ orcpt: 'rfc822;slow@example.net' }]);
  assert.equal(h.envelope.envid, 'E1');
  assert.equal(h.envelope.created, created, 'the arrival time travels: the lifetime keeps counting');
  assert.equal(h.state.recipients[0]!.attempts, 2);
  assert.equal(h.state.recipients[0]!.status, 'failed-temporary');
  assert.ok(h.body.equals(MESSAGE));
  // the wire format carries all of it
  const back = decodeHandoff(encodeHandoff(h.envelope, h.state, h.body));
  assert.deepEqual(back.envelope, h.envelope);
  assert.deepEqual(back.state.recipients.map((r) => [r.address, r.status, r.attempts]), [['slow@example.net', 'failed-temporary', 2]]);
  assert.ok(back.body.equals(MESSAGE));
});

test('during a drain with the upstream down, a message no sibling takes is offered again within DRAIN_RETRY_MS, and taken later', async () => {
  const x = await setup(() => down);
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net'] }, MESSAGE);
  await until(() => x.calls.length === 1 && x.scheduler.active === 0, 'the first attempt');
  let offers = 0;
  let take = false;
  x.scheduler.setDrain({
    handoff: async () => {
      offers++;
      return take;
    },
  });
  await until(() => offers === 1 && x.scheduler.active === 0, 'the first offer');
  x.clock.advance(DRAIN_RETRY_MS - 1);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(offers, 1, 'not before DRAIN_RETRY_MS');
  take = true;
  x.clock.advance(1);
  await until(() => offers === 2 && x.spool.size.messages === 0, 'the second offer taken');
});

test('a held message is handed over during a drain, still held, and not delivered', async () => {
  const x = await setup(() => down);
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net'] }, MESSAGE);
  await until(() => x.calls.length === 1 && x.scheduler.active === 0, 'the first attempt');
  const id = [...x.spool.ids()][0]!;
  assert.equal(await x.scheduler.hold(id), 'held');
  const states: EntryState[] = [];
  x.scheduler.setDrain({
    handoff: async (e, s) => {
      states.push(pendingPart(e, s).state);
      return true;
    },
  });
  await until(() => states.length === 1 && x.spool.size.messages === 0, 'the hand-off');
  assert.equal(states[0]!.held, true);
  assert.equal(x.calls.length, 1, 'a held message is not delivered by the drain');
});

test('adopt: the receiving spool keeps the envelope (arrival time, DSN) and state, stores a second copy of the same message once', async () => {
  const a = await tempSpool(new FakeClock(Date.UTC(2026, 0, 1)));
  const b = await tempSpool(new FakeClock(Date.UTC(2026, 0, 2)));
  open.push({ t: a }, { t: b });
  const id = await a.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['x@example.net'], ret: 'HDRS' }, MESSAGE);
  const e = a.spool.get(id)!;
  const state: EntryState = { held: false, warned: true, recipients: [{ address: 'x@example.net', status: 'failed-temporary', attempts: 3, nextAttempt: e.envelope.created + 5000, lastError: '451 later' }] };
  const first = await b.spool.adopt(e.envelope, state, MESSAGE);
  assert.deepEqual(first, { id, duplicate: false });
  const got = b.spool.get(id)!;
  assert.equal(got.envelope.created, Date.UTC(2026, 0, 1), 'not the receiver clock');
  assert.equal(got.envelope.ret, 'HDRS');
  assert.deepEqual(got.state, state);
  assert.ok((await b.spool.body(id)).equals(MESSAGE));
  assert.deepEqual(await b.spool.adopt(e.envelope, state, MESSAGE), { id, duplicate: true });
  assert.equal(b.spool.size.messages, 1);
  // another message under an id the receiver holds: stored under a new id
  const other = await b.spool.adopt({ ...e.envelope, created: e.envelope.created + 1 }, state, MESSAGE);
  assert.equal(other.duplicate, false);
  assert.notEqual(other.id, id);
  assert.equal(b.spool.size.messages, 2);
  // and it survives a reopen
  await b.spool.close();
  const reopened = await tempSpool(new FakeClock(), undefined, b.dir);
  open.push({ t: reopened });
  assert.equal(reopened.spool.get(id)?.state.recipients[0]?.attempts, 3);
});

test('decodeHandoff refuses what is not a hand-off, naming the problem', () => {
  const env: StoredEnvelope = { id: '0000abcde0123456789', created: 1, mailFrom: 'a@example.com', rcptTo: ['x@example.net'] };
  const st: EntryState = { held: false, warned: false, recipients: [{ address: 'x@example.net', status: 'pending', attempts: 0, nextAttempt: 1 }] };
  assert.throws(() => decodeHandoff(Buffer.from('no newline')), /no header line/);
  assert.throws(() => decodeHandoff(Buffer.from('{bad\nbody')), /not JSON/);
  assert.throws(() => decodeHandoff(encodeHandoff({ ...env, rcptTo: [] }, { ...st, recipients: [] }, MESSAGE)), /envelope incomplete/);
  assert.throws(() => decodeHandoff(encodeHandoff(env, { ...st, recipients: [{ ...st.recipients[0]!, status: 'delivered' }] }, MESSAGE)), /recipient 0/);
  assert.throws(() => decodeHandoff(encodeHandoff(env, { ...st, recipients: [{ ...st.recipients[0]!, address: 'y@example.net' }] }, MESSAGE)), /recipient 0/);
  assert.throws(() => decodeHandoff(encodeHandoff(env, st, Buffer.alloc(0))), /empty message/);
  assert.throws(() => decodeHandoff(encodeHandoff({ ...env, ret: 'ALL' as 'FULL' }, st, MESSAGE)), /ret/);
  assert.equal(decodeHandoff(encodeHandoff(env, st, MESSAGE)).envelope.id, env.id);
});
