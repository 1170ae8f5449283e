// Per-key and per-account limits: shared in Redis, answered from memory when already over, local when Redis is down.
//
// The local limiter keeps one state per limit across calls, fed by every shared decision: its TAT
// is the shared TAT, which at a share s of the limit means the same fraction of the bucket used
// (rate and burst both scale by s). So a Redis timeout or outage continues from where the shared
// count was instead of handing out a fresh burst, and N replicas at a share of 1/N admit about the
// limit together. A replica whose traffic is uneven under-admits (its state says it used more than
// its share); that is the price of never over-admitting by more than one burst.
import type { LRUCache } from 'lru-cache';
import { boundedLru } from '../lru.js';
import type { Clock } from '../time/clock.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { hotCounter, type HotCounterCell } from '../observability/hot-metrics.js';
import { CircuitBreaker } from './breaker.js';
import { TatStore } from './tat-store.js';
import { gcra, tolerance, type GcraResult, type Limit, type LimitState } from './gcra.js';

export interface RateLimitOutcome {
  allowed: boolean;
  retryAfterMs: number;
  /** Which limit denied (when denied). */
  deniedBy?: Limit['name'];
  /** Every limit's state, for the response headers. */
  states: LimitState[];
}

/** The lowest derived share: beyond 20 live replicas each still admits 5% of each limit (and at least one request). */
export const MIN_LOCAL_SHARE = 0.05;

/** Consecutive Redis failures that open the breaker, and how long it stays open between probes. */
const BREAKER_FAILURES = 3;
const BREAKER_OPEN_MS = 1000;

/** Subjects of each kind (accounts, keys) whose local state is held at most (tat-store.ts drops those whose TAT has passed). */
const LOCAL_SUBJECTS = 200_000;
/** Subjects of each kind remembered as over their limit, at most. */
const OVER_SUBJECTS = 100_000;

/** The shared count (redis-gcra.ts, redis-gcra-batch.ts): every limit checked, and consumed only if all admit. */
export interface SharedGcra {
  check(limits: readonly Limit[], accountId: string, keyId: string): Promise<GcraResult>;
}

export interface RateLimiterOptions {
  redis: SharedGcra | undefined;
  /** Fixed share of each limit a replica allows on its own while Redis is not asked (RATE_LIMIT_LOCAL_SHARE); unset: 1 / liveReplicas(). */
  localShare?: number | undefined;
  /** Live replicas of this deployment, this one included (the lease registry's count). */
  liveReplicas: () => number;
  clock: Clock;
  metrics: Metrics;
  logger: Logger;
}

/** A limit's subject: the account's id or the key's, each in the store of its kind (`PerKind`). */
const subject = (l: Limit, accountId: string, keyId: string): string => (l.name === 'account' ? accountId : keyId);

/**
 * One store per kind of subject, keyed by the id the key record holds: no subject string is built
 * per check (a shared decision writes both TATs on every check: bench/README.md).
 */
interface PerKind<T> {
  account: T;
  key: T;
}

export class RateLimiter {
  // Subjects known to be over their limit, until when: a client hammering past
  // its limit costs no Redis call (the way envoyproxy/ratelimit does it).
  // Both made on first write: until a subject is over its limit, a check does not even look it up.
  private overUntil: PerKind<LRUCache<string, number>> | undefined;
  private localTats: PerKind<TatStore> | undefined;
  private degraded = false;
  private readonly breaker: CircuitBreaker;
  // Counted on every allowed check: plain-number cells (hot-metrics.ts).
  private readonly allowedCells: Record<'shared' | 'local', HotCounterCell>;

  constructor(private readonly opts: RateLimiterOptions) {
    const m = opts.metrics.rateLimitDecisions;
    this.allowedCells = { shared: hotCounter(m, { outcome: 'allowed', mode: 'shared' }), local: hotCounter(m, { outcome: 'allowed', mode: 'local' }) };
    this.breaker = new CircuitBreaker({ failureThreshold: BREAKER_FAILURES, openMs: BREAKER_OPEN_MS, now: () => opts.clock.now() });
    opts.metrics.rateLimitLocalShare.set(this.share());
  }

  /** Subjects whose local state is held (their TAT may still be ahead). */
  get localStates(): number {
    return this.localTats ? this.localTats.account.size + this.localTats.key.size : 0;
  }

  /** The share of each limit this replica admits alone while Redis is not asked. */
  share(): number {
    if (this.opts.localShare !== undefined) return this.opts.localShare;
    return Math.max(MIN_LOCAL_SHARE, 1 / Math.max(1, this.opts.liveReplicas()));
  }

  /**
   * A promise when Redis is asked; synchronous when the answer is in memory: a subject already
   * over its limit, the local limiter (no Redis, or its breaker open).
   */
  check(limits: readonly Limit[], accountId: string, keyId: string): RateLimitOutcome | Promise<RateLimitOutcome> {
    if (limits.length === 0) return { allowed: true, retryAfterMs: 0, states: [] };
    const now = this.opts.clock.now();

    let blockedFor = 0;
    let deniedBy: Limit['name'] | undefined;
    if (this.overUntil) {
      for (const l of limits) {
        const until = this.overUntil[l.name].get(subject(l, accountId, keyId));
        if (until !== undefined && until > now && until - now > blockedFor) {
          blockedFor = until - now;
          deniedBy = l.name;
        }
      }
    }
    if (blockedFor > 0) {
      this.opts.metrics.rateLimitDecisions.labels('limited', 'memory').inc();
      return { allowed: false, retryAfterMs: Math.ceil(blockedFor), deniedBy, states: limits.map((limit) => ({ limit, remaining: 0, resetMs: blockedFor })) };
    }

    const redis = this.opts.redis;
    if (!redis) return this.outcome(this.local(limits, accountId, keyId, now, 1), 'local', limits, accountId, keyId, now);
    if (!this.breaker.allow()) return this.outcome(this.local(limits, accountId, keyId, now, this.share()), 'local', limits, accountId, keyId, now);
    let shared: Promise<GcraResult>;
    try {
      shared = redis.check(limits, accountId, keyId);
    } catch (err) {
      shared = Promise.reject(err);
    }
    return shared.then(
      (result) => {
        this.breaker.success();
        this.mirror(limits, accountId, keyId, now, result);
        this.setDegraded(this.breaker.open);
        return this.outcome(result, 'shared', limits, accountId, keyId, now);
      },
      () => {
        this.breaker.failure();
        this.setDegraded(this.breaker.open);
        return this.outcome(this.local(limits, accountId, keyId, now, this.share()), 'local', limits, accountId, keyId, now);
      },
    );
  }

  private outcome(result: GcraResult, mode: 'shared' | 'local', limits: readonly Limit[], accountId: string, keyId: string, now: number): RateLimitOutcome {
    if (result.allowed) {
      this.allowedCells[mode].inc();
      return { allowed: true, retryAfterMs: 0, states: result.states };
    }
    this.opts.metrics.rateLimitDecisions.labels('limited', mode).inc();
    let worst = 0;
    let deniedBy: Limit['name'] | undefined;
    for (const s of result.states) {
      const retry = s.resetMs - tolerance(s.limit); // > 0: this limit admits nothing until then
      if (retry <= 0) continue;
      const over = (this.overUntil ??= { account: boundedLru<string, number>(OVER_SUBJECTS), key: boundedLru<string, number>(OVER_SUBJECTS) });
      over[s.limit.name].set(subject(s.limit, accountId, keyId), now + retry);
      if (retry > worst) {
        worst = retry;
        deniedBy = s.limit.name;
      }
    }
    return { allowed: false, retryAfterMs: result.retryAfterMs, deniedBy: deniedBy ?? limits[0]!.name, states: result.states };
  }

  /** The shared TATs become the local ones (see the top of this file). */
  private mirror(limits: readonly Limit[], accountId: string, keyId: string, now: number, result: GcraResult): void {
    const tats = this.tats();
    for (let i = 0; i < limits.length; i++) {
      const l = limits[i]!;
      tats[l.name].set(subject(l, accountId, keyId), now + result.states[i]!.resetMs, now);
    }
  }

  private local(limits: readonly Limit[], accountId: string, keyId: string, now: number, share: number): GcraResult {
    const scaled = limits.map((l) => ({ ...l, requests: Math.max(1, Math.floor(l.requests * share)), burst: Math.max(1, Math.floor(l.burst * share)) }));
    const tats = this.tats();
    const r = gcra(scaled, limits.map((l) => tats[l.name].get(subject(l, accountId, keyId))), now);
    if (r.allowed) limits.forEach((l, i) => tats[l.name].set(subject(l, accountId, keyId), r.newTats[i]!, now));
    return r;
  }

  private tats(): PerKind<TatStore> {
    return (this.localTats ??= { account: new TatStore(LOCAL_SUBJECTS), key: new TatStore(LOCAL_SUBJECTS) });
  }

  private setDegraded(on: boolean): void {
    if (on === this.degraded) return;
    this.degraded = on;
    this.opts.metrics.degraded.labels('ratelimit').set(on ? 1 : 0);
    this.opts.metrics.rateLimitLocalShare.set(this.share());
    if (on) this.opts.logger.warn({ share: this.share() }, 'redis unreachable: rate limits fall back to this replica, at a share of each limit');
    else this.opts.logger.info('redis reachable again: rate limits are shared');
  }
}
