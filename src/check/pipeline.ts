// The decision pipeline: credential -> key shape -> key record -> route policy -> Decision.
import type { RequestAttributes } from './attributes.js';
import { extractCredential } from './credential.js';
import type { Decision, Identity } from './decision.js';
import { checkKeyShape, type KeyEnvironment } from '../keys/format.js';
import type { KeyHash, KeyHasher } from '../keys/hash.js';
import type { KeyRecord } from '../keys/repository.js';
import type { FailedAuthLimiter } from './failed-auth.js';
import type { RateLimitOutcome } from '../ratelimit/limiter.js';
import { limitsFor, type Limit } from '../ratelimit/gcra.js';
import type { PlanLimits } from '../policy/policy.js';
import type { AuthorizeResult } from '../policy/policy.js';
import { StoreUnavailableError } from '../store/errors.js';
import { systemClock, type Clock } from '../time/clock.js';
import { LookupThrottledError, type PostgresGuard } from '../keys/lookup-guard.js';
import { canonicalMethod } from './method.js';
import { ipAllowListDenial } from './ip-allow-list.js';
import { forwardedMetadata } from './metadata-forward.js';
import type { TokenPolicy } from '../policy/policy.js';
import type { TokenDecision, AdmitInput } from '../budget/gate.js';
import type { LimitState } from '../ratelimit/gcra.js';


/** The part of a compiled policy the pipeline uses; read per call so a reload takes effect at once. */
export interface RouteAuthorizer {
  authorize(method: string, rawPath: string, scope: string): AuthorizeResult;
  limitsOf(plan: string): PlanLimits;
  readonly forwardMetadata?: readonly string[];
  readonly tokens?: TokenPolicy | undefined;
}

/** Token limits, budgets and model allow-lists on inference routes (budget/gate.ts). */
export interface TokenAdmission {
  admit(input: AdmitInput): Promise<TokenDecision>;
}

/**
 * Key look-up through the tiers (keys/resolver.ts). Memory answers synchronously, so an allow from
 * memory costs no promise; a miss returns a promise of the look-up through the other tiers, which
 * asks `beforePostgres` only when the caches miss too (keys/lookup-guard.ts).
 */
export interface KeySource {
  find(candidates: readonly KeyHash[], beforePostgres?: PostgresGuard): KeyRecord | null | Promise<KeyRecord | null>;
}

/** Per-account and per-key request limits (ratelimit/limiter.ts). */
export interface RequestLimiter {
  /** A promise when Redis is asked; an answer from memory (already over, or the local limiter) is synchronous. */
  check(limits: readonly Limit[], accountId: string, keyId: string): RateLimitOutcome | Promise<RateLimitOutcome>;
}

export interface PipelineDeps {
  environment: KeyEnvironment;
  hasher: KeyHasher;
  keys: KeySource;
  /** Throttles sources that keep failing before their uncached keys reach Postgres. */
  failedAuth?: FailedAuthLimiter;
  /** Per-key and per-account request limits; absent: no rate limiting. */
  rateLimiter?: RequestLimiter;
  /** Token limits, budgets and model allow-lists; absent: inference routes are judged like any other. */
  tokens?: TokenAdmission;
  /** Told about every allowed key (last_used_at, batched). */
  usage?: { touch(keyId: string): void };
  policy: () => RouteAuthorizer;
  clock?: Clock;
}

export class CheckPipeline {
  private readonly clock: Clock;

  constructor(private readonly deps: PipelineDeps) {
    this.clock = deps.clock ?? systemClock;
  }

  /**
   * Decides one request. Denials are returned as values; only faults that are
   * not the caller's (a store outage) become `auth_unavailable`. Anything else
   * thrown (or rejected) is a bug and propagates to the transport's boundary.
   *
   * Synchronous until a store has to be asked: a key held in memory, with no rate limiter and no
   * token gate on the route, is decided without a promise (and so is every denial made before a
   * store is asked); otherwise a promise of the decision.
   */
  decide(attrs: RequestAttributes): Decision | Promise<Decision> {
    // 0. A request without a valid method is malformed whoever sends it.
    const method = canonicalMethod(attrs.method);
    if (method === undefined) return { allow: false, reason: 'invalid_request', detail: attrs.method === '' ? 'missing_method' : 'invalid_method' };

    // 1. Credential from the headers.
    const credential = extractCredential(attrs);
    if (credential.kind === 'missing') return { allow: false, reason: 'missing_api_key' };
    if (credential.kind === 'invalid') return { allow: false, reason: 'invalid_api_key', detail: credential.problem };

    // 2. Shape and checksum, offline: a bad string never reaches a store, so it is not counted either.
    const shape = checkKeyShape(credential.key, this.deps.environment);
    if (!shape.ok) return { allow: false, reason: 'invalid_api_key', detail: shape.problem };

    // 3. The key's record: memory, then Redis; a source that keeps failing goes no further than the caches.
    const { failedAuth } = this.deps;
    const candidates = this.deps.hasher.candidates(credential.key);
    let found: KeyRecord | null | Promise<KeyRecord | null>;
    try {
      found = this.deps.keys.find(candidates, failedAuth && (() => failedAuth.blockedForMs(attrs.sourceAddress)));
    } catch (err) {
      return lookupFailure(err);
    }
    if (found instanceof Promise) return found.then((record) => this.withRecord(attrs, method, record), lookupFailure);
    return this.withRecord(attrs, method, found);
  }

  private withRecord(attrs: RequestAttributes, method: string, record: KeyRecord | null): Decision | Promise<Decision> {
    const { failedAuth } = this.deps;
    if (!record) {
      failedAuth?.recordFailure(attrs.sourceAddress);
      return { allow: false, reason: 'invalid_api_key', detail: 'unknown' };
    }
    const key = record;
    // A record is its own Identity (keys/repository.ts): one object per key and version, never
    // changed, so what is built from it can be kept with it (transport/grpc/check.ts).
    const identity: Identity = key;
    const invalid = this.invalidity(key);
    if (invalid) {
      failedAuth?.recordFailure(attrs.sourceAddress);
      return invalid;
    }
    const ipDenied = ipAllowListDenial(key, attrs.sourceAddress);
    if (ipDenied) return ipDenied;

    // 4. Route policy against the key's scope.
    const policy = this.deps.policy();
    const route = policy.authorize(method, attrs.path, key.scope);
    let permission: string | null;
    let shadowDenied: string | undefined;
    switch (route.kind) {
      case 'allow':
        permission = route.permission;
        break;
      case 'shadow_deny':
        permission = route.permission;
        shadowDenied = route.permission;
        break;
      case 'insufficient_scope':
        return { allow: false, reason: 'insufficient_scope', identity, permission: route.permission };
      case 'no_route':
        return { allow: false, reason: 'route_not_allowed', identity };
      case 'invalid_path':
        return { allow: false, reason: 'invalid_path', identity, detail: route.reason };
    }
    const routed: Routed = { key, policy, permission, shadowDenied, plan: policy.limitsOf(key.plan) };

    // 5. On inference routes: the model allow-list, then tokens per minute and budgets reserved
    //    together with the request limits, in one Redis call (budget/gate.ts).
    const tokenPolicy = route.inference === true ? policy.tokens : undefined;
    const gate = tokenPolicy ? this.deps.tokens : undefined;
    if (gate && tokenPolicy) {
      const requestLimits = this.deps.rateLimiter ? limitsFor(routed.plan, key) : [];
      const input = { key, plan: routed.plan, tokens: tokenPolicy, requestLimits, body: attrs.body, bodyTruncated: attrs.bodyTruncated === true };
      return gate.admit(input).then((tokens) => this.afterTokens(routed, tokens));
    }
    return this.limited(routed, undefined);
  }

  /** The token gate's answer: a denial, or on to the request limits (unless decided with the tokens). */
  private afterTokens(routed: Routed, tokens: TokenDecision): Decision | Promise<Decision> {
    const identity: Identity = routed.key;
    switch (tokens.kind) {
      case 'model_not_allowed':
        return { allow: false, reason: 'model_not_allowed', identity, model: tokens.model };
      case 'invalid_body':
        return { allow: false, reason: 'invalid_body', identity, detail: tokens.problem };
      case 'insufficient_quota':
        return { allow: false, reason: 'insufficient_quota', identity, detail: tokens.deniedBy };
      case 'unavailable':
        return { allow: false, reason: 'auth_unavailable', detail: tokens.detail };
      case 'request_too_large':
        return { allow: false, reason: 'rate_limit_exceeded', identity, retryAfterMs: 60_000, detail: 'tokens_request_too_large', tokenStates: [tokens.limit] };
      case 'rate_limited':
        return {
          allow: false, reason: 'rate_limit_exceeded', identity, retryAfterMs: tokens.retryAfterMs,
          detail: tokens.by === 'tokens' ? `tokens_${tokens.deniedBy}` : tokens.deniedBy, states: tokens.requestStates, tokenStates: tokens.tokenStates,
        };
      case 'allowed':
        return this.allowed(routed, tokens.requestStates, tokens);
      case 'none':
        return this.limited(routed, tokens);
    }
  }

  // 6. Request limits, per account and per key, checked together.
  private limited(routed: Routed, tokens: TokenDecision | undefined): Decision | Promise<Decision> {
    const limiter = this.deps.rateLimiter;
    if (!limiter) return this.allowed(routed, undefined, tokens);
    const { key } = routed;
    const outcome = limiter.check(limitsFor(routed.plan, key), key.accountId, key.id);
    if (outcome instanceof Promise) return outcome.then((o) => this.afterLimits(routed, o, tokens));
    return this.afterLimits(routed, outcome, tokens);
  }

  private afterLimits(routed: Routed, outcome: RateLimitOutcome, tokens: TokenDecision | undefined): Decision {
    if (!outcome.allowed) {
      return { allow: false, reason: 'rate_limit_exceeded', identity: routed.key, retryAfterMs: outcome.retryAfterMs, detail: outcome.deniedBy ?? 'account', states: outcome.states };
    }
    return this.allowed(routed, outcome.states, tokens);
  }

  private allowed(routed: Routed, rateLimit: readonly LimitState[] | undefined, tokens: TokenDecision | undefined): Decision {
    const { key } = routed;
    this.deps.usage?.touch(key.id);
    const allow: Decision = { allow: true, identity: key, permission: routed.permission };
    if (routed.shadowDenied !== undefined) allow.shadowDenied = routed.shadowDenied;
    if (rateLimit && rateLimit.length > 0) allow.rateLimit = rateLimit;
    if (tokens) allow.inference = true;
    if (tokens?.kind === 'allowed') {
      if (tokens.tokenStates.length > 0) allow.tokenLimits = tokens.tokenStates;
      if (tokens.reservationId !== undefined) allow.reservationId = tokens.reservationId;
    }
    const forwarded = forwardedMetadata(key, routed.policy.forwardMetadata);
    if (forwarded.length > 0) allow.metadata = forwarded;
    return allow;
  }

  /** Revoked or expired: the same 401 as an unknown key, told apart only in logs and metrics. */
  private invalidity(record: KeyRecord): Decision | undefined {
    if (record.revokedAt) return { allow: false, reason: 'invalid_api_key', detail: 'revoked', identity: record };
    if (record.expiresAt && record.expiresAt.getTime() <= this.clock.now()) {
      return { allow: false, reason: 'invalid_api_key', detail: 'expired', identity: record };
    }
    return undefined;
  }
}

/** What step 4 settled, carried to the steps that may wait on a store. */
interface Routed {
  key: KeyRecord;
  policy: RouteAuthorizer;
  permission: string | null;
  shadowDenied: string | undefined;
  plan: PlanLimits;
}

/** A look-up that threw or rejected: throttled or a store outage is a denial; anything else is a bug, rethrown. */
function lookupFailure(err: unknown): Decision {
  if (err instanceof LookupThrottledError) {
    return { allow: false, reason: 'rate_limit_exceeded', retryAfterMs: err.retryAfterMs, detail: 'failed_auth_per_source' };
  }
  if (err instanceof StoreUnavailableError) return { allow: false, reason: 'auth_unavailable', detail: `${err.store}_${err.kind}` };
  throw err;
}
