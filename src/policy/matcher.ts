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
  | { kind: 'allow'; permission: Permission | null }
  | { kind: 'shadow_deny'; permission: Permission }
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

  constructor(
    readonly source: string,
    policy: PolicyDocument,
  ) {
    this.scopes = Object.freeze(Object.keys(policy.scopes));
    this.forwardMetadata = Object.freeze([...new Set(policy.forward_metadata)]);
    this.grants = new Map(Object.entries(policy.scopes).map(([scope, permissions]) => [scope, new Set(permissions)]));
    this.unmatched = policy.default_action === 'allow' ? DEFAULT_ALLOW : NO_ROUTE;
    const toLimit = (l: { requests: number; window: number; burst?: number | undefined } | undefined): RequestLimit | undefined =>
      l && { requests: l.requests, windowMs: l.window, burst: l.burst ?? Math.max(1, Math.ceil(l.requests / 10)) };
    this.plans = new Map(
      Object.entries(policy.plans).map(([name, p]) => {
        const limits: PlanLimits = {};
        const account = toLimit(p.account);
        const key = toLimit(p.key);
        if (account) limits.account = account;
        if (key) limits.key = key;
        return [name, Object.freeze(limits)];
      }),
    );
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
  const allowed: AuthorizeResult = Object.freeze({ kind: 'allow', permission });
  if (permission === null) return { permission, allowed, denied: allowed };
  const denied: AuthorizeResult = Object.freeze({ kind: enforce ? 'insufficient_scope' : 'shadow_deny', permission });
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
