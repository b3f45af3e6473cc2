// SMTP smuggling defence: message data may contain CR and LF only as CRLF pairs.
// A bare LF or bare CR lets a client hide a second message behind an end-of-data
// sequence that another server reads differently ("\n.\n", "\r.\r" ...), so any
// such byte refuses the whole message. NUL bytes (RFC 5321 section 4.1.1.4 forbids
// them in text) are refused the same way. Fed chunk by chunk as DATA arrives.

export type BareLineEnding = 'bare_lf' | 'bare_cr' | 'nul_byte';

/** A NUL, a CR not followed by LF (or last), an LF not preceded by CR (or first); on the latin1 string of a chunk. */
const SUSPECT = /\r(?!\n)|(?<!\r)\n|\0/;

export class LineEndingCheck {
  private lastWasCr = false;
  /** The first offence found, if any. */
  found: BareLineEnding | undefined;

  push(chunk: Buffer): void {
    if (this.found || chunk.length === 0) return;
    // The common case, a chunk of clean CRLF text: one native regular-expression scan
    // (~3x cheaper than the loops below on a 10 KB message, docs/benchmarks.md). Only
    // when it finds nothing (no NUL, no CR without LF after it, none at the end, no LF
    // without CR before it, none at the start) and no CR ended the previous chunk is the
    // chunk clean; anything else (also a CRLF split over two chunks) is examined below.
    if (!this.lastWasCr && !SUSPECT.test(chunk.toString('latin1'))) return;
    if (chunk.indexOf(0) !== -1) {
      this.found = 'nul_byte';
      return;
    }
    // Buffer.indexOf runs natively: two passes over line ends, not a JS loop over every byte.
    for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) {
      const before = i === 0 ? this.lastWasCr : chunk[i - 1] === 0x0d;
      if (!before) {
        this.found = 'bare_lf';
        return;
      }
    }
    if (this.lastWasCr && chunk[0] !== 0x0a) {
      this.found = 'bare_cr';
      return;
    }
    for (let i = chunk.indexOf(0x0d); i !== -1; i = chunk.indexOf(0x0d, i + 1)) {
      if (i + 1 < chunk.length && chunk[i + 1] !== 0x0a) {
        this.found = 'bare_cr';
        return;
      }
    }
    this.lastWasCr = chunk[chunk.length - 1] === 0x0d;
  }

  /** Call at the end of the data; a CR as the very last byte is bare too. */
  end(): BareLineEnding | undefined {
    if (!this.found && this.lastWasCr) this.found = 'bare_cr';
    return this.found;
  }
}
