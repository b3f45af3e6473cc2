/**
 * Helpers of the cluster checks (cluster.check.ts, netpol.check.ts): a bounded wait, and a pod
 * of the project's image running `node -e script` as the relay runs (non-root, read-only root,
 * no capabilities, RuntimeDefault seccomp).
 */
import type * as k8s from '@kubernetes/client-node';
import { PROJECT_IMAGE } from './cluster.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls fn every 500 ms until it returns a value; throws after timeoutMs with the last error and diag(). */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>, diag?: () => Promise<string>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last})` : ''}${diag ? `\n${await diag()}` : ''}`);
    await sleep(500);
  }
}

/** A pod of the project's image running `node -e script`, as a non-root user with a read-only root. */
export function nodePod(namespace: string, name: string, script: string, o: { labels?: Record<string, string>; port?: number; restartPolicy?: string } = {}): k8s.V1Pod {
  return {
    metadata: { name, namespace, labels: o.labels ?? {} },
    spec: {
      restartPolicy: o.restartPolicy ?? 'Always',
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 2,
      securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [{
        name: 'main',
        image: PROJECT_IMAGE,
        imagePullPolicy: 'Never',
        command: ['node', '-e', script],
        resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { memory: '128Mi' } },
        securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
        ...(o.port ? { ports: [{ containerPort: o.port }], readinessProbe: { tcpSocket: { port: o.port }, periodSeconds: 1 } } : {}),
      }],
    },
  };
}
