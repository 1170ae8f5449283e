// The local fallback of the rate limiter: its share follows the live replicas, its state follows the
// shared count, and a circuit breaker decides when to stop asking Redis.
import { systemClock } from '../../src/time/clock.js';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import type { Limit } from '../../src/ratelimit/gcra.js';
import { MIN_LOCAL_SHARE, RateLimiter } from '../../src/ratelimit/limiter.js';
import { SWEEP_FLOOR } from '../../src/ratelimit/tat-store.js';
import { InMemorySharedGcra } from '../helpers/twins.js';

const LIMIT: Limit = { name: 'account', requests: 60, windowMs: 60_000, burst: 10 };

function limiter(opts: { replicas?: number; localShare?: number } = {}) {
  // Time moves only when a test sets `t`; no timer is scheduled on this path.
  const clock = { t: 1_000_000, now() { return this.t; }, setTimer: systemClock.setTimer };
  const redis = new InMemorySharedGcra(clock);
  const rl = new RateLimiter({
    redis,
    localShare: opts.localShare,
    liveReplicas: () => opts.replicas ?? 1,
    clock,
    metrics: new Metrics({ defaultMetrics: false }),
    logger: createLogger('silent'),
  });
  const admitted = async (n: number): Promise<number> => {
    let ok = 0;
    for (let i = 0; i < n; i++) if ((await rl.check([LIMIT], 'acct', 'key')).allowed) ok++;
    return ok;
  };
  return { rl, redis, clock, admitted };
}

describe('local rate-limit share', () => {
  it('is 1/N of the live replicas, never below the floor, unless fixed by RATE_LIMIT_LOCAL_SHARE', () => {
    expect(limiter({ replicas: 1 }).rl.share()).toBe(1);
    expect(limiter({ replicas: 3 }).rl.share()).toBeCloseTo(1 / 3);
    expect(limiter({ replicas: 1000 }).rl.share()).toBe(MIN_LOCAL_SHARE);
    expect(limiter({ replicas: 3, localShare: 0.25 }).rl.share()).toBe(0.25);
  });

  it('a Redis timeout right after the burst was used up denies: no fresh local burst', async () => {
    const { redis, admitted } = limiter({ replicas: 1 });
    expect(await admitted(10)).toBe(10);
    redis.down = true;
    expect(await admitted(5)).toBe(0);
  });

  it('after the outage the local limiter admits at the replica share of the rate, from where the shared count was', async () => {
    const { redis, clock, admitted } = limiter({ replicas: 2 });
    expect(await admitted(4)).toBe(4); // 4 of 10 used: 60% of the bucket left
    redis.down = true;
    // At a share of 1/2: a burst of 5, of which 60% is left: 3 at once.
    expect(await admitted(10)).toBe(3);
    // Then one per 2 s (30 per minute).
    clock.t += 2000;
    expect(await admitted(3)).toBe(1);
  });
});

describe('circuit breaker in front of Redis', () => {
  it('stops asking Redis after three failures in a row, then probes it once per second', async () => {
    const { redis, clock, admitted } = limiter({ replicas: 1 });
    redis.down = true;
    await admitted(20);
    expect(redis.calls).toBe(3);
    clock.t += 1000;
    await admitted(20);
    expect(redis.calls).toBe(4);
    redis.down = false;
    clock.t += 1000;
    await admitted(5);
    // The probe succeeded: every later decision asks Redis again.
    expect(redis.calls).toBe(9);
  });
});

describe('over-limit memory', () => {
  it('a subject over its limit is denied from memory, without asking Redis, until its retry time', async () => {
    const { rl, redis, clock, admitted } = limiter();
    expect(await admitted(10)).toBe(10); // the burst
    const denied = await rl.check([LIMIT], 'acct', 'key');
    expect(denied).toMatchObject({ allowed: false, deniedBy: 'account' });
    const calls = redis.calls;
    for (let i = 0; i < 20; i++) expect((await rl.check([LIMIT], 'acct', 'key')).allowed).toBe(false);
    expect(redis.calls).toBe(calls);
    clock.t += denied.retryAfterMs;
    expect((await rl.check([LIMIT], 'acct', 'key')).allowed).toBe(true);
    expect(redis.calls).toBe(calls + 1);
  });
});

describe('local state held for the shared decisions', () => {
  const KEY_LIMIT: Limit = { name: 'key', requests: 60, windowMs: 60_000, burst: 10 }; // one per second
  const HOURLY: Limit = { name: 'key', requests: 1, windowMs: 3_600_000, burst: 1 };

  it('drops the state of keys whose TAT has passed, and keeps a key still limited', async () => {
    const { rl, redis, clock } = limiter({ replicas: 1 });
    expect((await rl.check([HOURLY], 'acct', 'busy')).allowed).toBe(true); // its TAT: an hour ahead
    // 3 000 keys used once each, a second apart: each TAT passes a second after it was written.
    for (let i = 0; i < 3000; i++) {
      expect((await rl.check([KEY_LIMIT], 'acct', `key${i}`)).allowed).toBe(true);
      clock.t += 1000;
    }
    expect(rl.localStates).toBeLessThanOrEqual(SWEEP_FLOOR + 16);
    // The busy key's state survived the sweeps: with Redis gone it is still denied, no fresh burst.
    redis.down = true;
    expect((await rl.check([HOURLY], 'acct', 'busy')).allowed).toBe(false);
    // A key whose TAT passed decides as a key never seen: its local burst (10 at a share of 1).
    let ok = 0;
    for (let i = 0; i < 12; i++) if ((await rl.check([KEY_LIMIT], 'acct', 'key5')).allowed) ok++;
    expect(ok).toBe(10);
  });

  it('an account and a key with the same id are separate subjects, locally and when already over', async () => {
    const { rl, redis } = limiter({ replicas: 1 });
    const ACCOUNT: Limit = { name: 'account', requests: 1, windowMs: 3_600_000, burst: 1 };
    const KEY: Limit = { name: 'key', requests: 60, windowMs: 60_000, burst: 10 };
    expect((await rl.check([ACCOUNT], 'same', 'k1')).allowed).toBe(true);
    expect(await rl.check([ACCOUNT], 'same', 'k1')).toMatchObject({ allowed: false, deniedBy: 'account' });
    // The key "same" of another account shares nothing with the account "same", over or not.
    expect((await rl.check([KEY], 'other', 'same')).allowed).toBe(true);
    redis.down = true;
    expect((await rl.check([KEY], 'other', 'same')).allowed).toBe(true);
    expect((await rl.check([ACCOUNT], 'same', 'k2')).allowed).toBe(false);
  });
});
