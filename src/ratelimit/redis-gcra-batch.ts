// Rate-limit decisions of concurrent checks of the same subjects, in one script call.
//
// A busy key sends many checks at once: with RedisGcra each costs a script call
// (a client command, a Lua run in Redis and its share of a round trip). Here the
// checks that reach the limiter in the same event-loop turn (everything the reads
// of Envoy's connections delivered) and share their limit keys and parameters are
// decided by one call that runs GCRA once per check, in arrival order, atomically
// in Redis: the same decisions as that many single calls made back to back at one
// instant, the same shared count across replicas, one round trip for each check as
// before (bench/README.md has the measurements). A turn with one check per subject
// is one call of the same script for one check, so nothing changes for them.
import type { RedisClient } from '../store/redis.js';
import type { Metrics } from '../observability/metrics.js';
import type { GcraResult, Limit } from './gcra.js';
import { RedisGcra } from './redis-gcra.js';

/** Checks per script call at most: the script's loop holds Redis for a few microseconds per check. */
export const MAX_BATCH = 128;

interface Waiter {
  resolve(r: GcraResult): void;
  reject(err: unknown): void;
}

interface Batch {
  limits: readonly Limit[];
  keys: string[];
  waiters: Waiter[];
}

export class BatchingRedisGcra extends RedisGcra {
  private pending = new Map<string, Batch>();
  private flushScheduled = false;

  constructor(
    client: RedisClient,
    prefix: string,
    private readonly metrics?: Pick<Metrics, 'rateLimitRedisCalls'>,
  ) {
    super(client, prefix);
  }

  override check(limits: readonly Limit[], accountId: string, keyId: string): Promise<GcraResult> {
    const keys = limits.map((l) => this.keyFor(l, accountId, keyId));
    let id = keys.join(' ');
    for (const l of limits) id += ` ${l.windowMs}/${l.requests}/${l.burst}`;
    let batch = this.pending.get(id);
    if (!batch || batch.waiters.length >= MAX_BATCH) {
      // A full batch goes out as it is; later checks of the subject start the next one, and
      // batches go out in the order they were started (a Map iterates in insertion order).
      if (batch) {
        this.pending.delete(id);
        this.pending.set(`${id} #${this.pending.size}`, batch);
      }
      batch = { limits, keys, waiters: [] };
      this.pending.set(id, batch);
    }
    const b = batch;
    const result = new Promise<GcraResult>((resolve, reject) => b.waiters.push({ resolve, reject }));
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      // After this event-loop turn's I/O callbacks: every check read from any connection in this
      // turn reaches the limiter synchronously, so all are here by then (a next-tick flush would
      // see one connection's read only). It adds no wait: the turn's other reads come first anyway.
      setImmediate(() => this.flush());
    }
    return result;
  }

  private flush(): void {
    this.flushScheduled = false;
    const batches = this.pending;
    this.pending = new Map();
    for (const b of batches.values()) {
      this.metrics?.rateLimitRedisCalls.inc();
      this.decide(b.keys, b.limits, b.waiters.length).then(
        (results) => b.waiters.forEach((w, r) => w.resolve(results[r]!)),
        (err: unknown) => b.waiters.forEach((w) => w.reject(err)),
      );
    }
  }
}
