// Stand-in for `smtp-relay queue ...` until the relay's CLI calls queueCommand:
//   node queue-cli.js <spool directory> <command> [args]
import { queueCommand } from '../../../relay/spool/cli.js';

const [directory, ...args] = process.argv.slice(2);
process.exitCode = await queueCommand(args, { directory: directory! });
