/**
 * Last-resort cleanup of what the runner and pod networks made (containers, mounts, netns),
 * when the process ends without closing them: on 'exit', and on SIGINT/SIGTERM/SIGHUP when
 * nobody else handles that signal (then the signal is re-raised, so the process still dies
 * of it). A process killed with SIGKILL leaves things behind; the next runner reaps them.
 */
const cleanups = new Set<() => void>();
let installed = false;

function runAll(): void {
  for (const fn of [...cleanups]) {
    cleanups.delete(fn);
    try {
      fn();
    } catch {
      /* best effort */
    }
  }
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', runAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = (): void => {
      if (process.listenerCount(sig) > 1) return; // someone else shuts down; 'exit' still runs
      runAll();
      process.off(sig, handler);
      process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

/** Registers a synchronous cleanup; returns a function that unregisters it. */
export function onProcessEnd(fn: () => void): () => void {
  install();
  cleanups.add(fn);
  return () => {
    cleanups.delete(fn);
  };
}
