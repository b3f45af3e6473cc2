// relay/policy/headers.ts is the one reader of originator fields: the sender check and
// the DKIM key choice must read every message alike. The cases below are messages on
// which the relay's two former readers (one in relay/message.ts, one in relay/dkim.ts)
// disagreed.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decodedReading, fromAddresses, fromDomains, valueAddresses } from '../../../relay/policy/headers.js';
import { decodeEncodedWords } from '../../../relay/internals.js';
import { selectDkimKey } from '../../../relay/dkim.js';

const crlf = (s: string) => Buffer.from(s.replace(/\n/g, '\r\n'));
const keys = [
  { domain: 'a.example', selector: 'a' },
  { domain: 'bank.example', selector: 'bank' },
];

describe('one reader for the sender check and the DKIM key', () => {
  it('a message that starts with an empty line has no header: no From for the check, and no DKIM domain from the body', () => {
    const m = crlf('\nFrom: someone@bank.example\n\nbody\n');
    assert.equal(fromAddresses(m), null);
    // the former DKIM reader took the body's "From:" line as a header and picked bank.example
    assert.deepEqual(fromDomains(m), []);
    assert.equal(selectDkimKey(keys, fromDomains(m)), undefined);
  });

  it('an address hidden in an RFC 2047 encoded display name is seen by both the check and the key choice', () => {
    const m = crlf('From: =?utf-8?q?ceo=40bank=2Eexample?= <alice@a.example>\nSubject: x\n\nbody\n');
    assert.deepEqual(fromAddresses(m), ['alice@a.example', 'ceo@bank.example']);
    // the former DKIM reader parsed the raw field only and saw a.example alone
    assert.deepEqual(fromDomains(m), ['a.example', 'bank.example']);
    assert.equal(selectDkimKey(keys, fromDomains(m))?.selector, 'a', 'the mailbox comes first, so its domain is tried first');
  });

  it('a first line "From ..." (mbox) is no header for either', () => {
    const m = crlf('From someone@bank.example Mon Jan 1 00:00:00 2026\nFrom: alice@a.example\n\nbody\n');
    assert.equal(fromAddresses(m), null);
    assert.deepEqual(fromDomains(m), []);
  });

  it('an ordinary From: gives the same domain to both, IDN in punycode', () => {
    const m = crlf('From: "Billing, Inc." <Billing@Bücher.example>\n\nbody\n');
    assert.deepEqual(fromAddresses(m), ['billing@bücher.example']);
    assert.deepEqual(fromDomains(m), ['xn--bcher-kva.example']);
  });
});

describe('decodedReading: a value libmime cannot change is not run through it', () => {
  it('equals libmime decodeWords for values with and without encoded-words (and for random ones)', () => {
    const fixed = [
      'Alice <alice@a.example>',
      '=?utf-8?q?ceo=40bank=2Eexample?= <alice@a.example>',
      '=?utf-8?B?Y2VvQGJhbmsuZXhhbXBsZQ==?= =?utf-8?B?IDxhQGIuZXhhbXBsZT4=?=',
      '=?bad <alice@a.example>',
      'x =? y ?= <alice@a.example>',
      '__JOIN__ <alice@a.example>',
      'a __\0JOIN\0__ b <alice@a.example>',
      '?= <alice@a.example>',
      '',
    ];
    let seed = 17;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const alphabet = ['=', '?', 'q', 'Q', 'b', 'B', '_', '\0', 'J', 'O', 'I', 'N', ' ', '<', '>', '@', 'a', '.', '"', 'ü', '\t', '(', ')'];
    const random = Array.from({ length: 3000 }, () => Array.from({ length: Math.floor(rnd() * 30) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join(''));
    let skipped = 0;
    for (const v of [...fixed, ...random]) {
      let expected: string;
      try {
        expected = decodeEncodedWords(v);
      } catch {
        expected = v;
      }
      assert.equal(decodedReading(v), expected, JSON.stringify(v));
      if (!v.includes('=?') && !v.includes('\0')) skipped++;
    }
    assert.ok(skipped > 100, 'the random values include many without "=?" or NUL');
    // why the NUL matters: libmime's join marker is removed even where no encoded-word is
    assert.notEqual(decodeEncodedWords('a __\0JOIN\0__ b'), 'a __\0JOIN\0__ b');
  });

  it('From: with and without encoded-words gives the addresses of both readings', () => {
    assert.deepEqual(fromAddresses(crlf('From: Alice <alice@a.example>\n\nbody\n')), ['alice@a.example']);
    assert.deepEqual(fromAddresses(crlf('From: "=?utf-8?q?x=22_=3Cceo=40bank=2Eexample=3E?=" <alice@a.example>\n\nbody\n')), ['alice@a.example', 'ceo@bank.example']);
  });
});

describe('valueAddresses: a parsed value is remembered', () => {
  it('gives the same answer remembered as parsed afresh, frozen so no caller can change it', () => {
    const values = ['Bench <bench@example.com>', '"ceo@bank.example" <alice@a.example>', 'not an address', `Long ${'x'.repeat(600)} <a@b.example>`, ''];
    for (const v of values) {
      const first = valueAddresses(v);
      const again = valueAddresses(v);
      assert.deepEqual(again, first, v);
      if (first) assert.ok(Object.isFrozen(first));
    }
    // the mailbox, then whatever looks like an address (repeats are dropped by the caller)
    assert.deepEqual(valueAddresses('"ceo@bank.example" <alice@a.example>'), ['alice@a.example', 'ceo@bank.example', 'alice@a.example']);
    assert.equal(valueAddresses('not an address'), null);
    // more distinct values than it keeps: still right for every one
    for (let i = 0; i < 1500; i++) assert.deepEqual(valueAddresses(`U${i} <u${i}@a.example>`), [`u${i}@a.example`, `u${i}@a.example`]);
    assert.deepEqual(fromAddresses(crlf('From: Bench <bench@example.com>\n\nbody\n')), ['bench@example.com']);
  });
});
