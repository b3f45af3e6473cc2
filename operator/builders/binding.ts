// Binding Secrets: one per user, holding everything an app needs to submit
// mail, under the Service Binding specification's well-known keys
// (servicebinding.io/spec/core: type, provider, host, port, username,
// password), plus `tls` (how TLS is reached on that port) and `ca.crt` (the CA
// that signed the relay's certificate). An app mounts it, or takes it with
// envFrom, as is. A ServiceAccount user gets no password: it presents its
// projected token (audience in `audience`).

import { createHash } from 'node:crypto';
import { BINDING_PROVIDER, BINDING_SECRET_TYPE, BINDING_TYPE, LABEL_COMPONENT, PORT_NAME_SUBMISSIONS, tokenAudience, type SmtpRelay, type UserSpec } from '../api/v1alpha1.js';
import { boundedName, childMetadata, childNames } from './meta.js';
import { smtpServicePorts } from './service.js';
import type { Secret } from './users.js';

/** The binding Secret's keys (also its envFrom variable names: all are valid as such except ca.crt, which env skips). */
export const BindingKey = {
  type: 'type',
  provider: 'provider',
  host: 'host',
  port: 'port',
  username: 'username',
  password: 'password',
  tls: 'tls',
  ca: 'ca.crt',
  audience: 'audience',
} as const;

/**
 * "<relay>-binding-<user>"; a user name that is not already a DNS label
 * ("app.one", "Billing") gets a hash suffix, so two users never share one.
 */
export function bindingSecretName(relay: SmtpRelay, user: UserSpec): string {
  const clean = user.name.replace(/[^a-z0-9]/g, '-');
  const suffix = clean === user.name ? '' : `-${createHash('sha256').update(user.name).digest('hex').slice(0, 8)}`;
  return boundedName(`${relay.metadata.name}-binding-${clean}${suffix}`);
}

export interface BindingInputs {
  /** The user's password (absent for a ServiceAccount user, or when its Secret is unusable). */
  password?: string;
  /** PEM of the CA that signed the relay's certificate (the TLS Secret's ca.crt), when known. */
  caCrt?: string;
}

export function buildBindingSecret(relay: SmtpRelay, user: UserSpec, inputs: BindingInputs): Secret {
  const first = smtpServicePorts(relay)[0];
  const port = first?.port ?? relay.spec.listeners.submission.port;
  const tls = first?.name === PORT_NAME_SUBMISSIONS ? 'implicit' : 'starttls';
  const entries: Record<string, string> = {
    [BindingKey.type]: BINDING_TYPE,
    [BindingKey.provider]: BINDING_PROVIDER,
    [BindingKey.host]: `${childNames(relay).service}.${relay.metadata.namespace}.svc`,
    [BindingKey.port]: String(port),
    [BindingKey.username]: user.name,
    [BindingKey.tls]: tls,
  };
  if (user.serviceAccount) entries[BindingKey.audience] = tokenAudience(relay);
  else if (inputs.password !== undefined) entries[BindingKey.password] = inputs.password;
  if (inputs.caCrt) entries[BindingKey.ca] = inputs.caCrt;
  const data: Record<string, string> = {};
  for (const k of Object.keys(entries).sort()) data[k] = Buffer.from(entries[k]!, 'utf8').toString('base64');
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: childMetadata(relay, bindingSecretName(relay, user), { labels: { [LABEL_COMPONENT]: 'binding' } }),
    type: BINDING_SECRET_TYPE,
    data,
  };
}
