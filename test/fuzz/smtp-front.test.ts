// A short run of the SMTP-front fuzz target (test/fuzz/smtp-front.ts) inside `make test`:
// a fixed seed, then a random one printed so a failure can be run again with
// `node dist/test/fuzz/smtp-front.js --seed S --case I`. The long run is `make fuzz`.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runFuzz, summary } from './smtp-front.js';

const FIXED_SEED = 20261127;

for (const [name, seed] of [
  ['fixed seed', FIXED_SEED],
  ['random seed', Math.floor(Math.random() * 2 ** 31)],
] as const) {
  test(`200 mutated sessions (${name} ${seed}): relay up, every reply valid, nothing refused by policy accepted, memory flat`, { timeout: 120_000 }, async (t) => {
    const report = await runFuzz({ sessions: 200, seed, concurrency: 6, healthEvery: 100, maxSeconds: 40 });
    t.diagnostic(`seed ${seed}\n${summary(report)}`);
    assert.deepEqual(report.failures, [], summary(report));
    assert.ok(report.sessionsRun >= 100, `only ${report.sessionsRun} sessions ran in 40 s\n${summary(report)}`);
    assert.ok(report.healthChecks >= 2, summary(report));
    assert.ok(report.replies > report.sessionsRun, summary(report));
  });
}
