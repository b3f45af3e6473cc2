// SmtpRelay fixtures for tests: a complete (defaulted) relay from what a user
// would write, plus modifiers. Used by the builder unit tests and by the
// controller's tests.

import { API_VERSION, KIND, type Condition, type SmtpRelay } from '../../../operator/api/v1alpha1.js';
import { rfc3339 } from '../../../operator/status/conditions.js';
import { withDefaults, type SmtpRelaySpecInput } from './defaults.js';

export type RelayModifier = (relay: SmtpRelay) => void;

export const MINIMAL_SPEC: SmtpRelaySpecInput = {
  hostname: 'relay.example.com',
  tls: { issuerRef: { name: 'ca-issuer' } },
  auth: { users: [{ name: 'app', allowedSenders: ['noreply@example.com'] }] },
  upstream: { host: 'smtp.example.net' },
};

/** A relay "outbound" in namespace "mail" (generation 1) with the given spec (default: MINIMAL_SPEC), then the modifiers. */
export function relayFixture(spec: SmtpRelaySpecInput = MINIMAL_SPEC, ...modifiers: RelayModifier[]): SmtpRelay {
  const relay: SmtpRelay = {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: 'outbound', namespace: 'mail', uid: '6f1c1e0a-2b5d-4c1e-9d8a-0a1b2c3d4e5f', generation: 1 },
    spec: withDefaults(structuredClone(spec)),
  };
  for (const m of modifiers) m(relay);
  return relay;
}

/** Every condition a reconcile sets (Ready aside), all with `status` as of `since`, then the overrides in `except`. */
export function conditionsFixture(status: 'True' | 'False' | 'Unknown', since: Date, except: Partial<Record<string, Partial<Condition>>> = {}): Condition[] {
  return ['Reconciled', 'CertificateReady', 'CredentialsReady', 'UpstreamReady', 'DkimReady', 'Available'].map((type) => ({
    type,
    status,
    reason: 'R',
    message: `${type} message`,
    lastTransitionTime: rfc3339(since),
    ...except[type],
  }));
}
