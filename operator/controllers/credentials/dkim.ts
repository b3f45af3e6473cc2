// DKIM keys: a given Secret is only read; otherwise the operator generates an
// RSA 2048 key into an owned Secret once and keeps it (a new key would
// invalidate the published TXT record). The TXT record to publish goes to
// status.dnsRecords. Condition owned here: DkimReady.

import { ConditionType, Reason } from '../../api/v1alpha1.js';
import { dkimRecordName } from '../../builders/config.js';
import type { Problem } from '../../builders/credentials.js';
import { buildGeneratedDkimSecret, dkimRecordFromSecret, generateDkimPrivateKey } from '../../builders/dkim.js';
import { dkimSecretName } from '../../builders/meta.js';
import { conditionFromProblems } from '../../builders/status.js';
import { decide, type ReconcileState, type SyncContext } from '../context.js';
import { createSecretIfAbsent, readSecret } from '../secrets.js';

export async function syncDkim(ctx: SyncContext, st: ReconcileState): Promise<void> {
  const relay = st.relay;
  const ns = relay.metadata.namespace;
  const problems: Problem[] = [];
  for (const entry of relay.spec.dkim) {
    const name = dkimSecretName(relay, entry);
    let secret = await readSecret(ctx, st, ns, name);
    if (!secret && !entry.secretRef) {
      const result = await createSecretIfAbsent(ctx, buildGeneratedDkimSecret(relay, entry, generateDkimPrivateKey()));
      secret = result.secret;
      if (result.created) {
        st.log.info({ secret: name, record: dkimRecordName(entry) }, 'generated DKIM key');
        void ctx.events.normal(relay, 'DkimKeyGenerated', `Generated a DKIM RSA 2048 key in Secret ${name}; publish the TXT record ${dkimRecordName(entry)} from status.dnsRecords`);
      }
    }
    const result = dkimRecordFromSecret(entry, secret, name);
    if ('record' in result) {
      st.dnsRecords.push(result.record);
    } else {
      problems.push(result);
      st.skipDkim.add(dkimRecordName(entry));
    }
  }
  for (const p of problems) await ctx.events.warning(relay, p.reason, p.message);
  const domains = relay.spec.dkim.map((d) => d.domain);
  const c = conditionFromProblems(ConditionType.DkimReady, problems, {
    reason: Reason.DkimKeysReady,
    message: domains.length === 0 ? 'no DKIM signing configured' : `DKIM keys ready for ${domains.join(', ')}; publish the TXT records in status.dnsRecords`,
  });
  decide(st, c.type, c.status, c.reason, c.message);
}
