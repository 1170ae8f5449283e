// When a replica may read key entries from Redis, and what the resolver and pipeline answer in each state.
import { describe, expect, it } from 'vitest';
import { CheckPipeline } from '../../src/check/pipeline.js';
import type { CacheEntry } from '../../src/keys/cache/entry.js';
import { entryFor } from '../../src/keys/cache/entry.js';
import { MemoryTier } from '../../src/keys/cache/memory.js';
import { RevocationGuard, type GuardedRedis } from '../../src/keys/cache/redis-guard.js';
import type { SharedTier } from '../../src/keys/cache/redis-tier.js';
import { generateKey } from '../../src/keys/format.js';
import { KeyHasher } from '../../src/keys/hash.js';
import { keyRecord as newKeyRecord, type KeyRecord } from '../../src/keys/repository.js';
import { KeyResolver } from '../../src/keys/resolver.js';
import { HealthState } from '../../src/observability/health.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { loadPolicyFile, DEFAULT_POLICY_PATH } from '../../src/policy/policy.js';
import { FakeClock, settle } from '../../src/time/fake-clock.js';
import { StoreUnavailableError } from '../../src/store/errors.js';

type Mode = 'ok' | 'refuses_writes' | 'hangs';

/** Redis as the guard and the resolver see it: entries, a sentinel, and the faults that matter. */
class FakeRedis implements GuardedRedis, SharedTier {
  status = 'ready';
  mode: Mode = 'ok';
  readonly data = new Map<string, string | CacheEntry>();
  private readonly handlers: Record<string, Array<() => void>> = {};

  on(event: 'ready' | 'close', fn: () => void): void {
    (this.handlers[event] ??= []).push(fn);
  }
  emit(event: 'ready' | 'close'): void {
    this.status = event === 'ready' ? 'ready' : 'end';
    for (const fn of this.handlers[event] ?? []) fn();
  }
  private fault(write: boolean): void {
    if (this.mode === 'hangs') throw new Error('Command timed out');
    if (write && this.mode === 'refuses_writes') throw new Error("OOM command not allowed when used memory > 'maxmemory'.");
  }
  set(key: string, value: string, _px: 'PX', _ms: number, xx?: 'XX'): Promise<string | null> {
    return Promise.resolve().then(() => {
      this.fault(true);
      if (xx && !this.data.has(key)) return null;
      this.data.set(key, value);
      return 'OK';
    });
  }
  async get(hash: string): Promise<CacheEntry | undefined> {
    this.fault(false);
    const e = this.data.get(`key:${hash}`);
    return typeof e === 'object' ? e : undefined;
  }
  async fill(hash: string, entry: CacheEntry): Promise<boolean> {
    this.fault(true);
    const held = this.data.get(`key:${hash}`);
    if (typeof held === 'object' && held.version > entry.version) return false;
    this.data.set(`key:${hash}`, entry);
    return true;
  }
  /** Restarted with nothing: every key gone. */
  flushAll(): void {
    this.data.clear();
  }
}

const pepper = { version: 1, secret: 'x'.repeat(48) };
const hasher = new KeyHasher(pepper);

function keyRecord(secret: string, version: number, revoked: boolean): KeyRecord {
  return newKeyRecord({
    id: 'key_1', hash: hasher.candidates(secret)[0]!.hash.toString('base64url'), accountId: 'acct_1', name: 'k', scope: 'buyer', plan: 'free',
    expiresAt: null, revokedAt: revoked ? new Date() : null, version, accountRpm: null, keyRpm: null,
  });
}

function setup() {
  const clock = new FakeClock();
  const redis = new FakeRedis();
  const metrics = new Metrics({ defaultMetrics: false });
  const memory = new MemoryTier({ maxKeys: 100, ttlMs: 30_000, negativeTtlMs: 10_000, tombstoneTtlMs: 660_000 });
  const secret = generateKey('live');
  const active = keyRecord(secret, 1, false);
  const revoked = keyRecord(secret, 2, true);
  // Postgres: the key is revoked (version 2). Its recent revocations say so.
  let postgresDown = false;
  const postgres = {
    findByHash: async () => {
      if (postgresDown) throw new StoreUnavailableError('postgres', 'connection');
      return revoked;
    },
  };
  let lease = true;
  const guard = new RevocationGuard({
    recentRevocations: async () => {
      if (postgresDown) throw new Error('Connection terminated');
      return [revoked];
    },
    remember: (rs) => rs.forEach((r) => memory.invalidate(r.hash, r.version)),
    redis: { client: redis, tier: redis, sentinelKey: 'sentinel', sentinelTtlMs: 600_000 },
    clock,
    probeIntervalMs: 1000,
    logger: createLogger('silent'),
    metrics,
    health: new HealthState(),
  });
  const resolver = new KeyResolver({
    memory, redis, postgres, leaseHeld: () => lease, redisTrusted: () => guard.redisReadable(),
    postgresConcurrency: 4, postgresDeadlineMs: 1000, clock, metrics,
  });
  const pipeline = new CheckPipeline({ environment: 'live', hasher, keys: resolver, policy: () => loadPolicyFile(DEFAULT_POLICY_PATH), clock });
  const decide = () =>
    pipeline.decide({ method: 'GET', path: '/v1/models', authorization: [`Bearer ${secret}`], apiKey: [], requestId: undefined, sourceAddress: '192.0.2.1' });
  return {
    clock, redis, metrics, memory, guard, resolver, decide, active, revoked, secret,
    setPostgresDown: (v: boolean) => (postgresDown = v),
    setLease: (v: boolean) => (lease = v),
  };
}

const gauge = async (m: Metrics, name: string, labels: Record<string, string>): Promise<number | undefined> => {
  const { values } = await m.registry.getSingleMetric(name)!.get();
  return values.find((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want))?.value;
};

describe('the Redis tier is read only while it is shown to carry every recent revocation', () => {
  it('a stale Redis entry (older than a revocation the replica knows) is not served: the key is denied from Postgres', async () => {
    const s = setup();
    await s.guard.start();
    expect(s.guard.redisReadable()).toBe(true);
    // A fill that read Postgres before the revoke landed after it, where the marker write failed.
    s.redis.data.set(`key:${s.active.hash}`, entryFor(s.active));
    const d = await s.decide();
    expect(d).toMatchObject({ allow: false, reason: 'invalid_api_key', detail: 'revoked' });
    expect(await gauge(s.metrics, 'ryvion_authz_key_cache_requests_total', { tier: 'redis', result: 'stale' })).toBe(1);
  });

  it('at start, tombstones come from Postgres before Redis is read', async () => {
    const s = setup();
    expect(s.guard.redisReadable()).toBe(false);
    await s.guard.start();
    expect(s.memory.revokedVersion(s.revoked.hash)).toBe(2);
    expect(s.guard.redisReadable()).toBe(true);
  });

  it('while Postgres cannot give the recent revocations, Redis is not read (the key falls to Postgres, which answers 503)', async () => {
    const s = setup();
    s.setPostgresDown(true);
    await s.guard.start();
    s.redis.data.set(`key:${s.active.hash}`, entryFor(s.active));
    expect(s.guard.redisReadable()).toBe(false);
    expect(await s.decide()).toMatchObject({ allow: false, reason: 'auth_unavailable' });
  });

  it('a Redis that refuses writes is not read; store_up stays 1, degraded{redis} is 1; it is read again after a replay', async () => {
    const s = setup();
    await s.guard.start();
    s.redis.mode = 'refuses_writes';
    await s.clock.advance(1000);
    expect(s.guard.redisReadable()).toBe(false);
    expect(await gauge(s.metrics, 'ryvion_authz_store_up', { store: 'redis' })).toBe(1);
    expect(await gauge(s.metrics, 'ryvion_authz_degraded', { component: 'redis' })).toBe(1);
    // An old entry there is not served (memory empty, the lease alone is not enough).
    s.memory.flush();
    s.redis.data.set(`key:${s.active.hash}`, entryFor(s.active));
    expect(await s.decide()).toMatchObject({ allow: false, detail: 'revoked' });
    s.redis.mode = 'ok';
    await s.clock.advance(1000);
    await settle();
    expect(s.guard.redisReadable()).toBe(true);
    // The replay wrote the revoked marker over the stale entry.
    expect(s.redis.data.get(`key:${s.active.hash}`)).toMatchObject({ version: 2 });
  });

  it('a Redis that hangs reads store_up 0 and is not read', async () => {
    const s = setup();
    await s.guard.start();
    s.redis.mode = 'hangs';
    await s.clock.advance(1000);
    expect(s.guard.redisReadable()).toBe(false);
    expect(await gauge(s.metrics, 'ryvion_authz_store_up', { store: 'redis' })).toBe(0);
  });

  it('a Redis that came back empty (sentinel gone) is not read until revocations are replayed into it', async () => {
    const s = setup();
    await s.guard.start();
    s.redis.flushAll();
    // The entry a stale fill could have left, written after the loss.
    s.redis.data.set(`key:${s.active.hash}`, entryFor(s.active));
    await s.clock.advance(1000);
    await settle();
    expect(s.redis.data.get(`key:${s.active.hash}`)).toMatchObject({ version: 2 });
    expect(s.redis.data.get(`key:${s.revoked.hash}`)).toMatchObject({ version: 2 });
    expect(s.redis.data.has('sentinel')).toBe(true);
    expect(s.guard.redisReadable()).toBe(true);
  });

  it('a marker write that failed makes Redis unreadable until the next successful replay', async () => {
    const s = setup();
    await s.guard.start();
    s.redis.mode = 'refuses_writes';
    s.guard.markerFailed();
    await settle();
    expect(s.guard.redisReadable()).toBe(false);
    s.redis.mode = 'ok';
    await s.clock.advance(1000);
    await settle();
    expect(s.guard.redisReadable()).toBe(true);
  });

  it('a reconnect (ready) replays before reading, and a close stops reading at once', async () => {
    const s = setup();
    await s.guard.start();
    s.redis.emit('close');
    expect(s.guard.redisReadable()).toBe(false);
    expect(await gauge(s.metrics, 'ryvion_authz_store_up', { store: 'redis' })).toBe(0);
    s.redis.emit('ready');
    await settle();
    expect(s.guard.redisReadable()).toBe(true);
  });

  it('without a lease, memory is not read: a revoked key cached as active in memory is denied', async () => {
    const s = setup();
    await s.guard.start();
    s.memory.fill(s.active.hash, entryFor(s.active), s.memory.epoch);
    s.setLease(false);
    expect(await s.decide()).toMatchObject({ allow: false, detail: 'revoked' });
  });
});
