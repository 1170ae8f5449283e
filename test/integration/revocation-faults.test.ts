// Revocation under partial failure, on real Redis servers the test owns: one that refuses writes,
// one restarted empty, one that hangs; and a Postgres that hangs.
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { runCliProcess } from '../helpers/cli.js';
import { ThrowawayRedis, freePort } from '../helpers/redis-server.js';
import { CheckClient, metricValue, revokeKey, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper } from '../helpers/stores.js';
import { TcpProxy, proxiedUrl } from '../helpers/tcp-proxy.js';

const pepper = testPepper();
type Replica = { service: RunningService; client: CheckClient };
const started: Replica[] = [];
const cleanups: Array<() => Promise<void>> = [];

afterAll(async () => {
  for (const r of started) {
    r.client.close();
    await r.service.stop();
  }
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

async function replica(env: Record<string, string>): Promise<Replica> {
  const service = await startTestService({ KEY_PEPPER: pepper, INVALIDATION_LEASE_MS: '1000', FAILED_AUTH_PER_SOURCE_PER_MINUTE: '1000000', ...env });
  const r = { service, client: new CheckClient(service.grpcPort) };
  started.push(r);
  await vi.waitFor(() => expect(service.keyStore.bus.leaseHeld()).toBe(true), { timeout: 10_000, interval: 20 });
  return r;
}

const check = (r: Replica, key: string): Promise<CheckResponse> => r.client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${key}` } }));
const status = (res: CheckResponse): number => (res.ok_response ? 200 : res.denied_response!.status.code);

async function stores(): Promise<{ db: Awaited<ReturnType<typeof freshDatabase>>; redis: ThrowawayRedis; admin: Redis; prefix: string }> {
  const db = await freshDatabase();
  cleanups.push(() => db.drop());
  const redis = new ThrowawayRedis(await freePort());
  await redis.start();
  cleanups.push(() => redis.dispose());
  const admin = new Redis(redis.url);
  cleanups.push(async () => admin.disconnect());
  return { db, redis, admin, prefix: redisPrefix() };
}

/** The entry Redis holds for a key: its version and whether it is the revoked marker. */
async function redisEntry(admin: Redis, prefix: string): Promise<{ v: number; revoked: boolean } | undefined> {
  const keys = await admin.keys(`${prefix}key:*`);
  for (const k of keys) {
    const parsed = JSON.parse((await admin.get(k)) ?? '{}') as { v?: number; k?: { r?: number | null } };
    if (typeof parsed.v === 'number' && parsed.v > 0) return { v: parsed.v, revoked: typeof parsed.k?.r === 'number' };
  }
  return undefined;
}

describe('a Redis that refuses writes (maxmemory, as a demoted master does)', () => {
  it('revoke reports that the shared cache was not updated (API 503, CLI exit 1), every replica and a new one deny the key, and a repeated revoke repairs the cache', async () => {
    const { db, redis, admin, prefix } = await stores();
    const env = { DATABASE_URL: db.url, REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix };
    const replicas = [await replica(env), await replica(env), await replica(env)];
    const a = replicas[0]!.service;
    const accountId = (await a.repository.createAccount('maxmemory@example.com', 'free')).id;
    const owner = await a.repository.createKey({ accountId, name: 'owner', scope: 'buyer', expiresAt: null });
    const doomed = await a.repository.createKey({ accountId, name: 'doomed', scope: 'buyer', expiresAt: null });
    const third = await a.repository.createKey({ accountId, name: 'third', scope: 'buyer', expiresAt: null });
    for (const r of replicas) for (const k of [doomed, third]) expect(status(await check(r, k.secret))).toBe(200);
    // The active entries reach Redis (the fill is asynchronous).
    await expect.poll(async () => (await admin.keys(`${prefix}key:*`)).length, { timeout: 5000 }).toBeGreaterThanOrEqual(2);

    await admin.config('SET', 'maxmemory', '1');
    // Every replica notices and stops reading key entries from Redis.
    for (const r of replicas) {
      await expect.poll(() => metricValue(r.service, 'ryvion_authz_degraded', { component: 'redis' }), { timeout: 10_000 }).toBe(1);
      expect(await metricValue(r.service, 'ryvion_authz_store_up', { store: 'redis' })).toBe(1);
    }

    // The HTTP API: 503 with the distinct code, and a body that says what holds.
    const res = await fetch(`http://127.0.0.1:${a.httpPort}/api/v1/auth/api-keys/${doomed.key.id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${owner.secret}` },
    });
    expect(res.status).toBe(503);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('revocation_cache_not_updated');
    expect(body.error.message).toMatch(/revoked in the database and denied by every replica/);
    // Never "nothing was changed": it was.
    expect((await a.repository.getKey(doomed.key.id))?.revokedAt).not.toBeNull();
    expect(await redisEntry(admin, prefix)).toMatchObject({ revoked: false });

    // Denied everywhere: from memory, with memory dropped, and on a replica started now.
    for (const r of replicas) {
      expect(status(await check(r, doomed.secret))).toBe(401);
      r.service.keyStore.memory.flush();
      expect(status(await check(r, doomed.secret))).toBe(401);
      expect(status(await check(r, third.secret))).toBe(200); // from Postgres: Redis is not read
    }
    const late = await replica(env);
    expect(status(await check(late, doomed.secret))).toBe(401);

    // The CLI says the same and exits 1.
    const cli = await runCliProcess(['keys', 'revoke', third.key.id], { ...env, KEY_PEPPER: pepper });
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(/revoked in the database and denied by every replica, but the shared cache \(Redis\) could not be updated/);
    for (const r of [...replicas, late]) expect(status(await check(r, third.secret))).toBe(401);

    // Writes come back: a repeated revoke succeeds and the marker replaces the stale entry.
    await admin.config('SET', 'maxmemory', '0');
    const repaired = await revokeKey(a, doomed.key.id);
    expect(repaired).toMatchObject({ cache: 'updated', changed: false });
    for (const r of [...replicas, late]) {
      await expect.poll(() => metricValue(r.service, 'ryvion_authz_degraded', { component: 'redis' }), { timeout: 10_000 }).toBe(0);
      r.service.keyStore.memory.flush();
      expect(status(await check(r, doomed.secret))).toBe(401);
      expect(status(await check(r, third.secret))).toBe(401);
    }
  });
});

describe('a Redis restarted empty', () => {
  it('is read again only after the recent revocations are replayed into it; a revoked key stays denied everywhere', async () => {
    const { db, redis, admin, prefix } = await stores();
    const env = { DATABASE_URL: db.url, REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix };
    const replicas = [await replica(env), await replica(env)];
    const a = replicas[0]!.service;
    const accountId = (await a.repository.createAccount('restart@example.com', 'free')).id;
    const doomed = await a.repository.createKey({ accountId, name: 'doomed', scope: 'buyer', expiresAt: null });
    for (const r of replicas) expect(status(await check(r, doomed.secret))).toBe(200);
    expect(await revokeKey(a, doomed.key.id)).toMatchObject({ cache: 'updated', acknowledged: true });

    await redis.stop();
    await redis.start();
    admin.disconnect();
    const fresh = new Redis(redis.url);
    cleanups.push(async () => fresh.disconnect());
    // The replicas reconnect, find Redis empty and replay: the revoked marker is back.
    await expect.poll(() => redisEntry(fresh, prefix), { timeout: 10_000 }).toMatchObject({ revoked: true });
    for (const r of replicas) {
      await expect.poll(() => metricValue(r.service, 'ryvion_authz_degraded', { component: 'redis' }), { timeout: 10_000 }).toBe(0);
      r.service.keyStore.memory.flush();
      expect(status(await check(r, doomed.secret))).toBe(401);
    }
  });

  it('a FLUSHALL with no reconnect is noticed by the sentinel probe and replayed', async () => {
    const { db, redis, admin, prefix } = await stores();
    const env = { DATABASE_URL: db.url, REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix };
    const r = await replica(env);
    const accountId = (await r.service.repository.createAccount('flush@example.com', 'free')).id;
    const doomed = await r.service.repository.createKey({ accountId, name: 'doomed', scope: 'buyer', expiresAt: null });
    expect(await revokeKey(r.service, doomed.key.id)).toMatchObject({ cache: 'updated' });
    await admin.flushall(); // this Redis belongs to the test alone
    await expect.poll(() => redisEntry(admin, prefix), { timeout: 10_000 }).toMatchObject({ revoked: true });
  });
});

describe('a store that hangs', () => {
  it('a Redis that accepts connections but never answers reads store_up 0, and Checks go on from memory and Postgres', async () => {
    const { db, redis, prefix } = await stores();
    const proxy = new TcpProxy('127.0.0.1', redis.port);
    await proxy.start();
    cleanups.push(() => proxy.cut());
    const r = await replica({ DATABASE_URL: db.url, REDIS_URL: `redis://127.0.0.1:${proxy.port}`, REDIS_KEY_PREFIX: prefix });
    await expect.poll(() => metricValue(r.service, 'ryvion_authz_store_up', { store: 'redis' }), { timeout: 10_000 }).toBe(1);
    const accountId = (await r.service.repository.createAccount('hang@example.com', 'free')).id;
    const k = await r.service.repository.createKey({ accountId, name: 'k', scope: 'buyer', expiresAt: null });

    proxy.hang({ keepOpen: true });
    await expect.poll(() => metricValue(r.service, 'ryvion_authz_store_up', { store: 'redis' }), { timeout: 10_000 }).toBe(0);
    expect(await metricValue(r.service, 'ryvion_authz_degraded', { component: 'redis' })).toBe(1);
    expect(status(await check(r, k.secret))).toBe(200);
    proxy.restore();
    await expect.poll(() => metricValue(r.service, 'ryvion_authz_store_up', { store: 'redis' }), { timeout: 15_000 }).toBe(1);
  });

  it('a Postgres that hangs does not hold a Check of an uncached key much past STORE_TIMEOUT_MS: 503', async () => {
    const db = await freshDatabase();
    cleanups.push(() => db.drop());
    const { proxy, url: viaProxy } = await proxiedUrl(db.url);
    cleanups.push(() => proxy.cut());
    const r = await replica({ DATABASE_URL: viaProxy, STORE_TIMEOUT_MS: '100' });
    const accountId = (await r.service.repository.createAccount('pg-hang@example.com', 'free')).id;
    const k = await r.service.repository.createKey({ accountId, name: 'k', scope: 'buyer', expiresAt: null });

    // Open connections are cut and new ones never answered: every look-up needs a new connection,
    // which pg would wait for up to its connection timeout (seconds).
    proxy.hang();
    const t0 = performance.now();
    expect(status(await check(r, k.secret))).toBe(503);
    const waited = performance.now() - t0;
    console.log(`Check of an uncached key with Postgres hung: ${waited.toFixed(0)} ms (STORE_TIMEOUT_MS 100)`);
    // One generous ceiling for a busy machine, still below the 1 s a new connection took before the deadline.
    expect(waited).toBeLessThan(800);
  });
});
