// The image's entrypoint (entrypoint.ts): each program runs with its own node flags and
// malloc settings, in the same process (execve keeps the PID), and a setting the user
// already chose wins.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { missingRuntime, programs } from '../../entrypoint.js';
import { waitFor } from '../harness/support/poll.js';

const ENTRYPOINT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../entrypoint.js');
const relay = programs['relay']!;

describe('entrypoint runtime settings', () => {
  it('adds only what is not given on the command line, in NODE_OPTIONS or in the environment', () => {
    assert.deepEqual(missingRuntime(relay, [], {}), { nodeFlags: [...relay.nodeFlags], env: { ...relay.env } });
    const first = relay.nodeFlags[0]!;
    const name = first.split('=')[0]!;
    assert.deepEqual(missingRuntime(relay, [`${name}=1`], {}).nodeFlags, relay.nodeFlags.slice(1));
    // NODE_OPTIONS, also in V8's underscore spelling
    assert.deepEqual(missingRuntime(relay, [], { NODE_OPTIONS: `--foo ${name.replaceAll('-', '_').replace(/^__/, '--')}=2` }).nodeFlags, relay.nodeFlags.slice(1));
    const envName = Object.keys(relay.env)[0]!;
    assert.deepEqual(missingRuntime(relay, [], { [envName]: '1' }).env, {});
    assert.deepEqual(missingRuntime(relay, [...relay.nodeFlags], { ...relay.env }), { nodeFlags: [], env: {} });
    // every program's settings differ from none (a typo in the table would make this vacuous)
    for (const [name, rt] of Object.entries(programs)) assert.ok(rt.nodeFlags.length > 0, `${name} has node flags`);
  });

  it('runs the program in the same process with its flags and environment', async () => {
    // `relay hash-password` waits for the password on stdin: time to look at the process
    const env = { ...process.env };
    delete env['NODE_OPTIONS'];
    for (const k of Object.keys(relay.env)) delete env[k];
    const child = spawn(process.execPath, [ENTRYPOINT, 'relay', 'hash-password'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const cmdline = await waitFor('the re-executed entrypoint', () => {
        const argv = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0');
        return argv.includes(relay.nodeFlags[0]!) ? argv : undefined;
      }, 10_000, 20);
      for (const f of relay.nodeFlags) assert.ok(cmdline.includes(f), `${f} in ${cmdline.join(' ')}`);
      const environ = readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0');
      for (const [k, v] of Object.entries(relay.env)) assert.ok(environ.includes(`${k}=${v}`), `${k}=${v} in the environment`);
      child.stdin.end('a password\n');
      assert.equal(await exited, 0, err);
      assert.match(out, /^scrypt\$/, 'the program itself ran and answered');
    } finally {
      child.kill();
    }
  });
});
