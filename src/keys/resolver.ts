// Key resolution through the tiers: memory -> Redis -> Postgres, read-through, coalesced, capped.
import type { KeyHash } from './hash.js';
import type { KeyLookup, KeyRecord } from './repository.js';
import { entryFor, type CacheEntry } from './cache/entry.js';
import type { MemoryTier } from './cache/memory.js';
import type { SharedTier } from './cache/redis-tier.js';
import { StoreUnavailableError } from '../store/errors.js';
import type { Clock } from '../time/clock.js';
import { LookupThrottledError, type PostgresGuard } from './lookup-guard.js';
import type { Metrics } from '../observability/metrics.js';
import { hotCounter, type HotCounterCell } from '../observability/hot-metrics.js';

export interface ResolverDeps {
  memory: MemoryTier;
  redis: SharedTier | undefined;
  postgres: KeyLookup;
  /** Memory is trusted only while this replica holds its invalidation lease. */
  leaseHeld: () => boolean;
  /**
   * False while Redis may hold entries that missed revocations, or this
   * replica's tombstones may be incomplete (revocation-guard.ts).
   */
  redisTrusted: () => boolean;
  /** Beyond this many concurrent Postgres look-ups the answer is 503, not a queue. */
  postgresConcurrency: number;
  /**
   * A Postgres look-up is given up after this long (STORE_TIMEOUT_MS plus a
   * margin), whatever it waits for: a free pool connection, a new connection
   * (which may take a second), or the query.
   */
  postgresDeadlineMs: number;
  clock: Clock;
  metrics: Metrics;
}

export class KeyResolver implements KeyLookup {
  private readonly inflight = new Map<string, Promise<KeyRecord | null>>();
  private postgresActive = 0;
  // Counted on every check answered from memory: a plain-number cell (hot-metrics.ts).
  private readonly memoryHits: HotCounterCell;

  constructor(private readonly deps: ResolverDeps) {
    this.memoryHits = hotCounter(deps.metrics.cacheRequests, { tier: 'memory', result: 'hit' });
  }

  /**
   * Memory's answer, synchronously (no promise on the hot path), when it has one; otherwise a
   * promise of the look-up through Redis and Postgres. Memory is read once either way.
   * `beforePostgres` is asked only when both caches miss; a wait above 0 rejects with LookupThrottledError.
   */
  find(candidates: readonly KeyHash[], beforePostgres?: PostgresGuard): KeyRecord | null | Promise<KeyRecord | null> {
    const cached = this.fromMemory(candidates);
    if (cached !== undefined) {
      this.memoryHits.inc();
      return cached;
    }
    return this.afterMemoryMiss(candidates, beforePostgres);
  }

  async findByHash(candidates: readonly KeyHash[]): Promise<KeyRecord | null> {
    return this.find(candidates);
  }

  private afterMemoryMiss(candidates: readonly KeyHash[], beforePostgres?: PostgresGuard): Promise<KeyRecord | null> {
    const m = this.deps.metrics.cacheRequests;
    m.labels('memory', this.deps.leaseHeld() ? 'miss' : 'bypass').inc();
    const id = candidates[0]!.id;
    const pending = this.inflight.get(id);
    if (pending) {
      m.labels('memory', 'coalesced').inc();
      return pending;
    }
    const load = this.load(id, candidates, beforePostgres).finally(() => {
      if (this.inflight.get(id) === load) this.inflight.delete(id);
    });
    this.inflight.set(id, load);
    return load;
  }

  private fromMemory(candidates: readonly KeyHash[]): KeyRecord | null | undefined {
    if (!this.deps.leaseHeld()) return undefined;
    let absent = false;
    for (const c of candidates) {
      const held = this.deps.memory.get(c.id);
      if (held) return held;
      if (held === null) absent = true;
    }
    return absent ? null : undefined;
  }

  /** An entry Redis holds for the candidates, or undefined to ask Postgres (a miss, or a stale entry). */
  private async fromRedis(id: string, hashes: readonly string[]): Promise<{ hash: string; entry: CacheEntry } | undefined> {
    const { redis, memory, metrics } = this.deps;
    let absent: CacheEntry | undefined;
    for (const hash of hashes) {
      const e = await redis!.get(hash);
      // The invariant: never serve a version older than a revocation this replica knows of.
      if (e?.state === 'found' && e.version < (memory.revokedVersion(hash) ?? 0)) {
        metrics.cacheRequests.labels('redis', 'stale').inc();
        return undefined;
      }
      if (e?.state === 'found') return { hash, entry: e };
      if (e && hash === id) absent = e;
    }
    if (absent) return { hash: id, entry: absent };
    metrics.cacheRequests.labels('redis', 'miss').inc();
    return undefined;
  }

  /** A revocation arrived: later callers must not join a look-up that began before it. */
  forget(hash: string): void {
    this.inflight.delete(hash);
  }

  private async load(id: string, candidates: readonly KeyHash[], beforePostgres?: PostgresGuard): Promise<KeyRecord | null> {
    const { memory, redis, metrics } = this.deps;
    const epoch = memory.epoch;
    const hashes = candidates.map((c) => c.id);

    if (redis && this.deps.redisTrusted()) {
      try {
        const cached = await this.fromRedis(id, hashes);
        if (cached !== undefined) {
          metrics.cacheRequests.labels('redis', 'hit').inc();
          memory.fill(cached.hash, cached.entry, epoch);
          return cached.entry.state === 'found' ? cached.entry.record : null;
        }
      } catch (err) {
        metrics.cacheRequests.labels('redis', 'error').inc();
        metrics.storeErrors.labels('redis', err instanceof StoreUnavailableError ? err.kind : 'query').inc();
      }
    }

    const waitMs = beforePostgres?.() ?? 0;
    if (waitMs > 0) throw new LookupThrottledError(waitMs);
    if (this.postgresActive >= this.deps.postgresConcurrency) {
      metrics.cacheRequests.labels('postgres', 'overload').inc();
      throw new StoreUnavailableError('postgres', 'overload');
    }
    this.postgresActive++;
    let record: KeyRecord | null;
    try {
      record = await withDeadline(this.deps.postgres.findByHash(candidates), this.deps.postgresDeadlineMs, this.deps.clock);
      metrics.cacheRequests.labels('postgres', record ? 'hit' : 'miss').inc();
    } catch (err) {
      metrics.cacheRequests.labels('postgres', 'error').inc();
      if (err instanceof StoreUnavailableError) metrics.storeErrors.labels('postgres', err.kind).inc();
      throw err;
    } finally {
      this.postgresActive--;
    }
    // Cached under the stored hash, which is what a revocation names.
    const hash = record ? record.hash : id;
    const entry = entryFor(record);
    memory.fill(hash, entry, epoch);
    // Filled whatever the guard says: what Postgres just answered is the truth, and the fill is
    // conditional on the version, so it can never replace a newer revocation.
    if (redis) {
      redis.fill(hash, entry).catch(() => {
        metrics.cacheRequests.labels('redis', 'error').inc();
      });
    }
    return record;
  }
}

/** The look-up's answer, or a timeout once `ms` has passed; the look-up itself goes on in the pool. */
function withDeadline<T>(work: Promise<T>, ms: number, clock: Clock): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = clock.setTimer(() => reject(new StoreUnavailableError('postgres', 'timeout')), ms);
    work.then(
      (v) => {
        timer.cancel();
        resolve(v);
      },
      (err: unknown) => {
        timer.cancel();
        reject(err);
      },
    );
  });
}
