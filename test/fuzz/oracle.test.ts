// The fuzz target's oracles catch what they are meant to (a fuzzer whose oracle never fires proves nothing).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { messageRead, mustRefuse, parseReplies } from './oracle.js';

test('reply lines: a well-formed single and multi-line reply pass; malformed ones are each reported', () => {
  assert.deepEqual(parseReplies('220 relay ESMTP\r\n250-relay\r\n250-PIPELINING\r\n250 SIZE 1\r\n', true).errors, []);
  for (const bad of ['2200 x\r\n', '600 x\r\n', '250x\r\n', '250 caf\xe9\r\n', '250-a\r\n251 b\r\n', '250 a\n', '250 a', '250-a\r\n', 'hello\r\n']) {
    assert.ok(parseReplies(bad, true).errors.length > 0, JSON.stringify(bad));
  }
});

test('the message smtp-server reads ends at the first CRLF.CRLF, is unstuffed, and is empty after a first line "."', () => {
  assert.equal(messageRead('a\r\n..b\r\n.\r\nRSET\r\n\r\n.\r\n'), 'a\r\n.b\r\n');
  assert.equal(messageRead('.\r\nFrom: x\r\n\r\n.\r\n'), '');
  assert.equal(messageRead('..\r\nx\r\n.\r\n'), '.\r\nx\r\n');
});

test('must refuse: bare LF/CR, NUL, no From:, a literal foreign originator, oversize; a good message may pass', () => {
  const good = 'From: Alice <alice@example.com>\r\nSubject: x\r\n\r\nbody\r\n';
  assert.equal(mustRefuse(good, 65536, 'alice@example.com'), null);
  assert.equal(mustRefuse(good.replace('body', 'bo\ndy'), 65536, 'alice@example.com'), 'bare_lf');
  assert.equal(mustRefuse(good.replace('body', 'bo\rdy'), 65536, 'alice@example.com'), 'bare_cr');
  assert.equal(mustRefuse(good.replace('body', 'b\0'), 65536, 'alice@example.com'), 'nul_byte');
  assert.equal(mustRefuse('Subject: x\r\n\r\nFrom: alice@example.com\r\n', 65536, 'alice@example.com'), 'no_from_field');
  assert.equal(mustRefuse(good.replace('Subject: x', 'Sender:\r\n ceo@bank.example'), 65536, 'alice@example.com'), 'foreign_sender');
  assert.equal(mustRefuse('FROM : "ceo@bank.example" <alice@example.com>\r\n\r\n', 65536, 'alice@example.com'), 'foreign_from');
  assert.equal(mustRefuse(good + 'x'.repeat(70_000), 65536, 'alice@example.com'), 'too_large');
});
