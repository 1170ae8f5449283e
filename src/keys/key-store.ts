// Assembles key resolution for one replica: memory and Redis tiers, invalidation bus, revoker, usage batching.
import type pg from 'pg';
import type { Config } from '../config.js';
import type { Clock } from '../check/pipeline.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { HealthState } from '../observability/health.js';
import { createRedis, type RedisClient } from '../store/redis.js';
import { entryFor } from './cache/entry.js';
import { MemoryTier } from './cache/memory.js';
import { RedisTier } from './cache/redis-tier.js';
import { InvalidationBus, newInstanceId } from './invalidation.js';
import { LastUsedRecorder } from './last-used.js';
import type { KeyRecord, KeyRepository } from './repository.js';
import { KeyResolver } from './resolver.js';
import { CacheAwareRevoker, type KeyRevoker } from './revocation.js';

export interface KeyStore {
  resolver: KeyResolver;
  revoker: KeyRevoker;
  usage: LastUsedRecorder;
  bus: InvalidationBus;
  memory: MemoryTier;
  redis: RedisClient | undefined;
  stop(): Promise<void>;
}

export interface KeyStoreDeps {
  config: Config;
  pool: pg.Pool;
  repository: KeyRepository;
  logger: Logger;
  metrics: Metrics;
  health: HealthState;
  clock: Clock;
}

/** The revoked marker that replicas write when the message is all they know of the key. */
function markerRecord(m: { keyId: string; accountId: string; hash: string; version: number }): KeyRecord {
  return { id: m.keyId, hash: m.hash, accountId: m.accountId, name: '', scope: '', plan: '', expiresAt: null, revokedAt: new Date(), version: m.version, accountRpm: null, keyRpm: null };
}

export async function startKeyStore(deps: KeyStoreDeps): Promise<KeyStore> {
  const { config, pool, repository, logger, metrics, health, clock } = deps;
  const memory = new MemoryTier({
    maxKeys: config.CACHE_MEMORY_MAX_KEYS,
    ttlMs: config.CACHE_MEMORY_TTL_MS,
    negativeTtlMs: config.CACHE_NEGATIVE_TTL_MS,
  });
  const instanceId = newInstanceId();
  const redisClient = createRedis(config, 'command', `ryvion-authz-${instanceId}`);
  const redisSub = redisClient ? createRedis(config, 'subscriber', `ryvion-authz-sub-${instanceId}`) : undefined;
  const redisTier = redisClient
    ? new RedisTier(redisClient, { prefix: config.REDIS_KEY_PREFIX, ttlMs: config.CACHE_REDIS_TTL_MS, negativeTtlMs: config.CACHE_NEGATIVE_TTL_MS })
    : undefined;

  // Redis is read only once revocations it may have missed are replayed into it.
  let redisTrusted = false;
  let replaying: Promise<void> | undefined;
  const replay = (): Promise<void> =>
    (replaying ??= (async () => {
      try {
        // Any stale entry was written within one entry lifetime; revocations from that window are enough.
        const revoked = await repository.recentRevocations(2 * config.CACHE_REDIS_TTL_MS + 60_000);
        for (const record of revoked) await redisTier!.fill(record.hash, entryFor(record));
        redisTrusted = true;
        health.setStore('redis', 'up');
        metrics.storeUp.labels('redis').set(1);
        metrics.degraded.labels('redis').set(0);
        logger.info({ replayed: revoked.length }, 'redis available; revocations replayed');
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'redis replay failed; retrying');
        setTimeout(() => {
          if (redisClient?.status === 'ready') void replay();
        }, 1000).unref();
      } finally {
        replaying = undefined;
      }
    })());
  if (redisClient) {
    health.setStore('redis', 'unknown');
    redisClient.on('ready', () => void replay());
    redisClient.on('close', () => {
      if (redisTrusted) logger.warn('redis unreachable: deciding from memory and Postgres');
      redisTrusted = false;
      health.setStore('redis', 'down');
      metrics.storeUp.labels('redis').set(0);
      metrics.degraded.labels('redis').set(1);
    });
  }

  // `bus` is read only when a look-up runs, after start-up.
  const resolver = new KeyResolver({
    memory,
    redis: redisTier,
    postgres: repository,
    leaseHeld: () => bus.leaseHeld(),
    redisTrusted: () => redisTrusted,
    postgresConcurrency: config.POSTGRES_LOOKUP_CONCURRENCY,
    metrics,
  });
  const bus = new InvalidationBus({
    instanceId,
    mode: 'replica',
    databaseUrl: config.DATABASE_URL!,
    pool,
    redisPub: redisClient,
    redisSub,
    redisPrefix: config.REDIS_KEY_PREFIX,
    leaseMs: config.INVALIDATION_LEASE_MS,
    clock,
    logger,
    metrics,
    onInvalidate: async (m) => {
      memory.invalidate(m.hash, m.version);
      resolver.forget(m.hash);
      if (redisTier && redisTrusted) {
        await redisTier.fill(m.hash, entryFor(markerRecord(m))).catch(() => undefined);
      }
    },
    onFlush: (why) => {
      memory.flush();
      logger.debug({ why }, 'memory cache flushed');
    },
  });

  await bus.start();

  const revoker = new CacheAwareRevoker({ repository, bus, redis: redisTier, leaseMs: config.INVALIDATION_LEASE_MS, logger, metrics });
  const usage = new LastUsedRecorder(repository, config.LAST_USED_FLUSH_MS, () => clock.now());

  return {
    resolver,
    revoker,
    usage,
    bus,
    memory,
    redis: redisClient,
    stop: async () => {
      await usage.stop();
      await bus.stop();
      redisSub?.disconnect();
      redisClient?.disconnect();
    },
  };
}
