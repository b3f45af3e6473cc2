// The spool's records: a message's envelope (fixed when it is accepted) and its
// delivery state (one status per recipient), as stored in the database (store.ts).
import type { MessageDsn, RecipientDsn } from '../policy/dsn-params.js';

export type RecipientStatus = 'pending' | 'delivered' | 'failed-temporary' | 'failed-permanent';

export interface RecipientState {
  address: string;
  status: RecipientStatus;
  attempts: number;
  /** The last reply or error for this recipient (one line, sanitized). */
  lastError?: string;
  /** Unix ms; when the recipient may be tried again (pending, failed-temporary). */
  nextAttempt: number;
  /**
   * Notification of this recipient's final state: true once queued (or when none is
   * wanted). A failed-permanent recipient without it still owes its report; a delivered
   * one owes a "relayed" notice only when this is false (NOTIFY=SUCCESS). See `owesReport`.
   */
  notified?: boolean;
}

export interface EntryState {
  held: boolean;
  /** A delay warning was queued. */
  warned: boolean;
  recipients: RecipientState[];
}

/** RET and ENVID (RFC 3461) come from MessageDsn; NOTIFY and ORCPT are per recipient. */
export interface StoredEnvelope extends MessageDsn {
  id: string;
  /** Unix ms when the message was accepted. */
  created: number;
  /** '' for the null sender <>. */
  mailFrom: string;
  rcptTo: string[];
  /** The message is a delivery status notification made by this relay. */
  dsn?: boolean;
  /** NOTIFY/ORCPT per recipient, in the order of rcptTo; absent when none was given. */
  rcptDsn?: RecipientDsn[];
  /** Who handed it in (logs and `queue show`; never secrets). */
  user?: string;
  client?: string;
}

export function initialState(env: StoredEnvelope): EntryState {
  return {
    held: false,
    warned: false,
    recipients: env.rcptTo.map((address) => ({ address, status: 'pending', attempts: 0, nextAttempt: env.created })),
  };
}

/** A stored state must describe the envelope's recipients, in order; else undefined. */
export function checkState(state: EntryState | undefined, env: StoredEnvelope): EntryState | undefined {
  if (!state || !Array.isArray(state.recipients) || state.recipients.length !== env.rcptTo.length) return undefined;
  if (state.recipients.some((r, i) => r.address !== env.rcptTo[i])) return undefined;
  return state;
}

/** Whether a report about this recipient is still to be queued. */
export function owesReport(r: RecipientState): boolean {
  return r.status === 'failed-permanent' ? !r.notified : r.status === 'delivered' && r.notified === false;
}
