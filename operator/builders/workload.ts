// The small children: ServiceAccount, PodDisruptionBudget, ServiceMonitor.

import type { V1PodDisruptionBudgetSpec } from '@kubernetes/client-node';
import { LABEL_COMPONENT, PORT_NAME_METRICS, type SmtpRelay } from '../api/v1alpha1.js';
import { childMetadata, childNames, selectorLabels, standardLabels, type ChildMetadata } from './meta.js';
import { COMPONENT_METRICS } from './service.js';

export interface ServiceAccount {
  apiVersion: 'v1';
  kind: 'ServiceAccount';
  metadata: ChildMetadata;
  automountServiceAccountToken: false;
}

/** The relay never talks to the API server: no token is mounted. */
export function buildServiceAccount(relay: SmtpRelay): ServiceAccount {
  return {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: childMetadata(relay, childNames(relay).serviceAccount),
    automountServiceAccountToken: false,
  };
}

export interface PodDisruptionBudget {
  apiVersion: 'policy/v1';
  kind: 'PodDisruptionBudget';
  metadata: ChildMetadata;
  spec: V1PodDisruptionBudgetSpec;
}

/**
 * At most one relay pod down at a time through voluntary disruptions. With
 * one replica this still lets a node drain (a budget that blocks forever is
 * worse than a short outage the user chose by running one replica).
 * Unhealthy pods may always be evicted, so a broken pod never blocks a drain.
 */
export function buildPodDisruptionBudget(relay: SmtpRelay): PodDisruptionBudget {
  return {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: childMetadata(relay, childNames(relay).podDisruptionBudget),
    spec: {
      maxUnavailable: 1,
      selector: { matchLabels: selectorLabels(relay) },
      unhealthyPodEvictionPolicy: 'AlwaysAllow',
    },
  };
}

export interface ServiceMonitor {
  apiVersion: 'monitoring.coreos.com/v1';
  kind: 'ServiceMonitor';
  metadata: ChildMetadata;
  spec: {
    selector: { matchLabels: Record<string, string> };
    namespaceSelector: { matchNames: string[] };
    endpoints: Array<{ port: string; path: string; interval: string; scheme: 'http' }>;
  };
}

/** Only when spec.metrics.serviceMonitor.enabled; the caller also checks that the CRD exists. */
export function buildServiceMonitor(relay: SmtpRelay): ServiceMonitor | undefined {
  const sm = relay.spec.metrics.serviceMonitor;
  if (!sm.enabled) return undefined;
  return {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'ServiceMonitor',
    metadata: childMetadata(relay, childNames(relay).serviceMonitor, { labels: { ...(sm.labels ?? {}) } }),
    spec: {
      selector: { matchLabels: standardLabels(relay, { [LABEL_COMPONENT]: COMPONENT_METRICS }) },
      namespaceSelector: { matchNames: [relay.metadata.namespace] },
      endpoints: [{ port: PORT_NAME_METRICS, path: '/metrics', interval: sm.interval, scheme: 'http' }],
    },
  };
}
