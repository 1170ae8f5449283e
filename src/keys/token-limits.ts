// LLM limits of an account or a key (issue 19): tokens per minute, a spend budget per calendar
// period (UTC) and the models it may call. Stored as one JSON object per row (snake_case, as the
// API shows it); an absent field falls back to the plan's (policy file).
import { z } from 'zod';

export const BUDGET_PERIODS = ['day', 'week', 'month'] as const;
export type BudgetPeriod = (typeof BUDGET_PERIODS)[number];

export interface Budget {
  /** Micro-units (1/1,000,000) of the policy's currency. */
  amount: number;
  period: BudgetPeriod;
}

export interface TokenLimits {
  tokens_per_minute?: number;
  budget?: Budget;
  allowed_models?: readonly string[];
}

/** Model ids as OpenAI-compatible APIs spell them (org/model:tag). */
export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$/;
export const MAX_ALLOWED_MODELS = 64;
// Budgets up to 2^53 micro-units: exact in a double and in Redis's Lua numbers.
const MAX_AMOUNT = Number.MAX_SAFE_INTEGER;

export const budgetSchema = z.strictObject({
  amount: z.number().int('must be a whole number of micro-units').positive('must be above 0').max(MAX_AMOUNT),
  period: z.enum(BUDGET_PERIODS),
});

/** What the key API and the CLI accept: null clears a field (the plan's applies), absent leaves it. */
export const tokenLimitsInputSchema = z.strictObject({
  tokens_per_minute: z.number().int('must be a whole number').positive('must be above 0').max(1_000_000_000).nullable().optional(),
  budget: budgetSchema.nullable().optional(),
  allowed_models: z
    .array(z.string().regex(MODEL_NAME, 'model names: letters, digits and ._:/@+- (at most 128)'))
    .min(1, 'must not be empty (omit it, or null for any model)')
    .max(MAX_ALLOWED_MODELS)
    .nullable()
    .optional(),
});
export type TokenLimitsInput = z.infer<typeof tokenLimitsInputSchema>;
export type TokenLimitField = keyof TokenLimitsInput;

/** The stored object from an input (nulls dropped); null when nothing is set. */
export function tokenLimitsFrom(input: TokenLimitsInput): TokenLimits | null {
  const out: TokenLimits = {};
  if (input.tokens_per_minute != null) out.tokens_per_minute = input.tokens_per_minute;
  if (input.budget != null) out.budget = input.budget;
  if (input.allowed_models != null) out.allowed_models = [...new Set(input.allowed_models)];
  return Object.keys(out).length > 0 ? out : null;
}

/** Reads a stored object (Postgres jsonb, the Redis cache) defensively: what does not parse is dropped. */
export function readTokenLimits(value: unknown): TokenLimits | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const parsed = tokenLimitsInputSchema.safeParse(value);
  return parsed.success ? tokenLimitsFrom(parsed.data) : null;
}

/**
 * The new key's token limits under the "no more than the caller" rule (keys/constraints.ts): an
 * omitted field inherits the caller's key's; a given one may tighten it, never loosen it.
 */
export function effectiveTokenLimits(
  caller: TokenLimits | null,
  requested: TokenLimitsInput | undefined,
): { ok: true; value: TokenLimits | null } | { ok: false; param: TokenLimitField; message: string } {
  const own = caller ?? {};
  const req = requested ?? {};
  const out: TokenLimits = { ...own };
  if (req.tokens_per_minute !== undefined) {
    if (own.tokens_per_minute !== undefined && (req.tokens_per_minute === null || req.tokens_per_minute > own.tokens_per_minute)) {
      return { ok: false, param: 'tokens_per_minute', message: `tokens_per_minute must not be above the limit of the key making this request (${own.tokens_per_minute}).` };
    }
    if (req.tokens_per_minute === null) delete out.tokens_per_minute;
    else out.tokens_per_minute = req.tokens_per_minute;
  }
  if (req.budget !== undefined) {
    if (own.budget !== undefined) {
      if (req.budget === null) return { ok: false, param: 'budget', message: `budget must not be null: the key making this request has a budget of ${own.budget.amount} per ${own.budget.period}.` };
      if (req.budget.period !== own.budget.period || req.budget.amount > own.budget.amount) {
        return { ok: false, param: 'budget', message: `budget must be per ${own.budget.period} and at most ${own.budget.amount}, the budget of the key making this request.` };
      }
    }
    if (req.budget === null) delete out.budget;
    else out.budget = req.budget;
  }
  if (req.allowed_models !== undefined) {
    if (own.allowed_models !== undefined) {
      if (req.allowed_models === null) return { ok: false, param: 'allowed_models', message: `allowed_models must not be null: the key making this request may use only ${own.allowed_models.join(', ')}.` };
      const beyond = req.allowed_models.filter((m) => !own.allowed_models!.includes(m));
      if (beyond.length > 0) return { ok: false, param: 'allowed_models', message: `allowed_models: ${beyond.slice(0, 5).join(', ')} not allowed to the key making this request.` };
    }
    if (req.allowed_models === null) delete out.allowed_models;
    else out.allowed_models = [...new Set(req.allowed_models)];
  }
  return { ok: true, value: Object.keys(out).length > 0 ? out : null };
}
