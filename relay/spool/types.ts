// The spool's records: a message's envelope (fixed when it is accepted) and its
// delivery state (one status per recipient), as stored in the database (store.ts).

export type RecipientStatus = 'pending' | 'delivered' | 'failed-temporary' | 'failed-permanent';

export interface RecipientState {
  address: string;
  status: RecipientStatus;
  attempts: number;
  /** The last reply or error for this recipient (one line, sanitized). */
  lastError?: string;
  /** Unix ms; when the recipient may be tried again (pending, failed-temporary). */
  nextAttempt: number;
  /** A delivery status notification was queued for this recipient (failed-permanent). */
  notified?: boolean;
}

export interface EntryState {
  held: boolean;
  /** A delay warning was queued. */
  warned: boolean;
  recipients: RecipientState[];
}

export interface StoredEnvelope {
  id: string;
  /** Unix ms when the message was accepted. */
  created: number;
  /** '' for the null sender <>. */
  mailFrom: string;
  rcptTo: string[];
  /** The message is a delivery status notification made by this relay. */
  dsn?: boolean;
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
