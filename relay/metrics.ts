// Prometheus metrics (prefix smtp_relay_) and the /metrics, /healthz, /readyz
// HTTP endpoints on their own port.

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import prom from 'prom-client';

export function createMetrics(registry: prom.Registry) {
  const r = [registry];
  return {
    registry,
    connections: new prom.Counter({
      name: 'smtp_relay_connections_total',
      help: 'SMTP connections by listener and result (accepted, rejected) with the rejection reason.',
      labelNames: ['listener', 'result', 'reason'] as const,
      registers: r,
    }),
    connectionsShed: new prom.Counter({
      name: 'smtp_relay_connections_shed_total',
      help: 'Unauthenticated connections closed by the relay: pre_auth_timeout (no AUTH in time), unauthenticated_cap or relay_full (the oldest, to admit a newcomer).',
      labelNames: ['listener', 'reason'] as const,
      registers: r,
    }),
    unauthenticatedConnections: new prom.Gauge({
      name: 'smtp_relay_unauthenticated_connections',
      help: 'Connections open now that have not authenticated yet, TLS handshakes included.',
      registers: r,
    }),
    activeConnections: new prom.Gauge({
      name: 'smtp_relay_active_connections',
      help: 'SMTP sessions open now, by listener.',
      labelNames: ['listener'] as const,
      registers: r,
    }),
    tlsHandshakes: new prom.Counter({
      name: 'smtp_relay_tls_handshakes_total',
      help: 'Completed TLS handshakes by listener, negotiated protocol version and cipher.',
      labelNames: ['listener', 'version', 'cipher'] as const,
      registers: r,
    }),
    tlsFailures: new prom.Counter({
      name: 'smtp_relay_tls_failures_total',
      help: 'TLS handshakes that failed or were abandoned, by listener.',
      labelNames: ['listener'] as const,
      registers: r,
    }),
    certificateExpiry: new prom.Gauge({
      name: 'smtp_relay_certificate_expiry_timestamp_seconds',
      help: 'Expiry (notAfter) of the certificate in use, Unix seconds.',
      // several workers: each loads the same files (the primary none)
      aggregator: 'max',
      registers: r,
    }),
    authAttempts: new prom.Counter({
      name: 'smtp_relay_auth_attempts_total',
      help: 'AUTH attempts by mechanism and result (success, failure, locked).',
      labelNames: ['mechanism', 'result'] as const,
      registers: r,
    }),
    passwordChecks: new prom.Counter({
      name: 'smtp_relay_auth_password_checks_total',
      help: 'Password checks by kind: scrypt (a full key derivation), remembered (the same password and hash succeeded before in this process), shared (waited for the same check already running), token (a ServiceAccount token signature check).',
      labelNames: ['check'] as const,
      registers: r,
    }),
    lockouts: new prom.Counter({
      name: 'smtp_relay_lockouts_total',
      help: 'Brute-force lockouts started, by scope (ip, user).',
      labelNames: ['scope'] as const,
      registers: r,
    }),
    messages: new prom.Counter({
      name: 'smtp_relay_messages_total',
      help: 'Messages by result (accepted, rejected, deferred).',
      labelNames: ['result'] as const,
      registers: r,
    }),
    messageBytes: new prom.Counter({
      name: 'smtp_relay_message_bytes_total',
      help: 'Message bytes received from clients, by result.',
      labelNames: ['result'] as const,
      registers: r,
    }),
    rejections: new prom.Counter({
      name: 'smtp_relay_rejections_total',
      help: 'Refusals by reason (ip_not_allowed, tls_required, auth_required, sender_not_allowed, bare_lf, ...).',
      labelNames: ['reason'] as const,
      registers: r,
    }),
    configReloads: new prom.Counter({
      name: 'smtp_relay_config_reloads_total',
      help: 'Reloads of watched files by kind (config, users, certificate) and result (success, failure).',
      // several workers: each reloads the same change, counted once
      aggregator: 'max',
      labelNames: ['kind', 'result'] as const,
      registers: r,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/**
 * Serves /metrics, /healthz (process alive) and /readyz (listeners up, not draining);
 * `control` (relay/control.ts) answers the operator's /queue and /drain first.
 */
export function startMetricsServer(
  registry: { metrics(): Promise<string>; contentType: string },
  address: string,
  port: number,
  ready: () => boolean,
  control?: (req: http.IncomingMessage, res: http.ServerResponse) => boolean,
): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (control?.(req, res)) return;
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD' }).end();
      return;
    }
    if (url === '/metrics') {
      registry.metrics().then(
        (body) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(body),
        (err: Error) => res.writeHead(500).end(err.message),
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok\n');
    } else if (url === '/readyz') {
      const ok = ready();
      res.writeHead(ok ? 200 : 503, { 'Content-Type': 'text/plain' }).end(ok ? 'ready\n' : 'not ready\n');
    } else {
      res.writeHead(404).end();
    }
  });
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  const bind = (addr: string) =>
    new Promise<http.Server>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, addr, () => {
        server.off('error', reject);
        resolve(server);
      });
    });
  // "::" on a host without IPv6: fall back to all IPv4 addresses
  return bind(address).catch((err: NodeJS.ErrnoException) => {
    if (address === '::' && (err.code === 'EAFNOSUPPORT' || err.code === 'EADDRNOTAVAIL')) return bind('0.0.0.0');
    throw err;
  });
}

export function boundPort(server: { address(): AddressInfo | string | null }): number {
  const a = server.address();
  return a && typeof a === 'object' ? a.port : 0;
}
