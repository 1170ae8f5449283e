// KeyResolver on twins (a held Postgres look-up, FakeClock): coalescing, the lease bypass, the overload cap,
// and one memory read per check.
import { describe, expect, it } from 'vitest';
import { CheckPipeline } from '../../src/check/pipeline.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../../src/policy/policy.js';
import { generateKey } from '../../src/keys/format.js';
import { KeyHasher, type KeyHash } from '../../src/keys/hash.js';
import { MemoryTier } from '../../src/keys/cache/memory.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';
import { KeyResolver } from '../../src/keys/resolver.js';
import { Metrics } from '../../src/observability/metrics.js';
import { StoreUnavailableError } from '../../src/store/errors.js';
import { FakeClock } from '../../src/time/fake-clock.js';
import { HeldKeyLookup } from '../helpers/twins.js';

const hasher = new KeyHasher({ version: 1, secret: 'p'.repeat(32) });

function setup(opts: { postgresConcurrency?: number } = {}) {
  const clock = new FakeClock();
  const postgres = new HeldKeyLookup();
  const memory = new MemoryTier({ maxKeys: 100, ttlMs: 60_000, negativeTtlMs: 5_000 });
  let lease = true;
  const resolver = new KeyResolver({
    memory, redis: undefined, postgres,
    leaseHeld: () => lease, redisTrusted: () => true,
    postgresConcurrency: opts.postgresConcurrency ?? 8, postgresDeadlineMs: 1_000,
    clock, metrics: new Metrics({ defaultMetrics: false }),
  });
  const addSecret = (): string => {
    const secret = generateKey('live');
    const candidates = hasher.candidates(secret);
    const hash = candidates[0]!.hash.toString('base64url');
    const rec: KeyRecord = keyRecord({ id: `key_${hash.slice(0, 6)}`, hash, accountId: 'acct_1', name: 'k', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null });
    postgres.records.set(hash, rec);
    return secret;
  };
  const add = (): KeyHash[] => hasher.candidates(addSecret());
  return { clock, postgres, memory, resolver, add, addSecret, setLease: (held: boolean) => void (lease = held) };
}

/** Until the held look-ups have been asked for (they start after a few microtasks). */
async function untilPending(postgres: HeldKeyLookup, n: number): Promise<void> {
  for (let i = 0; i < 100 && postgres.pending < n; i++) await Promise.resolve();
  expect(postgres.pending).toBe(n);
}

describe('KeyResolver', () => {
  it('concurrent misses for one key share one Postgres look-up', async () => {
    const { resolver, postgres, add } = setup();
    const key = add();
    const answers = [resolver.find(key), resolver.find(key), resolver.find(key)];
    await untilPending(postgres, 1);
    postgres.releaseAll();
    const records = await Promise.all(answers);
    expect(postgres.lookups).toBe(1);
    expect(new Set(records.map((r) => r?.id)).size).toBe(1);
    expect(records[0]).not.toBeNull();
  });

  it('after the look-up, the key is answered from memory, synchronously, without Postgres', async () => {
    const { resolver, postgres, add } = setup();
    const key = add();
    const first = resolver.find(key);
    await untilPending(postgres, 1);
    postgres.releaseAll();
    await first;
    const again = resolver.find(key);
    expect(again).not.toBeInstanceOf(Promise);
    expect(again).toMatchObject({ hash: key[0]!.hash.toString('base64url') });
    expect(postgres.lookups).toBe(1);
  });

  it('a Check reads the memory tier once, on a miss too', async () => {
    const { resolver, postgres, memory, addSecret } = setup();
    const pipeline = new CheckPipeline({ environment: 'live', hasher, keys: resolver, policy: () => loadPolicyFile(DEFAULT_POLICY_PATH) });
    const secret = addSecret();
    let reads = 0;
    const get = memory.get.bind(memory);
    memory.get = (hash) => {
      reads++;
      return get(hash);
    };
    const attrs = { method: 'GET', path: '/v1/models', authorization: [`Bearer ${secret}`], apiKey: [], requestId: undefined, sourceAddress: undefined };
    const decided = pipeline.decide(attrs);
    await untilPending(postgres, 1);
    postgres.releaseAll();
    expect((await decided).allow).toBe(true);
    expect(reads).toBe(hasher.candidates(secret).length);
    reads = 0;
    expect((await pipeline.decide(attrs)).allow).toBe(true);
    expect(reads).toBe(1);
  });

  it('without the invalidation lease, memory is bypassed: every check goes to Postgres', async () => {
    const { resolver, postgres, add, setLease } = setup();
    const key = add();
    const warm = resolver.find(key);
    await untilPending(postgres, 1);
    postgres.releaseAll();
    await warm;

    setLease(false);
    const answer = resolver.find(key);
    expect(answer).toBeInstanceOf(Promise);
    await untilPending(postgres, 1);
    postgres.releaseAll();
    expect(await answer).not.toBeNull();
    expect(postgres.lookups).toBe(2);
  });

  it('beyond the Postgres concurrency cap a new key is refused at once (overload), not queued', async () => {
    const { resolver, postgres, add } = setup({ postgresConcurrency: 1 });
    const held = resolver.find(add());
    await untilPending(postgres, 1);
    await expect(resolver.find(add())).rejects.toEqual(new StoreUnavailableError('postgres', 'overload'));
    expect(postgres.lookups).toBe(1);
    postgres.releaseAll();
    expect(await held).not.toBeNull();
  });

  it('a Postgres look-up that outlives its deadline is answered as a timeout', async () => {
    const { resolver, postgres, clock, add } = setup();
    const answer = resolver.find(add());
    const settled = expect(answer).rejects.toEqual(new StoreUnavailableError('postgres', 'timeout'));
    await untilPending(postgres, 1);
    await clock.advance(1_000);
    await settled;
    postgres.releaseAll();
  });
});
