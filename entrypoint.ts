/**
 * The container image's single entrypoint: `operator ...` runs the controller
 * (dist/operator/main.js), `relay ...` runs the SMTP relay (dist/relay/main.js).
 *
 *   node dist/entrypoint.js operator [flags]
 *   node dist/entrypoint.js relay serve --config /etc/smtp-relay/relay.yaml
 *
 * The program runs in this same process (no child process, so signals from the
 * container runtime reach it directly and PID 1 is the program itself). The
 * program module is loaded with process.argv set exactly as if it had been
 * started as `node dist/<program>/main.js ...`, so its own "am I the main
 * module" check (process.argv[1]) and its argument parsing work unchanged.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** Subcommand -> compiled module, relative to this file (dist/). */
const programs: Readonly<Record<string, string>> = {
  operator: 'operator/main.js',
  relay: 'relay/main.js',
};

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
  const rel = programs[command];
  if (rel === undefined) {
    process.stderr.write(`unknown command ${JSON.stringify(command)}\n\n${usage}`);
    process.exitCode = 2;
    return;
  }
  const modulePath = join(here, rel);
  if (!existsSync(modulePath)) {
    process.stderr.write(`${command}: ${modulePath} is missing from this build\n`);
    process.exitCode = 1;
    return;
  }
  process.argv = [process.argv[0] ?? process.execPath, modulePath, ...rest];
  await import(pathToFileURL(modulePath).href);
}

await main(process.argv.slice(2));
