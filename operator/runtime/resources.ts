// Where each kind the operator touches lives in the API.

import { GROUP, PLURAL, VERSION, KIND } from '../api/v1alpha1.js';
import type { Resource } from './kube.js';

export const SmtpRelays: Resource = { group: GROUP, version: VERSION, plural: PLURAL, kind: KIND, namespaced: true };
export const ServiceAccounts: Resource = { group: '', version: 'v1', plural: 'serviceaccounts', kind: 'ServiceAccount', namespaced: true };
export const ConfigMaps: Resource = { group: '', version: 'v1', plural: 'configmaps', kind: 'ConfigMap', namespaced: true };
export const Secrets: Resource = { group: '', version: 'v1', plural: 'secrets', kind: 'Secret', namespaced: true };
export const Services: Resource = { group: '', version: 'v1', plural: 'services', kind: 'Service', namespaced: true };
export const Events: Resource = { group: '', version: 'v1', plural: 'events', kind: 'Event', namespaced: true };
export const Deployments: Resource = { group: 'apps', version: 'v1', plural: 'deployments', kind: 'Deployment', namespaced: true };
export const StatefulSets: Resource = { group: 'apps', version: 'v1', plural: 'statefulsets', kind: 'StatefulSet', namespaced: true };
export const NetworkPolicies: Resource = { group: 'networking.k8s.io', version: 'v1', plural: 'networkpolicies', kind: 'NetworkPolicy', namespaced: true };
export const PodDisruptionBudgets: Resource = { group: 'policy', version: 'v1', plural: 'poddisruptionbudgets', kind: 'PodDisruptionBudget', namespaced: true };
export const Certificates: Resource = { group: 'cert-manager.io', version: 'v1', plural: 'certificates', kind: 'Certificate', namespaced: true };
export const Issuers: Resource = { group: 'cert-manager.io', version: 'v1', plural: 'issuers', kind: 'Issuer', namespaced: true };
export const ClusterIssuers: Resource = { group: 'cert-manager.io', version: 'v1', plural: 'clusterissuers', kind: 'ClusterIssuer', namespaced: false };
export const ServiceMonitors: Resource = { group: 'monitoring.coreos.com', version: 'v1', plural: 'servicemonitors', kind: 'ServiceMonitor', namespaced: true };
export const Leases: Resource = { group: 'coordination.k8s.io', version: 'v1', plural: 'leases', kind: 'Lease', namespaced: true };

/** Child kinds always present in a cluster, by kind. */
export const CORE_CHILD_RESOURCES: Resource[] = [ServiceAccounts, ConfigMaps, Secrets, Services, Deployments, StatefulSets, NetworkPolicies, PodDisruptionBudgets];

export function resourceForKind(kind: string): Resource | undefined {
  return [...CORE_CHILD_RESOURCES, Certificates, ServiceMonitors, SmtpRelays].find((r) => r.kind === kind);
}
