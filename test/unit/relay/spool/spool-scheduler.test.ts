// The scheduler against a real spool (temporary directory) with a fake clock and a
// scripted upstream: which recipients are tried when, and what is reported.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';
import pino from 'pino';
import { Scheduler } from '../../../../relay/spool/scheduler.js';
import { QUEUE_DEFAULTS } from '../../../../relay/spool/settings.js';
import { SpoolFullError } from '../../../../relay/spool/store.js';
import type { DeliveryOutcome } from '../../../../relay/upstream.js';
import { accepted, counter, down, FakeClock, MESSAGE, scriptedDeliver, tempSpool, until, type Call, type TestSpool } from './fake.js';

const MIN = 60_000;
let open: { t: TestSpool; s: Scheduler }[] = [];
afterEach(async () => {
  for (const { t, s } of open) {
    await s.stop(0);
    await t.cleanup();
  }
  open = [];
});

async function setup(answer: (c: Call, n: number) => DeliveryOutcome, opts: Partial<{ concurrency: number; delayWarningMs: number; lifetimeMs: number }> = {}) {
  const t = await tempSpool(new FakeClock());
  const d = scriptedDeliver(answer);
  const s = new Scheduler({
    spool: t.spool,
    deliver: d.deliver,
    hostname: 'relay.example.com',
    lifetimeMs: opts.lifetimeMs ?? QUEUE_DEFAULTS.lifetimeMs,
    retry: QUEUE_DEFAULTS.retry,
    concurrency: opts.concurrency ?? 4,
    delayWarningMs: opts.delayWarningMs ?? 0,
    logger: pino({ level: 'silent' }),
    metrics: t.metrics,
    random: () => 0,
    controlPollMs: 60_000,
  });
  s.start();
  open.push({ t, s });
  return { ...t, scheduler: s, calls: d.calls };
}

const refused = (kind: 'temporary' | 'permanent', who: string[]): DeliveryOutcome => ({
  kind,
  code: kind === 'permanent' ? 550 : 451,
  message: `${kind === 'permanent' ? '5.1.1' : '4.2.0'} Upstream refused recipient(s) ${who.map((w) => `<${w}>`).join(', ')}`,
  refused: who,
});

const settled = (x: { spool: TestSpool['spool']; scheduler: Scheduler }) => x.scheduler.active === 0;

test('an accepted message is delivered once, byte for byte, and leaves the spool', async () => {
  const x = await setup(() => accepted);
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'b@example.net'] }, MESSAGE);
  await until(() => x.spool.size.messages === 0, 'removal');
  assert.equal(x.calls.length, 1);
  assert.deepEqual(x.calls[0]!.envelope, { mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'b@example.net'] });
  assert.ok(x.calls[0]!.message.equals(MESSAGE));
  assert.equal(await counter(x.registry, 'smtp_relay_queue_deliveries_total', { result: 'delivered' }), 2);
});

test('when the upstream refuses one recipient permanently, the others get the message at once and the sender one report', async () => {
  const x = await setup((c) => (c.envelope.rcptTo.includes('gone@example.net') ? refused('permanent', ['gone@example.net']) : accepted));
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'gone@example.net', 'b@example.net'] }, MESSAGE);
  await until(() => x.calls.length === 3 && settled(x) && x.spool.size.messages === 0, 'delivery and report');
  assert.deepEqual(x.calls.map((c) => c.envelope), [
    { mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'gone@example.net', 'b@example.net'] },
    { mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'b@example.net'] },
    { mailFrom: '', rcptTo: ['app@example.com'] },
  ]);
  const report = x.calls[2]!.message.toString();
  assert.match(report, /Final-Recipient: rfc822; gone@example\.net\r\nAction: failed\r\nStatus: 5\.1\.1/);
  assert.ok(!report.includes('Final-Recipient: rfc822; a@example.net'));
  assert.equal(await counter(x.registry, 'smtp_relay_queue_deliveries_total', { result: 'bounced' }), 1);
});

test('a temporarily refused recipient is retried alone, on the backoff schedule, until it is accepted', async () => {
  let tempFails = 3;
  const x = await setup((c) => (c.envelope.rcptTo.includes('slow@example.net') && tempFails-- > 0 ? refused('temporary', ['slow@example.net']) : accepted));
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net', 'slow@example.net'] }, MESSAGE);
  await until(() => x.calls.length === 2 && settled(x), 'first attempt');
  const t0 = x.clock.now();
  const seen: number[] = [];
  for (const step of [1, 2, 4]) {
    x.clock.advance(step * MIN - 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(x.calls.length, 2 + seen.length, `no attempt before ${step} min`);
    x.clock.advance(1);
    await until(() => x.calls.length === 3 + seen.length && settled(x), `retry after ${step} min`);
    seen.push((x.clock.now() - t0) / MIN);
  }
  assert.deepEqual(seen, [1, 3, 7]);
  assert.deepEqual(x.calls.slice(2).map((c) => c.envelope.rcptTo), [['slow@example.net'], ['slow@example.net'], ['slow@example.net']]);
  await until(() => x.spool.size.messages === 0, 'removal');
  // The first transaction was aborted at RCPT (all-or-nothing): a@ got it once, in the second.
  assert.deepEqual(x.calls.filter((c) => c.envelope.rcptTo.includes('a@example.net')).map((c) => c.envelope.rcptTo), [['a@example.net', 'slow@example.net'], ['a@example.net']]);
});

test('a message past its lifetime is bounced with 4.4.7 for its remaining recipients after one last attempt', async () => {
  const x = await setup(() => down, { lifetimeMs: 2 * 3_600_000 });
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net'] }, MESSAGE);
  // Bounded: at most 20 steps of an hour (the schedule tries 1+7 times in 2 h).
  for (let i = 0; i < 20 && x.spool.size.messages > 0 && !x.calls.some((c) => c.envelope.mailFrom === ''); i++) {
    await until(() => settled(x), 'attempt');
    x.clock.advance(30 * MIN);
    await new Promise((r) => setTimeout(r, 10));
  }
  await until(() => x.calls.some((c) => c.envelope.mailFrom === ''), 'the expiry report');
  const lastTry = x.calls.filter((c) => c.envelope.mailFrom !== '').length;
  assert.ok(lastTry >= 7 && lastTry <= 9, String(lastTry));
  const report = x.calls.find((c) => c.envelope.mailFrom === '')!.message.toString();
  assert.match(report, /Action: failed\r\nStatus: 4\.4\.7\r\nDiagnostic-Code: smtp; 4\.4\.7 Message expired after 2 h/);
  assert.equal(await counter(x.registry, 'smtp_relay_queue_deliveries_total', { result: 'expired' }), 1);
});

test('a message from the null sender is never reported on', async () => {
  const x = await setup(() => refused('permanent', ['gone@example.net']));
  await x.spool.enqueue({ mailFrom: '', rcptTo: ['gone@example.net'] }, MESSAGE);
  await until(() => x.spool.size.messages === 0 && settled(x), 'removal');
  assert.equal(x.calls.length, 1);
  assert.equal(await counter(x.registry, 'smtp_relay_queue_notifications_total'), 0);
});

test('after an upstream outage, the first accepted message brings the deferred ones back at once', async () => {
  let up = false;
  const x = await setup(() => (up ? accepted : down));
  for (let i = 0; i < 5; i++) await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: [`r${i}@example.net`] }, MESSAGE);
  await until(() => x.calls.length === 5 && settled(x), 'first attempts');
  up = true;
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['new@example.net'] }, MESSAGE);
  await until(() => x.spool.size.messages === 0, 'everything delivered without waiting for the backoff');
  assert.equal(x.calls.length, 11);
});

test('no more deliveries run at once than the concurrency allows', async () => {
  let running = 0;
  let peak = 0;
  const x = await setup(() => accepted, { concurrency: 3 });
  const slow = x.scheduler as unknown as { o: { deliver: (...a: unknown[]) => Promise<DeliveryOutcome> } };
  slow.o.deliver = async () => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 5));
    running--;
    return accepted;
  };
  await Promise.all(Array.from({ length: 12 }, (_, i) => x.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: [`r${i}@example.net`] }, MESSAGE)));
  await until(() => x.spool.size.messages === 0, 'all delivered');
  assert.equal(peak, 3);
});

test('hold keeps a message from delivery until release; retry brings a deferred one forward; delete removes it', async () => {
  let up = false;
  const x = await setup(() => (up ? accepted : down));
  const id = await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net'] }, MESSAGE);
  await until(() => x.calls.length === 1 && settled(x), 'first attempt');
  assert.equal(await x.scheduler.hold(id), 'held');
  up = true;
  assert.equal(await x.scheduler.retryNow(id), 'scheduled (still held: release it to deliver)');
  x.clock.advance(3 * MIN);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(x.calls.length, 1, 'held: not tried');
  assert.equal(await x.scheduler.release(id), 'released');
  await until(() => x.spool.size.messages === 0, 'delivered after release');
  up = false;
  const id2 = await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['b@example.net'] }, MESSAGE);
  await until(() => x.calls.length === 3 && settled(x), 'attempt of the second message');
  await x.scheduler.hold(id2);
  assert.equal(await x.scheduler.delete(id2), 'deleted');
  assert.equal(await x.scheduler.delete(id2), 'not found');
  assert.equal(x.spool.size.messages, 0);
});

test('a delay warning goes once to the sender of a message still waiting', async () => {
  const x = await setup(() => down, { delayWarningMs: 10 * MIN });
  await x.spool.enqueue({ mailFrom: 'app@example.com', rcptTo: ['a@example.net'] }, MESSAGE);
  for (let i = 0; i < 6; i++) {
    await until(() => settled(x), 'attempt');
    x.clock.advance(5 * MIN);
    await new Promise((r) => setTimeout(r, 10));
  }
  await until(() => settled(x), 'attempts');
  const warnings = x.calls.filter((c) => c.envelope.mailFrom === '' && /Action: delayed/.test(c.message.toString()));
  assert.ok(warnings.length >= 1);
  assert.equal(await counter(x.registry, 'smtp_relay_queue_notifications_total', { kind: 'delayed' }), 1);
});

test('a full spool refuses with a 452-ready error and counts the reason', async () => {
  const t = await tempSpool(new FakeClock(), { maxBytes: 1 << 20, maxMessages: 2, minFreeBytes: 0 });
  try {
    await t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, MESSAGE);
    await t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, MESSAGE);
    await assert.rejects(t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, MESSAGE), (err: SpoolFullError) => err.responseCode === 452 && err.message.startsWith('4.3.1 '));
    const big = await t.spool.checkSpace(2 << 20);
    assert.equal(big?.reason, 'max_messages');
    assert.equal(await counter(t.registry, 'smtp_relay_queue_full_total', { reason: 'max_messages' }), 1);
  } finally {
    await t.cleanup();
  }
});

test('when the database thread is gone, enqueue fails at once with a 451-ready error instead of hanging', async () => {
  const t = await tempSpool(new FakeClock());
  try {
    const w = (t.spool as unknown as { worker: { terminate(): Promise<number> } }).worker;
    await w.terminate();
    await until(() => (t.spool as unknown as { worker?: unknown }).worker === undefined, 'the spool to notice');
    await assert.rejects(t.spool.enqueue({ mailFrom: 'a@example.com', rcptTo: ['b@example.net'] }, MESSAGE), (err: Error & { responseCode?: number }) => err.responseCode === 451 && err.message.startsWith('4.3.0 '));
  } finally {
    await t.cleanup();
  }
});
