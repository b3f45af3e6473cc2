// The NetworkPolicy around the relay pods: SMTP ports only from the allowed
// CIDRs/namespaces (and trusted PROXY-protocol peers), the metrics port only
// from the monitoring namespaces; egress only to DNS and the upstream port.

import type { V1NetworkPolicyPeer, V1NetworkPolicyPort } from '@kubernetes/client-node';
import { METRICS_PORT, PEER_PORT, type LabelSelector, type SmtpRelay } from '../api/v1alpha1.js';
import { relayListeners } from './relay-config.js';
import { childMetadata, childNames, selectorLabels, sortedRecord, type ChildMetadata } from './meta.js';

// Own types: client-node's model spells the wire field `from` as `_from`.
export interface NetworkPolicyIngressRule {
  from: V1NetworkPolicyPeer[];
  ports: V1NetworkPolicyPort[];
}
export interface NetworkPolicyEgressRule {
  to?: V1NetworkPolicyPeer[];
  ports: V1NetworkPolicyPort[];
}
export interface NetworkPolicySpec {
  podSelector: LabelSelector;
  policyTypes: Array<'Ingress' | 'Egress'>;
  ingress: NetworkPolicyIngressRule[];
  egress: NetworkPolicyEgressRule[];
}

export interface NetworkPolicy {
  apiVersion: 'networking.k8s.io/v1';
  kind: 'NetworkPolicy';
  metadata: ChildMetadata;
  spec: NetworkPolicySpec;
}

function selector(sel: LabelSelector): LabelSelector {
  const out: LabelSelector = {};
  if (sel.matchLabels && Object.keys(sel.matchLabels).length > 0) out.matchLabels = sortedRecord(sel.matchLabels);
  if (sel.matchExpressions && sel.matchExpressions.length > 0) {
    out.matchExpressions = sel.matchExpressions.map((e) => (e.values ? { key: e.key, operator: e.operator, values: [...e.values] } : { key: e.key, operator: e.operator }));
  }
  return out;
}

/** The operator's own pods, admitted to the metrics port for the control endpoints (drain, queue state). */
export interface OperatorPods {
  namespace: string;
  matchLabels: Record<string, string>;
}

export function buildNetworkPolicy(relay: SmtpRelay, opts: { operatorPods?: OperatorPods } = {}): NetworkPolicy {
  const s = relay.spec;
  const smtpPeers: V1NetworkPolicyPeer[] = [];
  // PROXY-protocol peers are load balancers: they connect on behalf of clients.
  for (const cidr of [...new Set([...s.access.allowedCidrs, ...s.access.proxyProtocol.trustedCidrs])]) smtpPeers.push({ ipBlock: { cidr } });
  if (s.access.allowedNamespaces) smtpPeers.push({ namespaceSelector: selector(s.access.allowedNamespaces) });
  const smtpPorts: V1NetworkPolicyPort[] = relayListeners(relay).map((l) => ({ protocol: 'TCP', port: l.port }));

  const ingress: NetworkPolicyIngressRule[] = [];
  // An empty `from` would admit everyone: with no peers, the SMTP rule is left out (nobody may connect).
  if (smtpPeers.length > 0 && smtpPorts.length > 0) ingress.push({ from: smtpPeers, ports: smtpPorts });
  ingress.push({ from: [{ namespaceSelector: selector(s.metrics.monitoringNamespaceSelector) }], ports: [{ protocol: 'TCP', port: METRICS_PORT }] });
  if (opts.operatorPods && Object.keys(opts.operatorPods.matchLabels).length > 0) {
    ingress.push({
      from: [
        {
          namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': opts.operatorPods.namespace } },
          podSelector: { matchLabels: sortedRecord(opts.operatorPods.matchLabels) },
        },
      ],
      ports: [{ protocol: 'TCP', port: METRICS_PORT }],
    });
  }
  // The sibling channel: only this relay's own pods, both ways.
  const siblings: V1NetworkPolicyPeer[] = [{ podSelector: { matchLabels: selectorLabels(relay) } }];
  ingress.push({ from: siblings, ports: [{ protocol: 'TCP', port: PEER_PORT }] });

  const upstream: NetworkPolicyEgressRule = { ports: [{ protocol: 'TCP', port: s.upstream.port }] };
  // A DNS name cannot be expressed in a NetworkPolicy: then any destination on the upstream port.
  const ip = ipLiteral(s.upstream.host);
  if (ip) upstream.to = [{ ipBlock: { cidr: ip } }];

  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: childMetadata(relay, childNames(relay).networkPolicy),
    spec: {
      podSelector: { matchLabels: selectorLabels(relay) },
      policyTypes: ['Ingress', 'Egress'],
      ingress,
      egress: [
        {
          ports: [
            { protocol: 'UDP', port: 53 },
            { protocol: 'TCP', port: 53 },
          ],
        },
        upstream,
        { to: siblings, ports: [{ protocol: 'TCP', port: PEER_PORT }] },
      ],
    },
  };
}

/** "a.b.c.d/32" or "x::y/128" for an IP literal, else undefined. */
function ipLiteral(host: string): string | undefined {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(host)) return `${host}/32`;
  if (host.includes(':')) return `${host}/128`;
  return undefined;
}
