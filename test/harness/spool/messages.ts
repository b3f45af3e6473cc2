// Deterministic test messages for the spool tests: message n of a run can be rebuilt
// from its X-Seq header, so a reader can tell a complete message from a partial or
// foreign one without any record of what was sent.
import { createHash } from 'node:crypto';

export function testMessage(run: string, n: number): Buffer {
  const seed = createHash('sha256').update(`${run}/${n}`).digest();
  // 1..48 KiB of body, so that some messages span many database pages.
  const size = 1024 + (seed.readUInt32BE(0) % (47 * 1024));
  const line = seed.toString('hex').slice(0, 62) + '\r\n'; // 64 bytes
  const body = line.repeat(Math.ceil(size / 64));
  return Buffer.from(`From: <app@example.com>\r\nTo: <rcpt@example.net>\r\nSubject: spool test ${n}\r\nX-Run: ${run}\r\nX-Seq: ${n}\r\n\r\n${body}`);
}

/** The run and sequence number of a message made by testMessage, if it is one, complete and unchanged. */
export function checkTestMessage(raw: Buffer): { run: string; n: number } | undefined {
  const text = raw.toString('latin1');
  const run = /\r\nX-Run: (\S+)\r\n/.exec(text)?.[1];
  const n = /\r\nX-Seq: (\d+)\r\n/.exec(text)?.[1];
  if (!run || n === undefined) return undefined;
  return testMessage(run, Number(n)).equals(raw) ? { run, n: Number(n) } : undefined;
}

export function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
