// Names, labels and owner references shared by every child of an SmtpRelay.

import { createHash } from 'node:crypto';
import {
  API_VERSION,
  APP_NAME,
  KIND,
  LABEL_INSTANCE,
  LABEL_MANAGED_BY,
  LABEL_NAME,
  MANAGED_BY,
  type DkimSpec,
  type SmtpRelay,
  type UserSpec,
} from '../api/v1alpha1.js';

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller: boolean;
  blockOwnerDeletion: boolean;
}

export interface ChildMetadata {
  name: string;
  namespace: string;
  labels: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences: OwnerReference[];
}

/** The children's names: one place, so the controller, builders and tests agree. */
export interface ChildNames {
  serviceAccount: string;
  configMap: string;
  usersSecret: string;
  deployment: string;
  service: string;
  metricsService: string;
  certificate: string;
  /** The kubernetes.io/tls Secret the relay serves (cert-manager's target, or spec.tls.secretName). */
  tlsSecret: string;
  networkPolicy: string;
  podDisruptionBudget: string;
  serviceMonitor: string;
  /** The operator-generated Secret with the control and peer tokens. */
  internalSecret: string;
  /** Headless Service of the relay pods (the sibling channel; the StatefulSet's serviceName). */
  peersService: string;
}

export function childNames(relay: SmtpRelay): ChildNames {
  const n = relay.metadata.name;
  return {
    serviceAccount: n,
    configMap: `${n}-config`,
    usersSecret: `${n}-users`,
    deployment: n,
    service: n,
    metricsService: `${n}-metrics`,
    certificate: `${n}-tls`,
    tlsSecret: relay.spec.tls.secretName ?? `${n}-tls`,
    networkPolicy: n,
    podDisruptionBudget: n,
    serviceMonitor: n,
    internalSecret: `${n}-internal`,
    peersService: `${n}-peers`,
  };
}

const MAX_NAME = 253;

/** A DNS-subdomain name from `base`, shortened with a hash suffix when too long. */
export function boundedName(base: string, max = MAX_NAME): string {
  if (base.length <= max) return base;
  const suffix = createHash('sha256').update(base).digest('hex').slice(0, 10);
  const head = base.slice(0, max - suffix.length - 1).replace(/[-.]+$/, '');
  return `${head}-${suffix}`;
}

/** The Secret holding a user's password: spec'd, or "<relay>-user-<name>" with non-alphanumerics as '-'. */
export function userSecretName(relay: SmtpRelay, user: UserSpec): string {
  return user.secretRef?.name ?? boundedName(`${relay.metadata.name}-user-${user.name.replace(/[^a-z0-9]/g, '-')}`);
}

/** The Secret holding a DKIM private key: spec'd, or the generated "<relay>-dkim-<selector>-<domain>". */
export function dkimSecretName(relay: SmtpRelay, entry: DkimSpec): string {
  return entry.secretRef?.name ?? generatedDkimSecretName(relay, entry);
}

export function generatedDkimSecretName(relay: SmtpRelay, entry: DkimSpec): string {
  return boundedName(`${relay.metadata.name}-dkim-${entry.selector}-${entry.domain.toLowerCase().replace(/\./g, '-')}`);
}

/** Labels that select the relay's pods. Immutable in the Deployment, so only ours, never the user's. */
export function selectorLabels(relay: SmtpRelay): Record<string, string> {
  return { [LABEL_INSTANCE]: relay.metadata.name, [LABEL_NAME]: APP_NAME };
}

/** Labels on every child. */
export function standardLabels(relay: SmtpRelay, extra: Record<string, string> = {}): Record<string, string> {
  return sortedRecord({ ...extra, ...selectorLabels(relay), [LABEL_MANAGED_BY]: MANAGED_BY });
}

export function ownerReference(relay: SmtpRelay): OwnerReference {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: relay.metadata.name,
    uid: relay.metadata.uid,
    controller: true,
    blockOwnerDeletion: true,
  };
}

export function childMetadata(
  relay: SmtpRelay,
  name: string,
  opts: { labels?: Record<string, string>; annotations?: Record<string, string> } = {},
): ChildMetadata {
  const meta: ChildMetadata = {
    name,
    namespace: relay.metadata.namespace,
    labels: standardLabels(relay, opts.labels),
    ownerReferences: [ownerReference(relay)],
  };
  if (opts.annotations && Object.keys(opts.annotations).length > 0) meta.annotations = sortedRecord(opts.annotations);
  return meta;
}

/** A copy with keys in sorted order, so serialised output does not depend on input order. */
export function sortedRecord<V>(record: Record<string, V>): Record<string, V> {
  const out: Record<string, V> = {};
  for (const k of Object.keys(record).sort()) out[k] = record[k] as V;
  return out;
}

/** Annotation prefixes never copied from a user's map onto a child (kubectl's bookkeeping, ours). */
const RESERVED_ANNOTATION_PREFIXES = ['kubectl.kubernetes.io/', 'smtprelay.dev/', 'deployment.kubernetes.io/'];

export function userAnnotations(annotations: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(annotations ?? {})) {
    if (!RESERVED_ANNOTATION_PREFIXES.some((p) => k.startsWith(p))) out[k] = v;
  }
  return sortedRecord(out);
}

/** JSON with object keys sorted, so equal values serialise (and hash) equally. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(',')}}`;
}

export function shortHash(v: unknown): string {
  return createHash('sha256').update(canonicalJson(v)).digest('hex').slice(0, 16);
}
