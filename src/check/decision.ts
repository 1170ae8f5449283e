// The Decision value every check ends in: an allow, or a denial with its reason.
import type { LimitState } from '../ratelimit/gcra.js';
import type { ForwardedField } from './metadata-forward.js';
import type { TokenLimits } from '../keys/token-limits.js';
import type { TokenState } from '../budget/gate.js';

/** Error codes a client can see (OpenAI error shape `error.code`); also metric labels and log fields. */
export const DenyReason = {
  /** No Bearer token and no X-API-Key value. */
  missing_api_key: 'missing_api_key',
  /** Malformed, unknown, revoked, expired, conflicting or repeated credentials: one answer for all. */
  invalid_api_key: 'invalid_api_key',
  /** Valid key used from an address outside its IP allow-list. */
  ip_not_allowed: 'ip_not_allowed',
  /** Valid key whose scope does not grant the route's permission. */
  insufficient_scope: 'insufficient_scope',
  /** Valid key, but no policy rule matches the route and the policy denies by default. */
  route_not_allowed: 'route_not_allowed',
  /** The request itself is malformed: a missing method, or one that is not an HTTP token. */
  invalid_request: 'invalid_request',
  /** The path cannot be normalised safely (encoded separator or NUL, `..` above the root). */
  invalid_path: 'invalid_path',
  /** Per-key or per-account request limit, or tokens per minute, reached. */
  rate_limit_exceeded: 'rate_limit_exceeded',
  /** The request names a model outside the key's or account's `allowed_models`. */
  model_not_allowed: 'model_not_allowed',
  /** The spend budget of the key or account is exhausted for its period (OpenAI's code; not retryable). */
  insufficient_quota: 'insufficient_quota',
  /** An inference route's body is missing, truncated or unparsable, and the policy denies that. */
  invalid_body: 'invalid_body',
  /** The stores could not verify the key in time; it may be fine, so never a 401. */
  auth_unavailable: 'auth_unavailable',
} as const;
export type DenyReason = (typeof DenyReason)[keyof typeof DenyReason];

/** Why a key was invalid: logged and counted, never told to the client. */
export type InvalidDetail =
  | 'repeated_header'
  | 'conflicting_headers'
  | 'malformed_bearer'
  | 'malformed'
  | 'bad_checksum'
  | 'wrong_environment'
  | 'unknown'
  | 'revoked'
  | 'expired';

export interface Identity {
  accountId: string;
  keyId: string;
  scope: string;
  plan: string;
  /** The key's own expiry and per-key limit: a key it creates may not outlive or outrun it (keys/constraints.ts). */
  expiresAt: Date | null;
  keyRpm: number | null;
  /** Its IP allow-list: a key it creates may not be usable from anywhere else (keys/constraints.ts). */
  allowedCidrs?: readonly string[] | null;
  /** Its own token limits: a key it creates may not spend more (keys/token-limits.ts). */
  tokenLimits?: TokenLimits | null;
}

export interface Allow {
  allow: true;
  identity: Identity;
  /** The permission the matched rule required; null when any valid key may call the route. */
  permission: string | null;
  /** Set when a shadow (enforce: false) rule would have denied: allowed, but logged and counted. */
  shadowDenied?: string;
  /** The request limits that applied, for the x-ratelimit-* response headers. */
  rateLimit?: readonly LimitState[];
  /** Key metadata the policy forwards upstream (check/metadata-forward.ts). */
  metadata?: readonly ForwardedField[];
  /** Tokens per minute that applied, for the x-ratelimit-*-tokens headers. */
  tokenLimits?: readonly TokenState[];
  /** The signed reservation id, sent upstream (x-ryvion-reservation-id, metadata `reservation_id`). */
  reservationId?: string;
  /** Allowed on an inference route: a client-sent reservation id header is removed when the gate set none. */
  inference?: true;
}

export type Deny =
  | { allow: false; reason: 'missing_api_key' }
  | { allow: false; reason: 'invalid_api_key'; detail: InvalidDetail; identity?: Identity }
  | { allow: false; reason: 'insufficient_scope'; identity: Identity; permission: string }
  | { allow: false; reason: 'ip_not_allowed'; identity: Identity }
  | { allow: false; reason: 'route_not_allowed'; identity: Identity }
  | { allow: false; reason: 'invalid_request'; detail: 'missing_method' | 'invalid_method' }
  | { allow: false; reason: 'invalid_path'; identity: Identity; detail: string }
  | {
      allow: false;
      reason: 'rate_limit_exceeded';
      /** Absent when the source address is throttled for failed authentications, before any key is known. */
      identity?: Identity;
      retryAfterMs: number;
      detail: 'key' | 'account' | 'failed_auth_per_source' | 'tokens_key' | 'tokens_account' | 'tokens_request_too_large';
      states?: readonly LimitState[];
      tokenStates?: readonly TokenState[];
    }
  | { allow: false; reason: 'model_not_allowed'; identity: Identity; model: string }
  | { allow: false; reason: 'insufficient_quota'; identity: Identity; detail: 'key' | 'account' }
  | { allow: false; reason: 'invalid_body'; identity: Identity; detail: 'missing' | 'truncated' | 'unparsable' | 'no_model' }
  | { allow: false; reason: 'auth_unavailable'; detail: string };

export type Decision = Allow | Deny;
