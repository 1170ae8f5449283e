// The compiled policy: routes per method, matched against the normalised path in rule order.
//
// Rule order: the first rule (in file order) whose method and path pattern match decides.
// Authors put narrow rules above broad ones (the upload rule above the generic knowledge-base
// write rule); a scope that lacks the permission of the first match is denied even if a later
// rule would have allowed it, so a broad rule can never widen a narrow one.
import { ANY_METHOD, ANY_SEGMENTS, HTTP_METHODS, ONE_SEGMENT, type PolicyDocument } from './schema.js';
import { normalizeSegments } from './normalize.js';

export type Permission = string;

export type AuthorizeResult =
  | { kind: 'allow'; permission: Permission | null; inference?: true }
  | { kind: 'shadow_deny'; permission: Permission; inference?: true }
  | { kind: 'insufficient_scope'; permission: Permission }
  | { kind: 'no_route' }
  | { kind: 'invalid_path'; reason: string };

export interface CompiledPolicy {
  readonly source: string;
  readonly scopes: readonly string[];
  authorize(method: string, rawPath: string, scope: string): AuthorizeResult;
  permissionsOf(scope: string): ReadonlySet<Permission>;
  /** A plan's request limits (the default plan's for an unknown name); empty when the file defines no plans. */
  limitsOf(plan: string): PlanLimits;
  /** Key metadata fields forwarded upstream on allow (`forward_metadata`). */
  readonly forwardMetadata: readonly string[];
  /** How inference requests are priced (`tokens:`); undefined: no token limits anywhere. */
  readonly tokens?: TokenPolicy | undefined;
}

/** A plan's (or an account's, a key's) LLM limits; the same shape as keys/token-limits.ts's TokenLimits. */
export interface PlanTokenLimits {
  tokens_per_minute?: number;
  budget?: { amount: number; period: 'day' | 'week' | 'month' };
  allowed_models?: readonly string[];
}

export interface ModelPrice {
  /** Micro-units of the currency per million tokens. */
  inputPerMillion: number;
  outputPerMillion: number;
  /** Output tokens reserved when a request names no maximum. */
  defaultMaxOutput: number;
}

export interface TokenPolicy {
  currency: string;
  /** The model's prices, or the default model's. */
  priceOf(model: string): ModelPrice;
  unreadableBody: 'deny' | 'reserve';
  unreadableBodyTokens: number;
}

/** A limit of `requests` per `windowMs`, of which `burst` may arrive at once. */
export interface RequestLimit {
  requests: number;
  windowMs: number;
  burst: number;
}

export interface PlanLimits {
  account?: RequestLimit;
  key?: RequestLimit;
  accountTokens?: PlanTokenLimits;
  keyTokens?: PlanTokenLimits;
}

interface CompiledRule {
  /** null: any valid key. */
  readonly permission: Permission | null;
  readonly allowed: AuthorizeResult;
  readonly denied: AuthorizeResult;
}

interface Route {
  readonly pattern: readonly string[];
  readonly rule: CompiledRule;
}

const EMPTY_PERMISSIONS: ReadonlySet<Permission> = new Set();
const NO_ROUTE: AuthorizeResult = Object.freeze({ kind: 'no_route' });
const DEFAULT_ALLOW: AuthorizeResult = Object.freeze({ kind: 'allow', permission: null });

export class RoutePolicy implements CompiledPolicy {
  readonly scopes: readonly string[];
  readonly forwardMetadata: readonly string[];
  private readonly grants: ReadonlyMap<string, ReadonlySet<Permission>>;
  // Per method, the routes that apply to it in rule order; unknown methods only see `*` rules.
  private readonly routesByMethod: ReadonlyMap<string, readonly Route[]>;
  private readonly anyMethodRoutes: readonly Route[];
  private readonly unmatched: AuthorizeResult;
  private readonly plans: ReadonlyMap<string, PlanLimits>;
  private readonly defaultPlan: PlanLimits;
  readonly tokens: TokenPolicy | undefined;

  constructor(
    readonly source: string,
    policy: PolicyDocument,
  ) {
    this.scopes = Object.freeze(Object.keys(policy.scopes));
    this.forwardMetadata = Object.freeze([...new Set(policy.forward_metadata)]);
    this.grants = new Map(Object.entries(policy.scopes).map(([scope, permissions]) => [scope, new Set(permissions)]));
    this.unmatched = policy.default_action === 'allow' ? DEFAULT_ALLOW : NO_ROUTE;
    type Subject = NonNullable<PolicyDocument['plans'][string]['account']>;
    const toLimit = (l: Subject | undefined): RequestLimit | undefined =>
      l?.requests !== undefined && l.window !== undefined ? { requests: l.requests, windowMs: l.window, burst: l.burst ?? Math.max(1, Math.ceil(l.requests / 10)) } : undefined;
    const toTokens = (l: Subject | undefined): PlanTokenLimits | undefined => {
      if (!l) return undefined;
      const out: PlanTokenLimits = {};
      if (l.tokens_per_minute !== undefined) out.tokens_per_minute = l.tokens_per_minute;
      if (l.budget !== undefined) out.budget = l.budget;
      if (l.allowed_models !== undefined) out.allowed_models = l.allowed_models;
      return Object.keys(out).length > 0 ? Object.freeze(out) : undefined;
    };
    this.plans = new Map(
      Object.entries(policy.plans).map(([name, p]) => {
        const limits: PlanLimits = {};
        const account = toLimit(p.account);
        const key = toLimit(p.key);
        const accountTokens = toTokens(p.account);
        const keyTokens = toTokens(p.key);
        if (account) limits.account = account;
        if (key) limits.key = key;
        if (accountTokens) limits.accountTokens = accountTokens;
        if (keyTokens) limits.keyTokens = keyTokens;
        return [name, Object.freeze(limits)];
      }),
    );
    this.tokens = policy.tokens && compileTokens(policy.tokens);
    this.defaultPlan = this.plans.get(policy.default_plan) ?? {};

    const byMethod = new Map<string, Route[]>();
    for (const method of HTTP_METHODS) byMethod.set(method, []);
    const anyMethod: Route[] = [];

    policy.rules.forEach((spec) => {
      const rule = compileRule(spec);
      const methods = spec.methods ?? [ANY_METHOD];
      const routes = spec.paths.map((pattern) => ({ pattern, rule }));
      if (methods.includes(ANY_METHOD)) {
        anyMethod.push(...routes);
        for (const list of byMethod.values()) list.push(...routes);
        return;
      }
      for (const method of new Set(methods)) byMethod.get(method)?.push(...routes);
    });
    this.routesByMethod = byMethod;
    this.anyMethodRoutes = anyMethod;
  }

  authorize(method: string, rawPath: string, scope: string): AuthorizeResult {
    const normalized = normalizeSegments(rawPath);
    if (!normalized.ok) return { kind: 'invalid_path', reason: normalized.reason };
    const routes = this.routesByMethod.get(method) ?? this.anyMethodRoutes;
    for (const route of routes) {
      if (!matchSegments(route.pattern, 0, normalized.segments, 0)) continue;
      const { permission } = route.rule;
      if (permission === null || this.permissionsOf(scope).has(permission)) return route.rule.allowed;
      return route.rule.denied;
    }
    return this.unmatched;
  }

  permissionsOf(scope: string): ReadonlySet<Permission> {
    return this.grants.get(scope) ?? EMPTY_PERMISSIONS;
  }

  limitsOf(plan: string): PlanLimits {
    return this.plans.get(plan) ?? this.defaultPlan;
  }
}

// Results are built once per rule so a request allocates nothing beyond its normalised path.
function compileRule(spec: PolicyDocument['rules'][number]): CompiledRule {
  const permission = spec.any_valid_key === true ? null : (spec.permission ?? null);
  const enforce = spec.enforce ?? true;
  const inference = spec.inference === true ? ({ inference: true } as const) : {};
  const allowed: AuthorizeResult = Object.freeze({ kind: 'allow', permission, ...inference });
  if (permission === null) return { permission, allowed, denied: allowed };
  const denied: AuthorizeResult = Object.freeze(enforce ? { kind: 'insufficient_scope', permission } : { kind: 'shadow_deny', permission, ...inference });
  return { permission, allowed, denied };
}

function matchSegments(pattern: readonly string[], pi: number, segments: readonly string[], si: number): boolean {
  for (; pi < pattern.length; pi++, si++) {
    const p = pattern[pi];
    if (p === ANY_SEGMENTS) {
      if (pi === pattern.length - 1) return true;
      for (let k = si; k <= segments.length; k++) {
        if (matchSegments(pattern, pi + 1, segments, k)) return true;
      }
      return false;
    }
    if (si >= segments.length) return false;
    if (p !== ONE_SEGMENT && p !== segments[si]) return false;
  }
  return si === segments.length;
}

function compileTokens(t: NonNullable<PolicyDocument['tokens']>): TokenPolicy {
  const price = (p: { input_per_million: number; output_per_million: number; default_max_output: number }): ModelPrice =>
    Object.freeze({ inputPerMillion: p.input_per_million, outputPerMillion: p.output_per_million, defaultMaxOutput: p.default_max_output });
  const fallback = price(t.default_model);
  const models = new Map(Object.entries(t.models).map(([name, p]) => [name, price(p)]));
  return Object.freeze({
    currency: t.currency,
    priceOf: (model: string) => models.get(model) ?? fallback,
    unreadableBody: t.unreadable_body,
    unreadableBodyTokens: t.unreadable_body_tokens,
  });
}
