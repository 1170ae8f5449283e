// Errors of the HTTP API: documented codes in the OpenAI error shape that the SDKs understand.
import type { OpenAIErrorType } from '../../check/outcomes.js';

/** `error.code` values the management API answers with (denials of the key itself use the Check codes). */
export const ApiErrorCode = {
  /** The body is not valid JSON, or is empty while content-type says JSON. */
  invalid_json: 'invalid_json',
  /** A required field is absent (`name` on create). */
  missing_required_parameter: 'missing_required_parameter',
  /** The body has a field the call does not take. */
  unknown_parameter: 'unknown_parameter',
  /** The body or a field has the wrong JSON type. */
  invalid_type: 'invalid_type',
  /** A field has a value the call refuses: empty or long name, unknown scope, bad or past expiry. */
  invalid_value: 'invalid_value',
  /** The request could not be read: bad framing or content-length, no Host, a URL that does not decode, too many header lines. */
  invalid_request: 'invalid_request',
  /** The new key's scope grants a permission the calling key's scope does not. */
  scope_not_allowed: 'scope_not_allowed',
  /** The account already holds MAX_KEYS_PER_ACCOUNT live keys. */
  key_limit_reached: 'key_limit_reached',
  /** No key with that id in the caller's account; another account's key gets the same answer. */
  key_not_found: 'key_not_found',
  /** The key to roll is revoked or expired. */
  key_not_live: 'key_not_live',
  /** The key was rolled before: roll its successor (named in the message) instead. */
  key_already_rolled: 'key_already_rolled',
  /** Secret scanning: the GitHub signature headers are missing, name an unknown key, or do not verify. */
  invalid_signature: 'invalid_signature',
  /** No route at this path. */
  not_found: 'not_found',
  /** The path exists, but not with this method (`allow` lists the methods). */
  method_not_allowed: 'method_not_allowed',
  /** The body is over the size limit. */
  request_too_large: 'request_too_large',
  /** A body whose content-type is not application/json. */
  unsupported_media_type: 'unsupported_media_type',
  /** Postgres did not answer in time; nothing was changed, retry. */
  service_unavailable: 'service_unavailable',
  /** Postgres did not confirm a COMMIT it was sent: the change may or may not have been made. */
  outcome_unknown: 'outcome_unknown',
  /** The key is revoked in Postgres and denied by every replica, but the revoked marker could not be written to Redis; revoke again. */
  revocation_cache_not_updated: 'revocation_cache_not_updated',
  /** A bug: logged and counted in ryvion_authz_internal_errors_total{transport="http"}. */
  internal_error: 'internal_error',
} as const;
export type ApiErrorCode = (typeof ApiErrorCode)[keyof typeof ApiErrorCode];

/** An answer other than success, thrown by handlers and written by the server's error handler. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    readonly type: OpenAIErrorType,
    readonly code: ApiErrorCode,
    message: string,
    /** The request field at fault, or null. */
    readonly param: string | null = null,
    readonly headers: ReadonlyArray<readonly [string, string]> = [],
  ) {
    super(message);
  }

  body(): string {
    return errorBody(this.type, this.code, this.message, this.param);
  }
}

export function errorBody(type: OpenAIErrorType, code: string, message: string, param: string | null): string {
  return JSON.stringify({ error: { message, type, param, code } });
}

export const invalidRequest = (code: ApiErrorCode, message: string, param: string | null = null, status = 400): ApiError =>
  new ApiError(status, 'invalid_request_error', code, message, param);
