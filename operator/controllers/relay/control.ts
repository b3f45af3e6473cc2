// The operator's side of the relay's control endpoints (relay/control.ts, on the
// metrics port, plain HTTP, `Authorization: Bearer <control token>`):
//   GET /queue     → {"draining":bool,"messages":n,"bytes":n,"oldestSeconds":n,"handedOff":n}
//   POST /drain    {"handoff":["<podIP>:<peerPort>",...]} → the pod stops taking mail and empties its queue
//   DELETE /drain  → back in service
//   GET /upstream  → the upstream's verdict on the relay's own login (relay/upstream-login.ts)
// The token is never logged: errors name the pod and the HTTP status only.

import { METRICS_PORT } from '../../api/v1alpha1.js';
import { refusalWords } from '../../../relay/upstream-login.js';

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

/** What the operator takes from GET /upstream: only what it shows, re-sanitised (a pod's words are not trusted to be clean). */
export interface UpstreamState {
  /** The pod's own name for itself (its hostname), if it gave a usable one. */
  pod?: string;
  authRefused: boolean;
  /** While refused: the upstream's reply code and words. */
  reply?: string;
  mechanism?: string;
  /** While refused: when the refusals began (RFC 3339). */
  since?: string;
}

/** A DNS label-ish pod name (a pod name is a DNS subdomain), else undefined. */
function podName(v: unknown): string | undefined {
  return typeof v === 'string' && /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(v) ? v : undefined;
}

/** The pod's upstream login state; throws on anything but a well-formed answer. */
export async function getUpstream(address: string, token: string): Promise<UpstreamState> {
  const o = (await call(address, token, 'GET', '/upstream')) as Record<string, unknown> | undefined;
  if (!o || typeof o !== 'object' || typeof o['authRefused'] !== 'boolean') throw new Error('GET /upstream: not an upstream state');
  const out: UpstreamState = { authRefused: o['authRefused'] };
  const pod = podName(o['pod']);
  if (pod) out.pod = pod;
  if (out.authRefused) {
    out.reply = refusalWords(typeof o['reply'] === 'string' ? o['reply'] : '') || 'no reply text';
    if (typeof o['mechanism'] === 'string' && /^[A-Z0-9_-]{1,20}$/.test(o['mechanism'])) out.mechanism = o['mechanism'];
    if (typeof o['since'] === 'string' && !Number.isNaN(Date.parse(o['since']))) out.since = new Date(Date.parse(o['since'])).toISOString().replace(/\.\d{3}Z$/, 'Z');
  }
  return out;
}
