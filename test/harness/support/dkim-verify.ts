// Independent DKIM verification with dkimpy (Debian python3-dkim, the library
// behind `dkimverify`), fed the public key records offline instead of DNS.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { KeyObject } from 'node:crypto';

const SCRIPT = `
import json, sys
try:
    import dkim
except ImportError:
    sys.stderr.write("python3-dkim missing\\n")
    sys.exit(3)
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    name = name.rstrip(".").lower()
    rec = records.get(name)
    return rec.encode() if rec is not None else None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
if not sigs:
    print("FAIL no DKIM-Signature")
    sys.exit(1)
ok = d.verify(dnsfunc=dnsfunc)
print(("PASS" if ok else "FAIL") + " d=" + (d.domain or b"").decode() + " s=" + (d.selector or b"").decode())
sys.exit(0 if ok else 1)
`;

/** The DNS TXT record value for an RSA or Ed25519 DKIM public key. */
export function dkimTxtRecord(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' });
  if (publicKey.asymmetricKeyType === 'ed25519') {
    // RFC 8463: p= is the raw 32-byte public key, the tail of the SPKI encoding.
    return `v=DKIM1; k=ed25519; p=${der.subarray(der.length - 32).toString('base64')}`;
  }
  return `v=DKIM1; k=rsa; p=${der.toString('base64')}`;
}

/** The python interpreter that has Debian's dkim module (pyenv shims may not). */
function python(): string {
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

/**
 * Verifies the first DKIM-Signature of `message` with dkimpy. `records` maps
 * "<selector>._domainkey.<domain>" to the TXT value. Resolves {ok, output};
 * rejects with an install hint when python3-dkim is missing.
 */
export function verifyDkim(message: Buffer, records: Record<string, string>): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(python(), ['-c', SCRIPT, JSON.stringify(records)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new Error(`cannot run python3 for DKIM verification (${e.message}); install python3 and python3-dkim (apt-get install python3-dkim)`)));
    child.on('close', (code) => {
      if (code === 3) {
        reject(new Error('python3-dkim (dkimpy) is not installed: apt-get install python3-dkim'));
      } else if (code === 0 || code === 1) {
        resolve({ ok: code === 0, output: (out + err).trim() });
      } else {
        reject(new Error(`DKIM verifier failed (exit ${code}): ${(out + err).trim()}`));
      }
    });
    child.stdin.end(message);
  });
}
