// Every desired child of an SmtpRelay except the Secrets whose content needs
// the API (hashed users, generated credentials and DKIM keys), in apply order.

import type { RelayConfig } from '../../relay/config-types.js';
import type { SmtpRelay } from '../api/v1alpha1.js';
import { buildCertificate, type Certificate } from './certificate.js';
import { buildConfigMap, type ConfigMap } from './relay-config.js';
import { buildWorkload, type DeploymentInputs, type Workload } from './deployment.js';
import { buildNetworkPolicy, type NetworkPolicy, type OperatorPods } from './networkpolicy.js';
import { buildMetricsService, buildPeersService, buildService, type Service } from './service.js';
import { buildPodDisruptionBudget, buildServiceAccount, buildServiceMonitor, type PodDisruptionBudget, type ServiceAccount, type ServiceMonitor } from './workload.js';

export interface ChildrenInputs extends DeploymentInputs {
  /** Cluster DNS domain for the certificate's Service names; default cluster.local. */
  clusterDomain?: string;
  /** Whether the ServiceMonitor CRD (monitoring.coreos.com/v1) is installed. */
  serviceMonitorCrd?: boolean;
  /** The operator's pods, admitted to the relay's metrics port (control endpoints). */
  operatorPods?: OperatorPods;
}

export type Child = ServiceAccount | ConfigMap | Workload | Service | Certificate | NetworkPolicy | PodDisruptionBudget | ServiceMonitor;

/**
 * ServiceAccount, ConfigMap, NetworkPolicy, Certificate (issuerRef only),
 * Service, metrics Service, peers Service (headless), the workload (Deployment or StatefulSet), PodDisruptionBudget, ServiceMonitor
 * (when enabled and its CRD exists). The NetworkPolicy comes before the
 * Deployment so pods never run unfenced. `config` is the relay config
 * (buildRelayConfig), built once: the ConfigMap carries it, the Deployment
 * opens its ports, mounts its keys and hashes its restart fields.
 */
export function buildChildren(relay: SmtpRelay, config: RelayConfig, inputs: ChildrenInputs): Child[] {
  const out: Child[] = [buildServiceAccount(relay), buildConfigMap(relay, config), buildNetworkPolicy(relay, inputs.operatorPods ? { operatorPods: inputs.operatorPods } : {})];
  const cert = buildCertificate(relay, inputs.clusterDomain !== undefined ? { clusterDomain: inputs.clusterDomain } : {});
  if (cert) out.push(cert);
  out.push(buildService(relay), buildMetricsService(relay), buildPeersService(relay), buildWorkload(relay, config, inputs), buildPodDisruptionBudget(relay));
  if (inputs.serviceMonitorCrd) {
    const sm = buildServiceMonitor(relay);
    if (sm) out.push(sm);
  }
  return out;
}
