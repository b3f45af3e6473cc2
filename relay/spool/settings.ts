// The `queue:` section of the relay config (docs/relay-config.md). Present = queue
// mode: the relay answers 250 once a message is in the spool, and delivers it later.
// Validated in the style of relay/config.ts: every problem names its field.
import path from 'node:path';
import { Checker, ValidationError, show } from '../validate.js';
import type { Duration, Size } from '../config-types.js';

/** The section as written in the config file. */
export interface QueueConfig {
  /** The spool directory (a PersistentVolume in the cluster). Turns queue mode on. */
  directory: string;
  /** Spool size limit (message files, bytes); default "1Gi". */
  maxBytes?: Size;
  /** Messages in the spool; default 100000. */
  maxMessages?: number;
  /** Refuse new mail (452 4.3.1) when the file system has less free space; default "64Mi". */
  minFreeSpace?: Size;
  /** A message still undelivered after this long is bounced; default "5d". */
  lifetime?: Duration;
  retry?: {
    /** First retry after a temporary failure; default "1m". */
    initialDelay?: Duration;
    /** Longest gap between attempts; default "1h". */
    maxDelay?: Duration;
  };
  /** Deliveries in flight; default 20. */
  concurrency?: number;
  /** Send the sender a "delayed" report once a message is this old; default off. */
  delayWarning?: Duration;
}

/** The section with defaults applied and units parsed. */
export interface SpoolSettings {
  directory: string;
  maxBytes: number;
  maxMessages: number;
  minFreeBytes: number;
  lifetimeMs: number;
  retry: RetrySettings;
  concurrency: number;
  /** 0 = no delay warnings. */
  delayWarningMs: number;
}

export interface RetrySettings {
  initialDelayMs: number;
  maxDelayMs: number;
  /** Each delay is the previous one times this; fixed at 2. */
  factor: number;
  /** Each delay is shortened by up to this fraction at random; fixed at 0.2. */
  jitter: number;
}

export const QUEUE_DEFAULTS = {
  maxBytes: 1024 ** 3,
  maxMessages: 100_000,
  minFreeBytes: 64 * 1024 ** 2,
  lifetimeMs: 5 * 86_400_000,
  retry: { initialDelayMs: 60_000, maxDelayMs: 3_600_000, factor: 2, jitter: 0.2 },
  concurrency: 20,
  delayWarningMs: 0,
} as const;

export const QUEUE_FIELDS = ['directory', 'maxBytes', 'maxMessages', 'minFreeSpace', 'lifetime', 'retry', 'concurrency', 'delayWarning'] as const;

/**
 * Checks the `queue` value (already parsed YAML) and returns the settings, or undefined
 * with the problems recorded in `c` under `at` (normally "queue"). Relative directories
 * are resolved against `baseDir` (the config file's folder).
 */
export function checkQueueSection(c: Checker, at: string, value: unknown, baseDir: string): SpoolSettings | undefined {
  const before = c.problems.length;
  const o = c.object(at, value, ['directory'], QUEUE_FIELDS.filter((f) => f !== 'directory'));
  if (!o) return undefined;
  const f = (name: string) => `${at}.${name}`;
  const s: SpoolSettings = {
    directory: '',
    maxBytes: QUEUE_DEFAULTS.maxBytes,
    maxMessages: QUEUE_DEFAULTS.maxMessages,
    minFreeBytes: QUEUE_DEFAULTS.minFreeBytes,
    lifetimeMs: QUEUE_DEFAULTS.lifetimeMs,
    retry: { ...QUEUE_DEFAULTS.retry },
    concurrency: QUEUE_DEFAULTS.concurrency,
    delayWarningMs: QUEUE_DEFAULTS.delayWarningMs,
  };
  if (o.directory !== undefined) {
    const d = c.string(f('directory'), o.directory);
    if (d !== undefined) s.directory = path.resolve(baseDir, d);
  }
  if (o.maxBytes !== undefined) s.maxBytes = c.size(f('maxBytes'), o.maxBytes, 1024 * 1024) ?? s.maxBytes;
  if (o.maxMessages !== undefined) s.maxMessages = c.int(f('maxMessages'), o.maxMessages, 1, 100_000_000) ?? s.maxMessages;
  if (o.minFreeSpace !== undefined) s.minFreeBytes = c.size(f('minFreeSpace'), o.minFreeSpace, 0) ?? s.minFreeBytes;
  if (o.lifetime !== undefined) s.lifetimeMs = c.duration(f('lifetime'), o.lifetime, 60_000) ?? s.lifetimeMs;
  if (o.retry !== undefined) {
    const r = c.object(f('retry'), o.retry, [], ['initialDelay', 'maxDelay']);
    if (r) {
      if (r.initialDelay !== undefined) s.retry.initialDelayMs = c.duration(f('retry.initialDelay'), r.initialDelay, 1000) ?? s.retry.initialDelayMs;
      if (r.maxDelay !== undefined) s.retry.maxDelayMs = c.duration(f('retry.maxDelay'), r.maxDelay, 1000) ?? s.retry.maxDelayMs;
      if (s.retry.maxDelayMs < s.retry.initialDelayMs) {
        c.fail(f('retry.maxDelay'), `${show(r.maxDelay ?? '1h')} is shorter than retry.initialDelay ${show(r.initialDelay ?? '1m')}; make it at least as long`);
      }
    }
  }
  if (o.concurrency !== undefined) s.concurrency = c.int(f('concurrency'), o.concurrency, 1, 10_000) ?? s.concurrency;
  if (o.delayWarning !== undefined) {
    s.delayWarningMs = c.duration(f('delayWarning'), o.delayWarning, 60_000) ?? 0;
    if (s.delayWarningMs >= s.lifetimeMs) {
      c.fail(f('delayWarning'), `${show(o.delayWarning)} is not shorter than the lifetime; the message would bounce before the warning (remove it or shorten it)`);
    }
  }
  return c.problems.length === before ? s : undefined;
}

/** Stand-alone form: throws ValidationError naming `file`. */
export function validateQueueConfig(value: unknown, file: string, baseDir: string): SpoolSettings {
  const c = new Checker();
  const s = checkQueueSection(c, 'queue', value, baseDir);
  if (!s) throw new ValidationError(file, c.problems);
  return s;
}
