// The cert-manager Certificate for the relay's serving certificate (only when
// spec.tls.issuerRef is set; with spec.tls.secretName the user brings it).

import type { SmtpRelay } from '../api/v1alpha1.js';
import { childMetadata, childNames, standardLabels, type ChildMetadata } from './meta.js';

export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';

export interface Certificate {
  apiVersion: 'cert-manager.io/v1';
  kind: 'Certificate';
  metadata: ChildMetadata;
  spec: {
    secretName: string;
    secretTemplate: { labels: Record<string, string> };
    dnsNames: string[];
    issuerRef: { name: string; kind: string; group: string };
    usages: string[];
    privateKey: { algorithm: 'RSA'; size: number; encoding: 'PKCS8'; rotationPolicy: 'Always' };
  };
}

/** spec.hostname, then the Service's in-cluster names; no duplicates. */
export function certificateDnsNames(relay: SmtpRelay, clusterDomain = DEFAULT_CLUSTER_DOMAIN): string[] {
  const svc = `${childNames(relay).service}.${relay.metadata.namespace}.svc`;
  return [...new Set([relay.spec.hostname, svc, `${svc}.${clusterDomain}`])];
}

export function buildCertificate(relay: SmtpRelay, opts: { clusterDomain?: string } = {}): Certificate | undefined {
  const ref = relay.spec.tls.issuerRef;
  if (!ref) return undefined;
  const names = childNames(relay);
  return {
    apiVersion: 'cert-manager.io/v1',
    kind: 'Certificate',
    metadata: childMetadata(relay, names.certificate),
    spec: {
      secretName: names.tlsSecret,
      secretTemplate: { labels: standardLabels(relay) },
      dnsNames: certificateDnsNames(relay, opts.clusterDomain),
      issuerRef: { name: ref.name, kind: ref.kind, group: ref.group },
      usages: ['server auth', 'digital signature', 'key encipherment'],
      // RSA: SMTP clients include old appliances and libraries that lack ECDSA.
      privateKey: { algorithm: 'RSA', size: 2048, encoding: 'PKCS8', rotationPolicy: 'Always' },
    },
  };
}
