/**
 * Runs the one-node test cluster by hand (as root):
 *
 *   node dist/test/harness/cluster/cli.js up [--image]
 *
 * Prints `KUBECONFIG=<path>` once the node is Ready, then stays up until SIGINT/SIGTERM, when
 * it stops everything (cluster.ts stop()). --image imports the project's image (`make image`)
 * as localhost/smtp-relay-operator:dev. Logs of every part: /var/tmp/smtp-relay-cluster/logs/.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { projectImageLayout, startCluster } from './cluster.js';

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd !== 'up' || rest.some((a) => a !== '--image')) {
    process.stderr.write('usage: cli.js up [--image]\n');
    return 2;
  }
  const t0 = Date.now();
  const c = await startCluster({ log: (l) => process.stderr.write(l + '\n') });
  if (rest.includes('--image')) {
    const layout = projectImageLayout();
    if (!existsSync(join(layout, 'index.json'))) process.stderr.write(`no image at ${layout}: run \`make image\`\n`);
    else process.stderr.write(`imported ${(await c.importImage(layout)).join(', ')}\n`);
  }
  process.stdout.write(`KUBECONFIG=${c.cp.kubeconfigPath}\nserver=${c.cp.server}\nnode=${c.nodeName} ${c.nodeIP}; logs in ${c.dir}/logs\nstarted in ${Date.now() - t0} ms; Ctrl-C to stop\n`);
  const keepAlive = setInterval(() => {}, 1 << 30);
  await new Promise<void>((res) => {
    const done = (): void => {
      clearInterval(keepAlive);
      res();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
  await c.stop();
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`${e.stack ?? e.message}\n`);
    process.exit(1);
  },
);
