/**
 * Helper process for runc.test.ts: starts a runner, a pod network and a long-running
 * container, prints what it made as one JSON line, then waits to be SIGKILLed (a test
 * that crashes). The next runner created must clean all of it up.
 */
import { unpackImage } from './image.js';
import { createPodNetwork } from './netns.js';
import { RuncRunner } from './runc.js';

const image = await unpackImage();
const runner = await RuncRunner.create({ image });
const network = await createPodNetwork();
const c = await runner.start({
  id: 'crash-victim',
  pod: { containers: [] },
  container: { name: 'sleeper', command: ['node', '-e', 'setInterval(() => {}, 1000)'] },
  network,
});
process.stdout.write(`${JSON.stringify({ pid: c.pid, dir: runner.dir, netns: network.name, bundle: c.bundle })}\n`);
setInterval(() => {}, 1000);
