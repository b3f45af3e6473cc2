#!/usr/bin/env node
// smtp-relay-operator: runs the SmtpRelay controller, in-cluster or with --kubeconfig.
// Production runs it as `node dist/entrypoint.js operator ...` (the image's entrypoint), which
// adds its node memory flags (entrypoint.ts, `programs`).

import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { realpathSync } from 'node:fs';
import pino from 'pino';
import { Kube } from './runtime/kube.js';
import { startOperator, type RunningOperator } from './operator.js';

export const USAGE = `Usage: smtp-relay-operator [flags]

  --kubeconfig PATH            kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster ServiceAccount)
  --namespaces A,B             namespaces to watch (default: all; with a list, namespaced Roles suffice)
  --relay-image IMAGE          image the relay pods run (required; or $RELAY_IMAGE)
  --image-pull-policy POLICY   Always | IfNotPresent | Never (default: Kubernetes' default)
  --workers N                  parallel reconciles (default 16)
  --metrics-port PORT          /metrics, /healthz, /readyz (default 8080; 0 = any free port)
  --metrics-address ADDR       listen address (default ::)
  --leader-elect               elect one active replica via a coordination.k8s.io Lease
  --leader-election-namespace  namespace of the Lease (default: $POD_NAMESPACE or "default")
  --leader-election-id NAME    name of the Lease (default smtp-relay-operator)
  --lease-duration SECONDS     default 15
  --renew-deadline SECONDS     default 10
  --retry-period SECONDS       default 2
  --log-level LEVEL            trace | debug | info | warn | error (default info)
  -h, --help
`;

export function parseOperatorArgs(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      kubeconfig: { type: 'string' },
      namespaces: { type: 'string' },
      'relay-image': { type: 'string' },
      'image-pull-policy': { type: 'string' },
      workers: { type: 'string', default: '16' },
      'metrics-port': { type: 'string', default: '8080' },
      'metrics-address': { type: 'string', default: '::' },
      'leader-elect': { type: 'boolean', default: false },
      'leader-election-namespace': { type: 'string' },
      'leader-election-id': { type: 'string', default: 'smtp-relay-operator' },
      'lease-duration': { type: 'string', default: '15' },
      'renew-deadline': { type: 'string', default: '10' },
      'retry-period': { type: 'string', default: '2' },
      'log-level': { type: 'string', default: 'info' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const num = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got "${v}"`);
    return n;
  };
  const relayImage = values['relay-image'] ?? process.env['RELAY_IMAGE'];
  const pull = values['image-pull-policy'];
  if (pull !== undefined && !['Always', 'IfNotPresent', 'Never'].includes(pull)) throw new Error('--image-pull-policy must be Always, IfNotPresent or Never');
  return {
    help: values.help === true,
    kubeconfig: values.kubeconfig,
    namespaces: (values.namespaces ?? '').split(',').map((s) => s.trim()).filter(Boolean),
    relayImage,
    imagePullPolicy: pull as 'Always' | 'IfNotPresent' | 'Never' | undefined,
    workers: Math.floor(num('workers', values.workers, 1)),
    metricsPort: Math.floor(num('metrics-port', values['metrics-port'], 0)),
    metricsAddress: values['metrics-address'] ?? '::',
    leaderElect: values['leader-elect'] === true,
    leaseNamespace: values['leader-election-namespace'] ?? process.env['POD_NAMESPACE'] ?? 'default',
    leaseName: values['leader-election-id'] ?? 'smtp-relay-operator',
    leaseDurationMs: num('lease-duration', values['lease-duration'], 1) * 1000,
    renewDeadlineMs: num('renew-deadline', values['renew-deadline'], 1) * 1000,
    retryPeriodMs: num('retry-period', values['retry-period'], 0.1) * 1000,
    logLevel: values['log-level'] ?? 'info',
  };
}

/** Runs the operator until SIGTERM/SIGINT; resolves with the exit code. */
export async function runOperator(argv: string[]): Promise<number> {
  let args: ReturnType<typeof parseOperatorArgs>;
  try {
    args = parseOperatorArgs(argv);
  } catch (err) {
    process.stderr.write(`smtp-relay-operator: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!args.relayImage) {
    process.stderr.write(`smtp-relay-operator: --relay-image (or $RELAY_IMAGE) is required\n\n${USAGE}`);
    return 2;
  }
  const log = pino({ level: args.logLevel, base: { component: 'smtp-relay-operator' } });
  let op: RunningOperator;
  try {
    op = await startOperator({
      kube: await Kube.fromKubeconfig(args.kubeconfig),
      namespaces: args.namespaces,
      relayImage: args.relayImage,
      ...operatorPodsFromEnv(process.env),
      ...(args.imagePullPolicy ? { imagePullPolicy: args.imagePullPolicy } : {}),
      workers: args.workers,
      metricsPort: args.metricsPort,
      metricsHost: args.metricsAddress,
      leaderElect: args.leaderElect,
      leaseName: args.leaseName,
      leaseNamespace: args.leaseNamespace,
      leaseDurationMs: args.leaseDurationMs,
      renewDeadlineMs: args.renewDeadlineMs,
      retryPeriodMs: args.retryPeriodMs,
      log,
    });
  } catch (err) {
    log.fatal({ err: String(err) }, 'cannot start');
    return 1;
  }
  log.info({ metricsPort: op.metricsPort, leaderElect: args.leaderElect }, 'started');
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (sig: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal: sig }, 'shutting down');
      // A stuck shutdown must not outlive the pod's grace period.
      const force = setTimeout(() => resolve(1), 25_000);
      force.unref();
      op.stop().then(
        () => resolve(0),
        (err) => {
          log.error({ err: String(err) }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.once('SIGTERM', () => onSignal('SIGTERM'));
    process.once('SIGINT', () => onSignal('SIGINT'));
  });
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isMain()) {
  runOperator(process.argv.slice(2)).then((code) => process.exit(code));
}

/**
 * The operator's own pods, from $POD_NAMESPACE and $OPERATOR_POD_LABELS ("k=v,k=v", set by
 * the chart): each relay's NetworkPolicy admits them to the metrics port, where the relay's
 * control endpoints are (drain). Absent either: no such rule (the monitoring rule still applies).
 */
export function operatorPodsFromEnv(env: NodeJS.ProcessEnv): { operatorPods?: { namespace: string; matchLabels: Record<string, string> } } {
  const namespace = env['POD_NAMESPACE'];
  const text = env['OPERATOR_POD_LABELS'];
  if (!namespace || !text) return {};
  const matchLabels: Record<string, string> = {};
  for (const pair of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new Error(`OPERATOR_POD_LABELS: "${pair}" is not key=value`);
    matchLabels[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return Object.keys(matchLabels).length > 0 ? { operatorPods: { namespace, matchLabels } } : {};
}
