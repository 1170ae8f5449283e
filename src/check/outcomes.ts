// The one outcome table: what each transport tells the proxy for an allow (identity headers,
// headers to remove, rate-limit headers, metadata) and for each denial reason (HTTP status, gRPC
// code and OpenAI-shaped body).
import type { Allow, Deny } from './decision.js';
import { rateLimitHeaders, tokenLimitHeaders } from '../ratelimit/headers.js';

/** gRPC status codes used in CheckResponse.status (google.rpc.Code). */
export const GrpcCode = {
  OK: 0,
  INVALID_ARGUMENT: 3,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

/** Set on the upstream request of an allowed call, always overwriting what the client sent. */
export const IDENTITY_HEADERS = {
  accountId: 'x-ryvion-account-id',
  keyId: 'x-ryvion-key-id',
  scope: 'x-ryvion-scope',
} as const;

/** The signed reservation id of an inference request, for the upstream (and its usage report). */
export const RESERVATION_HEADER = 'x-ryvion-reservation-id';
/** Usage the upstream reports in its response headers or trailers (logged by Envoy's access log). */
export const USAGE_INPUT_HEADER = 'x-ryvion-usage-input-tokens';
export const USAGE_OUTPUT_HEADER = 'x-ryvion-usage-output-tokens';

/** Removed from the upstream request when STRIP_CREDENTIAL_HEADERS is on. */
export const CREDENTIAL_HEADERS = ['authorization', 'x-api-key'] as const;

export interface AllowResponse {
  /** Lower-case names, in wire order. */
  identityHeaders: Array<[string, string]>;
  headersToRemove: readonly string[];
  /** x-ratelimit-* for the client's response. */
  responseHeaders: Array<[string, string]>;
  /** Envoy dynamic metadata (string values), in wire order. */
  metadata: Array<[string, string]>;
}

export function allowResponse(d: Allow, opts: { stripCredentialHeaders: boolean }): AllowResponse {
  const meta = d.metadata ?? [];
  const metadata: Array<[string, string]> = [
    ['account_id', d.identity.accountId],
    ['key_id', d.identity.keyId],
    ['scope', d.identity.scope],
  ];
  if (d.permission !== null) metadata.push(['permission', d.permission]);
  for (const m of meta) if (m.value !== undefined) metadata.push([`meta_${m.field}`, m.value]);
  if (d.reservationId !== undefined) metadata.push(['reservation_id', d.reservationId]);
  const identityHeaders: Array<[string, string]> = [
    [IDENTITY_HEADERS.accountId, d.identity.accountId],
    [IDENTITY_HEADERS.keyId, d.identity.keyId],
    [IDENTITY_HEADERS.scope, d.identity.scope],
    ...meta.flatMap((m): Array<[string, string]> => (m.value === undefined ? [] : [[m.header, m.value]])),
  ];
  if (d.reservationId !== undefined) identityHeaders.push([RESERVATION_HEADER, d.reservationId]);
  return {
    identityHeaders,
    // A forwarded metadata field the key lacks is removed, so a client-sent x-ryvion-meta-* never reaches the
    // upstream; a client-sent reservation id likewise.
    headersToRemove: [
      ...(opts.stripCredentialHeaders ? CREDENTIAL_HEADERS : []),
      ...meta.flatMap((m) => (m.value === undefined ? [m.header] : [])),
      ...(d.inference && d.reservationId === undefined ? [RESERVATION_HEADER] : []),
    ],
    responseHeaders: [...rateLimitHeaders(d.rateLimit ?? []), ...tokenLimitHeaders(d.tokenLimits ?? [])],
    metadata,
  };
}

export type OpenAIErrorType = 'invalid_request_error' | 'permission_error' | 'rate_limit_error' | 'insufficient_quota' | 'server_error';

export interface DenialResponse {
  httpStatus: number;
  grpcCode: number;
  /** Lower-case names. */
  headers: Array<[string, string]>;
  /** `{"error":{"message","type","param","code"}}`, which the OpenAI SDKs turn into typed errors. */
  body: string;
}

export interface OutcomeOptions {
  /** Protected-resource metadata URL advertised on 401s for MCP paths, when the operator set one. */
  mcpResourceMetadataUrl?: string | undefined;
  /** Raw request path, to tell MCP paths apart. */
  path?: string;
}

const REALM = 'Bearer realm="ryvion"';

export function denialResponse(d: Deny, opts: OutcomeOptions = {}): DenialResponse {
  switch (d.reason) {
    case 'missing_api_key':
      return build(401, GrpcCode.UNAUTHENTICATED, 'invalid_request_error', d.reason,
        "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_API_KEY` or as the `X-API-Key` header.",
        [['www-authenticate', withMcp(REALM, opts)]]);
    case 'invalid_api_key':
      // One message for unknown, revoked, expired and malformed keys: no enumeration.
      return build(401, GrpcCode.UNAUTHENTICATED, 'invalid_request_error', d.reason,
        'Incorrect API key provided. Check the key, or create a new one in the API Keys dashboard.',
        [['www-authenticate', withMcp(`${REALM}, error="invalid_token"`, opts)]]);
    case 'insufficient_scope':
      return build(403, GrpcCode.PERMISSION_DENIED, 'permission_error', d.reason,
        `This API key has scope "${d.identity.scope}", which does not grant "${d.permission}" needed for this request.`,
        [['www-authenticate', `${REALM}, error="insufficient_scope", scope="${d.permission}"`]]);
    case 'ip_not_allowed':
      return build(403, GrpcCode.PERMISSION_DENIED, 'permission_error', d.reason,
        'This API key cannot be used from your IP address. Check the key\'s allowed_cidrs.', []);
    case 'route_not_allowed':
      return build(403, GrpcCode.PERMISSION_DENIED, 'permission_error', d.reason,
        'This route is not open to API keys.', []);
    case 'invalid_request':
      return build(400, GrpcCode.INVALID_ARGUMENT, 'invalid_request_error', d.reason,
        'The request method is missing or is not a valid HTTP method.', []);
    case 'invalid_path':
      return build(400, GrpcCode.INVALID_ARGUMENT, 'invalid_request_error', d.reason,
        'The request path is not valid (encoded separators, NUL, double-encoded or overlong sequences, or a path above the root).', []);
    case 'rate_limit_exceeded': {
      const seconds = Math.max(1, Math.ceil(d.retryAfterMs / 1000));
      const what = d.detail === 'tokens_request_too_large' ? 'Request too large for the tokens per minute limit. Reduce max_tokens or the prompt.'
        : d.detail.startsWith('tokens_') ? `Rate limit reached for tokens per minute. Please try again in ${formatSeconds(d.retryAfterMs)}.`
        : `Rate limit reached for requests. Please try again in ${formatSeconds(d.retryAfterMs)}.`;
      return build(429, GrpcCode.RESOURCE_EXHAUSTED, 'rate_limit_error', d.reason, what,
        [
          ['retry-after', String(seconds)],
          ['retry-after-ms', String(Math.max(0, Math.ceil(d.retryAfterMs)))],
          ...rateLimitHeaders(d.states ?? []),
          ...tokenLimitHeaders(d.tokenStates ?? []),
        ]);
    }
    case 'model_not_allowed':
      return build(403, GrpcCode.PERMISSION_DENIED, 'permission_error', d.reason,
        `This API key may not use the model "${d.model.slice(0, 128)}". Check the key's allowed_models.`, []);
    case 'insufficient_quota':
      // As OpenAI answers an exhausted quota: 429, and no retry-after; x-should-retry: false stops the
      // OpenAI SDKs from retrying what no wait will fix (they retry every other 429).
      return build(429, GrpcCode.RESOURCE_EXHAUSTED, 'insufficient_quota', d.reason,
        'You exceeded your current quota: the spend budget of this API key or its account is used up for this period.',
        [['x-should-retry', 'false']]);
    case 'invalid_body':
      return build(400, GrpcCode.INVALID_ARGUMENT, 'invalid_request_error', d.reason,
        d.detail === 'truncated' ? 'The request body is too large to be checked against this key\'s token limits.'
        : d.detail === 'no_model' ? "The request body must name a 'model'."
        : 'The request body must be a JSON object with a model; it is missing or could not be parsed.', []);
    case 'auth_unavailable':
      return build(503, GrpcCode.UNAVAILABLE, 'server_error', d.reason,
        'The API key could not be verified right now. Please retry shortly.', [['retry-after', '1']]);
  }
}

function withMcp(challenge: string, opts: OutcomeOptions): string {
  if (!opts.mcpResourceMetadataUrl || !opts.path || !isMcpPath(opts.path)) return challenge;
  return `${challenge}, resource_metadata="${opts.mcpResourceMetadataUrl}"`;
}

function isMcpPath(path: string): boolean {
  return path === '/mcp' || path.startsWith('/mcp/') || path.startsWith('/mcp?');
}

function formatSeconds(ms: number): string {
  return `${(Math.max(0, ms) / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
}

function build(
  httpStatus: number,
  grpcCode: number,
  type: OpenAIErrorType,
  code: string,
  message: string,
  headers: Array<[string, string]>,
): DenialResponse {
  const body = JSON.stringify({ error: { message, type, param: null, code } });
  return { httpStatus, grpcCode, headers: [['content-type', 'application/json'], ...headers], body };
}
