/**
 * The container image's single entrypoint: `operator ...` runs the controller
 * (dist/operator/main.js), `relay ...` runs the SMTP relay (dist/relay/main.js).
 *
 *   node dist/entrypoint.js operator [flags]
 *   node dist/entrypoint.js relay serve --config /etc/smtp-relay/relay.yaml
 *
 * Each program has its own runtime settings (V8 flags, malloc tuning: `programs`
 * below, the one place they are defined; the bench starts both programs through this
 * file). Where they are not in effect yet, this process replaces itself with
 * `node FLAGS dist/entrypoint.js ...` (process.execve: same PID, no child process,
 * so signals from the container runtime still reach the program directly and PID 1
 * is the program itself). A setting the user already chose wins: a V8 flag already
 * on node's command line or in NODE_OPTIONS, an environment variable already set.
 * The program module is then loaded with process.argv set exactly as if it had been
 * started as `node dist/<program>/main.js ...`, so its own "am I the main module"
 * check (process.argv[1]) and its argument parsing work unchanged.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const self = fileURLToPath(import.meta.url);
const here = dirname(self);

export interface ProgramRuntime {
  /** Compiled module, relative to this file (dist/). */
  module: string;
  /** node/V8 flags the program runs with. */
  nodeFlags: readonly string[];
  /** Environment variables read at process start (glibc malloc tuning). */
  env: Readonly<Record<string, string>>;
}

export const programs: Readonly<Record<string, ProgramRuntime>> = {
  operator: {
    module: 'operator/main.js',
    // --max-semi-space-size=2: the operator allocates in bursts (JSON of watch events); V8's
    // default young generation (up to 64 MiB on a large node) held ~130 MiB more RSS at rest
    // for 100 relays (234 vs 107 MiB). --max-old-space-size=256: without it V8 let the old
    // generation grow to several times the live heap during a burst (1,000 relays: live
    // ~80 MiB, RSS peak 369 MiB with the first flag alone, ~210 MiB with both); it fits the
    // chart's 384 MiB limit. The live heap grows ~50 MiB per 1,000 relays: beyond ~4,000
    // relays raise it (NODE_OPTIONS=--max-old-space-size=N) with the memory limit.
    // docs/benchmarks.md, "Operator at scale".
    nodeFlags: ['--max-semi-space-size=2', '--max-old-space-size=256'],
    env: {},
  },
  relay: {
    module: 'relay/main.js',
    // --initial-heap-size=64: V8 starts with room for 64 MB instead of growing from a few MB,
    // so per-message garbage no longer triggers a Mark-Compact every few hundred messages
    // (117 -> 13 in 20 s at 1,358 msgs/s). --max-semi-space-size=4: smaller young generation,
    // ~13 KiB less per idle TLS session, full-load p99 17.5 -> 10-13 ms at equal throughput.
    // MALLOC_MMAP_THRESHOLD_=65536: allocations of 64 KiB and more get their own mapping
    // (only touched pages resident, returned on free); Node keeps a 64 KiB-sized read buffer
    // per TLS connection, so an idle session holds ~8 KiB less. docs/benchmarks.md.
    nodeFlags: ['--initial-heap-size=64', '--max-semi-space-size=4'],
    env: { MALLOC_MMAP_THRESHOLD_: '65536' },
  },
};

/** The flag's option name: "--max-old-space-size=256" -> "--max-old-space-size" (also matches the _ spelling). */
function optionName(flag: string): string {
  return (flag.split('=', 1)[0] ?? flag).replaceAll('_', '-');
}

/**
 * What of a program's runtime is not in effect in a process with these node flags and
 * this environment: the flags to add (those whose option is not already given on the
 * command line or in NODE_OPTIONS) and the environment variables to set (those unset).
 */
export function missingRuntime(rt: ProgramRuntime, execArgv: readonly string[], env: NodeJS.ProcessEnv): { nodeFlags: string[]; env: Record<string, string> } {
  const given = new Set([...execArgv, ...(env['NODE_OPTIONS'] ?? '').split(/\s+/).filter(Boolean)].map(optionName));
  const nodeFlags = rt.nodeFlags.filter((f) => !given.has(optionName(f)));
  const missingEnv = Object.fromEntries(Object.entries(rt.env).filter(([k]) => env[k] === undefined));
  return { nodeFlags, env: missingEnv };
}

const usage = `usage: smtp-relay-operator-image <command> [args...]

commands:
  operator [flags]        run the SmtpRelay controller (smtp-relay-operator)
  relay <subcommand> ...  run the SMTP relay (smtp-relay): serve --config FILE,
                          check-config FILE, hash-password, --help
`;

async function main(argv: readonly string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(usage);
    if (command === undefined) process.exitCode = 2;
    return;
  }
  const program = Object.hasOwn(programs, command) ? programs[command] : undefined;
  if (program === undefined) {
    process.stderr.write(`unknown command ${JSON.stringify(command)}\n\n${usage}`);
    process.exitCode = 2;
    return;
  }
  const modulePath = join(here, program.module);
  if (!existsSync(modulePath)) {
    process.stderr.write(`${command}: ${modulePath} is missing from this build\n`);
    process.exitCode = 1;
    return;
  }
  const missing = missingRuntime(program, process.execArgv, process.env);
  if (missing.nodeFlags.length > 0 || Object.keys(missing.env).length > 0) {
    if (typeof process.execve !== 'function') {
      throw new Error(`this Node.js (${process.version}) has no process.execve: start it as node ${missing.nodeFlags.join(' ')} ${self} ... (Node.js >= 23.11 adds them itself)`);
    }
    // does not return: the same process continues as node with the settings added
    process.execve(process.execPath, [process.execPath, ...process.execArgv, ...missing.nodeFlags, self, ...argv], { ...process.env, ...missing.env });
  }
  process.argv = [process.argv[0] ?? process.execPath, modulePath, ...rest];
  await import(pathToFileURL(modulePath).href);
}

// Run only as the program, not when the bench imports `programs`.
if (process.argv[1] !== undefined && pathToFileURL(process.argv[1]).href === import.meta.url) await main(process.argv.slice(2));
