// The operator's side of the relay's control endpoints (relay/control.ts, on the
// metrics port, plain HTTP, `Authorization: Bearer <control token>`):
//   GET /queue     → {"draining":bool,"messages":n,"bytes":n,"oldestSeconds":n,"handedOff":n}
//   POST /drain    {"handoff":["<podIP>:<peerPort>",...]} → the pod stops taking mail and empties its queue
//   DELETE /drain  → back in service
// The token is never logged: errors name the pod and the HTTP status only.

import { METRICS_PORT } from '../../api/v1alpha1.js';

export interface QueueState {
  draining: boolean;
  messages: number;
  bytes: number;
  oldestSeconds: number;
  handedOff: number;
}

/** Each request is bounded: a pod that does not answer in time counts as unreachable this round. */
export const CONTROL_TIMEOUT_MS = 3_000;

/** "ip:port" with IPv6 in brackets. */
export function hostPort(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** Where the operator asks a pod: its IP and the metrics port. */
export function controlAddress(podIP: string): string {
  return hostPort(podIP, METRICS_PORT);
}

async function call(address: string, token: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`http://${address}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(CONTROL_TIMEOUT_MS),
    redirect: 'error',
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path}: HTTP ${res.status}`);
  return text ? (JSON.parse(text) as unknown) : undefined;
}

function num(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new Error(`GET /queue: ${field} is not a count`);
  return v;
}

/** The pod's queue state; throws on anything but a well-formed answer. */
export async function getQueue(address: string, token: string): Promise<QueueState> {
  const o = (await call(address, token, 'GET', '/queue')) as Record<string, unknown> | undefined;
  if (!o || typeof o !== 'object' || typeof o['draining'] !== 'boolean') throw new Error('GET /queue: not a queue state');
  return {
    draining: o['draining'],
    messages: num(o['messages'], 'messages'),
    bytes: num(o['bytes'] ?? 0, 'bytes'),
    oldestSeconds: num(o['oldestSeconds'] ?? 0, 'oldestSeconds'),
    handedOff: num(o['handedOff'] ?? 0, 'handedOff'),
  };
}

export async function startDrain(address: string, token: string, handoff: readonly string[]): Promise<void> {
  await call(address, token, 'POST', '/drain', { handoff: [...handoff] });
}

export async function stopDrain(address: string, token: string): Promise<void> {
  await call(address, token, 'DELETE', '/drain');
}
