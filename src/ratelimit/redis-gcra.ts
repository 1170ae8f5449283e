// GCRA in Redis: every limit of a decision in one script call, so the check is atomic and one round trip.
import { RATE_LIMIT_COMMAND, type RedisClient } from '../store/redis.js';
import { asRedisUnavailable } from '../store/errors.js';
import type { GcraResult, Limit } from './gcra.js';

// KEYS: one TAT per limit. ARGV[1]: how many checks to decide (one, or a batch of concurrent
// checks of the same subjects: redis-gcra-batch.ts); then per limit its emission interval and
// tolerance (ms). The checks are decided one after another, in order, each seeing the TATs the
// previous one stored (rounded to three decimals, as stored), so a batch gets exactly the
// decisions of that many calls made back to back. Redis's own clock, so replicas with skewed
// clocks share one timeline. Mirrors gcra.ts.
const SCRIPT = `
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

/** Keys share the account's hash tag, so one script can touch them all on Redis Cluster (budget/redis-tokens.ts's too). */
export function gcraKey(prefix: string, limit: Limit, accountId: string, keyId: string): string {
  return limit.name === 'account' ? `${prefix}rl:{${accountId}}:account` : `${prefix}rl:{${accountId}}:key:${keyId}`;
}

type WithGcra = RedisClient & { ryvionGcra(...args: Array<string | number>): Promise<number[]> };

export class RedisGcra {
  private readonly client: WithGcra;

  constructor(
    client: RedisClient,
    private readonly prefix: string,
  ) {
    client.defineCommand(RATE_LIMIT_COMMAND, { lua: SCRIPT });
    this.client = client as WithGcra;
  }

  keyFor(limit: Limit, accountId: string, keyId: string): string {
    return gcraKey(this.prefix, limit, accountId, keyId);
  }

  async check(limits: readonly Limit[], accountId: string, keyId: string): Promise<GcraResult> {
    const [result] = await this.decide(limits.map((l) => this.keyFor(l, accountId, keyId)), limits, 1);
    return result!;
  }

  /** `count` checks of the same keys and limits, decided in order in one script call. */
  protected async decide(keys: readonly string[], limits: readonly Limit[], count: number): Promise<GcraResult[]> {
    const args: Array<string | number> = [keys.length, ...keys, count];
    for (const l of limits) {
      const t = l.windowMs / l.requests;
      args.push(t, t * (l.burst - 1));
    }
    let reply: number[];
    try {
      reply = await this.client.ryvionGcra(...args);
    } catch (err) {
      throw asRedisUnavailable(err);
    }
    const stride = 2 + 2 * limits.length;
    const out: GcraResult[] = [];
    for (let at = 0; at < count * stride; at += stride) {
      out.push({
        allowed: reply[at] === 1,
        retryAfterMs: Number(reply[at + 1]),
        states: limits.map((limit, i) => ({ limit, remaining: Number(reply[at + 2 + 2 * i]), resetMs: Number(reply[at + 3 + 2 * i]) })),
      });
    }
    return out;
  }
}
