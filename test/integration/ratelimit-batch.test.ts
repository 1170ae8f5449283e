// Batched rate-limit decisions (redis-gcra-batch.ts) are those of single script calls made back to back.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { GcraResult, Limit } from '../../src/ratelimit/gcra.js';
import { RedisGcra } from '../../src/ratelimit/redis-gcra.js';
import { BatchingRedisGcra, MAX_BATCH } from '../../src/ratelimit/redis-gcra-batch.js';
import { StoreUnavailableError } from '../../src/store/errors.js';
import { redisPrefix, testRedisUrl } from '../helpers/stores.js';

let client: Redis;
const prefixes: string[] = [];

function prefix(): string {
  const p = redisPrefix();
  prefixes.push(p);
  return p;
}

beforeAll(async () => {
  client = new Redis(testRedisUrl(), { lazyConnect: true, maxRetriesPerRequest: 0 });
  await client.connect();
});

afterAll(async () => {
  for (const p of prefixes) {
    const keys = await client.keys(`${p}*`);
    if (keys.length > 0) await client.del(...keys);
  }
  client.disconnect();
});

// Long emission intervals: the few milliseconds between single calls never earn a new request.
const account: Limit = { name: 'account', requests: 6, windowMs: 3_600_000, burst: 4 };
const key: Limit = { name: 'key', requests: 3, windowMs: 3_600_000, burst: 3 };

async function singles(limits: Limit[], n: number, accountId = 'acct_A', keyId = 'key_A'): Promise<GcraResult[]> {
  const gcra = new RedisGcra(client, prefix());
  const out: GcraResult[] = [];
  for (let i = 0; i < n; i++) out.push(await gcra.check(limits, accountId, keyId));
  return out;
}

/** All in one turn: one batch per subject. */
function batched(gcra: BatchingRedisGcra, limits: Limit[], n: number, accountId = 'acct_A', keyId = 'key_A'): Promise<GcraResult[]> {
  return Promise.all(Array.from({ length: n }, () => gcra.check(limits, accountId, keyId)));
}

const shape = (rs: GcraResult[]): unknown[] =>
  rs.map((r) => ({ allowed: r.allowed, remaining: r.states.map((s) => s.remaining), limits: r.states.map((s) => s.limit.name) }));

// Durations agree to the few milliseconds that separate the single calls.
function closeDurations(a: GcraResult[], b: GcraResult[]): void {
  a.forEach((r, i) => {
    expect(Math.abs(r.retryAfterMs - b[i]!.retryAfterMs)).toBeLessThanOrEqual(50);
    r.states.forEach((s, j) => expect(Math.abs(s.resetMs - b[i]!.states[j]!.resetMs)).toBeLessThanOrEqual(50));
  });
}

describe('BatchingRedisGcra', () => {
  it.each([
    ['one limit', [account]],
    ['account and key limits', [account, key]],
  ])('decides a burst of concurrent checks like back-to-back single calls (%s)', async (_name, limits) => {
    for (const n of [2, 5, 9]) {
      const expected = await singles(limits, n);
      const gcra = new BatchingRedisGcra(client, prefix());
      const spy = vi.spyOn(client as unknown as { ryvionGcra: (...a: unknown[]) => Promise<number[]> }, 'ryvionGcra');
      const got = await batched(gcra, limits, n);
      expect(spy).toHaveBeenCalledTimes(1);
      spy.mockRestore();
      expect(shape(got)).toEqual(shape(expected));
      closeDurations(got, expected);
    }
  });

  it('continues from the stored state, and leaves the state single calls would', async () => {
    const p = prefix();
    const gcra = new BatchingRedisGcra(client, p);
    const first = await batched(gcra, [account], 2);
    const second = await batched(gcra, [account], 3);
    const reference = await singles([account], 5);
    expect(shape([...first, ...second])).toEqual(shape(reference));
    const stored = Number(await client.get(gcra.keyFor(account, 'acct_A', 'key_A')));
    const single = new RedisGcra(client, p);
    // A single call after the batches sees the batches' TAT: over the burst, denied.
    const after = await single.check([account], 'acct_A', 'key_A');
    expect(after.allowed).toBe(false);
    expect(stored).toBeGreaterThan(Date.now());
  });

  it('keeps subjects apart: one script call per subject in the turn, a subject alone included', async () => {
    const gcra = new BatchingRedisGcra(client, prefix());
    const spy = vi.spyOn(client as unknown as { ryvionGcra: (...a: unknown[]) => Promise<number[]> }, 'ryvionGcra');
    const [a, b, c] = await Promise.all([
      batched(gcra, [account], 5, 'acct_A', 'key_A'),
      batched(gcra, [account], 2, 'acct_B', 'key_B'),
      gcra.check([account], 'acct_C', 'key_C'),
    ]);
    expect(spy).toHaveBeenCalledTimes(3);
    spy.mockRestore();
    expect(a.map((r) => r.allowed)).toEqual([true, true, true, true, false]);
    expect(b.map((r) => r.allowed)).toEqual([true, true]);
    expect(c.allowed).toBe(true);
    expect(c.states[0]!.remaining).toBe(3);
  });

  it('keeps checks of one subject under other limits (a policy reloaded within the turn) in a call of their own, in order', async () => {
    const p = prefix();
    const gcra = new BatchingRedisGcra(client, p);
    const tighter: Limit = { ...account, burst: 2 };
    const spy = vi.spyOn(client as unknown as { ryvionGcra: (...a: unknown[]) => Promise<number[]> }, 'ryvionGcra');
    const [before, after] = await Promise.all([batched(gcra, [account], 3), batched(gcra, [tighter], 2)]);
    expect(spy).toHaveBeenCalledTimes(2);
    spy.mockRestore();
    expect(before.map((r) => r.allowed)).toEqual([true, true, true]);
    // The same TAT, three requests in: the tighter burst admits nothing more.
    expect(after.map((r) => r.allowed)).toEqual([false, false]);
    expect(after[0]!.states[0]!.limit).toBe(tighter);
  });

  it('splits a burst larger than MAX_BATCH into several calls with the same decisions', async () => {
    const roomy: Limit = { name: 'account', requests: 1000, windowMs: 3_600_000, burst: 200 };
    const gcra = new BatchingRedisGcra(client, prefix());
    const spy = vi.spyOn(client as unknown as { ryvionGcra: (...a: unknown[]) => Promise<number[]> }, 'ryvionGcra');
    const got = await batched(gcra, [roomy], MAX_BATCH * 2 + 3);
    expect(spy).toHaveBeenCalledTimes(3);
    spy.mockRestore();
    expect(got.filter((r) => r.allowed)).toHaveLength(200);
    expect(got.slice(0, 200).every((r) => r.allowed)).toBe(true);
    expect(got.map((r) => r.states[0]!.remaining).slice(0, 3)).toEqual([199, 198, 197]);
  });

  it('fails every check of a batch with a store error when Redis cannot answer', async () => {
    const broken = new Redis('redis://127.0.0.1:1', { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 });
    broken.on('error', () => undefined);
    const gcra = new BatchingRedisGcra(broken, prefix());
    const results = await Promise.allSettled(Array.from({ length: 3 }, () => gcra.check([account], 'acct_A', 'key_A')));
    broken.disconnect();
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(StoreUnavailableError);
    }
  });
});
