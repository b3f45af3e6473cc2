// Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report) read by a real
// MIME parser, Python's email package (policy default): the structure, the per-message
// and per-recipient fields of the message/delivery-status part, and what came back of the
// original. test/relay/dsn.test.ts and dsn-postfix.test.ts use it.
import { execFile } from 'node:child_process';

export interface ParsedReport {
  contentType: string;
  reportType: string;
  to: string;
  parts: string[];
  perMessage: Record<string, string>;
  perRecipient: Record<string, string>[];
  returned: string;
}

/** A notification read by Python's email package (policy default): its structure and fields. */
export function parseReport(raw: Buffer): Promise<ParsedReport> {
  const script = `
import email, json, sys
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
parts = [p.get_content_type() for p in m.iter_parts()]
status = next(p for p in m.iter_parts() if p.get_content_type() == 'message/delivery-status')
blocks = [dict((k, str(v)) for k, v in b.items()) for b in status.get_payload()]
third = list(m.iter_parts())[2]
returned = third.get_payload()[0].as_string() if third.is_multipart() or third.get_content_type() == 'message/rfc822' else third.get_payload()
print(json.dumps({'contentType': m.get_content_type(), 'reportType': m.get_param('report-type'), 'to': str(m['To']),
  'parts': parts, 'perMessage': blocks[0], 'perRecipient': blocks[1:], 'returned': returned}))
`;
  return new Promise((resolve, reject) => {
    const p = execFile('python3', ['-c', script], { timeout: 20_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout) as ParsedReport)));
    p.stdin!.end(raw);
  });
}
