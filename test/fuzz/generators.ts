// fast-check generators of mutated SMTP sessions for the fuzz target (test/fuzz/smtp-front.ts).
// Bytes are latin1 strings (one char = one byte) so every byte value 0-255 can appear.
// A session is a known-good prefix (connect, EHLO, STARTTLS, AUTH as far as `setup` says),
// then synchronised transactions (one reply per command line, so the DATA verdict is known),
// then unsynchronised bursts of mutated bytes, written split at random offsets.

import fc from 'fast-check';

/** The fuzz user: allowed to send as ALLOWED_SENDER only. */
export const ALLOWED_SENDER = 'alice@example.com';
/** Addresses the fuzz user may not use; the oracle (test/fuzz/oracle.ts) looks for them literally. */
export const FOREIGN_ADDRESSES = ['ceo@bank.example', 'alice@evil.example', 'bob@example.com', 'alice@example.com.evil.test', 'postmaster@example.net'];

export type Setup = 'connect' | 'ehlo' | 'tls' | 'auth';

export interface Transaction {
  /** MAIL FROM address (between the brackets) and parameters, one line. */
  mailFrom: string;
  mailParams: string;
  /** Extra RCPT lines before the token recipient (one reply each). */
  extraRcpts: string[];
  rcptParams: string;
  /** MAIL, RCPT and DATA in one write (pipelining) or each after its reply. */
  pipelined: boolean;
  verbCase: 'upper' | 'lower' | 'mixed';
  /** The message as sent after 354 (dot-stuffing is the generator's business); the runner appends "\r\n.\r\n". */
  body: string;
  /** Fractions (0..1) of the body where a write ends: pipelining split at random byte offsets. */
  cuts: number[];
}

export interface Burst {
  bytes: string;
  cuts: number[];
}

export interface SmtpSession {
  kind: 'smtp';
  listener: 'starttls' | 'implicit';
  setup: Setup;
  transactions: Transaction[];
  bursts: Burst[];
}

export interface TlsGarbageSession {
  kind: 'tls-garbage';
  /** random bytes on the implicit port; a ClientHello prefix then garbage (implicit, or after STARTTLS); garbage after a finished handshake. */
  variant: 'implicit-random' | 'implicit-hello-prefix' | 'starttls-random' | 'starttls-hello-prefix' | 'after-handshake';
  /** How much of a real ClientHello to send first (fraction of its length). */
  helloFraction: number;
  garbage: string;
}

export type FuzzSession = SmtpSession | TlsGarbageSession;

// --- small pieces ---

const bytes = (maxLength: number) => fc.uint8Array({ maxLength }).map((a) => Buffer.from(a).toString('latin1'));
const printable = (maxLength: number) => fc.string({ unit: 'binary-ascii', maxLength }).map((s) => s.replace(/[\r\n]/g, ''));
const controlChar = fc.integer({ min: 0, max: 31 }).chain((c) => fc.constantFrom(String.fromCharCode(c), '\x7f', '\x80', '\xff', '\x00'));
const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 });

function recase(s: string, how: 'upper' | 'lower' | 'mixed', seed: number): string {
  if (how === 'upper') return s.toUpperCase();
  if (how === 'lower') return s.toLowerCase();
  let out = '';
  for (let i = 0; i < s.length; i++) out += (seed >> i % 31) & 1 ? s[i]!.toUpperCase() : s[i]!.toLowerCase();
  return out;
}

const oddCase = (verb: string) => fc.tuple(fc.constantFrom<'upper' | 'lower' | 'mixed'>('upper', 'lower', 'mixed'), fc.integer()).map(([h, seed]) => recase(verb, h, seed));

const KNOWN_VERBS = ['EHLO', 'HELO', 'MAIL FROM:', 'RCPT TO:', 'DATA', 'RSET', 'NOOP', 'VRFY', 'EXPN', 'HELP', 'STARTTLS', 'AUTH', 'BDAT', 'ETRN', 'XCLIENT', 'XFORWARD', 'LHLO', 'TURN', 'WIZ', 'SHELL', 'KILL', 'QUIT'];

const address = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(ALLOWED_SENDER, 'ALICE@Example.COM', ...FOREIGN_ADDRESSES, '', 'rcpt@example.net') },
  { weight: 1, arbitrary: fc.constantFrom('a@b@c', '@example.com', 'alice@', '"quoted local"@example.com', 'alice@[127.0.0.1]', 'x\u00e9@example.com', 'x'.repeat(300) + '@example.com') },
  { weight: 1, arbitrary: printable(40) },
);

export const mailParam = fc.oneof(
  fc.integer({ min: -5, max: 2 ** 40 }).map((n) => `SIZE=${n}`),
  fc.constantFrom('SIZE=', 'SIZE=abc', 'SIZE=99999999999999999999999', 'BODY=8BITMIME', 'BODY=7BIT', 'BODY=BINARYMIME', 'BODY=junk', 'SMTPUTF8', 'RET=FULL', 'RET=HDRS', 'RET=', 'AUTH=<>', 'AUTH=alice@example.com', 'REQUIRETLS'),
  printable(30).map((s) => `ENVID=${s}`),
  printable(20).map((s) => `${s}=${s}`),
);

export const rcptParam = fc.oneof(
  fc.constantFrom('NOTIFY=SUCCESS,FAILURE', 'NOTIFY=NEVER', 'NOTIFY=DELAY', 'NOTIFY=junk', 'NOTIFY=', 'ORCPT=rfc822;rcpt@example.net', 'ORCPT=', 'ORCPT=utf-8;x\\x{e9}@example.net'),
  printable(30).map((s) => `ORCPT=rfc822;${s}`),
);

const params = (p: fc.Arbitrary<string>) => fc.array(p, { maxLength: 4 }).map((ps) => (ps.length ? ' ' + ps.join(' ') : ''));

const lineEnd = fc.oneof({ weight: 10, arbitrary: fc.constant('\r\n') }, { weight: 1, arbitrary: fc.constantFrom('\n', '\r', '', '\r\r\n', '\n\r') });

// --- commands and arguments ---

export const commandLine = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(fc.constantFrom(...KNOWN_VERBS).chain(oddCase), fc.constantFrom(' ', '', '  ', '\t'), fc.oneof(address.map((a) => `<${a}>`), printable(60))).map(([v, sp, a]) => v + sp + a) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom('MAIL FROM:', 'RCPT TO:').chain(oddCase), address, params(fc.oneof(mailParam, rcptParam))).map(([v, a, p]) => `${v}<${a}>${p}`) },
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z]{1,12}$/).map((v) => v) }, // unknown verbs
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('NOOP ', 'EHLO ', 'MAIL FROM:<', 'XYZZY '), fc.integer({ min: 500, max: 70_000 })).map(([v, n]) => v + 'A'.repeat(n)) }, // overlong
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...KNOWN_VERBS), fc.array(fc.oneof(controlChar, printable(5)), { maxLength: 8 })).map(([v, xs]) => v + xs.join('')) }, // NUL/control bytes
  { weight: 1, arbitrary: bytes(200) },
);

// --- AUTH payloads ---

const b64 = (s: string) => Buffer.from(s, 'latin1').toString('base64');
const credential = fc.oneof(
  fc.constantFrom('', 'bob', 'root', 'admin', 'ALICE', 'alice ', 'health-x', 'a'.repeat(300)),
  printable(16),
);
const badBase64 = fc.oneof(fc.constantFrom('', '=', '====', '!!!!', 'AAA', 'A', 'YWxpY2U', '*', ' ', 'YW=xp', '\x00AAAA'), printable(40), fc.integer({ min: 1000, max: 20_000 }).map((n) => 'A'.repeat(n)));

export const authPayload = fc.oneof(
  // PLAIN, initial response: authzid tricks (authzid differs, NUL counts), wrong passwords
  fc.tuple(fc.constantFrom('', 'alice', 'bob', 'admin'), credential, credential, fc.constantFrom('\0', '\0\0', '')).map(([z, u, p, sep]) => `AUTH PLAIN ${b64(`${z}\0${u}${sep}${p}`)}\r\n`),
  fc.tuple(fc.constantFrom('PLAIN', 'plain', 'PlAiN'), badBase64).map(([m, x]) => `AUTH ${m} ${x}\r\n`),
  // PLAIN without initial response, then the payload, or '*' to cancel
  fc.oneof(badBase64, fc.constant('*'), credential.map((u) => b64(`\0${u}\0guess`))).map((x) => `AUTH PLAIN\r\n${x}\r\n`),
  // LOGIN: user and password prompts, bad base64, cancel
  fc.tuple(fc.oneof(credential.map(b64), badBase64, fc.constant('*')), fc.oneof(credential.map(b64), badBase64, fc.constant('*'))).map(([u, p]) => `AUTH LOGIN\r\n${u}\r\n${p}\r\n`),
  credential.map((u) => `AUTH LOGIN ${b64(u)}\r\n*\r\n`),
  // unknown or empty mechanisms, huge lines
  fc.constantFrom('AUTH\r\n', 'AUTH CRAM-MD5\r\n', 'AUTH XOAUTH2 dXNlcj1h\r\n', 'AUTH PLAIN =\r\n', 'AUTH  PLAIN\r\n\r\n'),
  fc.integer({ min: 10_000, max: 200_000 }).map((n) => `AUTH PLAIN ${'QUFB'.repeat(n / 4)}\r\n`),
);

// --- header blocks and MIME ---

const originatorName = fc.constantFrom('From', 'FROM', 'from', 'From ', 'Sender', 'Resent-From', 'Resent-Sender', 'fRoM');
const fromValue = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(ALLOWED_SENDER, `Alice <${ALLOWED_SENDER}>`, `"Alice (x)" <ALICE@example.com>`, `=?utf-8?Q?Al=C3=AFce?= <${ALLOWED_SENDER}>`, `${ALLOWED_SENDER} (Alice)`) },
  { weight: 3, arbitrary: fc.constantFrom(...FOREIGN_ADDRESSES).chain((f) => fc.constantFrom(f, `<${f}>`, `Alice <${ALLOWED_SENDER}>, ${f}`, `"${f}" <${ALLOWED_SENDER}>`, `${ALLOWED_SENDER} (${f})`, `<${ALLOWED_SENDER}> ${f}`)) },
  { weight: 2, arbitrary: fc.constantFrom('', ' ', '<>', 'undisclosed-recipients:;', '=?utf-8?B?PGNlb0BiYW5rLmV4YW1wbGU+?=', '=?utf-8?Q?=3Cceo=40bank.example=3E?= alice@example.com', '=?x?', 'alice@example.com\r\n alice@example.com') },
  { weight: 1, arbitrary: printable(80) },
);
const originatorField = fc.tuple(originatorName, fc.constantFrom(':', ': ', ' :', ':\r\n '), fromValue).map(([n, c, v]) => `${n}${c}${v}`);

const encodedWord = fc.tuple(fc.constantFrom('utf-8', 'iso-8859-1', 'UTF-8', 'x-unknown', ''), fc.constantFrom('Q', 'B', 'q', 'b', 'X'), printable(30)).map(([cs, e, t]) => `=?${cs}?${e}?${e.toUpperCase() === 'B' ? b64(t) : t.replace(/ /g, '_')}?=`);
const otherField = fc.oneof(
  fc.constantFrom('To: rcpt@example.net', 'Subject: hello', 'Date: Thu, 1 Jan 2026 00:00:00 +0000', 'Message-ID: <x@example.com>', 'MIME-Version: 1.0', 'X-Empty:', ':no-name', 'No colon here', ' leading continuation'),
  encodedWord.map((w) => `Subject: ${w} ${w}`),
  fc.tuple(printable(20), fc.integer({ min: 1, max: 40 })).map(([s, n]) => `Subject: ${Array.from({ length: n }, () => s).join('\r\n\t')}`), // folded
  fc.integer({ min: 990, max: 20_000 }).map((n) => `X-Long: ${'x'.repeat(n)}`),
  fc.tuple(printable(12).map((s) => s.replace(/:/g, '') || 'X'), printable(60)).map(([n, v]) => `${n}: ${v}`),
);

const boundary = fc.oneof(fc.constantFrom('b', '', ' ', '=_=', '--', '"quoted b"', 'b'.repeat(200), 'a b c'), printable(20));
const mimeBody = fc.tuple(boundary, fc.array(printable(40), { maxLength: 4 }), fc.boolean(), fc.boolean()).map(([b, parts, closed, nested]) => {
  const bb = b.replace(/^"|"$/g, '');
  const inner = nested ? `Content-Type: multipart/alternative; boundary="${bb}x"\r\n\r\n--${bb}x\r\n\r\nin\r\n` : 'Content-Type: text/plain\r\n\r\n';
  return {
    header: `MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=${b}`,
    body: parts.map((p) => `--${bb}\r\n${inner}${p}\r\n`).join('') + (closed ? `--${bb}--\r\n` : ''),
  };
});

// --- dot-stuffing and line endings inside DATA ---

const bodyLine = fc.oneof(
  { weight: 6, arbitrary: printable(80) },
  { weight: 2, arbitrary: fc.constantFrom('.', '..', '...', '.x', '..x', ' .', '.\r\n', '\r\n.\r\nRSET', 'From ceo@bank.example', '>From x') },
  { weight: 1, arbitrary: fc.constantFrom('bare\nLF', 'bare\rCR', 'nul\x00byte', '\n.\n', '\r.\r', '\n.\r\n', '\r\n.\n', 'end\r') },
  { weight: 1, arbitrary: bytes(60) },
  { weight: 1, arbitrary: fc.integer({ min: 999, max: 5000 }).map((n) => 'y'.repeat(n)) },
);

/** A message the policy should accept, with benign oddities: dots, folding, MIME, encoded-words, long lines. */
const nearlyGoodBody = fc
  .tuple(
    fc.constantFrom(`From: ${ALLOWED_SENDER}`, `From: Alice <${ALLOWED_SENDER}>`, `FROM:ALICE@example.com`, `From:\r\n ${ALLOWED_SENDER}`, `From: =?utf-8?Q?Al=C3=AFce?= <${ALLOWED_SENDER}>`),
    fc.array(fc.oneof(otherField, fc.constantFrom(`Sender: ${ALLOWED_SENDER}`, `Resent-From: ${ALLOWED_SENDER}`)), { maxLength: 4 }),
    fc.option(mimeBody, { freq: 3 }),
    fc.array(fc.oneof({ weight: 4, arbitrary: printable(80) }, { weight: 2, arbitrary: fc.constantFrom('..', '...', '..x', ' .', 'From x', '\xe9\xff') }), { maxLength: 8 }),
  )
  .map(([from, fields, mime, lines]) => [from, ...fields, ...(mime ? [mime.header] : [])].join('\r\n') + '\r\n\r\n' + (mime ? mime.body : '') + lines.map((l) => l + '\r\n').join(''));

const mutatedBody = fc
  .tuple(
    fc.array(fc.oneof({ weight: 2, arbitrary: originatorField }, { weight: 3, arbitrary: otherField }), { maxLength: 8 }),
    fc.option(mimeBody, { freq: 4 }),
    fc.constantFrom('\r\n', '\r\n', '\r\n', '', '\n'), // header/body separator, sometimes missing or bare
    fc.array(bodyLine, { maxLength: 10 }),
    fc.constantFrom('\r\n', '\r\n', '', '\r', '\n'), // how the data ends
    fc.option(fc.integer({ min: 70 * 1024, max: 200 * 1024 }), { freq: 30 }), // oversized
  )
  .map(([fields, mime, sep, lines, end, huge]) => {
    const header = [...fields, ...(mime ? [mime.header] : [])].map((f) => f + '\r\n').join('');
    const body = (mime ? mime.body : '') + lines.join('\r\n') + (huge ? 'z'.repeat(huge) : '');
    return header + sep + body + end;
  });

export const messageBody = fc.oneof({ weight: 2, arbitrary: nearlyGoodBody }, { weight: 3, arbitrary: mutatedBody });

/** A well-formed message that policy must accept, for the health session. */
export function goodMessage(from: string, id: string): string {
  return `From: ${from}\r\nTo: rcpt@example.net\r\nSubject: health ${id}\r\nMessage-ID: <${id}@fuzz.test>\r\n\r\nHello.\r\n`;
}

const transaction: fc.Arbitrary<Transaction> = fc.record({
  mailFrom: fc.oneof({ weight: 8, arbitrary: fc.constantFrom(ALLOWED_SENDER, 'ALICE@EXAMPLE.COM') }, { weight: 2, arbitrary: address }),
  mailParams: params(mailParam),
  extraRcpts: fc.array(address, { maxLength: 6 }),
  rcptParams: params(rcptParam),
  pipelined: fc.boolean(),
  verbCase: fc.constantFrom<'upper' | 'lower' | 'mixed'>('upper', 'lower', 'mixed'),
  body: messageBody,
  cuts,
});

const burstBytes = fc
  .array(fc.oneof({ weight: 4, arbitrary: fc.tuple(commandLine, lineEnd).map(([c, e]) => c + e) }, { weight: 2, arbitrary: authPayload }, { weight: 1, arbitrary: messageBody.map((b) => `DATA\r\n${b}`) }), { minLength: 1, maxLength: 8 })
  .map((xs) => xs.join(''));

const burst: fc.Arbitrary<Burst> = fc.record({ bytes: burstBytes, cuts });

const smtpSession: fc.Arbitrary<SmtpSession> = fc.record({
  kind: fc.constant('smtp' as const),
  listener: fc.constantFrom<'starttls' | 'implicit'>('starttls', 'starttls', 'implicit'),
  setup: fc.constantFrom<Setup>('connect', 'ehlo', 'tls', 'auth', 'auth', 'auth'),
  transactions: fc.array(transaction, { maxLength: 3 }),
  bursts: fc.array(burst, { maxLength: 4 }),
});

const tlsGarbageSession: fc.Arbitrary<TlsGarbageSession> = fc.record({
  kind: fc.constant('tls-garbage' as const),
  variant: fc.constantFrom<TlsGarbageSession['variant']>('implicit-random', 'implicit-hello-prefix', 'starttls-random', 'starttls-hello-prefix', 'after-handshake'),
  helloFraction: fc.double({ min: 0, max: 1, noNaN: true }),
  garbage: fc.oneof(bytes(64), bytes(4096), fc.constantFrom('\x16\x03\x01\xff\xff', '\x15\x03\x03\x00\x02\x02\x28', '\x17\x03\x03\x40\x00', 'GET / HTTP/1.0\r\n\r\n', 'EHLO x\r\n')),
});

export const fuzzSession: fc.Arbitrary<FuzzSession> = fc.oneof({ weight: 6, arbitrary: smtpSession }, { weight: 1, arbitrary: tlsGarbageSession });

/** The byte offsets where a write of `n` bytes is split. */
export function splitPoints(n: number, fractions: number[]): number[] {
  return [...new Set(fractions.map((f) => Math.floor(f * n)).filter((x) => x > 0 && x < n))].sort((a, b) => a - b);
}

/** Applies the transaction's verb case to a command verb. */
export function verb(t: Transaction, v: string): string {
  return recase(v, t.verbCase, t.body.length);
}
