// The yardsticks of bench/floor.ts (bench/ab.ts floor:node, floor:libraries) are only
// worth comparing with the relay if they do the relay's work on the wire: STARTTLS and
// AUTH in front, a pooled upstream over TLS behind, every message passed on
// byte for byte (dot-stuffing included) with its envelope. Each floor here relays to a
// real SMTP sink over implicit TLS, as in the bench (stunnel there).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import { FLOOR_KINDS, startFloor } from '../../bench/targets.js';
import { createPki, type Pki } from '../harness/support/pki.js';
import { startSink, type Sink } from '../harness/support/sink.js';

let pki: Pki;
let sink: Sink;

before(async () => {
  pki = await createPki();
  sink = await startSink({ pki, tls: 'implicit' });
});

after(async () => {
  await sink?.stop();
  await pki?.cleanup();
});

const body = (i: number) =>
  `From: <bench@example.com>\r\nTo: <rcpt${i}@example.net>\r\nSubject: floor ${i}\r\n\r\nline one\r\n.a line that starts with a dot\r\n..two dots\r\nlast line ${i}\r\n`;

describe('bench/floor.ts yardsticks', () => {
  for (const kind of FLOOR_KINDS) {
    test(`floor:${kind}: 6 messages over 2 pooled STARTTLS + AUTH sessions reach the sink over TLS, byte for byte`, async () => {
      const floor = await startFloor(kind, await pki.issue({ name: `floor-${kind}` }), sink.port);
      const before = sink.messages.length;
      const t = nodemailer.createTransport({
        pool: true,
        maxConnections: 2,
        host: '127.0.0.1',
        port: floor.submission,
        requireTLS: true,
        auth: { user: 'bench', pass: 'any' },
        tls: { ca: pki.ca.certPem, servername: 'localhost' },
      });
      try {
        const replies = await Promise.all(
          Array.from({ length: 6 }, (_, i) => t.sendMail({ envelope: { from: 'bench@example.com', to: [`rcpt${i}@example.net`] }, raw: body(i) }).then((info) => info.response)),
        );
        assert.ok(replies.every((r) => r.startsWith('250')), replies.join('\n'));
        const got = (await sink.waitForMessages(before + 6, 10_000)).slice(before);
        for (let i = 0; i < 6; i++) {
          const m = got.find((x) => x.rcptTo[0] === `rcpt${i}@example.net`);
          assert.ok(m, `message ${i} reached the sink`);
          assert.equal(m.mailFrom, 'bench@example.com');
          assert.equal(m.raw.toString('latin1'), body(i));
          assert.ok(m.secure, 'over TLS');
        }
      } finally {
        t.close();
        await floor.stop();
      }
    });
  }
});
