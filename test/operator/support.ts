// Shared pieces of the operator integration tests: a raw client on the test
// control plane, polling, SmtpRelay fixtures, and the cert-manager stand-in.

import { createHash } from 'node:crypto';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import { API_VERSION, KIND } from '../../operator/api/v1alpha1.js';
import { Kube, type KubeObject, isNotFound, resourcePath } from '../../operator/runtime/kube.js';
import { Certificates, SmtpRelays } from '../../operator/runtime/resources.js';
import { startOperator, type OperatorConfig, type RunningOperator } from '../../operator/operator.js';
import type { ControlPlane } from '../harness/controlplane/harness.js';
import { createPki, type Pki } from '../harness/support/pki.js';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value; the error names what was awaited and the last failure. */
export async function eventually<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = undefined;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(200);
  }
}

export function operatorLog(cp: ControlPlane, name: string): Logger {
  return pino({ level: 'debug' }, pino.destination({ dest: join(cp.dir, 'logs', `${name}.log`), sync: true }));
}

export const TEST_IMAGE = 'registry.invalid/smtp-relay:test';

/** Names of in-process operators that lost their Lease (tests assert it stays empty). */
export const lostLeadership: string[] = [];

export async function runOperator(cp: ControlPlane, name: string, extra: Partial<OperatorConfig> = {}): Promise<RunningOperator> {
  return startOperator({
    kube: new Kube(cp.kubeconfig),
    relayImage: TEST_IMAGE,
    workers: 2,
    metricsPort: 0,
    metricsHost: '127.0.0.1',
    log: operatorLog(cp, name),
    identity: name,
    // Recorded, not thrown: this runs in a timer, where a throw would end the test process.
    onLostLeadership: () => void lostLeadership.push(name),
    ...extra,
  });
}

export async function createNamespace(kube: Kube, name: string): Promise<void> {
  await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name } } });
}

export function relayManifest(namespace: string, name: string, spec: Record<string, unknown> = {}): KubeObject & { spec: Record<string, unknown> } {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: {
      hostname: 'relay.example.com',
      tls: { issuerRef: { name: 'ca-issuer' } },
      auth: { users: [{ name: 'app', allowedSenders: ['noreply@example.com'] }] },
      upstream: { host: 'smtp.example.net' },
      ...spec,
    },
  };
}

export async function createRelay(kube: Kube, relay: KubeObject): Promise<KubeObject> {
  return kube.request('POST', resourcePath(SmtpRelays, relay.metadata?.namespace), { body: relay });
}

export async function getRelay(kube: Kube, namespace: string, name: string): Promise<any> {
  return kube.get(resourcePath(SmtpRelays, namespace, name));
}

export function condition(relay: any, type: string): { status: string; reason: string; message: string; observedGeneration?: number; lastTransitionTime?: string } | undefined {
  return relay?.status?.conditions?.find((c: { type: string }) => c.type === type);
}

export async function get(kube: Kube, path: string): Promise<any> {
  try {
    return await kube.get(path);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

export function b64(s: string): string {
  return Buffer.from(s, 'utf8').toString('base64');
}
export function unb64(s: string | undefined): string {
  return Buffer.from(s ?? '', 'base64').toString('utf8');
}

export async function createBasicAuthSecret(kube: Kube, namespace: string, name: string, username: string, password: string): Promise<void> {
  await kube.request('POST', `/api/v1/namespaces/${namespace}/secrets`, {
    body: { apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace }, type: 'kubernetes.io/basic-auth', data: { username: b64(username), password: b64(password) } },
  });
}

export async function createIssuer(kube: Kube, namespace: string, name = 'ca-issuer'): Promise<void> {
  await kube.request('POST', resourcePath({ group: 'cert-manager.io', version: 'v1', plural: 'issuers', kind: 'Issuer', namespaced: true }, namespace), {
    body: { apiVersion: 'cert-manager.io/v1', kind: 'Issuer', metadata: { name, namespace }, spec: { selfSigned: {} } },
  });
}

/**
 * Plays the kubelet (none runs pods on the test control plane): waits for at least `count`
 * pods of the relay `instance` and marks them Running and Ready, so their Deployment or
 * StatefulSet counts them ready. Returns the pods marked.
 */
export async function markRelayPodsReady(kube: Kube, ns: string, instance: string, count: number, filter: (pod: any) => boolean = () => true): Promise<any[]> {
  const pods = await eventually(`${count} pods of relay ${instance}`, async () => {
    const list = await kube.get<any>(`/api/v1/namespaces/${ns}/pods`, { query: { labelSelector: `app.kubernetes.io/instance=${instance}` } });
    const items = list.items.filter((p: any) => !p.metadata.deletionTimestamp && filter(p));
    return items.length >= count ? items : undefined;
  });
  const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
  for (const pod of pods) {
    await kube.request('PATCH', `/api/v1/namespaces/${ns}/pods/${pod.metadata.name}/status`, {
      contentType: 'application/merge-patch+json',
      body: { status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: now }, { type: 'ContainersReady', status: 'True', lastTransitionTime: now }] } },
    });
  }
  return pods;
}

/** Hash of a Deployment's pod template: equal hashes mean no rollout. */
export function templateHash(deployment: any): string {
  return createHash('sha256').update(JSON.stringify(deployment.spec.template)).digest('hex');
}

/**
 * CertManagerStandIn plays cert-manager for the tests (no cert-manager
 * controller runs on the test control plane): it issues a real certificate
 * from a test CA into the Certificate's Secret and sets the Certificate's
 * Ready condition and notAfter, the two things the operator reads.
 */
export class CertManagerStandIn {
  private constructor(private readonly kube: Kube, private readonly pki: Pki) {}

  static async create(kube: Kube): Promise<CertManagerStandIn> {
    return new CertManagerStandIn(kube, await createPki());
  }

  async issue(namespace: string, certificateName: string): Promise<{ notAfter: string }> {
    const cert = await this.kube.get<any>(resourcePath(Certificates, namespace, certificateName));
    const files = await this.pki.issue({ name: `${namespace}-${certificateName}` });
    const secretName: string = cert.spec.secretName;
    const secret = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: secretName, namespace },
      type: 'kubernetes.io/tls',
      data: { 'tls.crt': b64(files.chainPem), 'tls.key': b64(files.keyPem), 'ca.crt': b64(files.caPem) },
    };
    try {
      await this.kube.request('POST', `/api/v1/namespaces/${namespace}/secrets`, { body: secret });
    } catch {
      await this.kube.request('PUT', `/api/v1/namespaces/${namespace}/secrets/${secretName}`, { body: secret });
    }
    const { X509Certificate } = await import('node:crypto');
    const notAfter = new Date(new X509Certificate(files.certPem).validTo).toISOString().replace(/\.\d{3}Z$/, 'Z');
    await this.setReady(namespace, certificateName, 'True', 'Ready', 'Certificate is up to date and has not expired', notAfter);
    return { notAfter };
  }

  async setReady(namespace: string, certificateName: string, status: 'True' | 'False', reason: string, message: string, notAfter?: string): Promise<void> {
    const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    await this.kube.request('PATCH', resourcePath(Certificates, namespace, certificateName, 'status'), {
      contentType: 'application/merge-patch+json',
      body: { status: { conditions: [{ type: 'Ready', status, reason, message, lastTransitionTime: now }], ...(notAfter ? { notAfter } : {}) } },
    });
  }

  async cleanup(): Promise<void> {
    await this.pki.cleanup();
  }
}
