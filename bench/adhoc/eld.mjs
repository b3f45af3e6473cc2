// --import this into a relay: event-loop delay percentiles on stderr (its log) at each SIGUSR2, then reset.
import { monitorEventLoopDelay } from 'node:perf_hooks';
const h = monitorEventLoopDelay({ resolution: 1 });
h.enable();
process.on('SIGUSR2', () => {
  process.stderr.write(`ELD p50 ${(h.percentile(50) / 1e6).toFixed(2)} p99 ${(h.percentile(99) / 1e6).toFixed(2)} p99.9 ${(h.percentile(99.9) / 1e6).toFixed(2)} max ${(h.max / 1e6).toFixed(1)} n ${h.count}\n`);
  h.reset();
});
