// The operator's side of the control endpoints (relay/control.ts) for the relay tests:
// a request with the bearer token, /readyz, and the greeting a new SMTP connection gets.
import { RawSmtp, type RelayProcess } from './harness.js';

/** A control request to the relay's metrics port. */
export async function control(relay: RelayProcess, method: string, path: string, token?: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${relay.ports.metrics}${path}`, {
    method,
    headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    json = { text };
  }
  return { status: res.status, json };
}

export async function readyz(relay: RelayProcess): Promise<number> {
  return (await fetch(`http://127.0.0.1:${relay.ports.metrics}/readyz`, { signal: AbortSignal.timeout(5000) })).status;
}

/** The greeting a new SMTP connection gets (421 while draining). */
export async function greetingCode(relay: RelayProcess): Promise<number> {
  const c = await RawSmtp.connect(relay.ports.submission);
  const code = c.greeting?.code ?? 0;
  c.close();
  return code;
}

