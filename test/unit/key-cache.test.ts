import { describe, expect, it } from 'vitest';
import { decodeEntry, encodeEntry, entryFor, type CacheEntry } from '../../src/keys/cache/entry.js';
import { MemoryTier } from '../../src/keys/cache/memory.js';
import { LastUsedRecorder } from '../../src/keys/last-used.js';
import { FailedAuthLimiter } from '../../src/check/failed-auth.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';

const record = (version: number, revoked = false): KeyRecord => keyRecord({
  id: 'key_a',
  hash: 'h',
  accountId: 'acct_a',
  name: 'n',
  scope: 'buyer',
  plan: 'free',
  expiresAt: new Date(2_000_000_000_000),
  revokedAt: revoked ? new Date(1_900_000_000_000) : null,
  version,
  accountRpm: null,
  keyRpm: 30,
});

const tier = (): MemoryTier => new MemoryTier({ maxKeys: 100, ttlMs: 60_000, negativeTtlMs: 1000 });

describe('memory tier', () => {
  it('keeps a filled entry', () => {
    const m = tier();
    expect(m.fill('h', entryFor(record(1)), m.epoch)).toBe(true);
    expect(m.get('h')).toMatchObject({ id: 'key_a', version: 1 });
  });

  it('refuses a fill that read the store before a revocation arrived (tombstone)', () => {
    const m = tier();
    const epoch = m.epoch;
    m.invalidate('h', 2);
    expect(m.fill('h', entryFor(record(1)), epoch)).toBe(false);
    expect(m.get('h')).toBeUndefined();
    expect(m.fill('h', entryFor(record(2, true)), epoch)).toBe(true);
  });

  it('refuses a fill that began before a flush (epoch)', () => {
    const m = tier();
    const epoch = m.epoch;
    m.flush();
    expect(m.fill('h', entryFor(record(1)), epoch)).toBe(false);
  });

  it('never replaces a higher version with a lower one', () => {
    const m = tier();
    m.fill('h', entryFor(record(3, true)), m.epoch);
    expect(m.fill('h', entryFor(record(2)), m.epoch)).toBe(false);
    expect(m.get('h')).toMatchObject({ id: 'key_a', version: 3 });
  });

  it('drops the entry on invalidation', () => {
    const m = tier();
    m.fill('h', entryFor(record(1)), m.epoch);
    m.invalidate('h', 2);
    expect(m.get('h')).toBeUndefined();
  });

  it('is bounded', () => {
    const m = new MemoryTier({ maxKeys: 10, ttlMs: 60_000, negativeTtlMs: 1000 });
    for (let i = 0; i < 50; i++) m.fill(`h${i}`, entryFor(null), m.epoch);
    expect(m.size).toBe(10);
  });
});

describe('cache entry encoding', () => {
  it.each<[string, CacheEntry]>([
    ['a found key', entryFor(record(4))],
    ['a revoked key', entryFor(record(5, true))],
    ['an unknown key', entryFor(null)],
  ])('round-trips %s', (_n, entry) => {
    expect(decodeEntry('h', encodeEntry(entry))).toEqual(entry);
  });

  it('reads garbage as a miss', () => {
    expect(decodeEntry('h', 'not json')).toBeUndefined();
    expect(decodeEntry('h', '{"x":1}')).toBeUndefined();
  });
});

describe('failed authentications per source', () => {
  it('blocks a source after the limit within a minute, and lets it go as the window slides', () => {
    let now = 1_000_000_020_000;
    const limiter = new FailedAuthLimiter(10, () => now);
    for (let i = 0; i < 9; i++) limiter.recordFailure('10.0.0.1');
    expect(limiter.blockedForMs('10.0.0.1')).toBe(0);
    limiter.recordFailure('10.0.0.1');
    expect(limiter.blockedForMs('10.0.0.1')).toBeGreaterThan(0);
    expect(limiter.blockedForMs('10.0.0.2')).toBe(0);
    now += 2 * 60_000;
    expect(limiter.blockedForMs('10.0.0.1')).toBe(0);
  });

  it('ignores requests with no source address', () => {
    const limiter = new FailedAuthLimiter(1);
    limiter.recordFailure(undefined);
    expect(limiter.blockedForMs(undefined)).toBe(0);
  });
});

describe('last_used_at batching', () => {
  it('writes each key at most once per flush, in one statement', async () => {
    const batches: Array<Map<string, number>> = [];
    const recorder = new LastUsedRecorder({ touchLastUsed: async (b) => void batches.push(new Map(b)) }, 3_600_000);
    for (let i = 0; i < 1000; i++) recorder.touch(i % 2 ? 'key_a' : 'key_b');
    await recorder.flush();
    expect(batches).toHaveLength(1);
    expect([...batches[0]!.keys()].sort()).toEqual(['key_a', 'key_b']);
    await recorder.flush();
    expect(batches).toHaveLength(1);
    await recorder.stop();
  });
});
