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
// uses the single-check script, so nothing changes for them.
import type { RedisClient } from '../store/redis.js';
import type { Metrics } from '../observability/metrics.js';
import { asRedisUnavailable } from '../keys/cache/redis-tier.js';
import type { GcraResult, Limit } from './gcra.js';
import { RedisGcra } from './redis-gcra.js';

// KEYS: one TAT per limit. ARGV[1]: how many checks; then per limit its emission
// interval and tolerance (ms). Mirrors the single-check script in redis-gcra.ts
// step for step, including the rounding of stored TATs to three decimals, so each
// check sees exactly the TAT a single call would have read back.
export const BATCH_SCRIPT = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local n = #KEYS
local count = tonumber(ARGV[1])
local stored = {}
local lastAfter = {}
for i = 1, n do
  stored[i] = tonumber(redis.call('GET', KEYS[i]) or now)
end
local out = {}
for r = 1, count do
  local allowed = 1
  local retry = 0
  local tats = {}
  for i = 1, n do
    local tau = tonumber(ARGV[2 * i + 1])
    local tat = stored[i]
    if tat < now then tat = now end
    tats[i] = tat
    if tat - now > tau then
      allowed = 0
      if tat - now - tau > retry then retry = tat - now - tau end
    end
  end
  out[#out + 1] = allowed
  out[#out + 1] = math.ceil(retry)
  for i = 1, n do
    local t = tonumber(ARGV[2 * i])
    local tau = tonumber(ARGV[2 * i + 1])
    local after = tats[i]
    if allowed == 1 then
      after = tats[i] + t
      stored[i] = tonumber(string.format('%.3f', after))
      lastAfter[i] = after
    end
    local remaining = math.floor((tau + t - (after - now)) / t)
    if remaining < 0 then remaining = 0 end
    out[#out + 1] = remaining
    out[#out + 1] = math.ceil(after - now)
  end
end
for i = 1, n do
  if lastAfter[i] then
    redis.call('SET', KEYS[i], string.format('%.3f', lastAfter[i]), 'PX', math.ceil(lastAfter[i] - now) + 1000)
  end
end
return out
`;

/** Checks per script call at most: the script's loop holds Redis for a few microseconds per check. */
export const MAX_BATCH = 128;

type WithBatch = RedisClient & { ryvionGcraBatch(...args: Array<string | number>): Promise<number[]> };

interface Waiter {
  resolve(r: GcraResult): void;
  reject(err: unknown): void;
}

interface Batch {
  limits: readonly Limit[];
  keys: string[];
  accountId: string;
  keyId: string;
  waiters: Waiter[];
}

export class BatchingRedisGcra extends RedisGcra {
  private readonly batchClient: WithBatch;
  private pending = new Map<string, Batch>();
  private flushScheduled = false;

  constructor(
    client: RedisClient,
    prefix: string,
    private readonly metrics?: Pick<Metrics, 'rateLimitRedisCalls'>,
  ) {
    super(client, prefix);
    client.defineCommand('ryvionGcraBatch', { lua: BATCH_SCRIPT });
    this.batchClient = client as WithBatch;
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
      batch = { limits, keys, accountId, keyId, waiters: [] };
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
      if (b.waiters.length === 1) {
        const w = b.waiters[0]!;
        super.check(b.limits, b.accountId, b.keyId).then(w.resolve, w.reject);
      } else {
        this.checkMany(b).catch((err: unknown) => {
          for (const w of b.waiters) w.reject(err);
        });
      }
    }
  }

  private async checkMany(b: Batch): Promise<void> {
    const args: Array<string | number> = [b.keys.length, ...b.keys, b.waiters.length];
    for (const l of b.limits) {
      const t = l.windowMs / l.requests;
      args.push(t, t * (l.burst - 1));
    }
    let reply: number[];
    try {
      reply = await this.batchClient.ryvionGcraBatch(...args);
    } catch (err) {
      throw asRedisUnavailable(err);
    }
    const stride = 2 + 2 * b.limits.length;
    b.waiters.forEach((w, r) => {
      const at = r * stride;
      w.resolve({
        allowed: reply[at] === 1,
        retryAfterMs: Number(reply[at + 1]),
        states: b.limits.map((limit, i) => ({ limit, remaining: Number(reply[at + 2 + 2 * i]), resetMs: Number(reply[at + 3 + 2 * i]) })),
      });
    });
  }
}
