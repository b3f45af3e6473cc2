/**
 * Runs the test control plane by hand (for the demo and manual testing):
 *
 *   node dist/test/harness/controlplane/cli.js up [--kubeconfig-out FILE] [--crd FILE]... [--no-controller-manager]
 *
 * Prints `KUBECONFIG=<path>` and the server URL once ready, then stays up until
 * SIGINT/SIGTERM, when it stops everything and removes its temp folder.
 * --kubeconfig-out also copies the admin kubeconfig to FILE (removed on exit).
 */
import { copyFileSync, rmSync } from 'node:fs';
import { startControlPlane } from './harness.js';

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd !== 'up') {
    process.stderr.write('usage: cli.js up [--kubeconfig-out FILE] [--crd FILE]... [--no-controller-manager]\n');
    return 2;
  }
  const crdFiles: string[] = [];
  let out: string | undefined;
  let controllerManager = true;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === '--crd' && rest[i + 1]) crdFiles.push(rest[++i]!);
    else if (a === '--kubeconfig-out' && rest[i + 1]) out = rest[++i]!;
    else if (a === '--no-controller-manager') controllerManager = false;
    else {
      process.stderr.write(`unknown argument: ${a}\n`);
      return 2;
    }
  }
  const t0 = Date.now();
  const cp = await startControlPlane({ crdFiles, controllerManager, log: (l) => process.stderr.write(l + '\n') });
  if (out) copyFileSync(cp.kubeconfigPath, out);
  process.stdout.write(`KUBECONFIG=${out ?? cp.kubeconfigPath}\nserver=${cp.server}\nstarted in ${Date.now() - t0} ms; Ctrl-C to stop\n`);
  // The harness unrefs its child processes; this timer keeps the CLI alive until a signal.
  const keepAlive = setInterval(() => {}, 1 << 30);
  await new Promise<void>((res) => {
    const done = (): void => {
      clearInterval(keepAlive);
      res();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
  await cp.stop();
  if (out) rmSync(out, { force: true });
  process.stderr.write('controlplane: stopped\n');
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(1);
  },
);
