// The DSN parameters of RFC 3461 as the MAIL and RCPT phases read them (values arrive
// xtext-decoded from smtp-server), which notices a recipient asked for, and who may use
// the null sender.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseMailDsn, parseRcptDsn, wantsNotice, dsnParamsIn, encodeXText, rcptDsnArgs, MAIL_DSN_PARAMS } from '../../../relay/policy/dsn-params.js';
import { nullSenderAllowed, parseSenderPattern, type SenderPattern } from '../../../relay/policy/senders.js';

const ok = <T>(r: { ok: T } | { error: string }): T => {
  assert.ok('ok' in r, 'error' in r ? r.error : '');
  return r.ok;
};
const err = (r: { ok: unknown } | { error: string }): string => {
  assert.ok('error' in r, 'expected an error');
  return r.error;
};

describe('MAIL parameters RET and ENVID', () => {
  test('RET=FULL and RET=HDRS are read in any case, with an ENVID', () => {
    assert.deepEqual(ok(parseMailDsn({ RET: 'hdrs', ENVID: 'abc' })), { ret: 'HDRS', envid: 'abc' });
    assert.deepEqual(ok(parseMailDsn({ RET: 'FULL' })), { ret: 'FULL' });
    assert.deepEqual(ok(parseMailDsn(false)), {});
    assert.deepEqual(ok(parseMailDsn({ SIZE: '100', BODY: '8BITMIME' })), {});
  });
  test('a RET other than FULL or HDRS, or without a value, is refused with the reason', () => {
    assert.match(err(parseMailDsn({ RET: 'BODY' })), /^5\.5\.4 Invalid RET parameter: it must be RET=FULL or RET=HDRS/);
    assert.match(err(parseMailDsn({ RET: true })), /Invalid RET/);
  });
  test('an ENVID of up to 100 xtext characters is kept; a longer one, one with a space or an empty one is refused', () => {
    assert.equal(ok(parseMailDsn({ ENVID: 'a'.repeat(100) })).envid, 'a'.repeat(100));
    // "+" counts as "+2B" once encoded: 34 of them are 102 characters
    assert.match(err(parseMailDsn({ ENVID: '+'.repeat(34) })), /longer than 100/);
    assert.match(err(parseMailDsn({ ENVID: 'a'.repeat(101) })), /longer than 100/);
    assert.match(err(parseMailDsn({ ENVID: 'a b' })), /printable US-ASCII/);
    assert.match(err(parseMailDsn({ ENVID: 'é' })), /printable US-ASCII/);
    assert.match(err(parseMailDsn({ ENVID: true })), /ENVID/);
  });
});

describe('RCPT parameters NOTIFY and ORCPT', () => {
  test('NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY; ORCPT is addr-type;address', () => {
    assert.deepEqual(ok(parseRcptDsn({ NOTIFY: 'success,FAILURE', ORCPT: 'rfc822;x@example.net' })), { notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;x@example.net' });
    assert.deepEqual(ok(parseRcptDsn({ NOTIFY: 'NEVER' })), { notify: ['NEVER'] });
    assert.deepEqual(ok(parseRcptDsn({ NOTIFY: 'DELAY' })), { notify: ['DELAY'] });
  });
  test('NEVER with another value, a repeated value, an unknown or empty one are refused', () => {
    assert.match(err(parseRcptDsn({ NOTIFY: 'NEVER,FAILURE' })), /NEVER cannot be combined/);
    assert.match(err(parseRcptDsn({ NOTIFY: 'FAILURE,FAILURE' })), /repeated/);
    assert.match(err(parseRcptDsn({ NOTIFY: 'SUCCESS,BOUNCE' })), /must be NEVER or a comma list/);
    assert.match(err(parseRcptDsn({ NOTIFY: 'SUCCESS,' })), /must be NEVER or a comma list/);
    assert.match(err(parseRcptDsn({ NOTIFY: true })), /NOTIFY/);
  });
  test('an ORCPT without a type, without an address, with spaces or over 500 characters is refused', () => {
    for (const bad of ['x@example.net', ';x@example.net', 'rfc822;', 'rfc 822;x@example.net', 'rfc822;x @example.net']) {
      assert.match(err(parseRcptDsn({ ORCPT: bad })), /Invalid ORCPT parameter: it must be addr-type;address/, bad);
    }
    assert.match(err(parseRcptDsn({ ORCPT: `rfc822;${'a'.repeat(490)}@example.net` })), /longer than 500/);
  });
  test('the DSN parameters present are named as given', () => {
    assert.deepEqual(dsnParamsIn({ SIZE: '1', ret: 'FULL', ENVID: 'x' }, MAIL_DSN_PARAMS), ['ret', 'ENVID']);
    assert.deepEqual(dsnParamsIn(false, MAIL_DSN_PARAMS), []);
  });
});

describe('which notices a recipient asked for', () => {
  test('without NOTIFY: failure and delay, never success (RFC 3461 4.1)', () => {
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((k) => wantsNotice(undefined, k)), [true, true, false]);
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((k) => wantsNotice({ orcpt: 'rfc822;a@b.c' }, k)), [true, true, false]);
  });
  test('NOTIFY=NEVER: none; NOTIFY=SUCCESS,FAILURE: no delay warning', () => {
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((k) => wantsNotice({ notify: ['NEVER'] }, k)), [false, false, false]);
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((k) => wantsNotice({ notify: ['SUCCESS', 'FAILURE'] }, k)), [true, false, true]);
  });
});

describe('the null sender', () => {
  const patterns = (...p: string[]) => p.map((x) => parseSenderPattern(x) as SenderPattern);
  test('a user with a MAILER-DAEMON@ address listed may use it', () => {
    assert.ok(nullSenderAllowed(patterns('app@example.com', 'MAILER-DAEMON@app.example.com')));
    assert.ok(nullSenderAllowed(patterns('mailer-daemon@host.example.com')));
  });
  test('a user with other addresses only may not, not even with *@domain (an explicit opt-in)', () => {
    assert.ok(!nullSenderAllowed(patterns('app@example.com', 'postmaster@example.com')));
    assert.ok(!nullSenderAllowed(patterns('*@example.com')));
  });
});

describe('RCPT parameters handed on to an upstream that takes DSN', () => {
  test('xtext encodes "+", "=", spaces and non-ASCII bytes as +XX and leaves the rest', () => {
    assert.equal(encodeXText('a+b=c'), 'a+2Bb+3Dc');
    assert.equal(encodeXText('plain;text~!'), 'plain;text~!');
    assert.equal(encodeXText('a b\u00e9'), 'a+20b+C3+A9');
  });

  test('NOTIFY and ORCPT as given, the address xtext-encoded again; nothing added', () => {
    const req = ok(parseRcptDsn({ NOTIFY: 'success,delay', ORCPT: 'rfc822;Original+ok@example.net' }));
    assert.equal(rcptDsnArgs(req), ' NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Original+2Bok@example.net');
    assert.equal(rcptDsnArgs(ok(parseRcptDsn({ NOTIFY: 'NEVER' }))), ' NOTIFY=NEVER');
    assert.equal(rcptDsnArgs(ok(parseRcptDsn({ ORCPT: 'utf-8;a=b@example.net' }))), ' ORCPT=utf-8;a+3Db@example.net');
    assert.equal(rcptDsnArgs({}), '');
    assert.equal(rcptDsnArgs(undefined), '');
  });
});
