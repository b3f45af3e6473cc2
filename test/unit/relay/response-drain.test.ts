// relay/internals.ts installResponseDrain: nodemailer's SMTPConnection hands the replies
// it has read to their handlers all at once, in order, instead of one per event-loop turn
// (the 354 after a pipelined MAIL/RCPT/DATA no longer waits two turns). The handlers and
// the replies they get must be exactly nodemailer's own; only the timing changes. These
// drive a real SMTPConnection's reply queue directly, without a socket.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { installResponseDrain, originalProcessResponse } from '../../../relay/internals.js';

interface Queue {
  _responseQueue: string[];
  _responseActions: ((str: string) => void)[];
  _processResponse(): unknown;
  close(): void;
}

/** A connection with `replies` read and `handlers` handlers that record the reply each gets. */
function connection(replies: string[], handlers: number): { conn: Queue; got: string[] } {
  const conn = new SMTPConnection({ name: 'client.test' }) as unknown as Queue;
  const got: string[] = [];
  conn._responseQueue = [...replies];
  conn._responseActions = Array.from({ length: handlers }, () => (str: string) => got.push(str));
  return { conn, got };
}

const nextTurn = () => new Promise<void>((r) => setImmediate(r));

describe('nodemailer replies handled at once (installResponseDrain)', () => {
  installResponseDrain();

  it('the replies to a pipelined MAIL, RCPT, RCPT and DATA reach their handlers in order, before the next event-loop turn', async () => {
    const { conn, got } = connection(['250 2.1.0 Ok', '250 2.1.5 Ok', '550 5.1.1 No such user', '354 End data with <CR><LF>.<CR><LF>'], 4);
    conn._processResponse();
    assert.deepEqual(got, ['250 2.1.0 Ok', '250 2.1.5 Ok', '550 5.1.1 No such user', '354 End data with <CR><LF>.<CR><LF>']);
    assert.deepEqual(conn._responseQueue, []);
    await nextTurn(); // the turns nodemailer still schedules find nothing left
    assert.equal(got.length, 4);
  });

  it("nodemailer's own handles one per turn: the same four replies, in the same order, over four turns", async () => {
    const { conn, got } = connection(['250 2.1.0 Ok', '250 2.1.5 Ok', '550 5.1.1 No such user', '354 Go'], 4);
    originalProcessResponse.call(conn);
    assert.deepEqual(got, ['250 2.1.0 Ok']);
    for (let i = 0; i < 3; i++) await nextTurn();
    assert.deepEqual(got, ['250 2.1.0 Ok', '250 2.1.5 Ok', '550 5.1.1 No such user', '354 Go']);
  });

  it('a multi-line reply is one entry; a reply still incomplete stops the run and stays queued for the rest of it', () => {
    const { conn, got } = connection(['250-first\n250 last', '250-more to come'], 2);
    conn._processResponse();
    assert.deepEqual(got, ['250-first\n250 last']);
    assert.deepEqual(conn._responseQueue, ['250-more to come']);
  });

  it('a 421 closes the connection after its handler: the replies queued behind it reach no handler', () => {
    const { conn, got } = connection(['250 2.1.0 Ok', '421 4.3.2 Shutting down', '250 2.1.5 Ok'], 3);
    let closed = 0;
    conn.close = () => {
      closed++;
      (conn as unknown as { _destroyed: boolean })._destroyed = true;
    };
    conn._processResponse();
    assert.deepEqual(got, ['250 2.1.0 Ok', '421 4.3.2 Shutting down']);
    assert.equal(closed, 1);
  });

  it('a reply with no handler waiting is a protocol error, as in nodemailer (the connection ends, nothing more is handled)', () => {
    const { conn, got } = connection(['250 2.1.0 Ok', '250 unexpected', '250 after'], 1);
    const errors: string[] = [];
    (conn as unknown as SMTPConnection).on('error', (e: Error & { code?: string }) => errors.push(String(e.code)));
    conn._processResponse();
    assert.deepEqual(got, ['250 2.1.0 Ok']);
    assert.deepEqual(errors, ['EPROTOCOL']);
  });
});
