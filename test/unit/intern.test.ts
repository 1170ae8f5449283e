import { describe, expect, it } from 'vitest';
import { Interner } from '../../src/keys/intern.js';
import { decodeEntry, encodeEntry, entryFor } from '../../src/keys/cache/entry.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';
import { memoryAfterGc } from '../helpers/gc.js';

const heapAfterGc = (): number => memoryAfterGc().heapUsed;

describe('strings shared by cached key records (src/keys/intern.ts)', () => {
  it('hands back an equal string, and never holds more than its bound', () => {
    const i = new Interner(3);
    expect(i.of('acct_a')).toBe('acct_a');
    expect(i.of('acct_a' + '')).toBe('acct_a');
    for (let n = 0; n < 100; n++) expect(i.of(`s${n}`)).toBe(`s${n}`);
    expect(i.size).toBeLessThanOrEqual(3);
  });

  it('records read back from the shared cache keep one copy of their account id, scope and plan', () => {
    // A long account id makes each copy 64 KiB; 400 records of one account would hold 25 MB of copies.
    const accountId = `acct_${'x'.repeat(64 * 1024)}`;
    const record = (n: number): KeyRecord => keyRecord({
      id: `key_${n}`, hash: `h${n}`, accountId, name: 'n', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null,
    });
    const texts = Array.from({ length: 400 }, (_, n) => encodeEntry(entryFor(record(n))));
    const before = heapAfterGc();
    const held = texts.map((t, n) => decodeEntry(`h${n}`, t));
    const grown = heapAfterGc() - before;
    expect(held.every((e) => e?.state === 'found' && e.record.accountId === accountId)).toBe(true);
    // One copy of the id (64 KiB) and the records themselves, not 400 copies (25 MB).
    expect(grown).toBeLessThan(4 * 1024 * 1024);
  });
});
