// Messages between the spool (store.ts) and its database thread (db-worker.ts).
import type { EntryState, StoredEnvelope } from './types.js';

export type DbRequest = { seq: number } & (
  | { op: 'open' }
  | { op: 'close' }
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

export interface ControlRow {
  seq: number;
  op: string;
  ids: string;
}
