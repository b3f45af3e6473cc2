// `make bench`: every scenario in order, one report on stdout (Markdown), progress on stderr.
//
//   node dist/bench/main.js [--quick] [--only=1,2,queue,3,4,upstream,flood] [--rows=aN,bN,bNc,cN] [--workers=N|auto] [--out=FILE]
//   (--rows: only these scenario-1 rows, keys in bench/throughput.ts; 'lat' = scenario 2)
//
// Bounded: each measurement is a fixed time window; the whole run takes about 10-13 minutes.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { log, machine } from './common.js';
import { connections } from './connections.js';
import { floodScenario } from './flood.js';
import { operatorAtScale } from './operator.js';
import { queueModeVsPostfix } from './queue.js';
import { throughputAndLatency } from './throughput.js';
import { upstreamHandOff } from './upstream.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.find((a) => a.startsWith('--only='))?.slice(7).split(',') ?? ['1', '2', 'queue', '3', '4', 'upstream', 'flood'];
const rows = args.find((a) => a.startsWith('--rows='))?.slice(7).split(',');
const out = args.find((a) => a.startsWith('--out='))?.slice(6);
// --workers=N|auto: the relay's `workers` setting in every scenario (bench/targets.ts startRelay)
const workers = args.find((a) => a.startsWith('--workers='))?.slice(10);
if (workers) process.env.BENCH_RELAY_WORKERS = workers;

const started = Date.now();
const parts: string[] = [`## Run of ${new Date().toISOString().slice(0, 16)} UTC\n\nMachine: ${machine()}\n\nRelay workers: ${workers ?? '1 (default)'}; load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}\n\nCommand: \`make bench\` (= \`node dist/bench/main.js${args.length ? ' ' + args.join(' ') : ''}\`)\n`];
const emit = (s: string) => {
  parts.push(s);
  process.stdout.write(s + '\n');
  if (out) writeFileSync(out, parts.join('\n'));
};
emit('');

let failed = false;
async function step(name: string, fn: () => Promise<string>) {
  log(`--- ${name}`);
  try {
    emit(await fn());
  } catch (e) {
    failed = true;
    emit(`### ${name}: FAILED\n\n\`\`\`\n${e instanceof Error ? e.stack : String(e)}\n\`\`\`\n`);
  }
}

let maxRate = 0;
if (only.includes('1') || only.includes('2')) {
  await step('scenarios 1 and 2', async () => {
    const r = await throughputAndLatency({
      connections: 20,
      reps: quick ? 1 : 3,
      warmupMs: quick ? 500 : 1000,
      durationMs: quick ? 2000 : 5000,
      processes: 2,
      only: rows ?? (only.includes('1') ? undefined : ['b', 'lat']),
    });
    maxRate = r.rates['b'] ?? 0;
    return r.text;
  });
}
// Queue mode vs Postfix: medians of 3 runs even with --quick (shorter windows then).
if (only.includes('queue')) await step('queue mode', () => queueModeVsPostfix({ connections: 20, reps: 3, warmupMs: quick ? 500 : 1000, durationMs: quick ? 2000 : 5000, processes: 2 }));
if (only.includes('3')) await step('scenario 3', () => connections({ counts: quick ? [1000] : [1000, 5000, 10000], handshakeMs: quick ? 2000 : 5000 }));
if (only.includes('4')) await step('scenario 4', () => operatorAtScale({ applies: quick ? 10 : 50, relays: quick ? 100 : 1000, namespaces: 10, quietMs: quick ? 10_000 : 60_000 }));
if (only.includes('upstream')) await step('upstream hand-off', () => upstreamHandOff(quick ? 100 : 300, 10));
if (only.includes('flood')) await step('connection flood', () => floodScenario({ sends: quick ? 50 : 200, fillMs: quick ? 2000 : 5000 }));

emit(`\nTotal time ${((Date.now() - started) / 1000).toFixed(0)} s.${maxRate ? '' : ''}\n`);
process.exit(failed ? 1 : 0);
