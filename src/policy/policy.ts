// Route policy: validates the YAML file, compiles it into a matcher, and judges method + path + scope.
//
// Rule order: the first rule (in file order) whose method and path pattern match decides.
// Authors put narrow rules above broad ones (the upload rule above the generic knowledge-base
// write rule); a scope that lacks the permission of the first match is denied even if a later
// rule would have allowed it, so a broad rule can never widen a narrow one.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { LineCounter, isMap, isNode, isScalar, parseDocument, type Document } from 'yaml';
import { z } from 'zod';
import { normalizeSegments } from './normalize.js';

export type Permission = string;

export interface PolicyRuleMatch {
  permission: Permission | null; // null = any valid key
  enforce: boolean;
  ruleIndex: number;
}

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

export class PolicyError extends Error {
  // Every problem found, sorted by line; `message` is the first so a log line stays one line.
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems[0] ?? 'invalid policy');
    this.name = 'PolicyError';
    this.problems = problems;
  }
}

// Two levels up from src/policy/*.ts (tsx, vitest) and from dist/policy/*.js (tsc) alike.
export const DEFAULT_POLICY_PATH: string = fileURLToPath(new URL('../../policy/default.yaml', import.meta.url));

const HTTP_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);
const ANY_METHOD = '*';
const ONE_SEGMENT = '*';
const ANY_SEGMENTS = '**';
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

const limitSchema = z.strictObject({
  requests: z.number().int().positive(),
  window: durationSchema,
  // How many may arrive at once; default a tenth of `requests` (at least 1).
  burst: z.number().int().positive().optional(),
});

const planSchema = z.strictObject({ account: limitSchema.optional(), key: limitSchema.optional() });

const policySchema = z.strictObject({
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
});

type PolicyDocument = z.infer<typeof policySchema>;
type PathKey = string | number;

interface Problem {
  line: number;
  text: string;
}

interface CompiledRule {
  readonly match: PolicyRuleMatch;
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

export function compilePolicy(yamlText: string, source: string): CompiledPolicy {
  const lineCounter = new LineCounter();
  const doc = parseDocument(yamlText, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new PolicyError(
      doc.errors.map((err) => {
        const line = lineCounter.linePos(err.pos[0]).line;
        // A bare `*` in a method list is the likeliest way to write an alias by accident.
        const hint = err.message.includes('Alias') ? " (write a bare * as '*')" : '';
        return `${source}:${line}: YAML syntax error: ${firstLine(err.message)}${hint}`;
      }),
    );
  }

  let raw: unknown;
  try {
    raw = doc.toJS();
  } catch (err) {
    // toJS throws on alias bombs and unresolvable aliases, which parse leaves in place.
    throw new PolicyError([`${source}:1: ${err instanceof Error ? err.message : String(err)}`]);
  }

  const parsed = policySchema.safeParse(raw);
  const locator = new Locator(doc, lineCounter, source);
  if (!parsed.success) {
    throw new PolicyError(sortProblems(parsed.error.issues.flatMap((issue) => locator.fromIssue(issue))));
  }
  const crossProblems = crossCheck(parsed.data, locator);
  if (crossProblems.length > 0) throw new PolicyError(sortProblems(crossProblems));

  return new RoutePolicy(source, parsed.data);
}

export function loadPolicyFile(path: string): CompiledPolicy {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const reason = err instanceof Error && 'code' in err ? String(err.code) : String(err);
    throw new PolicyError([`${path}: cannot read policy file: ${reason}`]);
  }
  return compilePolicy(text, path);
}

class RoutePolicy implements CompiledPolicy {
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

    policy.rules.forEach((spec, ruleIndex) => {
      const rule = compileRule(spec, ruleIndex);
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
      const { permission } = route.rule.match;
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
function compileRule(spec: PolicyDocument['rules'][number], ruleIndex: number): CompiledRule {
  const permission = spec.any_valid_key === true ? null : (spec.permission ?? null);
  const enforce = spec.enforce ?? true;
  const match: PolicyRuleMatch = Object.freeze({ permission, enforce, ruleIndex });
  const allowed: AuthorizeResult = Object.freeze({ kind: 'allow', permission });
  if (permission === null) return { match, allowed, denied: allowed };
  const denied: AuthorizeResult = Object.freeze({ kind: enforce ? 'insufficient_scope' : 'shadow_deny', permission });
  return { match, allowed, denied };
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

function crossCheck(policy: PolicyDocument, locator: Locator): Problem[] {
  const problems: Problem[] = [];
  const used = new Set<Permission>();
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
  if (Object.keys(policy.plans).length > 0 && !(policy.default_plan in policy.plans)) {
    problems.push(locator.at(['default_plan'], `default plan ${JSON.stringify(policy.default_plan)} is not one of the plans`));
  }
  return problems;
}

// Turns a path into the YAML document into "file:line: path: what".
class Locator {
  constructor(
    private readonly doc: Document,
    private readonly lineCounter: LineCounter,
    private readonly source: string,
  ) {}

  fromIssue(issue: z.core.$ZodIssue): Problem[] {
    const path = issue.path.filter((key): key is PathKey => typeof key === 'string' || typeof key === 'number');
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => this.atKey(path, key, `unknown key ${JSON.stringify(key)}`));
    }
    const last = path.at(-1);
    if (issue.code === 'invalid_type' && last !== undefined && !this.doc.hasIn(path)) {
      return [this.at(path.slice(0, -1), `missing required key ${JSON.stringify(String(last))}`)];
    }
    return [this.at(path, issue.message.replace(/^Invalid input: /, ''))];
  }

  at(path: readonly PathKey[], what: string): Problem {
    return this.problem(this.lineOf(path), path, what);
  }

  // Points at the key itself, since the complaint is about the key and not its value.
  atKey(mapPath: readonly PathKey[], key: string, what: string): Problem {
    const map = mapPath.length === 0 ? this.doc.contents : this.doc.getIn(mapPath, true);
    if (isMap(map)) {
      const pair = map.items.find((item) => isScalar(item.key) && String(item.key.value) === key);
      if (pair && isNode(pair.key) && pair.key.range) {
        return this.problem(this.lineCounter.linePos(pair.key.range[0]).line, mapPath, what);
      }
    }
    return this.problem(this.lineOf(mapPath), mapPath, what);
  }

  private lineOf(path: readonly PathKey[]): number {
    for (let n = path.length; n >= 0; n--) {
      const node = n === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n), true);
      if (isNode(node) && node.range) return this.lineCounter.linePos(node.range[0]).line;
    }
    return 1;
  }

  private problem(line: number, path: readonly PathKey[], what: string): Problem {
    const where = formatPath(path);
    return { line, text: `${this.source}:${line}: ${where === '' ? '' : `${where}: `}${what}` };
  }
}

function formatPath(path: readonly PathKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? key : `.${key}`;
  }
  return out;
}

function sortProblems(problems: Problem[]): string[] {
  return problems.sort((a, b) => a.line - b.line).map((p) => p.text);
}

function firstLine(text: string): string {
  return text.split('\n', 1)[0] ?? text;
}
