// Test doubles for the spool: a clock that only moves when told, a bounded wait, a
// spool in a temporary directory, and a scripted deliver function.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { Registry } from 'prom-client';
import { createSpoolMetrics, type SpoolMetrics } from '../../../../relay/spool/metrics.js';
import { Spool, type Clock } from '../../../../relay/spool/store.js';
import type { DeliveryOutcome, Envelope } from '../../../../relay/upstream.js';

export class FakeClock implements Clock {
  private t: number;
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 1;
  constructor(start = Date.UTC(2026, 0, 1)) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.t + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== h);
  }
  /** Moves time forward, firing due timers in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (let i = 0; i < 10_000; i++) {
      const due = this.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.timers = this.timers.filter((x) => x !== due);
      this.t = Math.max(this.t, due.at);
      due.fn();
    }
    this.t = end;
  }
}

/** Waits (real time, bounded) until `cond` holds. */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export interface TestSpool {
  spool: Spool;
  metrics: SpoolMetrics;
  registry: Registry;
  clock: FakeClock;
  dir: string;
  cleanup(): Promise<void>;
}

export async function tempSpool(clock = new FakeClock(), limits = { maxBytes: 1 << 30, maxMessages: 100_000, minFreeBytes: 0 }, dir?: string): Promise<TestSpool> {
  const d = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'spool-unit-'));
  const registry = new Registry();
  const metrics = createSpoolMetrics(registry);
  const spool = await Spool.open({ directory: d, limits, logger: pino({ level: 'silent' }), metrics, clock });
  return {
    spool,
    metrics,
    registry,
    clock,
    dir: d,
    cleanup: async () => {
      await spool.close();
      if (!dir) fs.rmSync(d, { recursive: true, force: true });
    },
  };
}

export async function counter(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  const vals = (m?.values ?? []) as { value: number; labels: Record<string, string | number> }[];
  return vals.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((a, v) => a + v.value, 0);
}

export interface Call {
  envelope: Envelope;
  message: Buffer;
}

/** A deliver function answering from a script (by call), recording every call. */
export function scriptedDeliver(answer: (call: Call, n: number) => DeliveryOutcome): { deliver: (e: Envelope, m: Buffer) => Promise<DeliveryOutcome>; calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    deliver: async (envelope, message) => {
      const call = { envelope: { mailFrom: envelope.mailFrom, rcptTo: [...envelope.rcptTo] }, message };
      calls.push(call);
      return answer(call, calls.length);
    },
  };
}

export const accepted: DeliveryOutcome = { kind: 'accepted', response: '250 2.0.0 ok' };
export const down: DeliveryOutcome = { kind: 'temporary', code: 451, message: '4.4.1 Upstream unreachable, try again later', refused: [] };

export const MESSAGE = Buffer.from('From: App <app@example.com>\r\nTo: <a@example.net>\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nbody line\r\n');
