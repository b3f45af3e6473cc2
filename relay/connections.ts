// The connection table: every open client connection counted once, per client
// address and in total, the state of each SMTP session, and the messages in flight
// that a drain waits for. The listeners (relay/server.ts) and the session phases
// (relay/session.ts) share this one table.
//
// Where a connection is counted: on an implicit-TLS listener at TCP accept, before the
// handshake (else one allowed address could fill every pending-handshake slot), and
// released when its socket closes; everywhere else (STARTTLS listeners, and PROXY
// connections, whose client address is known only from the header) at the session's
// connect phase, released at its close.

import type net from 'node:net';

export interface SessionState {
  listener: string;
  ip: string;
  tlsVersion?: string;
  cipher?: string;
  user?: string;
  messages: number;
  lastResult?: string;
  /** DATA received, the upstream's answer pending: a drain waits for it. */
  inFlight: boolean;
  /** The DATA command accepted, the message still arriving: the operator's drain lets it finish (relay/server.ts setDrain). */
  inData: boolean;
  /** Counted at TCP accept (released with the socket), not by the session. */
  countedAtAccept: boolean;
  /** The connection's key in the table's list of unauthenticated connections. */
  key: string;
}

export type ShedReason = 'pre_auth_timeout' | 'unauthenticated_cap' | 'relay_full';

interface Unauthenticated {
  since: number;
  listener: string;
  ip: string;
  /** Closes the connection: a 421 reply once the session exists, else the socket. */
  shed(reason: ShedReason): void;
}

/** Local port + remote address and port: one live TCP connection, as its TLS socket sees it too. */
export function socketKey(socket: net.Socket): string {
  return `${socket.localPort}|${socket.remoteAddress}|${socket.remotePort}`;
}

export class ConnectionTable {
  private readonly perIp = new Map<string, number>();
  /** Sockets counted at accept whose session has not started yet. */
  private readonly acceptedSockets = new Set<string>();
  /** Connections counted at accept (key -> client address), until released. */
  private readonly acceptedIp = new Map<string, string>();
  private readonly sessions = new Map<string, SessionState>();
  private inFlight = 0;
  private readonly idleWaiters: (() => void)[] = [];
  /** Connections from accept until AUTH succeeds, oldest first (Map order is insertion order). */
  private readonly unauthenticated = new Map<string, Unauthenticated>();
  /** How many of those each client address holds. */
  private readonly unauthenticatedPerIp = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now) {}

  // --- unauthenticated connections (flood resistance) ---

  get unauthenticatedCount(): number {
    return this.unauthenticated.size;
  }

  /**
   * Tracks a new unauthenticated connection under `key` until authenticated() or
   * closed(); a key seen before (the TLS socket of a connection tracked at accept) keeps
   * its age and takes the new way to shed it.
   */
  trackUnauthenticated(key: string, listener: string, ip: string, shed: (reason: ShedReason) => void): void {
    const known = this.unauthenticated.get(key);
    if (known) {
      known.shed = shed;
      return;
    }
    this.unauthenticated.set(key, { since: this.now(), listener, ip, shed });
    this.unauthenticatedPerIp.set(ip, (this.unauthenticatedPerIp.get(ip) ?? 0) + 1);
  }

  private untrack(key: string): Unauthenticated | undefined {
    const u = this.unauthenticated.get(key);
    if (!u) return undefined;
    this.unauthenticated.delete(key);
    const n = (this.unauthenticatedPerIp.get(u.ip) ?? 1) - 1;
    if (n <= 0) this.unauthenticatedPerIp.delete(u.ip);
    else this.unauthenticatedPerIp.set(u.ip, n);
    return u;
  }

  authenticated(key: string): void {
    this.untrack(key);
  }

  closed(key: string): void {
    this.untrack(key);
  }

  /**
   * Sheds one unauthenticated connection other than `except`: the oldest of the address
   * that holds the most. Plain oldest-first would let a flood that reconnects as fast as
   * it is shed push out a real client in the middle of its TLS handshake; a real client
   * holds one or two such connections, a flood many per address. Its listener, or
   * undefined when there is none.
   */
  shedOldest(reason: ShedReason, except?: string): string | undefined {
    const exceptIp = except === undefined ? undefined : this.unauthenticated.get(except)?.ip;
    let busiest: string | undefined;
    let most = 0;
    for (const [ip, n] of this.unauthenticatedPerIp) {
      const candidates = ip === exceptIp ? n - 1 : n;
      if (candidates > most) [busiest, most] = [ip, candidates];
    }
    if (busiest === undefined) return undefined;
    for (const [key, u] of this.unauthenticated) {
      if (key === except || u.ip !== busiest) continue;
      this.untrack(key);
      u.shed(reason);
      return u.listener;
    }
    return undefined;
  }

  /** Sheds every unauthenticated connection older than `maxAgeMs`; the listeners of those shed. */
  shedExpired(maxAgeMs: number): string[] {
    const out: string[] = [];
    const cutoff = this.now() - maxAgeMs;
    for (const [key, u] of this.unauthenticated) {
      if (u.since > cutoff) break; // oldest first: the rest are younger
      this.untrack(key);
      u.shed('pre_auth_timeout');
      out.push(u.listener);
    }
    return out;
  }

  /** Open connections from `ip`. */
  count(ip: string): number {
    return this.perIp.get(ip) ?? 0;
  }

  /** Sessions started (connect phase passed) and not yet closed. */
  get sessionCount(): number {
    return this.sessions.size;
  }

  private add(ip: string): void {
    this.perIp.set(ip, this.count(ip) + 1);
  }

  private remove(ip: string): void {
    const n = this.count(ip) - 1;
    if (n <= 0) this.perIp.delete(ip);
    else this.perIp.set(ip, n);
  }

  /** Counts a TCP connection at accept; it is released when the socket closes. */
  countSocket(socket: net.Socket, ip: string): void {
    const key = socketKey(socket);
    this.countKey(key, ip);
    socket.once('close', () => this.releaseKey(key));
  }

  /** Counts the connection `key` at accept, until releaseKey(key). */
  countKey(key: string, ip: string): void {
    if (this.acceptedIp.has(key)) return;
    this.add(ip);
    this.acceptedIp.set(key, ip);
    this.acceptedSockets.add(key);
  }

  /** Releases what countKey counted (nothing when it was not, or already released). */
  releaseKey(key: string): void {
    this.acceptedSockets.delete(key);
    const ip = this.acceptedIp.get(key);
    if (ip === undefined) return;
    this.acceptedIp.delete(key);
    this.remove(ip);
  }

  /** Whether the connection on `socket` was counted at accept (asked once, when its session is created). */
  takeAccepted(socket: net.Socket): boolean {
    return this.acceptedSockets.delete(socketKey(socket));
  }

  /** Starts a session; counts its connection unless that happened at accept. */
  open(id: string, state: Omit<SessionState, 'messages' | 'inFlight' | 'inData'>): SessionState {
    if (!state.countedAtAccept) this.add(state.ip);
    const s: SessionState = { ...state, messages: 0, inFlight: false, inData: false };
    this.sessions.set(id, s);
    return s;
  }

  get(id: string): SessionState | undefined {
    return this.sessions.get(id);
  }

  /** Ends a session; undefined when it never started. */
  close(id: string): SessionState | undefined {
    const s = this.sessions.get(id);
    if (!s) return undefined;
    this.sessions.delete(id);
    if (!s.countedAtAccept) this.remove(s.ip);
    return s;
  }

  /** A message of this session went to the upstream. */
  beginMessage(state: SessionState | undefined): void {
    if (state) state.inFlight = true;
    this.inFlight++;
  }

  endMessage(state: SessionState | undefined): void {
    if (state) state.inFlight = false;
    this.inFlight--;
    if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves when no message is in flight. */
  idle(): Promise<void> {
    return this.inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }
}
