// A small strict validator for the YAML files the relay reads. Each problem is
// reported as `<field path>: <what is wrong>`, all problems at once.

import net from 'node:net';
import { parseDuration, parseSize } from './units.js';

export class ValidationError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`${file}: invalid:\n  ${problems.join('\n  ')}`);
    this.name = 'ValidationError';
  }
}

export type Obj = Record<string, unknown>;

export function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

export function join(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

/** Collects problems while walking a parsed document. */
export class Checker {
  readonly problems: string[] = [];

  fail(path: string, why: string): undefined {
    this.problems.push(`${path || '(top level)'}: ${why}`);
    return undefined;
  }

  /** A mapping whose keys are all in `required` or `optional`. */
  object(path: string, v: unknown, required: string[], optional: string[]): Obj | undefined {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      return this.fail(path, `must be a mapping, got ${show(v)}`);
    }
    const o = v as Obj;
    const known = new Set([...required, ...optional]);
    for (const k of Object.keys(o)) {
      if (!known.has(k)) {
        this.fail(join(path, k), `unknown field (allowed: ${[...known].join(', ')})`);
      }
    }
    for (const k of required) {
      if (o[k] === undefined || o[k] === null) this.fail(join(path, k), 'required field is missing');
    }
    return o;
  }

  string(path: string, v: unknown, opts: { nonEmpty?: boolean } = { nonEmpty: true }): string | undefined {
    if (typeof v !== 'string') return this.fail(path, `must be a string, got ${show(v)}`);
    if (opts.nonEmpty !== false && v.trim() === '') return this.fail(path, 'must not be empty');
    return v;
  }

  oneOf<T extends string>(path: string, v: unknown, values: readonly T[]): T | undefined {
    if (typeof v !== 'string' || !values.includes(v as T)) {
      return this.fail(path, `${show(v)} is not one of ${values.join(', ')}`);
    }
    return v as T;
  }

  int(path: string, v: unknown, min: number, max: number): number | undefined {
    if (typeof v !== 'number' || !Number.isInteger(v)) return this.fail(path, `must be an integer, got ${show(v)}`);
    if (v < min || v > max) return this.fail(path, `${v} is out of range ${min}..${max}`);
    return v;
  }

  port(path: string, v: unknown): number | undefined {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) {
      return this.fail(path, `${show(v)} is not a valid port (1..65535)`);
    }
    return v;
  }

  list(path: string, v: unknown): unknown[] | undefined {
    if (!Array.isArray(v)) return this.fail(path, `must be a list, got ${show(v)}`);
    return v;
  }

  duration(path: string, v: unknown, minMs = 1): number | undefined {
    const ms = typeof v === 'string' ? parseDuration(v) : undefined;
    if (ms === undefined) return this.fail(path, `${show(v)} is not a duration (examples: "30s", "10m", "1h")`);
    if (ms < minMs) return this.fail(path, `${show(v)} is too short (minimum ${minMs} ms)`);
    return ms;
  }

  size(path: string, v: unknown, min: number): number | undefined {
    const n = parseSize(v);
    if (n === undefined) return this.fail(path, `${show(v)} is not a size (bytes, or a number with Ki, Mi or Gi)`);
    if (n < min) return this.fail(path, `${show(v)} is too small (minimum ${min} bytes)`);
    return n;
  }

  ip(path: string, v: unknown): string | undefined {
    if (typeof v !== 'string' || net.isIP(v) === 0) return this.fail(path, `${show(v)} is not a valid IP address`);
    return v;
  }

  cidr(path: string, v: unknown): string | undefined {
    if (typeof v !== 'string' || !isCidr(v)) {
      return this.fail(path, `${show(v)} is not a valid CIDR (examples: "10.0.0.0/8", "fd00::/8", "192.0.2.7")`);
    }
    return v;
  }
}

/** "a.b.c.d/n", "x::/n" or a bare address (a single host). */
export function isCidr(text: string): boolean {
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const family = net.isIP(addr);
  if (family === 0) return false;
  if (slash < 0) return true;
  const prefix = text.slice(slash + 1);
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}
