// The cluster's ServiceAccount token issuer and its public keys, for relays
// whose users log in with ServiceAccount tokens. Read from the API server's
// OIDC discovery endpoints (served to any authenticated client with the
// nonResourceURLs get in operator/rbac/clusterrole.yaml) at start and every
// refreshMs after, so a rotated signing key reaches the relays' users Secrets
// (and from there, by the kubelet's Secret refresh, the relays) within minutes.
// The relays themselves never talk to the API server.

import type { Logger } from 'pino';
import type { Clock } from './runtime/clock.js';
import type { Kube } from './runtime/kube.js';

export const OPENID_CONFIGURATION_PATH = '/.well-known/openid-configuration';
/** Where the API server serves its own keys, whatever external jwks_uri it advertises (--service-account-jwks-uri). */
export const JWKS_PATH = '/openid/v1/jwks';
/**
 * 10 minutes: the API server publishes a new key as soon as it signs with it,
 * but tokens live at least 10 minutes and kubelets renew them at 80% of that, so
 * a new key is used by few pods before this refresh picks it up.
 */
export const ISSUER_KEYS_REFRESH_MS = 10 * 60_000;

export interface IssuerKeys {
  /** The `iss` of the cluster's ServiceAccount tokens. */
  issuer: string;
  /** Public keys only, as the API server serves them. */
  jwks: { keys: Record<string, unknown>[] };
}

export async function fetchIssuerKeys(kube: Kube): Promise<IssuerKeys> {
  const config = await kube.get<{ issuer?: unknown }>(OPENID_CONFIGURATION_PATH);
  if (typeof config?.issuer !== 'string' || !config.issuer) throw new Error(`${OPENID_CONFIGURATION_PATH} names no issuer`);
  const jwks = await kube.get<{ keys?: unknown }>(JWKS_PATH, { accept: 'application/jwk-set+json, application/json' });
  if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) throw new Error(`${JWKS_PATH} holds no keys`);
  const keys = (jwks.keys as Record<string, unknown>[]).filter((k) => k && typeof k === 'object' && k.d === undefined);
  return { issuer: config.issuer, jwks: { keys } };
}

/** The current issuer keys, refreshed in the background; `onChange` runs when they differ from the last fetch. */
export class IssuerKeysRefresh {
  private current: IssuerKeys | undefined;
  private lastError: string | undefined;
  private cancel: (() => void) | undefined;
  private stopped = false;

  constructor(
    private readonly fetch: () => Promise<IssuerKeys>,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly onChange: () => void,
    private readonly refreshMs = ISSUER_KEYS_REFRESH_MS,
  ) {}

  get keys(): IssuerKeys | undefined {
    return this.current;
  }

  /** Why there are no keys yet (the last fetch's error), for the CredentialsReady message. */
  get error(): string | undefined {
    return this.lastError;
  }

  /** Fetches once now (never throws), then keeps refreshing. */
  async start(): Promise<void> {
    await this.refresh();
    this.again();
  }

  stop(): void {
    this.stopped = true;
    this.cancel?.();
  }

  async refresh(): Promise<void> {
    try {
      const next = await this.fetch();
      this.lastError = undefined;
      if (JSON.stringify(next) === JSON.stringify(this.current)) return;
      const first = this.current === undefined;
      this.current = next;
      this.log.info({ issuer: next.issuer, keys: next.jwks.keys.length, kids: next.jwks.keys.map((k) => k.kid) }, first ? 'service-account issuer keys fetched' : 'service-account issuer keys changed');
      this.onChange();
    } catch (err) {
      // keep the keys we have: a passing API server hiccup must not lock apps out
      this.lastError = err instanceof Error ? err.message : String(err);
      this.log.warn({ err: this.lastError }, 'cannot fetch the service-account issuer keys; keeping the last ones');
    }
  }

  private again(): void {
    if (this.stopped) return;
    this.cancel = this.clock.setTimer(() => void this.refresh().finally(() => this.again()), this.refreshMs);
  }
}
