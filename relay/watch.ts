// Watches files mounted from Kubernetes Secrets/ConfigMaps. The kubelet updates
// them by swapping a `..data` symlink in the mount directory, which changes no
// watched inode, so the directory is watched, and a slow poll backs that up.
// `onChange` runs (debounced) when the content of any of the files changed.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface FileWatch {
  close(): void;
  /** Re-read now (used by the poll and by tests). */
  check(): void;
}

function digest(files: string[]): string {
  const h = crypto.createHash('sha256');
  for (const f of files) {
    try {
      h.update(fs.readFileSync(f));
    } catch (err) {
      h.update(`missing:${(err as NodeJS.ErrnoException).code}`);
    }
    h.update('\0');
  }
  return h.digest('hex');
}

export function watchFiles(
  files: string[],
  onChange: () => void,
  opts: { debounceMs?: number; pollMs?: number } = {},
): FileWatch {
  const debounceMs = opts.debounceMs ?? 200;
  let last = digest(files);
  let timer: NodeJS.Timeout | undefined;
  const check = () => {
    const now = digest(files);
    if (now !== last) {
      last = now;
      onChange();
    }
  };
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(check, debounceMs);
    timer.unref();
  };
  const watchers: fs.FSWatcher[] = [];
  for (const dir of new Set(files.map((f) => path.dirname(f)))) {
    try {
      const w = fs.watch(dir, { persistent: false }, schedule);
      w.on('error', () => undefined); // the poll still covers this directory
      watchers.push(w);
    } catch {
      // directory not watchable: rely on the poll
    }
  }
  const poll = setInterval(check, opts.pollMs ?? 30_000);
  poll.unref();
  return {
    close() {
      clearTimeout(timer);
      clearInterval(poll);
      for (const w of watchers) w.close();
    },
    check,
  };
}
