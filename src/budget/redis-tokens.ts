// Token reservations in Redis: the request limits, tokens per minute and spend budgets of one
// request decided in ONE script call, atomically, so replicas share one count and concurrent
// requests cannot overshoot it (issue 19). Then reconciliation and expiry of the reservation.
//
// Keys, all under the account's hash tag (one slot on Redis Cluster):
//   rl:{a}:account, rl:{a}:key:<k>        request limits (GCRA, the same as ratelimit/redis-gcra.ts)
//   tpm:{a}:account, tpm:{a}:key:<k>      tokens per minute: a bucket of one minute's tokens, as a TAT
//   bg:{a}:<subject>|<period>|<start>     spend in the period (micro-units), outstanding reservations included
//   rsv:{a}:<nonce>                       the reservation: what it holds, to free or charge
//   rsvd:{a}:<nonce>                      reconciled or expired: later reports are replays
// and, outside the slot, rsv:due: a sorted set of reservation ids by expiry, for the sweeper.
import type { RedisClient } from '../store/redis.js';
import { asRedisUnavailable } from '../store/errors.js';
import type { Limit, LimitState } from '../ratelimit/gcra.js';
import { gcraKey } from '../ratelimit/redis-gcra.js';

/** A minute: the TPM bucket holds one minute's tokens and refills at the limit's rate. */
export const TPM_WINDOW_MS = 60_000;

// Returns {code, retryMs, per request limit: remaining, resetMs, per TPM: remaining, resetMs,
// per budget: remaining}. code 1 allowed, 0 a request limit denied, 2 tokens per minute denied
// (retryMs: until the bucket holds enough), 3 a budget denied, 4 budget counters missing (then
// the rest are the indexes of the missing ones; seed them from the ledger and call again).
const RESERVE = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local nr, nt, nb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
local missing = {}
for j = 1, nb do
  if redis.call('EXISTS', KEYS[nr + nt + j]) == 0 then missing[#missing + 1] = j end
end
if #missing > 0 then
  local out = {4, 0}
  for _, j in ipairs(missing) do out[#out + 1] = j end
  return out
end
local code, retry = 1, 0
local rtat, rafter = {}, {}
for i = 1, nr do
  local t, tau = tonumber(ARGV[a + 2 * i - 2]), tonumber(ARGV[a + 2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  rtat[i] = tat
  if tat - now > tau then
    code = 0
    if tat - now - tau > retry then retry = tat - now - tau end
  end
end
a = a + 2 * nr
local ttat, tafter = {}, {}
for i = 1, nt do
  local per, tokens = tonumber(ARGV[a + 2 * i - 2]), tonumber(ARGV[a + 2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[nr + i]) or now)
  if tat < now then tat = now end
  ttat[i] = tat
  local over = tat + tokens * per - now - ${TPM_WINDOW_MS}
  if over > 0 and code == 1 then
    code = 2
    retry = over
  elseif over > 0 and code == 2 and over > retry then
    retry = over
  end
end
a = a + 2 * nt
local spent = {}
for j = 1, nb do
  local limit, cost = tonumber(ARGV[a + 3 * j - 3]), tonumber(ARGV[a + 3 * j - 2])
  spent[j] = tonumber(redis.call('GET', KEYS[nr + nt + j]) or 0)
  if spent[j] + cost > limit and code == 1 then code = 3 end
end
local out = {code, math.ceil(retry)}
for i = 1, nr do
  local t, tau = tonumber(ARGV[4 + 2 * i - 2]), tonumber(ARGV[4 + 2 * i - 1])
  local after = rtat[i]
  if code == 1 then
    after = rtat[i] + t
    redis.call('SET', KEYS[i], string.format('%.3f', after), 'PX', math.ceil(after - now) + 1000)
  end
  local remaining = math.floor((tau + t - (after - now)) / t)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(after - now)
end
for i = 1, nt do
  local per, tokens = tonumber(ARGV[4 + 2 * nr + 2 * i - 2]), tonumber(ARGV[4 + 2 * nr + 2 * i - 1])
  local after = ttat[i]
  if code == 1 then
    after = ttat[i] + tokens * per
    redis.call('SET', KEYS[nr + i], string.format('%.3f', after), 'PX', math.ceil(after - now) + ${TPM_WINDOW_MS})
  end
  -- Times near 1.7e12 ms carry about 1e-4 ms of error: rounded to the stored precision first, and a
  -- hair of slack, so 105 tokens at 0.06 ms each never read as 105.0001.
  local used = math.floor((after - now) * 1000 + 0.5) / 1000
  local remaining = math.floor((${TPM_WINDOW_MS} - used) / per + 1e-6)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(after - now)
end
for j = 1, nb do
  local limit, cost = tonumber(ARGV[a + 3 * j - 3]), tonumber(ARGV[a + 3 * j - 2])
  local s = spent[j]
  if code == 1 then
    s = redis.call('INCRBY', KEYS[nr + nt + j], cost)
  end
  local remaining = limit - s
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
end
if code == 1 then
  local r = a + 3 * nb
  redis.call('SET', KEYS[nr + nt + nb + 1], ARGV[r + 1], 'PX', tonumber(ARGV[r]))
end
return out
`;

// KEYS: record, done. ARGV: actual tokens, actual cost, done TTL (ms). Returns 1 applied, 2 a
// replay (already reconciled or expired), 0 unknown (no record: Redis lost it, or never made).
const RECONCILE = `
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local f = {}
for part in string.gmatch(v, '[^\\n]+') do f[#f + 1] = part end
local tokens, cost = tonumber(f[1]), tonumber(f[2])
local nt = tonumber(f[3])
local dTokens = tonumber(ARGV[1]) - tokens
local dCost = tonumber(ARGV[2]) - cost
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
for i = 1, nt do
  local key, per = f[2 + 2 * i], tonumber(f[3 + 2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  local after = tat + dTokens * per
  if after > now then
    redis.call('SET', key, string.format('%.3f', after), 'PX', math.ceil(after - now) + ${TPM_WINDOW_MS})
  else
    redis.call('DEL', key)
  end
end
local nb = tonumber(f[4 + 2 * nt])
for j = 1, nb do
  local key = f[4 + 2 * nt + j]
  if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, dCost) end
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[3]))
return 1
`;

// KEYS: record, done. ARGV: done TTL. The reservation becomes a charge of what it reserved (its
// counters already hold it): 1 when this call expired it, 0 when it was reconciled or expired before.
const EXPIRE = `
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[1]))
return 1
`;

type WithScripts = RedisClient & {
  ryvionTokenReserve(...args: Array<string | number>): Promise<number[]>;
  ryvionTokenReconcile(...args: Array<string | number>): Promise<number>;
  ryvionTokenExpire(...args: Array<string | number>): Promise<number>;
};

export interface TokenLimit {
  name: 'key' | 'account';
  tokensPerMinute: number;
}

export interface BudgetCounter {
  /** `a:<account>` or `k:<key>`. */
  subject: string;
  period: 'day' | 'week' | 'month';
  /** YYYY-MM-DD. */
  start: string;
  limit: number;
  /** Until the counter may go: past the period's end. */
  ttlMs: number;
}

export interface ReserveRequest {
  accountId: string;
  keyId: string;
  requestLimits: readonly Limit[];
  tokenLimits: readonly TokenLimit[];
  budgets: readonly BudgetCounter[];
  tokens: number;
  costMicros: number;
  nonce: string;
  /** How long the record is kept (past the reservation's expiry, so the sweeper finds it). */
  recordTtlMs: number;
}

export interface TokenState {
  limit: TokenLimit;
  remaining: number;
  resetMs: number;
}

export type ReserveReply =
  | { code: 'allowed' | 'requests' | 'tokens' | 'budget'; retryAfterMs: number; requestStates: LimitState[]; tokenStates: TokenState[]; budgetRemaining: number[] }
  | { code: 'seed'; missing: BudgetCounter[] };

const CODES = ['requests', 'allowed', 'tokens', 'budget'] as const;

export class RedisTokens {
  private readonly client: WithScripts;

  constructor(
    client: RedisClient,
    private readonly prefix: string,
  ) {
    client.defineCommand('ryvionTokenReserve', { lua: RESERVE });
    client.defineCommand('ryvionTokenReconcile', { numberOfKeys: 2, lua: RECONCILE });
    client.defineCommand('ryvionTokenExpire', { numberOfKeys: 2, lua: EXPIRE });
    this.client = client as WithScripts;
  }

  tpmKey(l: TokenLimit, accountId: string, keyId: string): string {
    return l.name === 'account' ? `${this.prefix}tpm:{${accountId}}:account` : `${this.prefix}tpm:{${accountId}}:key:${keyId}`;
  }

  budgetKey(accountId: string, b: Pick<BudgetCounter, 'subject' | 'period' | 'start'>): string {
    return `${this.prefix}bg:{${accountId}}:${b.subject}|${b.period}|${b.start}`;
  }

  recordKey(accountId: string, nonce: string): string {
    return `${this.prefix}rsv:{${accountId}}:${nonce}`;
  }

  doneKey(accountId: string, nonce: string): string {
    return `${this.prefix}rsvd:{${accountId}}:${nonce}`;
  }

  get dueKey(): string {
    return `${this.prefix}rsv:due`;
  }

  async reserve(r: ReserveRequest): Promise<ReserveReply> {
    const keys: string[] = [
      ...r.requestLimits.map((l) => gcraKey(this.prefix, l, r.accountId, r.keyId)),
      ...r.tokenLimits.map((l) => this.tpmKey(l, r.accountId, r.keyId)),
      ...r.budgets.map((b) => this.budgetKey(r.accountId, b)),
      this.recordKey(r.accountId, r.nonce),
    ];
    const args: Array<string | number> = [keys.length, ...keys, r.requestLimits.length, r.tokenLimits.length, r.budgets.length];
    for (const l of r.requestLimits) {
      const t = l.windowMs / l.requests;
      args.push(t, t * (l.burst - 1));
    }
    const per = r.tokenLimits.map((l) => TPM_WINDOW_MS / l.tokensPerMinute);
    for (const p of per) args.push(p, r.tokens);
    for (const b of r.budgets) args.push(b.limit, r.costMicros, b.ttlMs);
    // The record: what reconciliation frees or charges, and where.
    const record = [r.tokens, r.costMicros, r.tokenLimits.length, ...r.tokenLimits.flatMap((l, i) => [this.tpmKey(l, r.accountId, r.keyId), per[i]!]), r.budgets.length, ...r.budgets.map((b) => this.budgetKey(r.accountId, b))];
    args.push(r.recordTtlMs, record.join('\n'));
    let reply: number[];
    try {
      reply = await this.client.ryvionTokenReserve(...args);
    } catch (err) {
      throw asRedisUnavailable(err);
    }
    const code = Number(reply[0]);
    if (code === 4) return { code: 'seed', missing: reply.slice(2).map((j) => r.budgets[Number(j) - 1]!) };
    let at = 2;
    const requestStates = r.requestLimits.map((limit) => ({ limit, remaining: Number(reply[at++]), resetMs: Number(reply[at++]) }));
    const tokenStates = r.tokenLimits.map((limit) => ({ limit, remaining: Number(reply[at++]), resetMs: Number(reply[at++]) }));
    const budgetRemaining = r.budgets.map(() => Number(reply[at++]));
    return { code: CODES[code]!, retryAfterMs: Number(reply[1]), requestStates, tokenStates, budgetRemaining };
  }

  /** Sets a budget counter from the ledger unless another replica did first. */
  async seed(accountId: string, b: BudgetCounter, spentMicros: number): Promise<void> {
    try {
      await this.client.set(this.budgetKey(accountId, b), String(spentMicros), 'PX', b.ttlMs, 'NX');
    } catch (err) {
      throw asRedisUnavailable(err);
    }
  }

  async addToBudget(accountId: string, b: Pick<BudgetCounter, 'subject' | 'period' | 'start'>, micros: number): Promise<void> {
    const key = this.budgetKey(accountId, b);
    try {
      // Only to a counter that exists: a missing one is seeded from the ledger, which holds this.
      await this.client.eval(`if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end return 0`, 1, key, micros);
    } catch (err) {
      throw asRedisUnavailable(err);
    }
  }

  /** The stored values of these keys (one slot: the account's) and Redis's clock, for /auth/me. */
  async read(keys: readonly string[]): Promise<{ values: Array<string | null>; now: number }> {
    try {
      const [values, time] = await Promise.all([keys.length > 0 ? this.client.mget(...keys) : Promise.resolve([]), this.client.time()]);
      return { values, now: Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000) };
    } catch (err) {
      throw asRedisUnavailable(err);
    }
  }

  async schedule(id: string, expiresAt: number): Promise<void> {
    await this.client.zadd(this.dueKey, expiresAt, id);
  }

  async reconcile(accountId: string, nonce: string, actualTokens: number, actualCost: number, doneTtlMs: number): Promise<'applied' | 'replayed' | 'unknown'> {
    let r: number;
    try {
      r = await this.client.ryvionTokenReconcile(this.recordKey(accountId, nonce), this.doneKey(accountId, nonce), actualTokens, actualCost, doneTtlMs);
    } catch (err) {
      throw asRedisUnavailable(err);
    }
    return r === 1 ? 'applied' : r === 2 ? 'replayed' : 'unknown';
  }

  /** Ids in the due set whose expiry has passed (at most `limit`). */
  async due(nowMs: number, limit: number): Promise<string[]> {
    return this.client.zrangebyscore(this.dueKey, '-inf', nowMs, 'LIMIT', 0, limit);
  }

  async expire(accountId: string, nonce: string, doneTtlMs: number): Promise<boolean> {
    return (await this.client.ryvionTokenExpire(this.recordKey(accountId, nonce), this.doneKey(accountId, nonce), doneTtlMs)) === 1;
  }

  async unschedule(ids: readonly string[]): Promise<void> {
    if (ids.length > 0) await this.client.zrem(this.dueKey, ...ids);
  }
}
