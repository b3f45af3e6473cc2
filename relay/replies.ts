// SMTP replies the relay gives in more than one place, and the error that carries one.

/** A refusal with its reply code; the message starts with the enhanced status code. */
export class SmtpError extends Error {
  constructor(
    readonly responseCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** Said to every session when the relay drains (SIGTERM): try another replica or later. */
export const SHUTTING_DOWN = '4.3.2 Server shutting down, try again later';

export const AUTH_REQUIRED = '5.7.0 Authentication required';
export const TLS_REQUIRED = '5.7.0 Must issue a STARTTLS command first';

/** Keeps client-supplied or upstream text safe for a reply or a log line. */
export function oneLine(text: string, max = 300): string {
  return text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, max);
}

const ENHANCED_CODE = /^([245]\.\d{1,3}\.\d{1,3}) /;

/** One enhanced status code per reply: the upstream's own when its text starts with one, else the fallback. */
export function withEnhancedCode(fallback: string, text: string, upstreamReply: string): string {
  const own = ENHANCED_CODE.exec(upstreamReply)?.[1];
  // The class digit must agree with the reply code we send (4xx vs 5xx).
  return `${own && own[0] === fallback[0] ? own : fallback} ${text}`;
}
