// Messages between the spool (store.ts) and its database thread (db-worker.ts).
import type { EntryState, StoredEnvelope } from './types.js';

export type DbRequest = { seq: number } & (
  | { op: 'open' }
  | { op: 'close' }
  | { op: 'space'; truncateWal: boolean }
  | { op: 'insert'; id: string; envelope: string; state: string; body: Buffer }
  | { op: 'update'; id: string; state: string }
  | { op: 'delete'; id: string }
  | { op: 'body'; id: string }
  | { op: 'control' }
  | { op: 'controlDone'; controlSeq: number; result: string }
);

export type DbReply = { seq: number; ok: true; value?: unknown } | { seq: number; ok: false; error: { code: string; message: string } };

export interface LoadedRow {
  id: string;
  envelope: StoredEnvelope;
  state: EntryState;
  size: number;
}

export interface QuarantinedEntry {
  id: string;
  reason: string;
  file: string;
}

export interface OpenResult {
  rows: LoadedRow[];
  quarantined: QuarantinedEntry[];
}

/** Space inside the database that new messages reuse before the file grows (answer to 'space'). */
export interface SpaceInfo {
  /** Free pages inside spool.db (freed by deleted messages), in bytes. */
  freelistBytes: number;
  /** Size of the WAL file after the request (0 once truncated). */
  walBytes: number;
  /** The delivery reserve's size while it is given up (new mail is refused until it can be made again), else 0. */
  reserveMissingBytes: number;
}

export interface ControlRow {
  seq: number;
  op: string;
  ids: string;
}
