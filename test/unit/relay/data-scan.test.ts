// relay/internals.ts replaces smtp-server's DATA scan (SMTPStream._feedDataStream: end of
// data, dot unstuffing) with a copy that finds line-leading dots with Buffer.indexOf.
// This is where SMTP smuggling is decided, so the copy must act exactly like the
// original: both parse the same random sessions, cut into random chunks, and everything
// they emit (commands, message bytes, byte counts, size flags) must be identical.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { checkInternals, fastFeedDataStream, originalFeedDataStream } from '../../../relay/internals.js';

type Feed = typeof originalFeedDataStream;

/** Feeds `chunks` to a parser using `feed`; resolves with everything it emitted, in order. */
async function parse(feed: Feed, chunks: Buffer[], maxBytes: number): Promise<string[]> {
  const events: string[] = [];
  const parser = new SMTPStream();
  (parser as unknown as { _feedDataStream: Feed })._feedDataStream = feed;
  parser.oncommand = (line: Buffer, callback?: () => void) => {
    const text = line.toString('latin1');
    events.push(`command ${JSON.stringify(text)}`);
    if (text === 'DATA') {
      const data = parser.startDataMode(maxBytes);
      const parts: Buffer[] = [];
      data.on('data', (b: Buffer) => parts.push(b));
      data.on('end', () => {
        const d = data as unknown as { byteLength: number; sizeExceeded: boolean };
        events.push(`data ${JSON.stringify(Buffer.concat(parts).toString('latin1'))} bytes=${d.byteLength} exceeded=${d.sizeExceeded}`);
        // smtp-server continues after the application's reply, a tick or more later
        setImmediate(() => parser.continue());
      });
    }
    callback?.();
  };
  let finished = false;
  parser.once('finish', () => (finished = true));
  parser.once('error', (err: Error) => events.push(`error ${err.message}`));
  for (const c of chunks) parser.write(c);
  parser.end();
  // until the input is consumed, or nothing happens for 50 turns of the event loop (a
  // session left in DATA, or one whose data ended with no continue() after it, never
  // finishes: both parsers then stop at the same point)
  for (let idle = 0, seen = -1; !finished && idle < 50; idle = events.length === seen ? idle + 1 : 0, seen = events.length) {
    await new Promise((r) => setImmediate(r));
  }
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  events.push(`finished=${finished}`);
  events.push(`dataBytes=${parser.dataBytes}`);
  return events;
}

describe("the relay's DATA scan acts exactly like smtp-server's", () => {
  it('is a copy of the smtp-server code it was made from (else the relay does not start)', () => {
    assert.doesNotThrow(() => checkInternals());
    assert.notEqual(fastFeedDataStream, originalFeedDataStream);
  });

  it('on random sessions cut into random chunks: same commands, same message bytes, same ends', async () => {
    let seed = 1234;
    const rnd = (n: number) => Math.floor(((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * n);
    // line pieces that matter to the scan: dots at line starts, escapes, terminators, bare LF/CR
    const pieces = ['abc', '.', '..', '...', '\r\n', '\r\n', '\r\n.', '\r\n..', '\r\n.\r\n', '\n.', '\n.\r\n', '\r.', '.\r\n', 'x.\r\n', '\n', '\r'];
    let ends = 0;
    let escapes = 0;
    let finished = 0;
    for (let n = 0; n < 1500; n++) {
      let session = 'EHLO x\r\n';
      for (let m = 1 + rnd(3); m > 0; m--) {
        session += 'MAIL FROM:<a@b>\r\nDATA\r\n';
        let body = Array.from({ length: rnd(25) }, () => pieces[rnd(pieces.length)]!).join('');
        if (rnd(4) === 0) body = '.' + body; // a first line starting with a dot (or being one)
        session += body + (rnd(8) === 0 ? '' : '\r\n.\r\n');
      }
      session += 'QUIT\r\n';
      const data = Buffer.from(session, 'latin1');
      const chunks: Buffer[] = [];
      for (let at = 0; at < data.length; ) {
        const len = 1 + rnd(rnd(3) === 0 ? 4 : 40);
        chunks.push(data.subarray(at, at + len));
        at += len;
      }
      const maxBytes = rnd(2) ? 0 : 1 + rnd(60);
      const expected = await parse(originalFeedDataStream, chunks, maxBytes);
      const actual = await parse(fastFeedDataStream, chunks, maxBytes);
      assert.deepEqual(actual, expected, JSON.stringify(chunks.map((c) => c.toString('latin1'))));
      ends += expected.filter((e) => e.startsWith('data ')).length;
      if (expected.includes('finished=true')) finished++;
      if (/\r\n\.\./.test(session)) escapes++;
    }
    assert.ok(ends > 1000, `ends of data seen: ${ends}`);
    assert.ok(finished > 500, `sessions parsed to their end: ${finished}`);
    assert.ok(escapes > 300, `sessions with an escape dot: ${escapes}`);
  });

  it('a 10 KB message in one chunk and in TLS-record-sized chunks', async () => {
    const body = Buffer.from(('Lorem ipsum dolor sit amet.\r\n'.repeat(300) + '..escaped\r\n.\r\n.x\r\n').repeat(1) + '\r\n.\r\nQUIT\r\n', 'latin1');
    const session = Buffer.concat([Buffer.from('DATA\r\n'), body]);
    for (const size of [session.length, 4096, 1000, 7]) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < session.length; at += size) chunks.push(session.subarray(at, at + size));
      assert.deepEqual(await parse(fastFeedDataStream, chunks, 0), await parse(originalFeedDataStream, chunks, 0), `chunks of ${size}`);
    }
  });
});
