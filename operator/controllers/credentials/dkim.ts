// DKIM keys: a given Secret is only read; otherwise the operator generates an
// RSA 2048 key into an owned Secret once and keeps it (a new key would
// invalidate the published TXT record). The TXT record to publish goes to
// status.dnsRecords. Condition owned here: DkimReady.

import type { DnsRecord } from '../../api/v1alpha1.js';
import { dkimRecordName } from '../../builders/relay-config.js';
import { buildGeneratedDkimSecret, dkimRecordFromSecret, generateDkimPrivateKey } from '../../builders/dkim-key.js';
import { dkimSecretName } from '../../builders/meta.js';
import type { ConditionInput, Problem } from '../../status/conditions.js';
import { dkimCondition } from '../../status/decisions.js';
import type { ReconcileScope, SyncContext } from '../context.js';
import { createSecretIfAbsent, readSecret } from '../secrets.js';

export interface DkimResult {
  dkimReady: ConditionInput;
  /** TXT records to publish, one per usable key, in spec order. */
  dnsRecords: DnsRecord[];
  /** Entries (dkimRecordName) whose key is missing or unusable: the relay config leaves them out. */
  skipDkim: ReadonlySet<string>;
}

export async function syncDkim(ctx: SyncContext, scope: ReconcileScope): Promise<DkimResult> {
  const relay = scope.relay;
  const ns = relay.metadata.namespace;
  const problems: Problem[] = [];
  const dnsRecords: DnsRecord[] = [];
  const skipDkim = new Set<string>();
  for (const entry of relay.spec.dkim) {
    const name = dkimSecretName(relay, entry);
    let secret = await readSecret(ctx, scope, ns, name);
    if (!secret && !entry.secretRef) {
      const result = await createSecretIfAbsent(ctx, buildGeneratedDkimSecret(relay, entry, generateDkimPrivateKey()));
      secret = result.secret;
      if (result.created) {
        scope.log.info({ secret: name, record: dkimRecordName(entry) }, 'generated DKIM key');
        void ctx.events.normal(relay, 'DkimKeyGenerated', `Generated a DKIM RSA 2048 key in Secret ${name}; publish the TXT record ${dkimRecordName(entry)} from status.dnsRecords`);
      }
    }
    const result = dkimRecordFromSecret(entry, secret, name);
    if ('record' in result) {
      dnsRecords.push(result.record);
    } else {
      problems.push(result);
      skipDkim.add(dkimRecordName(entry));
    }
  }
  for (const p of problems) await ctx.events.warning(relay, p.reason, p.message);
  return { dkimReady: dkimCondition(relay, problems), dnsRecords, skipDkim };
}
