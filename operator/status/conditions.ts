// The one helper that sets conditions: it keeps lastTransitionTime when the
// status did not change and records observedGeneration.

import type { Condition, ConditionStatus } from '../api/v1alpha1.js';

/** A condition as decided, before timestamps and generation are added. */
export interface ConditionInput {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

/** Why something a condition depends on is not usable: a condition reason and a message that says what to fix. */
export interface Problem {
  reason: string;
  message: string;
}

/** RFC 3339 at second precision, as metav1.Time serialises. */
export function rfc3339(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * `conditions` with `input` set: lastTransitionTime moves only when the status
 * changes; reason, message and observedGeneration always follow the input.
 * Returns a new array (order kept, new types appended); the input is not mutated.
 */
export function setCondition(conditions: readonly Condition[] | undefined, input: ConditionInput, generation: number | undefined, now: () => Date): Condition[] {
  const list = [...(conditions ?? [])];
  const i = list.findIndex((c) => c.type === input.type);
  const old = i >= 0 ? list[i] : undefined;
  const next: Condition = {
    type: input.type,
    status: input.status,
    lastTransitionTime: old && old.status === input.status ? old.lastTransitionTime : rfc3339(now()),
    reason: input.reason,
    message: input.message,
  };
  if (generation !== undefined) next.observedGeneration = generation;
  if (i >= 0) list[i] = next;
  else list.push(next);
  return list;
}

/** The condition of a type, if present. */
export function findCondition(conditions: readonly Condition[] | undefined, type: string): Condition | undefined {
  return conditions?.find((c) => c.type === type);
}

/** Whether two condition lists say the same thing (ignoring order), so status is written only on change. */
export function conditionsEqual(a: readonly Condition[] | undefined, b: readonly Condition[] | undefined): boolean {
  const x = a ?? [];
  const y = b ?? [];
  if (x.length !== y.length) return false;
  return x.every((c) => {
    const d = findCondition(y, c.type);
    return (
      !!d &&
      d.status === c.status &&
      d.reason === c.reason &&
      d.message === c.message &&
      d.lastTransitionTime === c.lastTransitionTime &&
      d.observedGeneration === c.observedGeneration
    );
  });
}
