// The upstream's verdict on each relay's own login, polled from its pods (issue 15). A
// refused login (535, Exchange's 5.7.139, Google's 5.7.8 ...) is seen only by the relay,
// and relay pods have no API access, so the operator asks: every pollMs (default 60 s) it
// asks each pod of every relay that logs in upstream (password or OAuth2) for GET /upstream
// on its control endpoints (relay/control.ts; the control token of the relay's internal
// Secret, the NetworkPolicy's operator rule on the metrics port). When what the pods say
// changes, the relay is reconciled, and syncUpstream (controllers/credentials/sync.ts) sets
// UpstreamReady=False/UpstreamAuthRefused naming the pods and the upstream's words, unless
// a Secret problem already explains it. The transition gets one Warning Event (and its end
// a Normal one).
//
// The pods are found as the relays find their siblings: the A/AAAA records of the relay's
// headless peers Service (every pod, ready or not), so the operator needs no pod list
// (RBAC: pods get only). A pod that does not answer (starting, an older relay without
// GET /upstream, unreachable) changes nothing: its last answer stays while its address is
// listed. Bounded: CONTROL_TIMEOUT_MS per request, MAX_CONCURRENT requests at once.

import dns from 'node:dns';
import type { Logger } from 'pino';
import { ConditionType, Reason, type SmtpRelay } from './api/v1alpha1.js';
import { controlToken } from './builders/internal.js';
import { childNames } from './builders/meta.js';
import type { Caches } from './controllers/context.js';
import { controlAddress, getUpstream, type UpstreamState } from './controllers/relay/control.js';
import type { Clock } from './runtime/clock.js';
import type { EventRecorder } from './runtime/events.js';
import { keyOf, type KubeObject } from './runtime/kube.js';
import { findCondition } from './status/conditions.js';

/** Default poll interval: a refusal shows within a minute; ~1 request per pod per minute. */
export const UPSTREAM_POLL_MS = 60_000;
/** Requests in flight at once, over every relay. */
export const MAX_CONCURRENT = 8;

/** One pod's control endpoint: its address, and its name when the caller knows it. */
export interface RelayPod {
  address: string;
  name?: string;
}

/** A pod whose upstream refused the relay's login. */
export interface RefusedPod {
  /** The pod's name (as it gave it), else its address. */
  pod: string;
  reply: string;
  mechanism?: string;
  since?: string;
}

/** Does the relay log in upstream (and so can be refused)? */
export function logsInUpstream(relay: SmtpRelay): boolean {
  return Boolean(relay.spec.upstream.credentialsSecretRef || relay.spec.upstream.oauth2);
}

/** A and AAAA of a name through the system resolver (getaddrinfo: the pod's resolv.conf search path). */
const systemLookup = async (name: string): Promise<string[]> => (await dns.promises.lookup(name, { all: true, verbatim: true })).map((a) => a.address);

/** The pods of a relay: the A/AAAA records of its headless peers Service (publishNotReadyAddresses: every pod). */
export async function dnsRelayPods(relay: SmtpRelay, lookup: (name: string) => Promise<string[]> = systemLookup): Promise<RelayPod[]> {
  // relative, so that the pod's search path adds the cluster domain, whatever it is
  const name = `${childNames(relay).peersService}.${relay.metadata.namespace}.svc`;
  try {
    const found = await lookup(name);
    return [...new Set(found)].map((ip) => ({ address: controlAddress(ip) }));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTFOUND' || code === 'ENODATA') return [];
    throw err;
  }
}

export interface UpstreamLoginsOptions {
  caches: Pick<Caches, 'relays' | 'children'>;
  events: EventRecorder;
  clock: Clock;
  log: Logger;
  /** A relay's verdict changed: reconcile it. */
  onChange: (relayKey: string) => void;
  pollMs?: number;
  /** The relay's pods; default dnsRelayPods (tests play the pods on loopback). */
  relayPods?: (relay: SmtpRelay) => Promise<RelayPod[]>;
}

interface Known {
  /** Last answer per pod address (kept while the address is listed). */
  pods: Map<string, { name?: string; state: UpstreamState }>;
  /** What the last round concluded (its JSON), to see a change. */
  verdict: string;
  /** A round has concluded for this relay since the operator started (or since it logs in). */
  settled: boolean;
}

/** Runs `tasks` with at most `limit` in flight. */
async function bounded(tasks: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}

export class UpstreamLogins {
  private readonly known = new Map<string, Known>();
  private cancel: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly o: UpstreamLoginsOptions) {}

  /**
   * The pods that report a refusal for this relay (namespace/name), by pod name; empty when
   * none; undefined until a round has asked its pods (then the status keeps what it says).
   */
  refused(relayKey: string): RefusedPod[] | undefined {
    const k = this.known.get(relayKey);
    return k?.settled ? refusedPods(k) : undefined;
  }

  /** Polls now (in the background), then every pollMs. */
  start(): void {
    void this.guarded().finally(() => this.again());
  }

  stop(): void {
    this.stopped = true;
    this.cancel?.();
  }

  private again(): void {
    if (this.stopped) return;
    this.cancel = this.o.clock.setTimer(() => void this.guarded().finally(() => this.again()), this.o.pollMs ?? UPSTREAM_POLL_MS);
  }

  /** A round that never rejects (it runs from a timer): a failure is logged, the next round tries again. */
  private guarded(): Promise<void> {
    return this.round().catch((err: unknown) => this.o.log.error({ err: String(err) }, 'upstream login poll failed; trying again next round'));
  }

  /** One round over every relay that logs in upstream. */
  async round(): Promise<void> {
    const relays = this.o.caches.relays.list().filter((r) => logsInUpstream(r) && !r.metadata.deletionTimestamp);
    const wanted = new Set(relays.map((r) => keyOf(r)));
    for (const key of [...this.known.keys()]) if (!wanted.has(key)) this.known.delete(key);
    const tasks: (() => Promise<void>)[] = [];
    const asked: (SmtpRelay & KubeObject)[] = [];
    for (const relay of relays) {
      const ns = relay.metadata.namespace;
      const token = controlToken(this.o.caches.children.get('Secret')?.get(ns, childNames(relay).internalSecret) as { data?: Record<string, string> } | undefined);
      if (!token) continue;
      let listed: RelayPod[];
      try {
        listed = await (this.o.relayPods ? this.o.relayPods(relay) : dnsRelayPods(relay));
      } catch (err) {
        this.o.log.debug({ relay: keyOf(relay), err: String(err) }, 'cannot list the relay pods; keeping what they said last');
        continue;
      }
      const key = keyOf(relay);
      let k = this.known.get(key);
      if (!k) this.known.set(key, (k = { pods: new Map(), verdict: '[]', settled: false }));
      // pods no longer listed are gone: what they said goes with them
      const addresses = new Set(listed.map((p) => p.address));
      for (const a of [...k.pods.keys()]) if (!addresses.has(a)) k.pods.delete(a);
      const known = k;
      asked.push(relay);
      for (const pod of listed) {
        tasks.push(async () => {
          if (this.stopped) return;
          try {
            const state = await getUpstream(pod.address, token);
            known.pods.set(pod.address, { ...(pod.name ? { name: pod.name } : {}), state });
          } catch (err) {
            // unreachable, no answer in time, or a relay without GET /upstream: no news
            this.o.log.debug({ relay: key, pod: pod.name ?? pod.address, err: (err as Error).message }, 'no upstream state from the pod this round');
          }
        });
      }
    }
    await bounded(tasks, MAX_CONCURRENT);
    if (this.stopped) return;
    for (const relay of asked) await this.settle(relay);
  }

  /**
   * Compares the relay's verdict with the last round's: reconcile on a change, an Event on a
   * transition. The first round after a start compares with what the status shows (written
   * by this operator before a restart, or by the previous leader): no second Warning for a
   * refusal already shown, and a refusal shown but over is cleared.
   */
  private async settle(relay: SmtpRelay & KubeObject): Promise<void> {
    const key = keyOf(relay);
    const k = this.known.get(key);
    if (!k) return;
    const now = refusedPods(k);
    const verdict = JSON.stringify(now);
    const shown = findCondition(relay.status?.conditions, ConditionType.UpstreamReady)?.reason === Reason.UpstreamAuthRefused;
    const first = !k.settled;
    const wasRefused = first ? shown : k.verdict !== '[]';
    k.settled = true;
    if (first ? now.length === 0 && !shown : verdict === k.verdict) return;
    k.verdict = verdict;
    this.o.onChange(key);
    if (now.length > 0 && !wasRefused) {
      this.o.log.warn({ relay: key, pods: now.map((p) => p.pod), reply: now[0]!.reply }, 'the upstream refuses the relay\'s login');
      await this.o.events.warning(relay, Reason.UpstreamAuthRefused, refusalSummary(relay, now));
    } else if (now.length === 0 && wasRefused) {
      // a login accepted, or the refused pods gone: either way no pod says so any more
      this.o.log.info({ relay: key }, 'no relay pod reports a refused upstream login any more');
      await this.o.events.normal(relay, 'UpstreamAuthAccepted', `No relay pod reports that the upstream ${relay.spec.upstream.host}:${relay.spec.upstream.port} refuses its login any more`);
    }
  }
}

function refusedPods(k: Known): RefusedPod[] {
  const out: RefusedPod[] = [];
  for (const [address, { name, state }] of k.pods) {
    if (!state.authRefused) continue;
    out.push({ pod: name ?? state.pod ?? address, reply: state.reply ?? '', ...(state.mechanism ? { mechanism: state.mechanism } : {}), ...(state.since ? { since: state.since } : {}) });
  }
  return out.sort((a, b) => (a.pod < b.pod ? -1 : a.pod > b.pod ? 1 : 0));
}

/**
 * UpstreamReady's refusal message from what the pods report (undefined: none refused).
 * Before the first round has asked the pods (`refused` undefined: the operator just
 * started or took over), the status keeps the refusal it shows, so that a restart does not
 * flip the condition to True and back.
 */
export function refusalMessage(relay: SmtpRelay, refused: readonly RefusedPod[] | undefined): string | undefined {
  if (!logsInUpstream(relay)) return undefined;
  if (refused === undefined) {
    const shown = findCondition(relay.status?.conditions, ConditionType.UpstreamReady);
    return shown?.reason === Reason.UpstreamAuthRefused ? shown.message : undefined;
  }
  return refused.length > 0 ? refusalSummary(relay, refused) : undefined;
}

/** Longest condition message / Event text about a refusal. */
const MAX_MESSAGE = 1000;

/**
 * "the upstream smtp.example.net:587 refuses the relay's login (XOAUTH2) on pod a, b: 535 ...
 * (since ...); <what to do>". Pods with the same words are named together.
 */
export function refusalSummary(relay: SmtpRelay, pods: readonly RefusedPod[]): string {
  const byWords = new Map<string, RefusedPod[]>();
  for (const p of pods) {
    const key = `${p.mechanism ?? ''}\n${p.reply}`;
    byWords.set(key, [...(byWords.get(key) ?? []), p]);
  }
  const parts = [...byWords.values()].map((group) => {
    const first = group[0]!;
    const since = group.map((p) => p.since).filter((s): s is string => !!s).sort()[0];
    return `${first.mechanism ? `(${first.mechanism}) ` : ''}on pod${group.length === 1 ? '' : 's'} ${group.map((p) => p.pod).join(', ')}: "${first.reply}"${since ? ` since ${since}` : ''}`;
  });
  const up = relay.spec.upstream;
  const fix = up.oauth2
    ? 'check the app registration or delegation, its permissions and whether the upstream allows SMTP AUTH (docs/runbooks.md SmtpRelayUpstreamAuthRefused)'
    : `check the username and password in Secret ${up.credentialsSecretRef?.name ?? ''} and whether the upstream allows SMTP AUTH (docs/runbooks.md SmtpRelayUpstreamAuthRefused)`;
  const text = `the upstream ${up.host}:${up.port} refuses the relay's login ${parts.join('; ')}; ${fix}; this clears at the next login the upstream accepts`;
  return text.length > MAX_MESSAGE ? text.slice(0, MAX_MESSAGE - 3) + '...' : text;
}
