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

/** The same Redis keys and the same parameters: one script call can decide both checks. */
function sameLimits(a: readonly Limit[], b: readonly Limit[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x.name !== y.name || x.windowMs !== y.windowMs || x.requests !== y.requests || x.burst !== y.burst) return false;
  }
  return true;
}

export class BatchingRedisGcra extends RedisGcra {
  // This turn's batches, by account id then key id (the strings the key record holds, so no
  // subject string is built per check), and in the order they were started.
  private pending = new Map<string, Map<string, Batch[]>>();
  private order: Batch[] = [];
  private flushScheduled = false;

  constructor(
    client: RedisClient,
    prefix: string,
    private readonly metrics?: Pick<Metrics, 'rateLimitRedisCalls'>,
  ) {
    super(client, prefix);
  }

  override check(limits: readonly Limit[], accountId: string, keyId: string): Promise<GcraResult> {
    let byKey = this.pending.get(accountId);
    if (!byKey) this.pending.set(accountId, (byKey = new Map()));
    let started = byKey.get(keyId);
    if (!started) byKey.set(keyId, (started = []));
    // The subject's open batch with these limits; a full batch goes out as it is and later checks
    // start the next one. Batches go out in the order they were started, so a subject's checks
    // are decided in arrival order.
    let batch: Batch | undefined;
    for (let i = started.length - 1; i >= 0; i--) {
      if (sameLimits(started[i]!.limits, limits)) {
        batch = started[i];
        break;
      }
    }
    if (!batch || batch.waiters.length >= MAX_BATCH) {
      batch = { limits, keys: limits.map((l) => this.keyFor(l, accountId, keyId)), waiters: [] };
      started.push(batch);
      this.order.push(batch);
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
    const batches = this.order;
    this.order = [];
    this.pending = new Map();
    for (const b of batches) {
      this.metrics?.rateLimitRedisCalls.inc();
      this.decide(b.keys, b.limits, b.waiters.length).then(
        (results) => b.waiters.forEach((w, r) => w.resolve(results[r]!)),
        (err: unknown) => b.waiters.forEach((w) => w.reject(err)),
      );
    }
  }
}
