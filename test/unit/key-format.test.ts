import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkKeyShape, checksumOf, displayPrefix, generateKey, KEY_LENGTH } from '../../src/keys/format.js';
import { KeyHasher } from '../../src/keys/hash.js';

describe('key format', () => {
  it('generates ryv_live_ + 43 base62 + 6-char checksum keys that pass the offline check', () => {
    for (let i = 0; i < 200; i++) {
      const key = generateKey('live');
      expect(key).toMatch(/^ryv_live_[0-9A-Za-z]{49}$/);
      expect(key).toHaveLength(KEY_LENGTH);
      expect(checkKeyShape(key, 'live')).toEqual({ ok: true });
    }
  });

  it('generates distinct keys', () => {
    const keys = new Set(Array.from({ length: 1000 }, () => generateKey('test')));
    expect(keys.size).toBe(1000);
  });

  it('computes the checksum as the base62 CRC32 (IEEE) of the text before it, left-padded with 0', () => {
    // Expected values computed independently (Python zlib.crc32 + base62 by hand).
    expect(checksumOf('a')).toBe('4GEHKN'); // crc32("a") = 0xe8b7be43
    expect(checksumOf(`ryv_live_${'0'.repeat(43)}`)).toBe('11Dzkf');
    expect(checksumOf('')).toBe('000000'); // crc32("") = 0: all padding
  });

  it('rejects a key whose checksum is wrong', () => {
    const key = generateKey('live');
    const last = key.at(-1)!;
    const tampered = key.slice(0, -1) + (last === 'a' ? 'b' : 'a');
    expect(checkKeyShape(tampered, 'live')).toEqual({ ok: false, problem: 'bad_checksum' });
  });

  it('rejects a key whose body was changed (the checksum covers the prefix too)', () => {
    const key = generateKey('live');
    expect(checkKeyShape(key.replace('ryv_live_', 'ryv_test_'), 'test').ok).toBe(false);
    const body = key.slice(0, 20) + (key[20] === 'x' ? 'y' : 'x') + key.slice(21);
    expect(checkKeyShape(body, 'live')).toEqual({ ok: false, problem: 'bad_checksum' });
  });

  it.each([
    ['empty', ''],
    ['too short', 'ryv_live_abc'],
    ['unknown prefix', `sk_live_${'a'.repeat(50)}`],
    ['non-base62 character', `ryv_live_${'a'.repeat(42)}-${'0'.repeat(6)}`],
    ['non-ASCII character', `ryv_live_${'a'.repeat(42)}é${'0'.repeat(6)}`],
    ['one character too long', `${generateKey('live')}a`],
  ])('rejects a malformed key: %s', (_name, key) => {
    expect(checkKeyShape(key, 'live')).toEqual({ ok: false, problem: 'malformed' });
  });

  it('accepts only the environment this deployment issues', () => {
    expect(checkKeyShape(generateKey('test'), 'live')).toEqual({ ok: false, problem: 'wrong_environment' });
    expect(checkKeyShape(generateKey('live'), 'test')).toEqual({ ok: false, problem: 'wrong_environment' });
  });

  it('displays a short prefix that is not enough to use the key', () => {
    const key = generateKey('live');
    expect(displayPrefix(key)).toBe(`${key.slice(0, 13)}…`);
  });
});

describe('key hashing', () => {
  const pepperA = 'a'.repeat(32);
  const pepperB = 'b'.repeat(32);

  it('is an HMAC-SHA256 under the pepper, tagged with the pepper version', () => {
    const hasher = new KeyHasher({ version: 3, secret: pepperA });
    const h = hasher.hashForStorage('some-key');
    expect(h.pepperVersion).toBe(3);
    expect(h.hash).toHaveLength(32);
    expect(h.hash.equals(new KeyHasher({ version: 3, secret: pepperA }).hashForStorage('some-key').hash)).toBe(true);
    // The stored bytes are RFC 2104's HMAC-SHA256 (node:crypto's reference), and the caches' id is their base64url text.
    expect(h.hash.equals(createHmac('sha256', pepperA).update('some-key').digest())).toBe(true);
    expect(h.id).toBe(h.hash.toString('base64url'));
    const [candidate] = hasher.candidates('some-key');
    expect(candidate!.id).toBe(h.id);
    expect(candidate!.hash.equals(h.hash)).toBe(true);
    // A pepper outside ASCII is taken as its UTF-8 bytes, as createHmac takes a string; the previous
    // pepper's candidate is its own HMAC.
    const wide = 'p\u00e9pper-\u2603-'.repeat(4);
    const rotating = new KeyHasher({ version: 4, secret: wide }, { version: 3, secret: pepperA });
    const [now, before] = rotating.candidates('some-key');
    expect(now!.id).toBe(createHmac('sha256', wide).update('some-key').digest('base64url'));
    expect(before!.id).toBe(h.id);
    expect(before!.pepperVersion).toBe(3);
  });

  it('differs under another pepper, so a database dump alone cannot confirm a guessed key', () => {
    const a = new KeyHasher({ version: 1, secret: pepperA }).hashForStorage('k').hash;
    const b = new KeyHasher({ version: 1, secret: pepperB }).hashForStorage('k').hash;
    expect(a.equals(b)).toBe(false);
  });

  it('offers the previous pepper during rotation, current first', () => {
    const hasher = new KeyHasher({ version: 2, secret: pepperB }, { version: 1, secret: pepperA });
    const c = hasher.candidates('k');
    expect(c.map((x) => x.pepperVersion)).toEqual([2, 1]);
    expect(c[1]!.hash.equals(new KeyHasher({ version: 1, secret: pepperA }).hashForStorage('k').hash)).toBe(true);
  });
});
