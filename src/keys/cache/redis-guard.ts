// Whether this replica may read key entries from Redis: only while Redis is shown to carry
// every recent revocation, and this replica's own tombstones are current.
//
// Both are rebuilt from Postgres (the revocations of the last window) whenever
// they may have missed one: at start, when Redis (re)connects or comes back
// empty, when a marker write failed, when the lease is regained or a channel
// reconnected. A probe every `probeIntervalMs` refreshes a sentinel key with
// `SET ... XX`: one command that fails when Redis refuses writes, times out when
// it hangs, and answers nil when Redis lost its data (restart, flush, failover).
import type { Clock, Timer } from '../../time/clock.js';
import { every } from '../../time/clock.js';
import type { HealthState } from '../../observability/health.js';
import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';

import type { KeyRecord } from '../repository.js';
import { entryFor } from './entry.js';
import type { SharedTier } from './redis-tier.js';

export interface RevocationGuardOptions {
  /** Revocations that Postgres holds from the last `windowMs`. */
  recentRevocations: () => Promise<KeyRecord[]>;
  /** Records revocations as this replica's tombstones. */
  remember: (records: readonly KeyRecord[]) => void;
  redis?: { client: GuardedRedis; tier: SharedTier; sentinelKey: string; sentinelTtlMs: number } | undefined;
  clock: Clock;
  probeIntervalMs: number;
  logger: Logger;
  metrics: Metrics;
  health: HealthState;
}

type RedisStatus = 'up' | 'down' | 'read_only';

/** What the guard needs of an ioredis client (an in-memory twin in tests). */
export interface GuardedRedis {
  readonly status: string;
  on(event: 'ready' | 'close', fn: () => void): unknown;
  set(key: string, value: string, px: 'PX', ms: number): Promise<unknown>;
  set(key: string, value: string, px: 'PX', ms: number, xx: 'XX'): Promise<string | null>;
}

export class RevocationGuard {
  private tombstonesCurrent = false;
  private redisSynced = false;
  private redisStatus: RedisStatus = 'down';
  // Bumped by every event after which a sync must run again; a sync that began
  // before the latest event does not count.
  private generation = 0;
  private syncing: Promise<void> | undefined;
  private retry: Timer | undefined;
  private probe: Timer | undefined;
  private stopped = false;

  constructor(private readonly opts: RevocationGuardOptions) {}

  /** Key entries may be read from Redis. */
  redisReadable(): boolean {
    return this.redisSynced && this.tombstonesCurrent && this.redisStatus === 'up';
  }

  async start(): Promise<void> {
    const r = this.opts.redis;
    if (r) {
      this.opts.health.setStore('redis', 'unknown');
      r.client.on('ready', () => this.distrust('redis connected'));
      r.client.on('close', () => this.setStatus('down', 'connection closed'));
      this.probe = every(this.opts.clock, this.opts.probeIntervalMs, () => void this.runProbe());
    }
    await this.sync().catch(() => undefined);
  }

  stop(): void {
    this.stopped = true;
    this.probe?.cancel();
    this.retry?.cancel();
  }

  /** Something may have been missed: rebuild tombstones and replay into Redis before reading it again. */
  distrust(why: string): void {
    this.generation++;
    this.tombstonesCurrent = false;
    this.redisSynced = false;
    this.updateGauges();
    this.opts.logger.debug({ why }, 'revocations to be replayed before Redis is read again');
    void this.sync().catch(() => undefined);
  }

  /** A marker this replica wrote failed: Redis may lack a revocation. */
  markerFailed(): void {
    this.distrust('revoked marker not written');
  }

  private sync(): Promise<void> {
    if (this.syncing) return this.syncing.then(() => (this.needsSync() ? this.sync() : undefined));
    const generation = this.generation;
    this.syncing = this.runSync(generation).finally(() => (this.syncing = undefined));
    return this.syncing;
  }

  private needsSync(): boolean {
    return !this.stopped && (!this.tombstonesCurrent || (this.opts.redis !== undefined && !this.redisSynced && this.redisStatus !== 'down'));
  }

  private async runSync(generation: number): Promise<void> {
    if (this.stopped) return;
    try {
      const revoked = await this.opts.recentRevocations();
      this.opts.remember(revoked);
      if (generation !== this.generation) return this.scheduleRetry();
      this.tombstonesCurrent = true;
      const r = this.opts.redis;
      if (r && r.client.status === 'ready') {
        for (const record of revoked) await r.tier.fill(record.hash, entryFor(record));
        await r.client.set(r.sentinelKey, String(this.opts.clock.now()), 'PX', r.sentinelTtlMs);
        if (generation !== this.generation) return this.scheduleRetry();
        this.redisSynced = true;
        this.setStatus('up');
        this.opts.logger.info({ replayed: revoked.length }, 'redis carries every recent revocation; reading key entries from it');
      }
    } catch (err) {
      this.opts.logger.warn({ problem: (err as Error).message }, 'replaying revocations failed; retrying');
      this.scheduleRetry();
    } finally {
      this.updateGauges();
    }
  }

  private scheduleRetry(): void {
    if (this.stopped || this.retry) return;
    this.retry = this.opts.clock.setTimer(() => {
      this.retry = undefined;
      if (this.needsSync()) void this.sync().catch(() => undefined);
    }, Math.min(1000, this.opts.probeIntervalMs));
  }

  private async runProbe(): Promise<void> {
    const r = this.opts.redis;
    if (!r || this.stopped) return;
    if (r.client.status !== 'ready') return this.setStatus('down', 'not connected');
    let reply: unknown;
    try {
      reply = await r.client.set(r.sentinelKey, String(this.opts.clock.now()), 'PX', r.sentinelTtlMs, 'XX');
    } catch (err) {
      const message = (err as Error).message;
      // A reply error (OOM under maxmemory, READONLY on a demoted master) means Redis answers but refuses writes.
      if (/^(OOM|READONLY|MISCONF|NOREPLICAS|CLUSTERDOWN|TRYAGAIN)/.test(message)) {
        if (this.redisStatus !== 'read_only') this.opts.logger.warn({ problem: message.split('\n')[0] }, 'redis refuses writes: not reading key entries from it');
        this.redisSynced = false;
        return this.setStatus('read_only');
      }
      return this.setStatus('down', message);
    }
    if (reply === null) {
      this.opts.logger.warn('redis lost its data (restart, flush or failover): replaying revocations before reading it');
      this.distrust('sentinel missing');
      return;
    }
    const wasUp = this.redisStatus === 'up';
    this.redisStatus = 'up';
    if (!wasUp || !this.redisSynced) this.distrust('redis answers again');
    else this.updateGauges();
  }

  private setStatus(status: RedisStatus, problem?: string): void {
    if (status === 'down' && this.redisStatus !== 'down' && problem) {
      this.opts.logger.warn({ problem: problem.split('\n')[0] }, 'redis unreachable: deciding from memory and Postgres');
    }
    this.redisStatus = status;
    if (status !== 'up') this.redisSynced = false;
    this.updateGauges();
  }

  private updateGauges(): void {
    if (!this.opts.redis) return;
    const { metrics, health } = this.opts;
    const reachable = this.redisStatus !== 'down';
    metrics.storeUp.labels('redis').set(reachable ? 1 : 0);
    metrics.degraded.labels('redis').set(this.redisReadable() ? 0 : 1);
    health.setStore('redis', reachable ? 'up' : 'down');
  }
}
