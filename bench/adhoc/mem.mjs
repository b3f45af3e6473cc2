// --import this into a process: process.memoryUsage() in KiB on stderr at each SIGUSR2.
process.on('SIGUSR2', () => { const m = process.memoryUsage(); process.stderr.write(`MEM ${JSON.stringify({ rss: m.rss >> 10, heapTotal: m.heapTotal >> 10, heapUsed: m.heapUsed >> 10, external: m.external >> 10, ab: m.arrayBuffers >> 10 })}\n`); });
