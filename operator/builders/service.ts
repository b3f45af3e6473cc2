// The relay Service (SMTP ports only) and the metrics Service.
//
// Metrics live on a Service of their own, always ClusterIP: a LoadBalancer
// relay Service must not put the metrics port on the internet.

import type { V1ServicePort, V1ServiceSpec } from '@kubernetes/client-node';
import {
  LABEL_COMPONENT,
  METRICS_PORT,
  PORT_NAME_METRICS,
  PORT_NAME_PEERS,
  PEER_PORT,
  PORT_NAME_SUBMISSION,
  PORT_NAME_SUBMISSIONS,
  type SmtpRelay,
} from '../api/v1alpha1.js';
import { childMetadata, childNames, selectorLabels, userAnnotations, type ChildMetadata } from './meta.js';

export interface Service {
  apiVersion: 'v1';
  kind: 'Service';
  metadata: ChildMetadata;
  spec: V1ServiceSpec;
}

export const COMPONENT_SMTP = 'smtp';
export const COMPONENT_METRICS = 'metrics';
export const COMPONENT_PEERS = 'peers';

/** Service ports of the enabled listeners, each mapped by name onto its container port. */
export function smtpServicePorts(relay: SmtpRelay): V1ServicePort[] {
  const l = relay.spec.listeners;
  const ports: V1ServicePort[] = [];
  if (l.submission.enabled) ports.push({ name: PORT_NAME_SUBMISSION, port: l.submission.port, targetPort: PORT_NAME_SUBMISSION, protocol: 'TCP' });
  if (l.submissions.enabled) ports.push({ name: PORT_NAME_SUBMISSIONS, port: l.submissions.port, targetPort: PORT_NAME_SUBMISSIONS, protocol: 'TCP' });
  return ports;
}

export function buildService(relay: SmtpRelay): Service {
  const svc = relay.spec.service;
  const spec: V1ServiceSpec = {
    type: svc.type,
    selector: selectorLabels(relay),
    ports: smtpServicePorts(relay),
  };
  if (svc.externalTrafficPolicy && svc.type !== 'ClusterIP') spec.externalTrafficPolicy = svc.externalTrafficPolicy;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: childMetadata(relay, childNames(relay).service, {
      labels: { [LABEL_COMPONENT]: COMPONENT_SMTP },
      annotations: userAnnotations(svc.annotations),
    }),
    spec,
  };
}

export function buildMetricsService(relay: SmtpRelay): Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: childMetadata(relay, childNames(relay).metricsService, { labels: { [LABEL_COMPONENT]: COMPONENT_METRICS } }),
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(relay),
      ports: [{ name: PORT_NAME_METRICS, port: METRICS_PORT, targetPort: PORT_NAME_METRICS, protocol: 'TCP' }],
    },
  };
}

/**
 * The headless Service of the relay pods: its DNS name resolves to every pod's address,
 * ready or not (a draining pod is not ready, and still hands its queue to its siblings and
 * gossips lockouts), so the relays find their siblings (config peers.service). Also the
 * StatefulSet's serviceName.
 */
export function buildPeersService(relay: SmtpRelay): Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: childMetadata(relay, childNames(relay).peersService, { labels: { [LABEL_COMPONENT]: COMPONENT_PEERS } }),
    spec: {
      type: 'ClusterIP',
      clusterIP: 'None',
      publishNotReadyAddresses: true,
      selector: selectorLabels(relay),
      ports: [{ name: PORT_NAME_PEERS, port: PEER_PORT, targetPort: PORT_NAME_PEERS, protocol: 'TCP' }],
    },
  };
}

/** "<relay>.<namespace>.svc:<port>" of the first enabled listener (submission first). */
export function relayEndpoint(relay: SmtpRelay): string {
  const first = smtpServicePorts(relay)[0];
  return `${relay.metadata.name}.${relay.metadata.namespace}.svc:${first?.port ?? relay.spec.listeners.submission.port}`;
}
