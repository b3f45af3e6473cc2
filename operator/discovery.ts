// Which optional APIs the cluster serves: cert-manager's Certificate and
// prometheus-operator's ServiceMonitor. Looked up at start and, for those not
// yet served, again now and then (run.ts).

import type { Features } from './controllers/context.js';
import { type Kube, type Resource, isNotFound } from './runtime/kube.js';
import { Certificates, ServiceMonitors } from './runtime/resources.js';

/** The optional APIs, each with the feature flag it sets. */
export const OPTIONAL_APIS: ReadonlyArray<{ feature: keyof Features; resource: Resource }> = [
  { feature: 'certManager', resource: Certificates },
  { feature: 'serviceMonitor', resource: ServiceMonitors },
];

export async function served(kube: Kube, groupVersion: string, plural: string): Promise<boolean> {
  try {
    const list = await kube.get<{ resources?: { name: string }[] }>(`/apis/${groupVersion}`);
    return (list.resources ?? []).some((r) => r.name === plural);
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

export async function discoverFeatures(kube: Kube): Promise<Features> {
  return {
    certManager: await served(kube, 'cert-manager.io/v1', 'certificates'),
    serviceMonitor: await served(kube, 'monitoring.coreos.com/v1', 'servicemonitors'),
  };
}
