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
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';

/** The repository root (this file runs from dist/operator/builders/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('repository root not found');
    dir = up;
  }
  return dir;
}

const TESTDATA = join(repoRoot(), 'operator', 'builders', 'testdata');

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
