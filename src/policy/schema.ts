// The policy file's schema: what a valid file is, checked by zod, then the checks across its parts.
import { z } from 'zod';
import type { Locator, Problem } from './locator.js';
import { normalizeSegments } from './normalize.js';

export const HTTP_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);
export const ANY_METHOD = '*';
export const ONE_SEGMENT = '*';
export const ANY_SEGMENTS = '**';
// Scope names travel in headers and key records, permission names in metadata and logs.
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;

const nameSchema = (what: string) =>
  z.string().superRefine((name, ctx) => {
    if (!NAME_PATTERN.test(name)) {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(name)} is not a valid ${what} name (letters, digits, ".", "_", ":", "-")` });
    }
  });

const methodSchema = z.string().superRefine((method, ctx) => {
  if (method === ANY_METHOD || HTTP_METHODS.has(method)) return;
  const upper = method.toUpperCase();
  const hint = HTTP_METHODS.has(upper) ? ` (methods are upper-case: "${upper}")` : '';
  ctx.addIssue({ code: 'custom', message: `${JSON.stringify(method)} is not an HTTP method${hint}` });
});

const pathPatternSchema = z.string().transform((pattern, ctx) => {
  const parsed = parsePattern(pattern);
  if (typeof parsed === 'string') {
    ctx.addIssue({ code: 'custom', message: parsed });
    return z.NEVER;
  }
  return parsed;
});

// Only judged once the rule is otherwise valid: after a misspelt "permission" the unknown key is
// the useful complaint, not the missing one.
const onlyIfValid = { when: (payload: { issues: readonly unknown[] }) => payload.issues.length === 0 };

const ruleSchema = z
  .strictObject({
    methods: z.array(methodSchema).min(1).optional(),
    paths: z.array(pathPatternSchema).min(1),
    permission: nameSchema('permission').optional(),
    any_valid_key: z.boolean().optional(),
    enforce: z.boolean().optional(),
    // An inference route: its body is read for the model and token counts (issue 19, `tokens:`).
    inference: z.boolean().optional(),
  })
  .refine((rule) => rule.any_valid_key === true || rule.permission !== undefined, {
    ...onlyIfValid,
    message: 'a rule needs "permission" or "any_valid_key: true"',
  })
  .refine((rule) => rule.any_valid_key !== true || rule.permission === undefined, {
    ...onlyIfValid,
    path: ['any_valid_key'],
    message: 'a rule has "permission" or "any_valid_key: true", not both',
  });

const DURATION_UNITS_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

// "30s", "1m", "6h", "1d": a window from a second to a day.
const durationSchema = z.string().transform((text, ctx) => {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  const ms = m ? Number(m[1]) * DURATION_UNITS_MS[m[2]!]! : NaN;
  if (!(ms >= 1000 && ms <= 86_400_000)) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(text)} is not a window from 1s to 1d (like "1s", "30s", "1m", "1h", "1d")` });
    return z.NEVER;
  }
  return ms;
});

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$/;
const modelNameSchema = z.string().regex(MODEL_NAME, 'a model name: letters, digits and ._:/@+- (at most 128)');
const micros = z.number().int('must be a whole number of micro-units').min(0).max(Number.MAX_SAFE_INTEGER);

const limitSchema = z
  .strictObject({
    requests: z.number().int().positive().optional(),
    window: durationSchema.optional(),
    // How many may arrive at once; default a tenth of `requests` (at least 1).
    burst: z.number().int().positive().optional(),
    // LLM limits (issue 19); the `tokens:` section says how requests are priced.
    tokens_per_minute: z.number().int().positive().max(1_000_000_000).optional(),
    budget: z.strictObject({ amount: micros.min(1), period: z.enum(['day', 'week', 'month']) }).optional(),
    allowed_models: z.array(modelNameSchema).min(1).max(64).optional(),
  })
  .refine((l) => (l.requests === undefined) === (l.window === undefined), { ...onlyIfValid, message: 'a request limit needs both "requests" and "window"' })
  .refine((l) => l.requests !== undefined || l.burst === undefined, { ...onlyIfValid, path: ['burst'], message: '"burst" needs "requests" and "window"' });

const planSchema = z.strictObject({ account: limitSchema.optional(), key: limitSchema.optional() });

const modelPriceSchema = z.strictObject({
  // Micro-units of `currency` per million tokens.
  input_per_million: micros,
  output_per_million: micros,
  // Output tokens reserved for a request that names no max_tokens / max_completion_tokens.
  default_max_output: z.number().int().min(0).max(10_000_000),
});

const tokensSchema = z.strictObject({
  // ISO 4217 code of the currency budgets and prices are in (micro-units of it).
  currency: z.string().regex(/^[A-Z]{3}$/, 'an ISO 4217 currency code, like USD'),
  // Prices and output reservation of a model not listed under `models`.
  default_model: modelPriceSchema,
  models: z.record(modelNameSchema, modelPriceSchema).default({}),
  // A body that is missing, truncated or not JSON on an inference route: 400, or reserve `unreadable_body_tokens`.
  unreadable_body: z.enum(['deny', 'reserve']).default('deny'),
  unreadable_body_tokens: z.number().int().positive().max(10_000_000).default(4096),
});

export const policySchema = z.strictObject({
  version: z.literal(1),
  default_action: z.enum(['deny', 'allow']).default('deny'),
  scopes: z.record(z.string(), z.array(nameSchema('permission'))),
  rules: z.array(ruleSchema),
  plans: z.record(nameSchema('plan'), planSchema).default({}),
  // The plan of an account whose plan the file does not name.
  default_plan: nameSchema('plan').default('free'),
  // Key metadata fields sent upstream as x-ryvion-meta-<field> and dynamic metadata.
  forward_metadata: z
    .array(z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a metadata field name: lower-case letters, digits, "_" and "-", at most 63'))
    .max(16)
    .default([]),
  // Token limits, budgets and model allow-lists: how inference requests are priced (issue 19).
  tokens: tokensSchema.optional(),
});

export type PolicyDocument = z.infer<typeof policySchema>;
// A pattern is compared with normalised paths, so it must itself be in normalised form:
// anything else would be a rule that silently never matches.
function parsePattern(pattern: string): string[] | string {
  const quoted = JSON.stringify(pattern);
  if (!pattern.startsWith('/')) return `${quoted} must start with "/"`;
  if (pattern === '/') return [];
  const segments: string[] = [];
  for (const part of pattern.slice(1).split('/')) {
    if (part === '') return `${quoted} has an empty segment (a trailing "/" or "//" never matches a normalised path)`;
    if (part === ONE_SEGMENT || part === ANY_SEGMENTS) {
      // `**/**` means the same as `**`; keeping one avoids needless backtracking.
      if (!(part === ANY_SEGMENTS && segments.at(-1) === ANY_SEGMENTS)) segments.push(part);
      continue;
    }
    if (part.includes('*')) return `${quoted}: "*" and "**" must be a whole segment, not part of "${part}"`;
    if (part === '.' || part === '..') return `${quoted}: "." and ".." segments are resolved before matching`;
    if (/[?#]/.test(part)) return `${quoted}: query strings and fragments take no part in matching`;
    const normalized = normalizeSegments('/' + part);
    if (!normalized.ok) return `${quoted}: ${normalized.reason}`;
    if (normalized.segments.length !== 1 || normalized.segments[0] !== part) {
      const canonical = normalized.segments.length === 1 ? ` (write "${normalized.segments[0]}")` : '';
      return `${quoted}: segment "${part}" is not in normalised form${canonical}`;
    }
    segments.push(part);
  }
  return segments;
}


export function crossCheck(policy: PolicyDocument, locator: Locator): Problem[] {
  const problems: Problem[] = [];
  const used = new Set<string>();
  for (const rule of policy.rules) {
    if (rule.permission !== undefined && rule.any_valid_key !== true) used.add(rule.permission);
  }
  for (const [scope, permissions] of Object.entries(policy.scopes)) {
    if (!NAME_PATTERN.test(scope)) {
      problems.push(locator.atKey(['scopes'], scope, `${JSON.stringify(scope)} is not a valid scope name (letters, digits, ".", "_", ":", "-")`));
    }
    permissions.forEach((permission, i) => {
      // A typo here would grant nothing and fail silently, so it is an error, not a warning.
      if (!used.has(permission)) {
        problems.push(locator.at(['scopes', scope, i], `permission ${JSON.stringify(permission)} is not used by any rule`));
      }
    });
  }
  if (policy.tokens === undefined) {
    // Token limits without prices would silently never apply.
    for (const [name, plan] of Object.entries(policy.plans)) {
      for (const subject of ['account', 'key'] as const) {
        const l = plan[subject];
        for (const field of ['tokens_per_minute', 'budget', 'allowed_models'] as const) {
          if (l?.[field] !== undefined) problems.push(locator.at(['plans', name, subject, field], `"${field}" needs a "tokens:" section (currency and model prices)`));
        }
      }
    }
  }
  if (Object.keys(policy.plans).length > 0 && !(policy.default_plan in policy.plans)) {
    problems.push(locator.at(['default_plan'], `default plan ${JSON.stringify(policy.default_plan)} is not one of the plans`));
  }
  return problems;
}
