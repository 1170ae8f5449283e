// Key management, the one service behind both the CLI and the HTTP API: create, list, revoke, audit.
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { ConfigError, type Config } from '../config.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { createPool } from '../store/postgres.js';
import { createRedis, type RedisClient } from '../store/redis.js';
import { sleep, type Clock } from '../time/clock.js';
import type { AuditActor, AuditEvent } from './audit.js';
import { entryFor } from './cache/entry.js';
import { RedisTier, type SharedTier } from './cache/redis-tier.js';
import { keyHasherFrom } from './hash.js';
import type { AckWait, LiveReplica } from './invalidation/acks.js';
import { InvalidationBus } from './invalidation/bus.js';
import { PgLeaseRegistry, pgNotifier } from './invalidation/lease.js';
import { PG_INVALIDATE_CHANNEL, type Invalidation } from './invalidation/messages.js';
import { KeyRepository, type Account, type CreateKeyFields, type KeyInfo, type KeyRecord, type LeakNotice } from './repository.js';

export const NAME_MAX_CHARS = 128;
// Control characters (NUL is refused by Postgres text) and lone surrogates have no place in a name.
const UNPRINTABLE = /[\p{Cc}\p{Cs}]/u;

/** The problem with a key name, or undefined when it is acceptable (after trimming). */
export function keyNameProblem(name: string): string | undefined {
  const n = name.trim();
  if (n.length === 0) return 'must not be empty';
  if ([...n].length > NAME_MAX_CHARS) return `must be at most ${NAME_MAX_CHARS} characters`;
  if (UNPRINTABLE.test(n)) return 'must not contain control characters';
  return undefined;
}

/** A key as the API and the CLI show it: never the secret, never the hash. */
export function keyView(k: KeyInfo): Record<string, unknown> {
  return {
    object: 'api_key',
    id: k.id,
    account_id: k.accountId,
    name: k.name,
    scope: k.scope,
    prefix: k.prefix,
    created_at: k.createdAt.toISOString(),
    expires_at: k.expiresAt?.toISOString() ?? null,
    last_used_at: k.lastUsedAt?.toISOString() ?? null,
    revoked_at: k.revokedAt?.toISOString() ?? null,
    successor_of: k.successorOf,
    allowed_cidrs: k.allowedCidrs,
    metadata: k.metadata,
    tokens_per_minute: k.tokenLimits?.tokens_per_minute ?? null,
    budget: k.tokenLimits?.budget ?? null,
    allowed_models: k.tokenLimits?.allowed_models ?? null,
  };
}

export function auditView(e: AuditEvent): Record<string, unknown> {
  return {
    id: e.id,
    occurred_at: e.occurredAt.toISOString(),
    account_id: e.accountId,
    actor_key_id: e.actorKeyId,
    action: e.action,
    target_key_id: e.targetKeyId,
    detail: e.detail,
  };
}

/** What a revoke whose Redis marker failed means: the same sentence for the API and the CLI. */
export const REVOKED_CACHE_NOT_UPDATED =
  'The key is revoked in the database and denied by every replica, but the shared cache (Redis) could not be updated. Revoke it again to repair the cache.';

/** What revoke needs of the invalidation bus. */
export interface RevocationChannel {
  expectAcks(rid: string): AckWait;
  publishRedis(m: Invalidation): Promise<void>;
  liveReplicas(): Promise<LiveReplica[]>;
}

export interface RevokeOutcome {
  key: KeyInfo;
  /** This call revoked the key (false: it was already revoked; the cache work was redone). */
  changed: boolean;
  /** False when some replica did not acknowledge and the revoke waited for its lease to run out. */
  acknowledged: boolean;
  /**
   * `updated`: the shared cache holds the revoked marker. `not_updated`: the
   * marker could not be written after retries: the key is revoked in Postgres
   * and denied by every replica (each acknowledged or its lease ran out), but
   * Redis may still hold the old entry; revoking again repairs it.
   * `not_configured`: no Redis.
   */
  cache: 'updated' | 'not_updated' | 'not_configured';
}

export type RollOutcome =
  | {
      kind: 'rolled';
      /** The old key, expiring at the end of the overlap. */
      old: KeyInfo;
      successor: KeyInfo;
      /** The successor's secret: shown this once. */
      secret: string;
      acknowledged: boolean;
      /** As for revoke: whether Redis holds the old key's new expiry. */
      cache: RevokeOutcome['cache'];
    }
  | { kind: 'not_live'; key: KeyInfo }
  | { kind: 'already_rolled'; key: KeyInfo; successorId: string };

export interface KeyServiceDeps {
  repository: KeyRepository;
  /** Needed by revoke only: a service opened to list or create has none. */
  channel: RevocationChannel | undefined;
  redis: SharedTier | undefined;
  /** The longest lease a replica may hold: how long to wait when the live replicas cannot be read. */
  leaseMs: number;
  clock: Clock;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** Marker writes tried before revoke reports the cache not updated. */
  markerAttempts?: number;
}

export type CreateKeyInput = CreateKeyFields;

export class KeyService {
  constructor(private readonly deps: KeyServiceDeps) {}

  createKey(input: CreateKeyInput, actor: AuditActor, opts: { maxLiveKeys?: number } = {}) {
    return this.deps.repository.createKeyAudited({ ...input, name: input.name.trim() }, actor, opts);
  }

  listKeys(accountId: string): Promise<KeyInfo[]> {
    return this.deps.repository.listKeys(accountId);
  }

  getAccount(accountId: string): Promise<Account | null> {
    return this.deps.repository.getAccount(accountId);
  }

  getKey(keyId: string): Promise<KeyInfo | null> {
    return this.deps.repository.getKey(keyId);
  }

  audit(accountId: string, limit: number): Promise<AuditEvent[]> {
    return this.deps.repository.listAuditEvents(accountId, limit);
  }

  /**
   * Revokes `keyId` (restricted to `accountId` when given) and returns once no
   * replica will accept it any more. Null when no such key (for that account).
   *
   * 1. one transaction: the UPDATE, the audit row and the Postgres NOTIFY;
   * 2. the revoked marker into Redis, retried a few times;
   * 3. the same invalidation on Redis pub/sub;
   * 4. wait until every replica with a running lease acknowledged, or its lease ran out.
   *
   * Idempotent: again on a revoked key, it redoes 2-4, which repairs the cache.
   */
  async revoke(
    keyId: string,
    accountId: string | undefined,
    actor: AuditActor,
    extra: { detail?: Record<string, string | null>; notification?: LeakNotice } = {},
  ): Promise<RevokeOutcome | null> {
    const rid = randomUUID();
    const acks = this.channel().expectAcks(rid);
    try {
      const started = this.deps.clock.now();
      const result = await this.deps.repository.revoke(keyId, accountId, actor, { channel: PG_INVALIDATE_CHANNEL, rid }, extra);
      if (!result) return null;
      const { acknowledged, cache, replicas } = await this.propagate(rid, acks, result.record, 'revoked');
      const seconds = (this.deps.clock.now() - started) / 1000;
      this.deps.metrics?.revocationDuration.labels(acknowledged ? 'acknowledged' : 'lease_expired').observe(seconds);
      const line = { key_id: keyId, account_id: result.record.accountId, replicas, acknowledged, cache, seconds, via: actor.via };
      if (cache === 'not_updated') this.deps.logger.error(line, 'key revoked, but the revoked marker could not be written to Redis; revoke again to repair');
      else this.deps.logger.info(line, 'key revoked');
      return { key: result.key, changed: result.changed, acknowledged, cache };
    } finally {
      acks.close();
    }
  }

  /**
   * Rolls `keyId`: a successor that keeps its name, scope, expiry and limit, and the old key's
   * expiry brought forward to now + `overlapMs` (an earlier expiry stays). The old key's change
   * reaches every replica as a revocation does (version bump, invalidation, acknowledgements),
   * so each enforces the new expiry from its cache. With `overlapMs` 0 the old key stops at once.
   * The sweeper marks it revoked once the overlap is over. Null when no such key (for that account).
   */
  async roll(keyId: string, accountId: string | undefined, overlapMs: number, actor: AuditActor): Promise<RollOutcome | null> {
    const rid = randomUUID();
    const acks = this.channel().expectAcks(rid);
    try {
      const now = this.deps.clock.now();
      const result = await this.deps.repository.roll(keyId, accountId, { now: new Date(now), overlapEndsAt: new Date(now + overlapMs) }, actor, {
        channel: PG_INVALIDATE_CHANNEL,
        rid,
      });
      if (!result || result.kind !== 'rolled') return result;
      const { acknowledged, cache, replicas } = await this.propagate(rid, acks, result.record, 'changed');
      const line = { key_id: keyId, successor_key_id: result.successor.id, account_id: result.old.accountId, expires_at: result.old.expiresAt?.toISOString(), replicas, acknowledged, cache, via: actor.via };
      if (cache === 'not_updated') this.deps.logger.error(line, 'key rolled, but its new expiry could not be written to Redis; roll the successor or revoke the old key if it must stop at once');
      else this.deps.logger.info(line, 'key rolled');
      return { kind: 'rolled', old: result.old, successor: result.successor, secret: result.secret, acknowledged, cache };
    } finally {
      acks.close();
    }
  }

  /**
   * Revokes a key that secret scanning found in public: the audit row names the actor
   * `secret_scanning` and where it was found. With `report`, the key joins its account's owner
   * notification for that report, in the same transaction (only when this call revoked it, so a
   * replayed report queues nothing); `releaseLeakNotifications` then makes the report's notifications due.
   */
  revokeLeaked(keyId: string, location: { url: string | null; source: string | null }, report?: { id: string; holdMs: number }): Promise<RevokeOutcome | null> {
    const notification = report ? { reportId: report.id, holdMs: report.holdMs, url: location.url, source: location.source } : undefined;
    return this.revoke(keyId, undefined, { keyId: null, via: 'secret_scanning' }, { detail: { url: location.url, source: location.source }, ...(notification ? { notification } : {}) });
  }

  /** A report's keys are all revoked: its owner notifications (one per account) are due now. */
  releaseLeakNotifications(reportId: string): Promise<void> {
    return this.deps.repository.releaseLeakNotifications(reportId);
  }

  /**
   * Marks revoked (with its audit row) every rolled key whose overlap has ended; the key was
   * already refused everywhere by its expiry. Several replicas may sweep at once: revoke is idempotent.
   */
  async sweepRolled(limit = 100): Promise<number> {
    const ids = await this.deps.repository.endedRollOverlaps(limit);
    for (const id of ids) await this.revoke(id, undefined, { keyId: null, via: 'sweeper' });
    return ids.length;
  }

  /**
   * After the commit: the key's new entry into Redis (retried), the same invalidation on Redis
   * pub/sub, then the wait until every replica with a running lease acknowledged or its lease ran out.
   */
  private async propagate(rid: string, acks: AckWait, record: KeyRecord, kind: 'revoked' | 'changed') {
    const channel = this.channel();
    const cache = await this.writeMarker(record.hash, entryFor(record));
    const message: Invalidation = { rid, keyId: record.id, accountId: record.accountId, hash: record.hash, version: record.version };
    await channel.publishRedis(kind === 'changed' ? { ...message, kind } : message).catch(() => undefined);
    let replicas: LiveReplica[];
    try {
      replicas = await channel.liveReplicas();
    } catch {
      // Cannot see who is live: wait out any lease that may be running.
      replicas = [{ id: '*unknown*', remainingMs: this.deps.leaseMs }];
    }
    const acknowledged = await acks.wait(replicas);
    return { acknowledged, cache, replicas: replicas.length };
  }

  /** The invalidation channel; a service opened only to list or create has none. */
  private channel(): RevocationChannel {
    if (!this.deps.channel) throw new Error('KeyService: revoking and rolling need the invalidation channel; open the service with revocations');
    return this.deps.channel;
  }

  private async writeMarker(hash: string, entry: ReturnType<typeof entryFor>): Promise<RevokeOutcome['cache']> {
    const redis = this.deps.redis;
    if (!redis) return 'not_configured';
    const attempts = this.deps.markerAttempts ?? 3;
    for (let i = 1; ; i++) {
      try {
        // False means Redis already holds a newer version: just as good.
        await redis.fill(hash, entry);
        return 'updated';
      } catch {
        if (i >= attempts) return 'not_updated';
        await sleep(this.deps.clock, 50 * 2 ** i);
      }
    }
  }
}

/** A new LISTEN session on `url`. */
export function listenClientFor(url: string): () => pg.Client {
  return () => new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, keepAlive: true, application_name: 'ryvion-authz-listen' });
}

export function redisTierFor(config: Config, client: RedisClient): RedisTier {
  return new RedisTier(client, { prefix: config.REDIS_KEY_PREFIX, ttlMs: config.CACHE_REDIS_TTL_MS, negativeTtlMs: config.CACHE_NEGATIVE_TTL_MS });
}

/**
 * The key service for a process that is not a replica (the CLI): its own
 * small pool and, with `revocations`, Redis for the marker and a bus that only
 * collects acknowledgements (listing and creating need neither).
 */
export async function connectKeyService(
  config: Config,
  deps: { clock: Clock; logger: Logger; revocations: boolean },
): Promise<{ keys: KeyService; close(): Promise<void> }> {
  if (!config.DATABASE_URL) throw new ConfigError('DATABASE_URL: required but not set');
  const pool = createPool({ connectionString: config.DATABASE_URL, max: 2, timeoutMs: config.MANAGEMENT_WRITE_TIMEOUT_MS, applicationName: 'ryvion-authz-cli' });
  const repository = new KeyRepository(pool, keyHasherFrom(config), config.KEY_ENVIRONMENT, config.MANAGEMENT_WRITE_TIMEOUT_MS);
  if (!deps.revocations) {
    const keys = new KeyService({ repository, channel: undefined, redis: undefined, leaseMs: config.INVALIDATION_LEASE_MS, clock: deps.clock, logger: deps.logger });
    return { keys, close: () => pool.end().catch(() => undefined) };
  }
  const redisPub = createRedis(config, 'command', 'ryvion-authz-cli');
  const redisSub = redisPub ? createRedis(config, 'subscriber', 'ryvion-authz-cli-sub') : undefined;
  const bus = new InvalidationBus({
    mode: 'client',
    newListenClient: listenClientFor(config.DATABASE_LISTEN_URL ?? config.DATABASE_URL),
    notify: pgNotifier(pool, config.MANAGEMENT_WRITE_TIMEOUT_MS),
    registry: new PgLeaseRegistry(pool, config.MANAGEMENT_WRITE_TIMEOUT_MS),
    redisPub,
    redisSub,
    redisPrefix: config.REDIS_KEY_PREFIX,
    leaseMs: config.INVALIDATION_LEASE_MS,
    clock: deps.clock,
    logger: deps.logger,
  });
  if (redisSub) await waitReady(redisSub, 2000);
  if (redisPub) await waitReady(redisPub, 2000);
  await bus.start();
  const keys = new KeyService({
    repository,
    channel: bus,
    redis: redisPub ? redisTierFor(config, redisPub) : undefined,
    leaseMs: config.INVALIDATION_LEASE_MS,
    clock: deps.clock,
    logger: deps.logger,
  });
  return {
    keys,
    close: async () => {
      await bus.stop();
      redisSub?.disconnect();
      redisPub?.disconnect();
      await pool.end().catch(() => undefined);
    },
  };
}

/** Waits briefly for a Redis connection; without one the marker write fails and revoke says so. */
function waitReady(client: RedisClient, ms: number): Promise<boolean> {
  if (client.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    client.once('ready', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}
