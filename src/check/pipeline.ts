// The decision pipeline: credential -> key shape -> key record -> route policy -> Decision.
import type { RequestAttributes } from './attributes.js';
import { extractCredential } from './credential.js';
import type { Decision, Identity } from './decision.js';
import { checkKeyShape, type KeyEnvironment } from '../keys/format.js';
import type { KeyHasher } from '../keys/hash.js';
import type { KeyLookup, KeyRecord } from '../keys/repository.js';
import type { AuthorizeResult } from '../policy/policy.js';
import { StoreUnavailableError } from '../store/errors.js';

export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };

/** The part of a compiled policy the pipeline uses; read per call so a reload takes effect at once. */
export interface RouteAuthorizer {
  authorize(method: string, rawPath: string, scope: string): AuthorizeResult;
}

export interface PipelineDeps {
  environment: KeyEnvironment;
  hasher: KeyHasher;
  keys: KeyLookup;
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
   * thrown is a bug and propagates to the transport's boundary.
   */
  async decide(attrs: RequestAttributes): Promise<Decision> {
    // 1. Credential from the headers.
    const credential = extractCredential(attrs);
    if (credential.kind === 'missing') return { allow: false, reason: 'missing_api_key' };
    if (credential.kind === 'invalid') return { allow: false, reason: 'invalid_api_key', detail: credential.problem };

    // 2. Shape and checksum, offline: a bad string never reaches a store.
    const shape = checkKeyShape(credential.key, this.deps.environment);
    if (!shape.ok) return { allow: false, reason: 'invalid_api_key', detail: shape.problem };

    // 3. The key's record.
    let record: KeyRecord | null;
    try {
      record = await this.deps.keys.findByHash(this.deps.hasher.candidates(credential.key));
    } catch (err) {
      if (err instanceof StoreUnavailableError) return { allow: false, reason: 'auth_unavailable', detail: `${err.store}_${err.kind}` };
      throw err;
    }
    if (!record) return { allow: false, reason: 'invalid_api_key', detail: 'unknown' };
    const identity: Identity = { accountId: record.accountId, keyId: record.id, scope: record.scope, plan: record.plan };
    if (record.revokedAt) return { allow: false, reason: 'invalid_api_key', detail: 'revoked', identity };
    if (record.expiresAt && record.expiresAt.getTime() <= this.clock.now()) {
      return { allow: false, reason: 'invalid_api_key', detail: 'expired', identity };
    }

    // 4. Route policy against the key's scope.
    const route = this.deps.policy().authorize(attrs.method, attrs.path, record.scope);
    switch (route.kind) {
      case 'allow':
        return { allow: true, identity, permission: route.permission };
      case 'shadow_deny':
        return { allow: true, identity, permission: route.permission, shadowDenied: route.permission };
      case 'insufficient_scope':
        return { allow: false, reason: 'insufficient_scope', identity, permission: route.permission };
      case 'no_route':
        return { allow: false, reason: 'route_not_allowed', identity };
      case 'invalid_path':
        return { allow: false, reason: 'invalid_path', identity, detail: route.reason };
    }
  }
}
