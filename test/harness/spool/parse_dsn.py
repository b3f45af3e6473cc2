# Parses a delivery status notification with Python's email package (a real, independent
# MIME parser) and prints what the spool tests check, as JSON.
import email
import email.policy
import json
import sys

msg = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
out = {
    'content_type': msg.get_content_type(),
    'report_type': msg.get_param('report-type'),
    'from': str(msg['From']),
    'to': str(msg['To']),
    'auto_submitted': str(msg['Auto-Submitted']),
    'parts': [],
    'per_message': {},
    'recipients': [],
    'original_headers': '',
    'defects': [str(d) for d in msg.defects],
}
for part in msg.iter_parts():
    ct = part.get_content_type()
    out['parts'].append(ct)
    out['defects'] += [str(d) for d in part.defects]
    if ct == 'message/delivery-status':
        blocks = part.get_payload()
        out['per_message'] = dict(blocks[0].items())
        out['recipients'] = [dict(b.items()) for b in blocks[1:]]
    elif ct == 'text/rfc822-headers':
        out['original_headers'] = part.get_payload(decode=True).decode('ascii', 'replace')
print(json.dumps(out))
