// Test support for the builder tests: golden files and offline schema
// validation of built objects with the kubernetes-models packages (their
// JSON schemas come from the Kubernetes, cert-manager and prometheus-operator
// OpenAPI specs). Not imported by product code.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';

/** The repository root (this file runs from dist/test/harness/smtprelay/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('repository root not found');
    dir = up;
  }
  return dir;
}

const TESTDATA = join(repoRoot(), 'test', 'unit', 'operator', 'builders', 'testdata');

/**
 * Compares `value` (as 2-space JSON) with testdata/<name>.json. UPDATE_GOLDEN=1
 * rewrites the file instead; review the diff before committing it.
 */
export function assertGolden(name: string, value: unknown): void {
  const file = join(TESTDATA, `${name}.json`);
  const text = `${JSON.stringify(value, null, 2)}\n`;
  if (process.env.UPDATE_GOLDEN === '1') {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text);
    return;
  }
  assert.ok(existsSync(file), `golden file ${file} is missing; run the test with UPDATE_GOLDEN=1 and review it`);
  assert.deepEqual(JSON.parse(text), JSON.parse(readFileSync(file, 'utf8')), `${name} differs from ${file} (UPDATE_GOLDEN=1 rewrites it)`);
  assert.equal(text, readFileSync(file, 'utf8'), `${name}: same content but different bytes (key order) than ${file}`);
}

type Validatable = { validate(): void };
const MODELS: Record<string, new (data: never) => Validatable> = {
  'v1/ConfigMap': ConfigMap as never,
  'v1/Secret': Secret as never,
  'v1/Service': Service as never,
  'v1/ServiceAccount': ServiceAccount as never,
  'apps/v1/Deployment': Deployment as never,
  'apps/v1/StatefulSet': StatefulSet as never,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy as never,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget as never,
  'cert-manager.io/v1/Certificate': Certificate as never,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor as never,
};

/** Validates an object against its kind's schema; throws with the schema errors. */
export function assertValidAgainstSchema(obj: { apiVersion: string; kind: string; metadata?: { name?: string } }): void {
  const Model = MODELS[`${obj.apiVersion}/${obj.kind}`];
  assert.ok(Model, `no schema for ${obj.apiVersion} ${obj.kind}`);
  try {
    new Model(structuredClone(obj) as never).validate();
  } catch (err) {
    assert.fail(`${obj.kind} ${obj.metadata?.name}: ${(err as Error).message}`);
  }
}

// Expected values are what kube-apiserver stores for a container's resources, where it
// rewrites the input; test/operator/builders-server.test.ts checks the table on a real server.
export const QUANTITY_CASES: [string | number, string][] = [
  ['100m', '100m'],
  ['0.5', '500m'],
  [0.5, '500m'],
  [1, '1'],
  ['1000m', '1'],
  ['1500m', '1500m'],
  ['1.5', '1500m'],
  ['2', '2'],
  ['100', '100'],
  ['12000', '12k'],
  ['0.1m', '1m'],
  ['0.0000000001', '1m'],
  ['128Mi', '128Mi'],
  ['1024Mi', '1Gi'],
  ['1536Mi', '1536Mi'],
  ['0.5Gi', '512Mi'],
  ['1.5Gi', '1536Mi'],
  ['0.5Ki', '512'],
  ['1000Ki', '1000Ki'],
  ['2048', '2048'],
  ['1e3', '1e3'],
  ['1.5e3', '1500'],
  ['1G', '1G'],
  ['1000M', '1G'],
  ['0', '0'],
  ['0Mi', '0'],
  ['+2', '2'],
  ['01', '1'],
  ['1E3', '1e3'],
  ['1e-3', '1e-3'],
  ['100e-2', '1'],
  ['5.5Gi', '5632Mi'],
  ['1024Ki', '1Mi'],
  ['0.5Mi', '512Ki'],
  ['+1Gi', '1Gi'],
];
