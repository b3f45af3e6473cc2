// Unit tests for the relay's policy pieces: passwords, users file, lockout, rate
// limit, sender patterns, CIDR sets, the bare LF/CR detector, From/Received.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CidrSet, canonicalIp } from '../../../relay/policy/access.js';
import { Lockout, MAX_KEYS, MAX_USERNAME_LENGTH, RateLimiter, userLockoutKey } from '../../../relay/policy/lockout.js';
import { fromAddresses } from '../../../relay/policy/headers.js';
import { receivedHeader } from '../../../relay/trace.js';
import { dummyHash, hashPassword, parseHash, verifyPassword } from '../../../relay/password.js';
import { parseSenderPattern, senderAllowed, type SenderPattern } from '../../../relay/policy/senders.js';
import { LineEndingCheck } from '../../../relay/policy/smuggling.js';
import { validateUsers } from '../../../relay/users.js';
import { ValidationError } from '../../../relay/validate.js';

describe('password hashes', () => {
  test('hash format and verification', async () => {
    const h = await hashPassword('s3cret-password', { N: 1024, r: 8, p: 1 });
    assert.match(h, /^scrypt\$1024\$8\$1\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}$/);
    const parsed = parseHash(h);
    assert.ok(typeof parsed !== 'string');
    assert.equal(await verifyPassword('s3cret-password', parsed), true);
    assert.equal(await verifyPassword('s3cret-passwore', parsed), false);
    assert.notEqual(await hashPassword('s3cret-password', { N: 1024, r: 8, p: 1 }), h, 'salted');
  });

  test('the default parameters are scrypt N=32768 r=8 p=1', async () => {
    assert.match(await hashPassword('x'), /^scrypt\$32768\$8\$1\$/);
  });

  test('malformed hashes are refused with a reason', () => {
    assert.match(String(parseHash('bcrypt$2y$10$abc')), /scrypt\$N\$r\$p\$salt\$hash/);
    assert.match(String(parseHash('scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==')), /power of two/);
    assert.match(String(parseHash(`scrypt$${2 ** 22}$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==`)), /power of two between/);
    assert.match(String(parseHash('scrypt$1024$8$1$!!$aGFzaGhhc2hoYXNoaGFzaA==')), /base64/);
  });

  test('an unknown user costs about what a wrong password costs', async () => {
    const real = parseHash(await hashPassword('pw'));
    assert.ok(typeof real !== 'string');
    const time = async (h: typeof real) => {
      const t = process.hrtime.bigint();
      await verifyPassword('wrong', h);
      return Number(process.hrtime.bigint() - t) / 1e6;
    };
    await time(dummyHash()); // warm up
    // interleaved, medians: a busy machine slows both alike instead of one run of either
    const wrongs: number[] = [];
    const unknowns: number[] = [];
    for (let i = 0; i < 7; i++) {
      wrongs.push(await time(real));
      unknowns.push(await time(dummyHash()));
    }
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const wrong = median(wrongs);
    const unknown = median(unknowns);
    assert.ok(unknown > wrong * 0.5 && unknown < wrong * 2, `unknown user ${unknown.toFixed(1)} ms vs wrong password ${wrong.toFixed(1)} ms`);
  });
});

describe('users file', () => {
  const hash = 'scrypt$1024$8$1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g=';
  test('valid users', () => {
    const users = validateUsers({ users: [{ name: 'a', passwordHash: hash, allowedSenders: ['a@example.com', '*@b.example.com'], rateLimit: { messages: 10, per: '1h' } }] }, 'users.yaml');
    assert.deepEqual(users.get('a')?.rateLimit, { messages: 10, perMs: 3_600_000 });
    assert.equal(users.get('a')?.allowedSenders.length, 2);
  });
  const bad: [string, unknown, string[]][] = [
    ['unknown field', { users: [{ name: 'a', passwordHash: hash, allowedSenders: ['a@x.com'], password: 'x' }] }, ['users[0].password: unknown field (allowed: name, allowedSenders, passwordHash, serviceAccount, rateLimit)']],
    ['bad hash', { users: [{ name: 'a', passwordHash: 'plain', allowedSenders: ['a@x.com'] }] }, ['users[0].passwordHash: must look like scrypt$N$r$p$salt$hash (output of `smtp-relay hash-password`)']],
    ['bad pattern', { users: [{ name: 'a', passwordHash: hash, allowedSenders: ['a*@x.com'] }] }, ['users[0].allowedSenders[0]: "a*@x.com": a wildcard may only be the whole local part ("*@domain")']],
    ['no senders', { users: [{ name: 'a', passwordHash: hash, allowedSenders: [] }] }, ['users[0].allowedSenders: must list at least one sender pattern']],
    ['duplicate', { users: [{ name: 'a', passwordHash: hash, allowedSenders: ['a@x.com'] }, { name: 'a', passwordHash: hash, allowedSenders: ['a@x.com'] }] }, ['users[1].name: "a" is listed twice']],
    ['bad rate', { users: [{ name: 'a', passwordHash: hash, allowedSenders: ['a@x.com'], rateLimit: { messages: 0, per: '1h' } }] }, ['users[0].rateLimit.messages: 0 is out of range 1..10000000']],
  ];
  for (const [name, doc, expected] of bad) {
    test(`rejects ${name}`, () => {
      assert.throws(() => validateUsers(doc, 'users.yaml'), (e: ValidationError) => (assert.deepEqual(e.problems, expected), true));
    });
  }
});

describe('lockout', () => {
  test('N failures within the window lock the key for the duration', () => {
    let now = 0;
    const l = new Lockout({ maxFailures: 3, windowMs: 1000, durationMs: 5000 }, () => now);
    assert.equal(l.fail('ip:1'), false);
    now = 500;
    assert.equal(l.fail('ip:1'), false);
    assert.equal(l.lockedFor('ip:1'), 0);
    now = 900;
    assert.equal(l.fail('ip:1'), true, 'third failure within the window starts a lockout');
    assert.equal(l.lockedFor('ip:1'), 5000);
    assert.equal(l.lockedFor('ip:2'), 0, 'other keys are not affected');
    now = 5899;
    assert.ok(l.lockedFor('ip:1') > 0);
    now = 5900;
    assert.equal(l.lockedFor('ip:1'), 0, 'lockout ends after the duration');
  });

  test('a flood of new keys does not evict a running lockout', () => {
    let now = 0;
    const l = new Lockout({ maxFailures: 2, windowMs: 600_000, durationMs: 900_000 }, () => now);
    l.fail('user:victim');
    assert.equal(l.fail('user:victim'), true);
    for (let i = 0; i < MAX_KEYS + 20_000; i++) {
      now = 1 + Math.floor(i / 1000); // all within the window: nothing expires
      l.fail(`user:spray-${i}`);
    }
    assert.ok(l.lockedFor('user:victim') > 0, 'the victim is still locked out');
  });

  test('lockout keys of usernames are bounded in length', () => {
    assert.equal(userLockoutKey('alice'), 'user:alice');
    const longest = 'a'.repeat(MAX_USERNAME_LENGTH);
    assert.equal(userLockoutKey(longest), `user:${longest}`, 'a name the users file allows keeps its own key');
    for (const n of [MAX_USERNAME_LENGTH + 1, 12_000]) assert.ok(userLockoutKey('x'.repeat(n)).length <= MAX_USERNAME_LENGTH + 5, `${n} characters`);
  });

  test('failures outside the window do not add up; success clears', () => {
    let now = 0;
    const l = new Lockout({ maxFailures: 2, windowMs: 1000, durationMs: 5000 }, () => now);
    l.fail('u');
    now = 1500;
    assert.equal(l.fail('u'), false);
    l.succeed('u');
    now = 1600;
    assert.equal(l.fail('u'), false);
  });

  test('rate limiter answers with the wait time', () => {
    let now = 0;
    const r = new RateLimiter(() => now);
    const limit = { messages: 2, perMs: 60_000 };
    assert.equal(r.check('a', limit), 0);
    r.record('a');
    now = 10_000;
    r.record('a');
    assert.equal(r.check('a', limit), 50_000);
    now = 59_000;
    assert.equal(r.check('a', limit), 1_000);
    now = 60_000;
    assert.equal(r.check('a', limit), 0, 'the first message left the window');
    r.record('a');
    assert.equal(r.check('a', limit), 10_000);
    now = 70_000;
    assert.equal(r.check('a', limit), 0);
  });
});

describe('sender patterns', () => {
  const pats = ['billing@example.com', '*@billing.example.com'].map((p) => parseSenderPattern(p) as SenderPattern);
  test('exact and domain wildcard, case-insensitive', () => {
    assert.equal(senderAllowed('Billing@Example.COM', pats), true);
    assert.equal(senderAllowed('anyone@billing.example.com', pats), true);
    assert.equal(senderAllowed('other@example.com', pats), false);
    assert.equal(senderAllowed('x@sub.billing.example.com', pats), false, 'the wildcard does not cover subdomains');
    assert.equal(senderAllowed('x@billing.example.com.evil.net', pats), false);
    assert.equal(senderAllowed('', pats), false);
    assert.equal(senderAllowed('billing@example.com@evil.net', pats), false);
  });
  test('invalid patterns', () => {
    assert.equal(typeof parseSenderPattern('example.com'), 'string');
    assert.equal(typeof parseSenderPattern('*@*'), 'string');
    assert.equal(typeof parseSenderPattern('a*b@example.com'), 'string');
  });
});

describe('CIDR sets', () => {
  test('IPv4, IPv6, IPv4-mapped, bare addresses', () => {
    const s = new CidrSet(['10.0.0.0/8', 'fd00::/8', '192.0.2.7']);
    assert.equal(s.has('10.1.2.3'), true);
    assert.equal(s.has('::ffff:10.1.2.3'), true);
    assert.equal(s.has('11.0.0.1'), false);
    assert.equal(s.has('fd12::1'), true);
    assert.equal(s.has('fe80::1'), false);
    assert.equal(s.has('192.0.2.7'), true);
    assert.equal(s.has('192.0.2.8'), false);
    assert.equal(s.has('garbage'), false);
    assert.equal(new CidrSet([]).has('10.0.0.1'), false, 'an empty list refuses everyone');
    assert.equal(canonicalIp('::ffff:127.0.0.1'), '127.0.0.1');
  });
});

describe('bare LF / CR detector', () => {
  const check = (...chunks: string[]) => {
    const c = new LineEndingCheck();
    for (const ch of chunks) c.push(Buffer.from(ch, 'latin1'));
    return c.end();
  };
  test('clean CRLF data', () => {
    assert.equal(check('a\r\nb\r\n'), undefined);
    assert.equal(check('a\r', '\nb\r\n'), undefined, 'CRLF split across chunks');
    assert.equal(check(''), undefined);
  });
  test('offences', () => {
    assert.equal(check('a\nb'), 'bare_lf');
    assert.equal(check('\n'), 'bare_lf');
    assert.equal(check('a\r\n', '\n'), 'bare_lf');
    assert.equal(check('a\rb'), 'bare_cr');
    assert.equal(check('a\r', 'b'), 'bare_cr', 'bare CR at a chunk end');
    assert.equal(check('a\r'), 'bare_cr', 'CR as the last byte');
    assert.equal(check('a\r\r\n'), 'bare_cr');
    assert.equal(check('x\r\n.\n'), 'bare_lf');
    assert.equal(check('x\n.\r\n'), 'bare_lf');
    assert.equal(check('x\r.\r'), 'bare_cr');
    assert.equal(check('a\r\n', 'b\0c\r\n'), 'nul_byte');
  });
  test('the same verdict as the byte-by-byte rule, for random data cut into random chunks', () => {
    // The rule itself, one byte at a time (what the detector's fast scan and its loops
    // must both agree with): NUL first within a chunk, then bare LF, then bare CR.
    const reference = (chunks: Buffer[]) => {
      let lastWasCr = false;
      for (const chunk of chunks) {
        if (chunk.length === 0) continue;
        if (chunk.includes(0)) return 'nul_byte';
        for (let i = 0; i < chunk.length; i++) if (chunk[i] === 0x0a && !(i === 0 ? lastWasCr : chunk[i - 1] === 0x0d)) return 'bare_lf';
        if (lastWasCr && chunk[0] !== 0x0a) return 'bare_cr';
        for (let i = 0; i + 1 < chunk.length; i++) if (chunk[i] === 0x0d && chunk[i + 1] !== 0x0a) return 'bare_cr';
        lastWasCr = chunk[chunk.length - 1] === 0x0d;
      }
      return lastWasCr ? 'bare_cr' : undefined;
    };
    let seed = 7;
    const rnd = (n: number) => Math.floor(((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * n);
    const pieces = ['\r\n', '\r\n', '\r\n', 'ab', '.', '\r\n.', '\xff', '\r', '\n', '\0'];
    const verdicts = new Map<string, number>();
    for (let n = 0; n < 20_000; n++) {
      // mostly clean text; now and then one bad byte
      const parts = Array.from({ length: 1 + rnd(12) }, () => pieces[rnd(n % 4 === 0 ? pieces.length : 7)]!);
      const data = Buffer.from(parts.join(''), 'latin1');
      const chunks: Buffer[] = [];
      for (let at = 0; at < data.length; ) {
        const len = rnd(data.length - at + 1);
        chunks.push(data.subarray(at, at + len));
        at += len;
      }
      const c = new LineEndingCheck();
      for (const ch of chunks) c.push(ch);
      const got = c.end();
      assert.equal(got, reference(chunks), JSON.stringify(chunks.map((ch) => ch.toString('latin1'))));
      verdicts.set(String(got), (verdicts.get(String(got)) ?? 0) + 1);
    }
    for (const v of ['undefined', 'bare_lf', 'bare_cr', 'nul_byte']) assert.ok((verdicts.get(v) ?? 0) > 100, `${v}: ${verdicts.get(v)}`);
  });
});

describe('message headers', () => {
  test('From: addresses from every From header, groups flattened, encoded words decoded', () => {
    assert.deepEqual(fromAddresses(Buffer.from('From: "A" <A@Example.com>, b@example.com\r\nSubject: x\r\n\r\nFrom: c@evil.net\r\n')), ['a@example.com', 'b@example.com']);
    assert.deepEqual(fromAddresses(Buffer.from('From: a@example.com\r\nFrom: b@example.com\r\n\r\n')), ['a@example.com', 'b@example.com']);
    assert.deepEqual(fromAddresses(Buffer.from('From: team: a@example.com, b@example.com;\r\n\r\n')), ['a@example.com', 'b@example.com']);
    assert.deepEqual(fromAddresses(Buffer.from('from:\r\n  a@example.com\r\n\r\n')), ['a@example.com'], 'folded, lower-case name');
    // an encoded-word that decodes to a quote must not hide the address a reader sees
    const tricky = fromAddresses(Buffer.from('From: =?utf-8?Q?=22?= <ceo@evil.com> =?utf-8?Q?=22?= alice@example.com\r\n\r\n'));
    assert.ok(tricky?.includes('ceo@evil.com'), JSON.stringify(tricky));
    assert.equal(fromAddresses(Buffer.from('Subject: none\r\n\r\n')), null);
    assert.equal(fromAddresses(Buffer.from('\r\nFrom: a@example.com\r\n\r\nbody\r\n')), null, 'an empty first line ends the (empty) header: that From: is body');
    assert.equal(fromAddresses(Buffer.from('From: undisclosed:;\r\n\r\n')), null);
    assert.equal(fromAddresses(Buffer.from('From: nobody\r\n\r\n')), null);
  });
  test('Received header', () => {
    const h = receivedHeader({
      helo: 'client.test\r\nX-Injected: 1',
      clientIp: '::1',
      hostname: 'relay.example.com',
      protocol: 'ESMTPSA',
      tlsVersion: 'TLSv1.3',
      cipher: 'TLS_AES_256_GCM_SHA384',
      sessionId: 'abc123',
      recipients: ['r@example.net'],
      date: new Date(Date.UTC(2026, 0, 2, 3, 4, 5)),
    });
    assert.equal(
      h,
      'Received: from client.testX-Injected:1 ([IPv6:::1])\r\n\tby relay.example.com with ESMTPSA (TLSv1.3, cipher=TLS_AES_256_GCM_SHA384)\r\n\tid abc123\r\n\tfor <r@example.net>;\r\n\tFri, 2 Jan 2026 03:04:05 +0000\r\n',
    );
    // latin1 keeps the low byte: U+010D U+010A would be CR LF. Such a recipient is left out.
    const u = receivedHeader({ helo: 'c', clientIp: '127.0.0.1', hostname: 'r.example', protocol: 'ESMTPSA', sessionId: 's', recipients: ['x\u010d\u010aFrom\u013a\u0120ceo@example.net'] });
    assert.ok(!/[^\x20-\x7e\t\r\n]/.test(u) && !Buffer.from(u, 'latin1').toString('latin1').includes('From:'), JSON.stringify(u));
    assert.equal(u.split('\r\n').length, 5, JSON.stringify(u));
  });
});
