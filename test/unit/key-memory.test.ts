// What a key held in the memory tier costs the heap once it has been decided, beyond its record:
// the tier's slot, and nothing more per key (no second identity object, no cache-entry wrapper).
// bench/README.md (memory) has the figures at 100 000 keys.
import { describe, expect, it } from 'vitest';
import type { RequestAttributes } from '../../src/check/attributes.js';
import { CheckPipeline } from '../../src/check/pipeline.js';
import { entryFor } from '../../src/keys/cache/entry.js';
import { MemoryTier } from '../../src/keys/cache/memory.js';
import { generateKey } from '../../src/keys/format.js';
import { KeyHasher } from '../../src/keys/hash.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';
import { KeyResolver } from '../../src/keys/resolver.js';
import { Metrics } from '../../src/observability/metrics.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../../src/policy/policy.js';
import { FakeClock } from '../../src/time/fake-clock.js';
import { memoryAfterGc } from '../helpers/gc.js';

const KEYS = 20_000;

/**
 * Heap in use after enough full collections that nothing left over from loading the test is
 * still to go: V8 drops some of it (compiled code, its compilation caches) only after several
 * collections, which otherwise lands between the two measurements or not (5.8 MB here).
 */
function settledHeap(): number {
  for (let i = 0; i < 8; i++) memoryAfterGc();
  return memoryAfterGc().heapUsed;
}

describe('a key held in memory', () => {
  it('costs the memory tier its slot and nothing more per key once decided (under 200 bytes beyond its record)', async () => {
    const hasher = new KeyHasher({ version: 1, secret: 'p'.repeat(32) });
    const memory = new MemoryTier({ maxKeys: KEYS, ttlMs: 600_000, negativeTtlMs: 5_000 });
    const resolver = new KeyResolver({
      memory, redis: undefined, postgres: { findByHash: () => Promise.reject(new Error('memory only')) },
      leaseHeld: () => true, redisTrusted: () => true, postgresConcurrency: 1, postgresDeadlineMs: 1_000,
      clock: new FakeClock(), metrics: new Metrics({ defaultMetrics: false }),
    });
    const policy = loadPolicyFile(DEFAULT_POLICY_PATH);
    const pipeline = new CheckPipeline({ environment: 'live', hasher, keys: resolver, policy: () => policy });
    // Everything the test itself holds is made before the first measurement.
    const records: KeyRecord[] = [];
    const requests: RequestAttributes[] = [];
    for (let i = 0; i < KEYS; i++) {
      const secret = generateKey('live');
      const hash = hasher.candidates(secret)[0]!.hash.toString('base64url');
      records.push(keyRecord({ id: `key_${i}`, hash, accountId: 'acct_1', name: 'k', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null }));
      requests.push({ method: 'GET', path: '/v1/models', authorization: [`Bearer ${secret}`], apiKey: [], requestId: undefined, sourceAddress: undefined });
    }
    const before = settledHeap();
    for (const r of records) expect(memory.fill(r.hash, entryFor(r), memory.epoch)).toBe(true);
    for (const [i, attrs] of requests.entries()) {
      const d = await pipeline.decide(attrs);
      expect(d.allow && d.identity.keyId).toBe(`key_${i}`);
    }
    const perKey = (settledHeap() - before) / KEYS;
    expect(memory.size).toBe(KEYS);
    expect(perKey).toBeLessThan(200);
  });

  it('is a record of its 15 fields, read under the Identity\'s names too (144 bytes of heap, not 160)', () => {
    const limits = { tokens_per_minute: 1000 };
    const make = (i: number): KeyRecord =>
      keyRecord({ id: `key_${i}`, hash: 'h', accountId: 'acct_1', name: 'k', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null, keyTokens: i === 0 ? limits : null });
    const first = make(0);
    expect(first.keyId).toBe('key_0');
    expect(first.tokenLimits).toBe(limits);
    expect(Object.isFrozen(first)).toBe(true);
    // The array that holds them is made before the first measurement: only the records are counted.
    const held: KeyRecord[] = new Array<KeyRecord>(KEYS);
    const before = settledHeap();
    for (let i = 0; i < KEYS; i++) held[i] = make(i);
    const perRecord = (settledHeap() - before) / KEYS;
    // Each record's id string is its own (`key_N`, 24-32 bytes) and counted: 172.9 bytes a record
    // measured, every run; with the two names as fields of their own, 180.4-188.9.
    expect(held[KEYS - 1]!.keyId).toBe(`key_${KEYS - 1}`);
    expect(perRecord).toBeLessThan(177);
  });
});
