// Failed authentications per source address, so random well-formed keys cannot flood Postgres.
import type { LRUCache } from 'lru-cache';
import { boundedLru } from '../lru.js';

const WINDOW_MS = 60_000;

interface Counter {
  windowStart: number;
  current: number;
  previous: number;
}

/**
 * A sliding window per source (two fixed windows, weighted), kept in this
 * replica's memory: limiting look-ups must itself cost no store round trip.
 */
export class FailedAuthLimiter {
  // Made at the first failure: until then a check looks nothing up.
  private counters: LRUCache<string, Counter> | undefined;

  constructor(
    private readonly perMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Milliseconds until `source` may try an uncached key again; 0 when it may now. */
  blockedForMs(source: string | undefined): number {
    if (!source) return 0;
    const c = this.counters?.get(source);
    if (!c) return 0;
    const now = this.now();
    this.roll(c, now);
    const elapsed = (now - c.windowStart) / WINDOW_MS;
    const estimate = c.previous * (1 - elapsed) + c.current;
    if (estimate < this.perMinute) return 0;
    // When the previous window's weight has decayed enough, or the window ends.
    const excess = estimate - this.perMinute + 1;
    const waitMs = c.previous > 0 ? (excess / c.previous) * WINDOW_MS : c.windowStart + WINDOW_MS - now;
    return Math.max(1, Math.min(Math.ceil(waitMs), c.windowStart + 2 * WINDOW_MS - now));
  }

  recordFailure(source: string | undefined): void {
    if (!source) return;
    const now = this.now();
    this.counters ??= boundedLru<string, Counter>(100_000);
    let c = this.counters.get(source);
    if (!c) {
      c = { windowStart: now - (now % WINDOW_MS), current: 0, previous: 0 };
      this.counters.set(source, c);
    }
    this.roll(c, now);
    c.current++;
  }

  private roll(c: Counter, now: number): void {
    const windowStart = now - (now % WINDOW_MS);
    if (windowStart === c.windowStart) return;
    c.previous = windowStart - c.windowStart === WINDOW_MS ? c.current : 0;
    c.current = 0;
    c.windowStart = windowStart;
  }
}
