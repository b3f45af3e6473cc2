// The chart's alert rules through Debian's promtool: `check rules` on the rendered
// PrometheusRule (default and full values) and `test rules` with the unit tests in
// test/chart/alerts.test.yaml, which cover every alert.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { FULL_VALUES, ROOT, exec, prometheusBin, renderRuleFile } from './support.js';

test('promtool check rules accepts the rendered alerts (default and full values)', async () => {
  const promtool = prometheusBin('promtool');
  const dir = mkdtempSync(join(tmpdir(), 'chart-rules-'));
  try {
    for (const [name, extra] of [['default', []], ['full', ['-f', FULL_VALUES]]] as const) {
      const file = join(dir, `${name}.yaml`);
      writeFileSync(file, YAML.stringify(await renderRuleFile([...extra])));
      const r = await exec(promtool, ['check', 'rules', file]);
      assert.equal(r.code, 0, `promtool check rules (${name}):\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /SUCCESS: 18 rules found/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('promtool test rules: unit tests for every alert pass', async () => {
  const promtool = prometheusBin('promtool');
  const dir = mkdtempSync(join(tmpdir(), 'chart-rules-test-'));
  try {
    const spec = await renderRuleFile();
    writeFileSync(join(dir, 'rules.yaml'), YAML.stringify(spec));
    const testFile = join(ROOT, 'test', 'chart', 'alerts.test.yaml');
    copyFileSync(testFile, join(dir, 'alerts.test.yaml'));
    // Every alert has at least one case that expects it to fire.
    const tests = YAML.parse(readFileSync(testFile, 'utf8')).tests as any[];
    const fired = new Set(tests.flatMap((t) => (t.alert_rule_test ?? []).filter((c: any) => (c.exp_alerts ?? []).length > 0).map((c: any) => c.alertname)));
    const alerts = spec.groups.flatMap((g) => g.rules.map((r) => r.alert as string));
    assert.deepEqual(alerts.filter((a) => !fired.has(a)), [], 'alerts without a unit test that fires them');
    const r = await exec(promtool, ['test', 'rules', 'alerts.test.yaml'], { cwd: dir });
    assert.equal(r.code, 0, `promtool test rules:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout + r.stderr, /SUCCESS/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
