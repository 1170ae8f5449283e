// Assembles key resolution for one replica: memory and Redis tiers, the revocation guard,
// the invalidation bus, the key service and usage batching.
import type pg from 'pg';
import type { Config } from '../config.js';
import { every, type Clock } from '../time/clock.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { HealthState } from '../observability/health.js';
import { createRedis, type RedisClient } from '../store/redis.js';
import { entryFor } from './cache/entry.js';
import { MemoryTier } from './cache/memory.js';
import { RevocationGuard } from './cache/redis-guard.js';
import { InvalidationBus, newInstanceId } from './invalidation/bus.js';
import { PgLeaseRegistry, pgNotifier } from './invalidation/lease.js';
import type { Invalidation } from './invalidation/messages.js';
import { LastUsedRecorder } from './last-used.js';
import { KeyService, listenClientFor, redisTierFor } from './management.js';
import { keyRecord, type KeyRecord, type KeyRepository } from './repository.js';
import { KeyResolver } from './resolver.js';

export interface KeyStore {
  resolver: KeyResolver;
  keys: KeyService;
  usage: LastUsedRecorder;
  bus: InvalidationBus;
  guard: RevocationGuard;
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
function markerRecord(m: Invalidation): KeyRecord {
  return keyRecord({ id: m.keyId, hash: m.hash, accountId: m.accountId, name: '', scope: '', plan: '', expiresAt: null, revokedAt: new Date(), version: m.version, accountRpm: null, keyRpm: null });
}

/** A Postgres look-up is given up this long after STORE_TIMEOUT_MS (timer and scheduling slack). */
const POSTGRES_DEADLINE_MARGIN_MS = 25;

export async function startKeyStore(deps: KeyStoreDeps): Promise<KeyStore> {
  const { config, pool, repository, logger, metrics, health, clock } = deps;
  // Any stale Redis entry was written within one entry lifetime (revoked markers live two):
  // revocations from that window, and tombstones kept as long, are enough.
  const revocationWindowMs = 2 * config.CACHE_REDIS_TTL_MS + 60_000;
  const memory = new MemoryTier({
    maxKeys: config.CACHE_MEMORY_MAX_KEYS,
    ttlMs: config.CACHE_MEMORY_TTL_MS,
    negativeTtlMs: config.CACHE_NEGATIVE_TTL_MS,
    tombstoneTtlMs: revocationWindowMs,
    onTombstoneEvicted: () => guard.distrust('a tombstone was evicted for room'),
  });
  // Pings, acknowledgements and lease rows are not on the Check path: they get a renewal interval.
  const signalTimeoutMs = Math.floor(config.INVALIDATION_LEASE_MS / 5);
  const instanceId = newInstanceId();
  const redisClient = createRedis(config, 'command', `ryvion-authz-${instanceId}`);
  const redisSub = redisClient ? createRedis(config, 'subscriber', `ryvion-authz-sub-${instanceId}`) : undefined;
  const redisTier = redisClient ? redisTierFor(config, redisClient) : undefined;

  const guard = new RevocationGuard({
    recentRevocations: () => repository.recentRevocations(revocationWindowMs),
    remember: (records) => {
      for (const r of records) memory.invalidate(r.hash, r.version);
    },
    redis: redisClient && redisTier
      ? { client: redisClient, tier: redisTier, sentinelKey: `${config.REDIS_KEY_PREFIX}revocations-synced`, sentinelTtlMs: revocationWindowMs }
      : undefined,
    clock,
    probeIntervalMs: Math.min(1000, Math.floor(config.INVALIDATION_LEASE_MS / 5)),
    logger,
    metrics,
    health,
  });

  // `bus` is read only when a look-up runs, after start-up.
  const resolver = new KeyResolver({
    memory,
    redis: redisTier,
    postgres: repository,
    leaseHeld: () => bus.leaseHeld(),
    redisTrusted: () => guard.redisReadable(),
    postgresConcurrency: config.POSTGRES_LOOKUP_CONCURRENCY,
    postgresDeadlineMs: config.STORE_TIMEOUT_MS + POSTGRES_DEADLINE_MARGIN_MS,
    clock,
    metrics,
  });
  const bus = new InvalidationBus({
    instanceId,
    mode: 'replica',
    newListenClient: listenClientFor(config.DATABASE_LISTEN_URL ?? config.DATABASE_URL!),
    notify: pgNotifier(pool, signalTimeoutMs),
    registry: new PgLeaseRegistry(pool, signalTimeoutMs),
    redisPub: redisClient,
    redisSub,
    redisPrefix: config.REDIS_KEY_PREFIX,
    leaseMs: config.INVALIDATION_LEASE_MS,
    clock,
    logger,
    metrics,
    apply: async (m) => {
      memory.invalidate(m.hash, m.version);
      resolver.forget(m.hash);
      // A changed key is not revoked: the service wrote its new entry, and the tombstone keeps older ones out.
      if (m.kind !== 'changed' && redisTier && guard.redisReadable()) {
        // A marker that cannot be written leaves Redis unproven: not read until replayed.
        await redisTier.fill(m.hash, entryFor(markerRecord(m))).catch(() => guard.markerFailed());
      }
    },
    onFlush: (why) => {
      memory.flush();
      // Messages may have been missed: tombstones are rebuilt before Redis is read again.
      guard.distrust(why);
      logger.debug({ why }, 'memory cache flushed');
    },
  });

  // Tombstones from Postgres before the first look-up can read Redis.
  await guard.start();
  await bus.start();

  const keys = new KeyService({ repository, channel: bus, redis: redisTier, leaseMs: config.INVALIDATION_LEASE_MS, clock, logger, metrics });
  const usage = new LastUsedRecorder(repository, config.LAST_USED_FLUSH_MS, () => clock.now());
  // Rolled keys are refused from the end of their overlap by their expiry; the sweep records the revocation.
  let sweeping = false;
  const sweeper = every(clock, config.KEY_ROLL_SWEEP_INTERVAL_MS, () => {
    if (sweeping) return;
    sweeping = true;
    keys
      .sweepRolled()
      .catch((err: unknown) => logger.warn({ problem: (err as Error).message }, 'sweeping rolled keys failed; retrying at the next interval'))
      .finally(() => (sweeping = false));
  });

  return {
    resolver,
    keys,
    usage,
    bus,
    guard,
    memory,
    redis: redisClient,
    stop: async () => {
      sweeper.cancel();
      await usage.stop();
      guard.stop();
      await bus.stop();
      redisSub?.disconnect();
      redisClient?.disconnect();
    },
  };
}
