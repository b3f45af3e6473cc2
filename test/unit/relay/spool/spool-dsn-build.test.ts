import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildDsn, headerSection, MAX_HEADER_BYTES, statusOf } from '../../../../relay/spool/dsn.js';
import { MESSAGE } from './fake.js';

const base = {
  kind: 'failed' as const,
  hostname: 'relay.example.com',
  to: 'app@example.com',
  queueId: 'abc123',
  arrival: Date.UTC(2026, 0, 1),
  now: Date.UTC(2026, 0, 2),
  recipients: [{ address: 'gone@example.net', diagnostic: '550 5.1.1 Upstream refused recipient(s) <gone@example.net> (upstream said: 550 5.1.1 no such user)' }],
  original: MESSAGE,
};

test('the status code is read from the reply, with a fallback', () => {
  assert.equal(statusOf('550 5.1.1 no such user', '5.0.0'), '5.1.1');
  assert.equal(statusOf('550 mailbox unavailable', '5.0.0'), '5.0.0');
});

test('only the header section of the original goes into the report, cut at a line when huge', () => {
  assert.equal(headerSection(MESSAGE).toString(), MESSAGE.toString().split('\r\n\r\n')[0] + '\r\n');
  const big = Buffer.from('X-Long: ' + 'a'.repeat(100) + '\r\n');
  const huge = Buffer.concat([...Array.from({ length: 1000 }, () => big), Buffer.from('\r\nbody')]);
  const h = headerSection(huge);
  assert.ok(h.length <= MAX_HEADER_BYTES && h.subarray(-2).toString() === '\r\n');
});

test('a failure report is a multipart/report with a delivery-status part per recipient and the original headers', () => {
  const text = buildDsn(base).toString();
  const boundary = /boundary="([^"]+)"/.exec(text)![1]!;
  assert.match(text, /^From: Mail Delivery System <MAILER-DAEMON@relay\.example\.com>\r\n/);
  assert.match(text, /\r\nContent-Type: multipart\/report; report-type=delivery-status; boundary="/);
  assert.match(text, /\r\nAuto-Submitted: auto-replied\r\n/);
  assert.match(text, /\r\nFinal-Recipient: rfc822; gone@example\.net\r\nAction: failed\r\nStatus: 5\.1\.1\r\nDiagnostic-Code: smtp; 550 5\.1\.1/);
  assert.match(text, /Content-Type: text\/rfc822-headers\r\n[^]*Subject: hello\r\n/);
  assert.ok(!text.includes('body line'), 'the body is not included');
  assert.ok(text.endsWith(`\r\n--${boundary}--\r\n`));
  assert.equal(text.split(`--${boundary}\r\n`).length, 4);
  assert.ok(!/[^\r]\n/.test(text), 'every line ends in CRLF');
});

test('a delay report says the relay keeps trying and until when', () => {
  const text = buildDsn({ ...base, kind: 'delayed', expires: Date.UTC(2026, 0, 6) }).toString();
  assert.match(text, /\r\nAction: delayed\r\n/);
  assert.match(text, /Will-Retry-Until: Tue, 06 Jan 2026 00:00:00 \+0000/);
});

test('a report never goes to the null sender', () => {
  assert.throws(() => buildDsn({ ...base, to: '' }), /null sender/);
});

test('control characters in a reply cannot add header or report lines', () => {
  const text = buildDsn({ ...base, recipients: [{ address: 'x@example.net', diagnostic: '550 bad\r\nAction: delivered' }] }).toString();
  assert.ok(!text.includes('\r\nAction: delivered'));
});
