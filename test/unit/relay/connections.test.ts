// relay/connections.ts: one count per client address, whether a connection was counted
// at TCP accept (implicit TLS, before the handshake) or by its session (STARTTLS, PROXY).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { ConnectionTable } from '../../../relay/connections.js';

/** A stand-in for an accepted socket: the table reads its addresses and waits for 'close'. */
function socket(remotePort: number, remoteAddress = '10.0.0.1'): net.Socket {
  return Object.assign(new EventEmitter(), { localPort: 465, remoteAddress, remotePort }) as unknown as net.Socket;
}

describe('the connection table', () => {
  it('a connection counted at accept is counted once, through its session, and released when its socket closes', () => {
    const t = new ConnectionTable();
    const s = socket(40000);
    t.countSocket(s, '10.0.0.1');
    assert.equal(t.count('10.0.0.1'), 1);
    assert.equal(t.takeAccepted(s), true);
    assert.equal(t.takeAccepted(s), false, 'asked once');
    t.open('a', { listener: 'submissions', ip: '10.0.0.1', countedAtAccept: true });
    assert.equal(t.count('10.0.0.1'), 1, 'the session does not count it again');
    assert.equal(t.sessionCount, 1);
    t.close('a');
    assert.equal(t.count('10.0.0.1'), 1, 'still open until the socket closes');
    s.emit('close');
    assert.equal(t.count('10.0.0.1'), 0);
  });

  it('a session whose connection was not counted at accept (STARTTLS or PROXY) counts itself until it closes', () => {
    const t = new ConnectionTable();
    t.open('a', { listener: 'submission', ip: '10.0.0.2', countedAtAccept: false });
    t.open('b', { listener: 'submission', ip: '10.0.0.2', countedAtAccept: false });
    assert.equal(t.count('10.0.0.2'), 2);
    t.close('a');
    assert.equal(t.close('a'), undefined, 'closing twice changes nothing');
    assert.equal(t.count('10.0.0.2'), 1);
    t.close('b');
    assert.equal(t.count('10.0.0.2'), 0);
  });

  it('a socket that closes before its session starts leaves nothing behind', () => {
    const t = new ConnectionTable();
    const s = socket(40001);
    t.countSocket(s, '10.0.0.3');
    s.emit('close');
    assert.equal(t.count('10.0.0.3'), 0);
    assert.equal(t.takeAccepted(s), false);
  });

  it('a drain waits for the messages in flight, and only for them', async () => {
    const t = new ConnectionTable();
    const state = t.open('a', { listener: 'submission', ip: '10.0.0.4', countedAtAccept: false });
    await t.idle();
    t.beginMessage(state);
    assert.equal(state.inFlight, true);
    let idle = false;
    const waiting = t.idle().then(() => (idle = true));
    await new Promise((r) => setImmediate(r));
    assert.equal(idle, false);
    t.endMessage(state);
    await waiting;
    assert.equal(state.inFlight, false);
  });
});
