// Token limits, spend budgets and model allow-lists at the gate (issue 19): reserve at Check,
// reconcile from reported usage, expire what is never reported, and keep the spend in the ledger.
//
//   reserve    prompt estimate + maximum output, priced by the policy, against the key's and the
//              account's tokens per minute and budgets, with the request limits, in one script call;
//   reconcile  actual usage replaces the reservation (the difference is freed or charged);
//   expire     a reservation never reconciled becomes a charge of what it reserved;
//   ledger     every settlement goes to Postgres in batches; a Redis counter that is missing is
//              seeded from the ledger before any budget is enforced from it.
import { boundedLru } from '../lru.js';
import type { Clock } from '../time/clock.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { PlanLimits, PlanTokenLimits, TokenPolicy } from '../policy/policy.js';
import type { KeyRecord } from '../keys/repository.js';
import type { Limit, LimitState } from '../ratelimit/gcra.js';
import { StoreUnavailableError } from '../store/errors.js';
import { readRequestBody, type BodyReading } from './request-body.js';
import { periodEnd, periodStart } from './periods.js';
import { ReservationSigner, type ReservationClaims } from './reservation-id.js';
import type { BudgetCounter, RedisTokens, TokenLimit, TokenState } from './redis-tokens.js';
import { parsePeriod, type Ledger } from './ledger.js';

export type { TokenState } from './redis-tokens.js';

export type TokenDecision =
  /** No token limit, budget or model allow-list applies to this request. */
  | { kind: 'none' }
  /** Allowed; `requestStates` when the request limits were decided in the same call. */
  | { kind: 'allowed'; reservationId?: string; tokenStates: TokenState[]; requestStates?: LimitState[] }
  | { kind: 'model_not_allowed'; model: string }
  | { kind: 'invalid_body'; problem: Exclude<BodyReading, { ok: true }>['problem'] }
  | { kind: 'rate_limited'; by: 'requests' | 'tokens'; deniedBy: 'key' | 'account'; retryAfterMs: number; requestStates: LimitState[]; tokenStates: TokenState[] }
  | { kind: 'request_too_large'; tokens: number; limit: TokenState }
  | { kind: 'insufficient_quota'; deniedBy: 'key' | 'account' }
  /** Budgets apply but Redis cannot be asked: fail closed. */
  | { kind: 'unavailable'; detail: string };

export interface AdmitInput {
  key: KeyRecord;
  plan: PlanLimits;
  tokens: TokenPolicy;
  /** The request limits, decided in the same script call as the tokens. */
  requestLimits: readonly Limit[];
  body: Uint8Array | undefined;
  bodyTruncated: boolean;
}

export interface UsageItem {
  reservationId: string;
  inputTokens: number;
  outputTokens: number;
}

export type UsageResult = 'reconciled' | 'replayed' | 'forged' | 'expired' | 'invalid';
export type UsageSource = 'access_log' | 'usage_endpoint';

interface SubjectLimits {
  tokensPerMinute?: number;
  budget?: { amount: number; period: 'day' | 'week' | 'month' };
  allowedModels?: readonly string[];
}

/** A field of the row's own limits, else the plan's. */
function merge(plan: PlanTokenLimits | undefined, own: PlanTokenLimits | null | undefined): SubjectLimits {
  const out: SubjectLimits = {};
  const tpm = own?.tokens_per_minute ?? plan?.tokens_per_minute;
  const budget = own?.budget ?? plan?.budget;
  const models = own?.allowed_models ?? plan?.allowed_models;
  if (tpm !== undefined) out.tokensPerMinute = tpm;
  if (budget !== undefined) out.budget = budget;
  if (models !== undefined) out.allowedModels = models;
  return out;
}

/** The account's and the key's effective LLM limits (row override, else plan). */
export function tokenLimitsOf(plan: PlanLimits, key: Pick<KeyRecord, 'accountTokens' | 'keyTokens'>): { account: SubjectLimits; key: SubjectLimits } {
  return { account: merge(plan.accountTokens, key.accountTokens), key: merge(plan.keyTokens, key.keyTokens) };
}

/** Micro-units of a request's tokens at the model's prices, rounded up. */
export function costOf(tokens: TokenPolicy, model: string, input: number, output: number): number {
  const p = tokens.priceOf(model);
  return Math.ceil((input * p.inputPerMillion + output * p.outputPerMillion) / 1_000_000);
}

export interface TokenGateOptions {
  redis: RedisTokens | undefined;
  ledger: Ledger;
  signer: ReservationSigner;
  /** How long a reservation waits for its usage before it expires into a charge (outlasts a long stream). */
  reservationTtlMs: number;
  clock: Clock;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** While Redis is unreachable, budgeted requests: `deny` (503, the default) or the local conservative rule. */
  redisDown?: 'deny' | 'local';
  /** This replica's share of a budget under the local rule (the request limiter's: 1 / live replicas). */
  localShare?: () => number;
}

/** The `event` label of ryvion_authz_reservations_total. */
export const RESERVATION_EVENTS = [
  'reserved', 'reserved_locally', 'reconciled', 'late', 'expired', 'unscheduled',
  'report_replayed', 'report_forged', 'report_expired', 'report_invalid',
] as const;

/** How long a settled reservation's "done" marker is kept in Redis, past its expiry. */
const DONE_MARGIN_MS = 24 * 3_600_000;
/** A budget counter outlives its period by a day (reports of late reservations still find it). */
const COUNTER_MARGIN_MS = 24 * 3_600_000;
const SEED_ATTEMPTS = 3;

export class TokenGate {
  private timers: NodeJS.Timeout[] = [];
  // For BUDGET_REDIS_DOWN=local: per budget counter, what Redis last said remained, and what this
  // replica has admitted on its own since.
  private readonly lastRemaining = boundedLru<string, number>(100_000);
  private readonly spentLocally = boundedLru<string, number>(100_000);

  constructor(private readonly opts: TokenGateOptions) {
    // Every series exists from the first scrape (bounded label sets), so rates and the alert on
    // unreconciled reservations have something to compute from.
    const m = opts.metrics;
    for (const e of RESERVATION_EVENTS) m?.reservations.labels(e).inc(0);
    for (const s of ['access_log', 'usage_endpoint'] as const) m?.tokensReconciled.labels(s).inc(0);
  }

  async admit(input: AdmitInput): Promise<TokenDecision> {
    const limits = tokenLimitsOf(input.plan, input.key);
    const budgets = [limits.account.budget, limits.key.budget].filter((b) => b !== undefined);
    const reserves = limits.account.tokensPerMinute !== undefined || limits.key.tokensPerMinute !== undefined || budgets.length > 0;
    const models = [limits.account.allowedModels, limits.key.allowedModels].filter((m) => m !== undefined);
    if (!reserves && models.length === 0) return { kind: 'none' };

    const reading = readRequestBody(input.body, input.bodyTruncated);
    let model: string;
    let promptTokens: number;
    let outputTokens: number;
    if (reading.ok) {
      model = reading.cost.model;
      if (!models.every((list) => list.includes(model))) return { kind: 'model_not_allowed', model };
      promptTokens = reading.cost.promptTokens;
      outputTokens = (reading.cost.maxOutput ?? input.tokens.priceOf(model).defaultMaxOutput) * reading.cost.choices;
    } else {
      // A model allow-list cannot be checked without the model; a reservation can be guessed.
      if (input.tokens.unreadableBody === 'deny' || models.length > 0) return { kind: 'invalid_body', problem: reading.problem };
      model = '';
      promptTokens = input.tokens.unreadableBodyTokens;
      outputTokens = 0;
    }
    if (!reserves) return { kind: 'allowed', tokenStates: [] };
    return this.reserve(input, limits, model, promptTokens, outputTokens);
  }

  private async reserve(input: AdmitInput, limits: ReturnType<typeof tokenLimitsOf>, model: string, promptTokens: number, outputTokens: number): Promise<TokenDecision> {
    const { key } = input;
    const now = this.opts.clock.now();
    const tokens = promptTokens + outputTokens;
    const costMicros = costOf(input.tokens, model, promptTokens, outputTokens);
    const tokenLimits: TokenLimit[] = [];
    if (limits.account.tokensPerMinute !== undefined) tokenLimits.push({ name: 'account', tokensPerMinute: limits.account.tokensPerMinute });
    if (limits.key.tokensPerMinute !== undefined) tokenLimits.push({ name: 'key', tokensPerMinute: limits.key.tokensPerMinute });
    // Bigger than a whole minute's tokens: no wait would ever admit it.
    const tooBig = tokenLimits.find((l) => tokens > l.tokensPerMinute);
    if (tooBig) return { kind: 'request_too_large', tokens, limit: { limit: tooBig, remaining: 0, resetMs: 0 } };

    const counters: BudgetCounter[] = [];
    const names: Array<'account' | 'key'> = [];
    for (const [name, subject, b] of [['account', `a:${key.accountId}`, limits.account.budget], ['key', `k:${key.id}`, limits.key.budget]] as const) {
      if (!b) continue;
      counters.push({ subject, period: b.period, start: periodStart(b.period, now), limit: b.amount, ttlMs: periodEnd(b.period, now) - now + COUNTER_MARGIN_MS });
      names.push(name);
    }
    const redis = this.opts.redis;
    if (!redis) {
      if (counters.length > 0) return { kind: 'unavailable', detail: 'budget_no_redis' };
      return { kind: 'allowed', tokenStates: [] };
    }
    const price = input.tokens.priceOf(model);
    const claims: ReservationClaims = {
      nonce: this.opts.signer.newNonce(),
      accountId: key.accountId,
      keyId: key.id,
      inputPerMillion: price.inputPerMillion,
      outputPerMillion: price.outputPerMillion,
      reservedAt: now,
      expiresAt: now + this.opts.reservationTtlMs,
      inputTokens: promptTokens,
      outputTokens,
      costMicros,
      periods: counters.map((c) => `${c.subject}|${c.period}|${c.start}`),
    };
    try {
      for (let attempt = 1; ; attempt++) {
        const reply = await redis.reserve({
          accountId: key.accountId,
          keyId: key.id,
          requestLimits: input.requestLimits,
          tokenLimits,
          budgets: counters,
          tokens,
          costMicros,
          nonce: claims.nonce,
          recordTtlMs: this.opts.reservationTtlMs + DONE_MARGIN_MS,
        });
        if (reply.code === 'seed') {
          if (attempt > SEED_ATTEMPTS) return { kind: 'unavailable', detail: 'budget_seed' };
          // A counter Redis does not hold (first use in the period, or Redis restarted empty):
          // from the ledger, plus what this replica settled and has not written yet.
          for (const c of reply.missing) {
            const spent = (await this.opts.ledger.spent(c.subject, c.period, c.start)) + this.opts.ledger.pendingFor(c.subject, c.period, c.start);
            await redis.seed(key.accountId, c, spent);
          }
          continue;
        }
        const m = this.opts.metrics;
        if (reply.code === 'allowed') {
          const id = this.opts.signer.sign(claims);
          // What remained, for the local rule should Redis become unreachable; Redis counts again from here.
          counters.forEach((c, i) => {
            const k = redis.budgetKey(key.accountId, c);
            this.lastRemaining.set(k, reply.budgetRemaining[i]!);
            this.spentLocally.delete(k);
          });
          // Outside the slot of the script's keys; if this fails the reservation is never metered as expired (counted).
          await redis.schedule(id, claims.expiresAt).catch(() => m?.reservations.labels('unscheduled').inc());
          m?.tokensReserved.inc(tokens);
          m?.reservations.labels('reserved').inc();
          counters.forEach((c, i) => m?.budgetRemaining.labels(names[i]!).observe(c.limit > 0 ? reply.budgetRemaining[i]! / c.limit : 0));
          return { kind: 'allowed', reservationId: id, tokenStates: reply.tokenStates, requestStates: reply.requestStates };
        }
        if (reply.code === 'budget') {
          const i = reply.budgetRemaining.findIndex((r) => r < costMicros);
          return { kind: 'insufficient_quota', deniedBy: names[Math.max(0, i)]! };
        }
        const states = reply.code === 'tokens' ? reply.tokenStates : reply.requestStates;
        const worst = states.reduce<{ name: 'key' | 'account'; reset: number } | undefined>(
          (w, s) => (s.remaining === 0 && (!w || s.resetMs > w.reset) ? { name: s.limit.name, reset: s.resetMs } : w),
          undefined,
        );
        return {
          kind: 'rate_limited',
          by: reply.code,
          deniedBy: worst?.name ?? states[0]?.limit.name ?? 'account',
          retryAfterMs: reply.retryAfterMs,
          requestStates: reply.requestStates,
          tokenStates: reply.tokenStates,
        };
      }
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      // Tokens per minute alone fall back to the request limits (check/pipeline.ts). Money fails
      // closed, unless BUDGET_REDIS_DOWN=local: then the local conservative rule below.
      if (counters.length === 0) return { kind: 'allowed', tokenStates: [] };
      if (this.opts.redisDown === 'local' && this.admitLocally(key.accountId, counters, costMicros)) {
        this.opts.metrics?.reservations.labels('reserved_locally').inc();
        return { kind: 'allowed', reservationId: this.opts.signer.sign(claims), tokenStates: [] };
      }
      return { kind: 'unavailable', detail: `budget_${err.store}_${err.kind}` };
    }
  }

  /**
   * The local conservative rule while Redis is unreachable: this replica admits, per budget, at
   * most its share of what Redis last said remained (nothing for a budget it has not seen), so the
   * replicas together stay within the budget. Its admissions are charged when their usage is
   * reported (from the id, to the ledger); a reservation never reported is not metered.
   */
  private admitLocally(accountId: string, counters: readonly BudgetCounter[], cost: number): boolean {
    const share = this.opts.localShare?.() ?? 1;
    const keys = counters.map((c) => this.opts.redis!.budgetKey(accountId, c));
    for (const k of keys) {
      const seen = this.lastRemaining.get(k);
      if (seen === undefined || (this.spentLocally.get(k) ?? 0) + cost > seen * share) return false;
    }
    for (const k of keys) this.spentLocally.set(k, (this.spentLocally.get(k) ?? 0) + cost);
    return true;
  }

  /**
   * The effective LLM limits of a key and its account, with what remains of each right now: the
   * tokens-per-minute bucket and the period's budget (Redis's counter, else the ledger's settled
   * spend). For GET /api/v1/auth/me.
   */
  async status(key: Pick<KeyRecord, 'id' | 'accountId' | 'accountTokens' | 'keyTokens'>, plan: PlanLimits, currency: string | undefined): Promise<Record<string, unknown>> {
    const limits = tokenLimitsOf(plan, key);
    const now = this.opts.clock.now();
    const redis = this.opts.redis;
    const subjects = [['account', `a:${key.accountId}`, limits.account], ['key', `k:${key.id}`, limits.key]] as const;
    const keys: string[] = [];
    for (const [name, subject, l] of subjects) {
      if (l.tokensPerMinute !== undefined) keys.push(redis?.tpmKey({ name, tokensPerMinute: l.tokensPerMinute }, key.accountId, key.id) ?? '');
      if (l.budget) keys.push(redis?.budgetKey(key.accountId, { subject, period: l.budget.period, start: periodStart(l.budget.period, now) }) ?? '');
    }
    let stored: { values: Array<string | null>; now: number } | undefined;
    if (redis) stored = await redis.read(keys).catch(() => undefined);
    const out: Record<string, unknown> = {};
    let at = 0;
    for (const [name, subject, l] of subjects) {
      const view: Record<string, unknown> = { tokens_per_minute: l.tokensPerMinute ?? null, budget: null, allowed_models: l.allowedModels ?? null };
      if (l.tokensPerMinute !== undefined) {
        const tat = stored ? Number(stored.values[at] ?? 0) : undefined;
        const per = 60_000 / l.tokensPerMinute;
        view.tokens_remaining = tat === undefined ? null : Math.max(0, Math.min(l.tokensPerMinute, Math.floor((60_000 - Math.max(0, tat - stored!.now)) / per)));
        at++;
      }
      if (l.budget) {
        const start = periodStart(l.budget.period, now);
        const fromRedis = stored?.values[at];
        const spent = fromRedis != null ? Number(fromRedis) : await this.opts.ledger.spent(subject, l.budget.period, start).catch(() => null);
        view.budget = {
          amount: l.budget.amount,
          period: l.budget.period,
          currency: currency ?? null,
          period_start: start,
          resets_at: new Date(periodEnd(l.budget.period, now)).toISOString(),
          spent: spent,
          remaining: spent === null ? null : Math.max(0, l.budget.amount - spent),
        };
        at++;
      }
      out[name] = view;
    }
    return out;
  }

  /**
   * Usage reported for reservations (the access log, POST /internal/usage): idempotent per
   * reservation id; only ids this deployment signed, each settled once.
   */
  async report(items: readonly UsageItem[], source: UsageSource): Promise<UsageResult[]> {
    const out: UsageResult[] = [];
    for (const item of items) out.push(await this.reportOne(item, source));
    return out;
  }

  private async reportOne(item: UsageItem, source: UsageSource): Promise<UsageResult> {
    const m = this.opts.metrics;
    const result = await this.settle(item, source);
    if (result !== 'reconciled') m?.reservations.labels(`report_${result}`).inc();
    return result;
  }

  private async settle(item: UsageItem, source: UsageSource): Promise<UsageResult> {
    if (![item.inputTokens, item.outputTokens].every((n) => Number.isSafeInteger(n) && n >= 0 && n <= 1e12)) return 'invalid';
    const claims = this.opts.signer.verify(item.reservationId);
    if (!claims) return 'forged';
    const now = this.opts.clock.now();
    // At the prices the reservation was made at (a price change applies to new reservations).
    const cost = Math.ceil((item.inputTokens * claims.inputPerMillion + item.outputTokens * claims.outputPerMillion) / 1_000_000);
    const actual = item.inputTokens + item.outputTokens;
    const settlement = { id: item.reservationId, claims, kind: 'reconciled' as const, costMicros: cost, inputTokens: item.inputTokens, outputTokens: item.outputTokens };
    const redis = this.opts.redis;
    const doneTtl = Math.max(0, claims.expiresAt - now) + DONE_MARGIN_MS;
    let state: 'applied' | 'replayed' | 'unknown' = 'unknown';
    if (redis) state = await redis.reconcile(claims.accountId, claims.nonce, actual, cost, doneTtl);
    if (state === 'replayed') return 'replayed';
    if (state === 'unknown') {
      // Redis has no record: it restarted empty (or the reservation expired and was swept).
      if (claims.expiresAt <= now) return 'expired';
      // Charged straight to the ledger, whose settlement row makes it once; then to Redis's counters.
      const settled = await this.opts.ledger.write([settlement]);
      if (!settled.has(settlement.id)) return 'replayed';
      if (redis) {
        for (const p of claims.periods) {
          const parsed = parsePeriod(p);
          if (parsed) await redis.addToBudget(claims.accountId, parsed, cost).catch(() => undefined);
        }
      }
      m(this.opts.metrics, source, actual, now - claims.reservedAt, 'late');
      return 'reconciled';
    }
    this.opts.ledger.add(settlement);
    this.opts.metrics?.ledgerPending.set(this.opts.ledger.pendingCount);
    m(this.opts.metrics, source, actual, now - claims.reservedAt, 'reconciled');
    return 'reconciled';
  }

  /** Reservations past their expiry become charges of what they reserved. */
  async sweep(limit = 200): Promise<number> {
    const redis = this.opts.redis;
    if (!redis) return 0;
    const now = this.opts.clock.now();
    const ids = await redis.due(now, limit);
    let expired = 0;
    for (const id of ids) {
      const claims = this.opts.signer.verify(id);
      if (claims && (await redis.expire(claims.accountId, claims.nonce, DONE_MARGIN_MS))) {
        this.opts.ledger.add({ id, claims, kind: 'expired', costMicros: claims.costMicros, inputTokens: claims.inputTokens, outputTokens: claims.outputTokens });
        this.opts.metrics?.tokensExpired.inc(claims.inputTokens + claims.outputTokens);
        this.opts.metrics?.reservations.labels('expired').inc();
        expired++;
      }
    }
    await redis.unschedule(ids);
    this.opts.metrics?.ledgerPending.set(this.opts.ledger.pendingCount);
    return expired;
  }

  /** Writes queued settlements now (also on stop). */
  async flush(): Promise<void> {
    await this.opts.ledger.flush();
    this.opts.metrics?.ledgerPending.set(this.opts.ledger.pendingCount);
  }

  start(flushIntervalMs: number, sweepIntervalMs: number): void {
    const guard = (what: string, work: () => Promise<unknown>) => () => {
      work().catch((err: unknown) => this.opts.logger.warn({ err: (err as Error).message }, `token budgets: ${what} failed; retrying`));
    };
    this.timers.push(setInterval(guard('ledger write', () => this.flush()), flushIntervalMs), setInterval(guard('expiry sweep', () => this.sweep()), sweepIntervalMs));
    for (const t of this.timers) t.unref();
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await this.flush().catch((err: unknown) => this.opts.logger.error({ err: (err as Error).message, pending: this.opts.ledger.pendingCount }, 'token budgets: settlements not written to the ledger at stop'));
  }
}

function m(metrics: Metrics | undefined, source: UsageSource, tokens: number, lagMs: number, event: string): void {
  metrics?.tokensReconciled.labels(source).inc(tokens);
  metrics?.reconciliationLag.labels(source).observe(Math.max(0, lagMs) / 1000);
  metrics?.reservations.labels(event).inc();
}
