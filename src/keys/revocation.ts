// Revoking a key: the one path the CLI and the HTTP API both use.
import { randomUUID } from 'node:crypto';
import type { KeyInfo, KeyRepository } from './repository.js';
import { entryFor } from './cache/entry.js';
import type { RedisTier } from './cache/redis-tier.js';
import { PG_INVALIDATE_CHANNEL, type InvalidationBus } from './invalidation.js';
import type { Metrics } from '../observability/metrics.js';
import type { Logger } from '../observability/logger.js';

export interface RevokeOutcome {
  key: KeyInfo;
  /** False when some replica did not acknowledge and the revoke waited for its lease to run out. */
  acknowledged: boolean;
}

export interface KeyRevoker {
  /**
   * Revokes `keyId` (restricted to `accountId` when given) and returns once no
   * replica will accept it any more. Null when no such key (for that account).
   * Idempotent: revoking again succeeds and repeats the cache work, which
   * repairs a crash between the commit and the cache update.
   */
  revoke(keyId: string, accountId?: string): Promise<RevokeOutcome | null>;
}

export interface RevokerDeps {
  repository: KeyRepository;
  bus: InvalidationBus;
  redis: RedisTier | undefined;
  leaseMs: number;
  logger: Logger;
  metrics?: Metrics | undefined;
}

/**
 * 1. commit in Postgres (the same statement sends the Postgres invalidation);
 * 2. overwrite the Redis entry with the revoked marker;
 * 3. publish the invalidation on Redis;
 * 4. wait until every replica with a running lease acknowledged, or its lease ran out.
 */
export class CacheAwareRevoker implements KeyRevoker {
  constructor(private readonly deps: RevokerDeps) {}

  async revoke(keyId: string, accountId?: string): Promise<RevokeOutcome | null> {
    const { repository, bus, redis, metrics, logger } = this.deps;
    const rid = randomUUID();
    const acks = bus.expectAcks(rid);
    try {
      const started = process.hrtime.bigint();
      const result = await repository.revokeKey(keyId, accountId, { channel: PG_INVALIDATE_CHANNEL, rid });
      if (!result) return null;
      const { record } = result;
      if (redis) {
        await redis.fill(record.hash, entryFor(record)).catch((err: unknown) => {
          // Replicas that reach Redis write the marker too, and Redis replays revocations when it returns.
          logger.warn({ key_id: keyId, err: (err as Error).message }, 'revoked marker not written to Redis');
        });
      }
      await bus
        .publishRedis({ rid, keyId: record.id, accountId: record.accountId, hash: record.hash, version: record.version })
        .catch(() => undefined);
      let replicas;
      try {
        replicas = await bus.liveReplicas();
      } catch {
        // Cannot see who is live: wait out any lease that may be running.
        replicas = [{ id: '*unknown*', remainingMs: this.deps.leaseMs }];
      }
      const acknowledged = await acks.wait(replicas);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics?.revocationDuration.labels(acknowledged ? 'acknowledged' : 'lease_expired').observe(seconds);
      logger.info({ key_id: keyId, account_id: record.accountId, replicas: replicas.length, acknowledged, seconds }, 'key revoked');
      return { key: result.key, acknowledged };
    } finally {
      acks.close();
    }
  }
}
