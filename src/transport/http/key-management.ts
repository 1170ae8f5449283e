// The key management calls (create, list, revoke, me) for an authenticated caller, free of HTTP details.
import { z } from 'zod';
import type { Identity } from '../../check/decision.js';
import type { Clock } from '../../time/clock.js';
import type { AuditActor } from '../../keys/audit.js';
import { effectiveConstraints } from '../../keys/constraints.js';
import { isKeyId } from '../../keys/ids.js';
import { tokenLimitsInputSchema } from '../../keys/token-limits.js';
import { keyMetadataSchema } from '../../keys/metadata.js';
import { keyNameProblem, keyView, REVOKED_CACHE_NOT_UPDATED, type KeyService } from '../../keys/management.js';
import type { Logger } from '../../observability/logger.js';
import type { CompiledPolicy } from '../../policy/policy.js';
import { ApiError, ApiErrorCode, invalidRequest } from './errors.js';
import type { TokenGate } from '../../budget/gate.js';

export interface KeyManagementDeps {
  keys: KeyService;
  /** Read per call, so a policy reload changes the known scopes at once. */
  policy: () => Pick<CompiledPolicy, 'scopes' | 'permissionsOf'> & Partial<Pick<CompiledPolicy, 'limitsOf' | 'tokens'>>;
  /** Token limits and what remains of them, for /auth/me (budget/gate.ts). */
  tokens?: Pick<TokenGate, 'status'>;
  clock: Clock;
  logger: Logger;
  /** Live (not revoked, not expired) keys an account may hold; creation beyond it is refused. */
  maxKeysPerAccount: number;
  /** The longest overlap a roll may ask for (KEY_ROLL_MAX_OVERLAP_SECONDS). */
  maxRollOverlapSeconds: number;
}

const createKeyBody = z.strictObject({
  name: z
    .string()
    .trim()
    .superRefine((s, ctx) => {
      const problem = keyNameProblem(s);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
  scope: z.string().optional(),
  expires_at: z.iso
    .datetime({ offset: true, error: 'must be an ISO 8601 date-time with a time zone, e.g. 2030-01-31T00:00:00Z' })
    .nullable()
    .optional(),
  allowed_cidrs: z.array(z.string()).nullable().optional(),
  metadata: keyMetadataSchema.nullable().optional(),
  // LLM limits (keys/token-limits.ts): no more than the calling key's own.
  ...tokenLimitsInputSchema.shape,
});

const rollKeyBody = (maxSeconds: number) =>
  z.strictObject({
    overlap_seconds: z
      .number()
      .int('must be a whole number of seconds')
      .min(0, 'must be 0 or more')
      .max(maxSeconds, `must be at most ${maxSeconds} (KEY_ROLL_MAX_OVERLAP_SECONDS)`),
  });

const keyNotFound = (): ApiError =>
  // The same answer for an unknown id and another account's key: ids of other accounts are not confirmed.
  invalidRequest(ApiErrorCode.key_not_found, 'No API key with that id exists in your account.', 'id', 404);

const keyNotLive = (keyId: string): ApiError =>
  new ApiError(409, 'invalid_request_error', ApiErrorCode.key_not_live, `Key ${keyId} is revoked or expired; there is nothing to roll.`, 'id');

export class KeyManagement {
  constructor(private readonly deps: KeyManagementDeps) {}

  /** POST /api/v1/auth/api-keys: the new key with its secret, the only time the secret is returned. */
  async create(caller: Identity, body: unknown, requestId: string): Promise<Record<string, unknown>> {
    const input = parseCreateBody(body);
    const policy = this.deps.policy();
    const scope = input.scope ?? caller.scope;
    if (!policy.scopes.includes(scope)) {
      throw invalidRequest(ApiErrorCode.invalid_value, `Invalid value for 'scope': must be one of ${policy.scopes.join(', ')}.`, 'scope');
    }
    // A key may hand out at most what it holds itself.
    const own = policy.permissionsOf(caller.scope);
    const beyond = [...policy.permissionsOf(scope)].filter((p) => !own.has(p));
    if (beyond.length > 0) {
      throw new ApiError(403, 'permission_error', ApiErrorCode.scope_not_allowed,
        `A key with scope "${caller.scope}" cannot create a key with scope "${scope}": it would grant ${beyond.join(', ')}.`, 'scope');
    }
    // The new key lives no longer, and runs no faster, than the key that makes it.
    const requestedExpiry = input.expires_at === undefined ? undefined : input.expires_at === null ? null : new Date(input.expires_at);
    const tokenLimits = { tokens_per_minute: input.tokens_per_minute, budget: input.budget, allowed_models: input.allowed_models };
    const constraints = effectiveConstraints(caller, { expiresAt: requestedExpiry, allowedCidrs: input.allowed_cidrs, tokenLimits }, this.deps.clock.now());
    if (!constraints.ok) throw invalidRequest(ApiErrorCode.invalid_value, constraints.message, constraints.param);

    const created = await this.deps.keys.createKey(
      { accountId: caller.accountId, name: input.name, scope, expiresAt: constraints.expiresAt, rateLimitRpm: constraints.keyRpm, allowedCidrs: constraints.allowedCidrs, metadata: input.metadata ?? null, tokenLimits: constraints.tokenLimits },
      this.actor(caller, requestId),
      { maxLiveKeys: this.deps.maxKeysPerAccount },
    );
    if (created.kind === 'limit_reached') {
      throw invalidRequest(ApiErrorCode.key_limit_reached,
        `This account already has ${created.limit} active API keys, the most allowed. Revoke keys you no longer use, then try again.`, null, 409);
    }
    this.deps.logger.info(
      { request_id: requestId, account_id: caller.accountId, key_id: created.key.id, actor_key_id: caller.keyId, scope },
      'api key created',
    );
    return { ...keyView(created.key), key: created.secret };
  }

  /** GET /api/v1/auth/api-keys: the caller's account's keys, revoked ones included, in creation order. */
  async list(caller: Identity): Promise<Record<string, unknown>> {
    const keys = await this.deps.keys.listKeys(caller.accountId);
    return { object: 'list', data: keys.map(keyView) };
  }

  /**
   * DELETE /api/v1/auth/api-keys/{id}: returns once no replica accepts the key.
   * Revoking again answers 200 with the first revocation time (and repairs the
   * shared cache); a revoke whose marker could not reach Redis answers 503.
   */
  async revoke(caller: Identity, keyId: string, requestId: string): Promise<Record<string, unknown>> {
    if (!isKeyId(keyId)) throw keyNotFound();
    const outcome = await this.deps.keys.revoke(keyId, caller.accountId, this.actor(caller, requestId));
    if (!outcome) throw keyNotFound();
    this.deps.logger.info(
      { request_id: requestId, account_id: caller.accountId, key_id: keyId, actor_key_id: caller.keyId, cache: outcome.cache },
      'api key revoked',
    );
    if (outcome.cache === 'not_updated') {
      throw new ApiError(503, 'server_error', ApiErrorCode.revocation_cache_not_updated, REVOKED_CACHE_NOT_UPDATED, null, [['retry-after', '1']]);
    }
    return { ...keyView(outcome.key), revoked: true };
  }

  /**
   * POST /api/v1/auth/api-keys/{id}/roll: a successor with the same name, scope, expiry and limit,
   * its secret shown this once, and the old key's expiry brought forward to the end of the overlap.
   * Returns once every replica enforces the old key's new expiry. The caller needs what creating
   * the successor would need: no scope, expiry or limit beyond its own.
   */
  async roll(caller: Identity, keyId: string, body: unknown, requestId: string): Promise<Record<string, unknown>> {
    if (!isKeyId(keyId)) throw keyNotFound();
    const input = parseBody(rollKeyBody(this.deps.maxRollOverlapSeconds), body, '{"overlap_seconds": 3600}');
    const target = await this.deps.keys.getKey(keyId);
    if (!target || target.accountId !== caller.accountId) throw keyNotFound();
    const policy = this.deps.policy();
    const own = policy.permissionsOf(caller.scope);
    const beyond = [...policy.permissionsOf(target.scope)].filter((p) => !own.has(p));
    if (beyond.length > 0) {
      throw new ApiError(403, 'permission_error', ApiErrorCode.scope_not_allowed,
        `A key with scope "${caller.scope}" cannot roll a key with scope "${target.scope}": its successor would grant ${beyond.join(', ')}.`, 'id');
    }
    // The successor keeps the old key's expiry and limit: no more than the caller may hand out.
    const now = this.deps.clock.now();
    if (target.revokedAt !== null || (target.expiresAt !== null && target.expiresAt.getTime() <= now)) throw keyNotLive(keyId);
    const targetTokens = target.tokenLimits ?? {};
    const constraints = effectiveConstraints(caller, {
      expiresAt: target.expiresAt, keyRpm: target.rateLimitRpm, allowedCidrs: target.allowedCidrs,
      tokenLimits: { tokens_per_minute: targetTokens.tokens_per_minute ?? null, budget: targetTokens.budget ?? null, allowed_models: targetTokens.allowed_models ? [...targetTokens.allowed_models] : null },
    }, now);
    if (!constraints.ok) {
      const what =
        constraints.param === 'expires_at' ? `expire later than the calling key (${caller.expiresAt?.toISOString()})`
        : constraints.param === 'rate_limit_rpm' ? `have a higher request limit than the calling key (${caller.keyRpm}/min)`
        : constraints.param === 'allowed_cidrs' ? 'be usable from addresses outside the calling key\'s allowed_cidrs'
        : `have a wider ${constraints.param} than the calling key`;
      throw new ApiError(403, 'permission_error', ApiErrorCode.scope_not_allowed, `This key cannot roll key ${keyId}: its successor would ${what}.`, 'id');
    }

    const outcome = await this.deps.keys.roll(keyId, caller.accountId, input.overlap_seconds * 1000, this.actor(caller, requestId));
    if (!outcome) throw keyNotFound();
    if (outcome.kind === 'not_live') throw keyNotLive(keyId);
    if (outcome.kind === 'already_rolled') {
      throw new ApiError(409, 'invalid_request_error', ApiErrorCode.key_already_rolled,
        `Key ${keyId} was already rolled; roll its successor ${outcome.successorId} instead.`, 'id');
    }
    this.deps.logger.info(
      { request_id: requestId, account_id: caller.accountId, key_id: keyId, successor_key_id: outcome.successor.id, actor_key_id: caller.keyId, cache: outcome.cache },
      'api key rolled',
    );
    // The secret exists only in this answer, so a cache problem is reported in it rather than as an error.
    return { ...keyView(outcome.successor), key: outcome.secret, previous_key: keyView(outcome.old), cache: outcome.cache };
  }

  /** GET /api/v1/auth/me: the account and the calling key. */
  async me(caller: Identity): Promise<Record<string, unknown>> {
    const [account, key] = await Promise.all([this.deps.keys.getAccount(caller.accountId), this.deps.keys.getKey(caller.keyId)]);
    if (!account || !key) throw new Error(`the authenticated key ${caller.keyId} or its account is missing from Postgres`);
    const me: Record<string, unknown> = {
      object: 'auth.me',
      account: { id: account.id, email: account.email, plan: account.plan },
      key: { id: key.id, name: key.name, scope: key.scope, metadata: key.metadata },
    };
    const policy = this.deps.policy();
    if (this.deps.tokens && policy.limitsOf && policy.tokens) {
      // Token limits (row override, else plan) and what remains of each now.
      me.limits = await this.deps.tokens.status(
        { id: key.id, accountId: account.id, accountTokens: account.tokenLimits, keyTokens: key.tokenLimits },
        policy.limitsOf(account.plan),
        policy.tokens.currency,
      );
    }
    return me;
  }

  private actor(caller: Identity, requestId: string): AuditActor {
    return { keyId: caller.keyId, via: 'api', requestId };
  }
}

type CreateKeyInput = z.infer<typeof createKeyBody>;

/** Validates the create body; the first problem becomes a 400 naming the field. */
export function parseCreateBody(body: unknown): CreateKeyInput {
  return parseBody(createKeyBody, body, '{"name": "my-new-key"}');
}

function parseBody<T>(schema: z.ZodType<T>, body: unknown, example: string): T {
  const parsed = schema.safeParse(body);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const name = issue.keys[0]!.slice(0, 64);
    throw invalidRequest(ApiErrorCode.unknown_parameter, `Unrecognized request argument supplied: ${name}`, name);
  }
  const param = typeof issue.path[0] === 'string' ? issue.path[0] : null;
  if (param === null) {
    throw invalidRequest(ApiErrorCode.invalid_type, `The request body must be a JSON object, e.g. ${example}.`);
  }
  if (issue.code === 'invalid_type') {
    const present = typeof body === 'object' && body !== null && (body as Record<string, unknown>)[param] !== undefined;
    if (!present) throw invalidRequest(ApiErrorCode.missing_required_parameter, `Missing required parameter: '${param}'.`, param);
    throw invalidRequest(ApiErrorCode.invalid_type, `Invalid type for '${param}': expected ${issue.expected}.`, param);
  }
  throw invalidRequest(ApiErrorCode.invalid_value, `Invalid value for '${param}': ${issue.message}.`, param);
}
