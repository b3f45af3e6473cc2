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
    t.open('a', { listener: 'submissions', ip: '10.0.0.1', countedAtAccept: true, key: 'k-a' });
    assert.equal(t.count('10.0.0.1'), 1, 'the session does not count it again');
    assert.equal(t.sessionCount, 1);
    t.close('a');
    assert.equal(t.count('10.0.0.1'), 1, 'still open until the socket closes');
    s.emit('close');
    assert.equal(t.count('10.0.0.1'), 0);
  });

  it('a session whose connection was not counted at accept (STARTTLS or PROXY) counts itself until it closes', () => {
    const t = new ConnectionTable();
    t.open('a', { listener: 'submission', ip: '10.0.0.2', countedAtAccept: false, key: 'k-a' });
    t.open('b', { listener: 'submission', ip: '10.0.0.2', countedAtAccept: false, key: 'k-b' });
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
    const state = t.open('a', { listener: 'submission', ip: '10.0.0.4', countedAtAccept: false, key: 'k-a' });
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

  it('unauthenticated connections are shed oldest first, never the newcomer, and an authenticated one is never shed', () => {
    let now = 1000;
    const t = new ConnectionTable(() => now);
    const shed: string[] = [];
    for (const k of ['a', 'b', 'c']) {
      t.trackUnauthenticated(k, 'submission', '10.0.0.9', (reason) => shed.push(`${k}:${reason}`));
      now += 1000;
    }
    t.authenticated('a');
    assert.equal(t.unauthenticatedCount, 2);
    assert.equal(t.shedOldest('relay_full', 'b'), 'submission');
    assert.deepEqual(shed, ['c:relay_full'], 'b was the newcomer, a is authenticated');
    assert.equal(t.shedOldest('relay_full', 'b'), undefined, 'only the newcomer is left');
  });

  it('a connection tracked again (its TLS socket after the handshake) keeps its age and takes the new way to shed it', () => {
    let now = 0;
    const t = new ConnectionTable(() => now);
    const shed: string[] = [];
    t.trackUnauthenticated('x', 'submissions', '10.0.0.1', () => shed.push('socket destroyed'));
    now = 5000;
    t.trackUnauthenticated('y', 'submissions', '10.0.0.2', () => shed.push('y'));
    t.trackUnauthenticated('x', 'submissions', '10.0.0.1', (reason) => shed.push(`421 ${reason}`));
    now = 10_500;
    assert.deepEqual(t.shedExpired(10_000), ['submissions']);
    assert.deepEqual(shed, ['421 pre_auth_timeout'], 'x is 10.5 s old, y 5.5 s');
    t.closed('y');
    assert.equal(t.unauthenticatedCount, 0);
  });

  it('the address holding the most unauthenticated connections loses its oldest first, so one real client outlasts a reconnecting flood', () => {
    let now = 0;
    const t = new ConnectionTable(() => now);
    const shed: string[] = [];
    t.trackUnauthenticated('real', 'submission', '10.0.0.1', () => shed.push('real'));
    for (let i = 0; i < 3; i++) {
      now += 10;
      t.trackUnauthenticated(`flood-${i}`, 'submission', '10.6.6.6', () => shed.push(`flood-${i}`));
    }
    t.shedOldest('unauthenticated_cap');
    t.shedOldest('unauthenticated_cap');
    assert.deepEqual(shed, ['flood-0', 'flood-1']);
    // one each now: the oldest of the two goes
    t.shedOldest('unauthenticated_cap', 'flood-2');
    assert.deepEqual(shed, ['flood-0', 'flood-1', 'real']);
  });
});
