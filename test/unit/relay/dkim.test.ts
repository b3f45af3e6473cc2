import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fromDomains, normalizeDomain, parseDkimKey, relaxedBody, relaxedHeader, selectDkimKey, signMessage } from '../../../relay/dkim.js';

const keys = [
  { domain: 'example.com', selector: 'a' },
  { domain: 'billing.example.com', selector: 'b' },
  { domain: 'example.com', selector: 'second' },
  { domain: 'xn--bcher-kva.example', selector: 'idn' },
];

const msg = (head: string) => Buffer.from(head.replace(/\n/g, '\r\n') + '\r\n\r\nFrom: body@evil.example is not a header\r\n');

describe('DKIM key selection', () => {
  it('a From domain with its own key is signed with that key', () => {
    assert.equal(selectDkimKey(keys, ['billing.example.com'])?.selector, 'b');
  });
  it('a From subdomain without a key is signed with the closest parent domain key', () => {
    assert.equal(selectDkimKey(keys, ['eu.mail.example.com'])?.selector, 'a');
  });
  it('the first key listed for a domain wins', () => {
    assert.equal(selectDkimKey(keys, ['example.com'])?.selector, 'a');
  });
  it('a domain that only shares a suffix string is not a parent (notexample.com)', () => {
    assert.equal(selectDkimKey(keys, ['notexample.com']), undefined);
  });
  it('a top-level domain alone never matches', () => {
    assert.equal(selectDkimKey([{ domain: 'com', selector: 'x' }], ['example.com']), undefined);
  });
  it('no From domain means no signature', () => {
    assert.equal(selectDkimKey(keys, []), undefined);
  });
});

describe('From: domains', () => {
  it('reads the From field with a display name, case-insensitively, lower-casing the domain', () => {
    assert.deepEqual(fromDomains(msg('Subject: x\nfrom: "Billing, Inc." <Billing@Example.COM>')), ['example.com']);
  });
  it('unfolds a folded From field and reads every address in it', () => {
    assert.deepEqual(fromDomains(msg('From: a@one.example,\n\tB <b@two.example>\nTo: c@three.example')), ['one.example', 'two.example']);
  });
  it('ignores From: lines in the body and To/Sender fields', () => {
    assert.deepEqual(fromDomains(msg('Sender: s@sender.example\nTo: t@to.example\nFrom: f@from.example')), ['from.example']);
  });
  it('converts an IDN domain to punycode', () => {
    assert.deepEqual(fromDomains(msg('From: x@Bücher.example')), ['xn--bcher-kva.example']);
    assert.equal(normalizeDomain('Bücher.example.'), 'xn--bcher-kva.example');
  });
  it('a message without From has no domains', () => {
    assert.deepEqual(fromDomains(msg('Subject: none')), []);
  });
});

describe('DKIM keys', () => {
  const cfg = { domain: 'Example.COM', selector: 'relay1', keyFile: '/keys/k.pem' };
  it('accepts an RSA 2048 key and normalizes the domain', () => {
    const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const k = parseDkimKey(cfg, pem);
    assert.equal(k.domain, 'example.com');
    assert.equal(k.selector, 'relay1');
  });
  it('accepts an Ed25519 key (ed25519-sha256) and refuses other key types naming the file', () => {
    const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' });
    assert.equal(parseDkimKey(cfg, pem).algorithm, 'ed25519-sha256');
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    assert.throws(() => parseDkimKey(cfg, ec), /\/keys\/k\.pem.*key type ec is not supported; use an RSA .* or Ed25519 key/);
  });
  it('refuses a short RSA key', () => {
    const pem = generateKeyPairSync('rsa', { modulusLength: 768 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    assert.throws(() => parseDkimKey(cfg, pem), /768 bits, at least 1024/);
  });
  it('refuses a file that is not a key, and a bad selector', () => {
    assert.throws(() => parseDkimKey(cfg, 'hello'), /\/keys\/k\.pem.*not a PEM private key/);
    const pem = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    assert.throws(() => parseDkimKey({ ...cfg, selector: 'a;b' }, pem), /selector/);
  });
  it('signing prepends one DKIM-Signature field and keeps the message bytes', async () => {
    const pem = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' });
    const k = parseDkimKey(cfg, pem);
    const m = msg('From: a@example.com\nSubject: hi');
    const signed = await signMessage(k, m);
    const prefix = signed.subarray(0, signed.length - m.length).toString('latin1');
    assert.match(prefix, /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com;/);
    assert.ok(signed.subarray(prefix.length).equals(m));
  });
});

describe('relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4)', () => {
  it('headers: lower-case name, unfolded, whitespace runs to one SP, none around the colon or at the end', () => {
    assert.equal(relaxedHeader('Subject \t:  Hello \t  world\r\n\tagain  '), 'subject:Hello world again');
    assert.equal(relaxedHeader('X-Nbsp: a\xa0'), 'x-nbsp:a\xa0', 'only SP and HTAB are whitespace');
  });
  it('body: trailing whitespace and trailing empty lines go, runs become one SP, empty body stays empty', () => {
    assert.equal(relaxedBody(Buffer.from('a  b \t\r\n\r\nc\r\n\r\n\r\n')).toString(), 'a b\r\n\r\nc\r\n');
    assert.equal(relaxedBody(Buffer.from('\r\n\r\n')).length, 0);
    assert.equal(relaxedBody(Buffer.from('no final crlf')).toString(), 'no final crlf\r\n');
  });
});
