// GCRA in Redis: every limit of one decision in one script call, so the check is atomic and one round trip.
import type { RedisClient } from '../store/redis.js';
import { asRedisUnavailable } from '../keys/cache/redis-tier.js';
import type { GcraResult, Limit } from './gcra.js';

// KEYS: one TAT per limit. ARGV: per limit, the emission interval and tolerance (ms).
// Redis's own clock, so replicas with skewed clocks share one timeline. Mirrors gcra.ts.
const SCRIPT = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local n = #KEYS
local allowed = 1
local retry = 0
local tats = {}
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  if tat - now > tau then
    allowed = 0
    if tat - now - tau > retry then retry = tat - now - tau end
  end
end
local out = { allowed, math.ceil(retry) }
for i = 1, n do
  local t = tonumber(ARGV[2 * i - 1])
  local tau = tonumber(ARGV[2 * i])
  local after = tats[i]
  if allowed == 1 then
    after = tats[i] + t
    redis.call('SET', KEYS[i], string.format('%.3f', after), 'PX', math.ceil(after - now) + 1000)
  end
  local remaining = math.floor((tau + t - (after - now)) / t)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(after - now)
end
return out
`;

type WithGcra = RedisClient & { ryvionGcra(...args: Array<string | number>): Promise<number[]> };

export class RedisGcra {
  private readonly client: WithGcra;

  constructor(
    client: RedisClient,
    private readonly prefix: string,
  ) {
    client.defineCommand('ryvionGcra', { lua: SCRIPT });
    this.client = client as WithGcra;
  }

  /** Keys share the account's hash tag, so one script can touch them all on Redis Cluster. */
  keyFor(limit: Limit, accountId: string, keyId: string): string {
    return limit.name === 'account' ? `${this.prefix}rl:{${accountId}}:account` : `${this.prefix}rl:{${accountId}}:key:${keyId}`;
  }

  async check(limits: readonly Limit[], accountId: string, keyId: string): Promise<GcraResult> {
    const args: Array<string | number> = [limits.length];
    for (const l of limits) args.push(this.keyFor(l, accountId, keyId));
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
    return {
      allowed: reply[0] === 1,
      retryAfterMs: Number(reply[1]),
      states: limits.map((limit, i) => ({ limit, remaining: Number(reply[2 + 2 * i]), resetMs: Number(reply[3 + 2 * i]) })),
    };
  }
}
