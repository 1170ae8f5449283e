// Adapter between Envoy's CheckRequest/CheckResponse and the decision pipeline.
import { randomUUID } from 'node:crypto';
import type { RequestAttributes } from '../../check/attributes.js';
import { boundedLru } from '../../lru.js';
import { splitJoined } from '../../check/attributes.js';
import { acceptRequestId } from '../../check/request-id.js';
import type { Allow, Decision, Deny } from '../../check/decision.js';
import { allowResponse, denialResponse, GrpcCode, type AllowResponse } from '../../check/outcomes.js';
import type { Identity } from '../../check/decision.js';
import { rateLimitHeaders } from '../../ratelimit/headers.js';
import { HeaderAppendAction, type CheckRequest, type CheckResponse, type HeaderValueOption, type ProtoStruct } from './proto.js';

/** Set by Envoy when `allow_partial_message` cut the body it sends for authorization. */
export const PARTIAL_BODY_HEADER = 'x-envoy-auth-partial-body';

export interface ResponseOptions {
  stripCredentialHeaders: boolean;
  mcpResourceMetadataUrl?: string | undefined;
}

/**
 * The parts of a CheckRequest the pipeline reads, as either decoder gives them: proto-loader's
 * objects through `toAttributes`, or the hand-written decoder of the hot path (request-wire.ts),
 * which must give the same attributes for every message it accepts. `attributesOf` is the one
 * reading of them both use.
 */
export interface CheckRequestView {
  method: string | undefined;
  path: string | undefined;
  /** How many entries `header_map` holds (counting those without a key); above 0 is the raw-headers form. */
  headerMapCount: number;
  /** `header_map` entries with a key, in order: name, value, name, value, ... (a raw_value read as latin1). */
  headerMap: readonly string[];
  /**
   * The `headers` map as name, value pairs in its objects' key order (each name once, its last
   * value); undefined when there is no map. Names the pipeline does not read may be left out.
   */
  headers: readonly string[] | undefined;
  body: string | undefined;
  rawBody: Uint8Array | undefined;
  sourceAddress: string | undefined;
}

/** Narrows a CheckRequest to what the pipeline reads. Tolerates any shape: missing parts read as absent. */
export function toAttributes(req: CheckRequest): RequestAttributes {
  return attributesOf(viewOf(req));
}

/** The parts of a CheckRequest decoded by proto-loader (any shape: missing parts read as absent). */
export function viewOf(req: CheckRequest): CheckRequestView {
  const http = req.attributes?.request?.http;
  const headerMap: string[] = [];
  const rawHeaders = http?.header_map?.headers;
  if (rawHeaders) {
    for (const h of rawHeaders) {
      if (!h || typeof h.key !== 'string') continue;
      headerMap.push(h.key, h.raw_value && h.raw_value.length > 0 ? Buffer.from(h.raw_value).toString('latin1') : (h.value ?? ''));
    }
  }
  let headers: string[] | undefined;
  if (http?.headers) {
    headers = [];
    for (const name of Object.keys(http.headers)) headers.push(name, http.headers[name] ?? '');
  }
  return {
    method: http?.method,
    path: http?.path,
    headerMapCount: rawHeaders?.length ?? 0,
    headerMap,
    headers,
    body: http?.body,
    rawBody: http?.raw_body,
    sourceAddress: req.attributes?.source?.address?.socket_address?.address,
  };
}

/** The request attributes of a CheckRequest's parts. */
export function attributesOf(view: CheckRequestView): RequestAttributes {
  const authorization: string[] = [];
  const apiKey: string[] = [];
  let requestId: string | undefined;
  let pseudoPath: string | undefined;
  let pseudoMethod: string | undefined;
  let partialBody = false;

  const take = (name: string, value: string): void => {
    switch (name.toLowerCase()) {
      case 'authorization':
        authorization.push(...splitJoined(value));
        break;
      case 'x-api-key':
        apiKey.push(...splitJoined(value));
        break;
      case 'x-request-id':
        requestId ??= value;
        break;
      case ':path':
        pseudoPath ??= value;
        break;
      case ':method':
        pseudoMethod ??= value;
        break;
      case PARTIAL_BODY_HEADER:
        // Envoy's allow_partial_message: the body was cut at max_request_bytes.
        if (value.trim().toLowerCase() === 'true') partialBody = true;
        break;
    }
  };
  const takeAll = (pairs: readonly string[]): void => {
    for (let i = 0; i + 1 < pairs.length; i += 2) take(pairs[i]!, pairs[i + 1]!);
  };

  // encode_raw_headers: repeats stay separate entries, values in raw_value bytes.
  const mapForm = view.headerMapCount > 0;
  if (mapForm) takeAll(view.headerMap);
  let credentialsDisagree = false;
  if (view.headers) {
    if (mapForm) {
      // Envoy sends one form. A request with both could be judged by one and forwarded by the other: it must not disagree on a credential.
      const [mapAuthorization, mapApiKey] = [authorization.splice(0), apiKey.splice(0)];
      takeAll(view.headers);
      credentialsDisagree = !sameValues(mapAuthorization, authorization) || !sameValues(mapApiKey, apiKey);
      authorization.splice(0, authorization.length, ...mapAuthorization);
      apiKey.splice(0, apiKey.length, ...mapApiKey);
    } else {
      takeAll(view.headers);
    }
  }

  const attrs: RequestAttributes = {
    method: view.method || pseudoMethod || '',
    path: view.path || pseudoPath || '/',
    authorization,
    apiKey,
    requestId: acceptRequestId(requestId),
    sourceAddress: view.sourceAddress || undefined,
  };
  if (credentialsDisagree) attrs.credentialsDisagree = true;
  // pack_as_bytes gives raw_body; otherwise `body` is the UTF-8 text Envoy made of it.
  if (view.rawBody && view.rawBody.length > 0) attrs.body = view.rawBody;
  else if (view.body) attrs.body = Buffer.from(view.body, 'utf8');
  if (partialBody) attrs.bodyTruncated = true;
  return attrs;
}

function sameValues(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

export function newRequestId(attrs: RequestAttributes): string {
  return attrs.requestId ?? randomUUID();
}

function overwrite(key: string, value: string): HeaderValueOption {
  // Both fields: Envoy versions differ on which one they honour, and appending
  // to a client-sent value would let a spoofed identity through.
  return { header: { key, value }, append: { value: false }, append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD };
}

function str(value: string): { stringValue: string } {
  return { stringValue: value };
}

export function toCheckResponse(decision: Decision, requestId: string, path: string, opts: ResponseOptions): CheckResponse {
  return decision.allow ? okResponse(decision, requestId, opts) : deniedResponse(decision, requestId, path, opts);
}

/** The parts of an allow that depend only on the key, the matched permission and the options. */
interface StaticAllow {
  headers: readonly HeaderValueOption[];
  headersToRemove: readonly string[];
  metadata: ProtoStruct;
}

/**
 * Identities whose allow parts are kept: the busiest keys, which send most checks. Bounded because
 * the parts and their encoded bytes cost about 1.5 KB a key: for all 100 k keys of the bench's
 * memory tier that tripled its heap (bench/README.md); 4 096 cost at most about 6 MB.
 */
export const STATIC_ALLOW_IDENTITIES = 4096;

/**
 * A key's parts are kept from its second allow while it is among this many recently seen once:
 * a key checked once (a pass over many keys, a client that comes once) never costs the ~1.9 KB of
 * parts that would outlive its request only to be evicted later. Measured on the bench's fill of
 * 100 k distinct keys: those parts were the largest source of objects that died in the old
 * generation (bench/README.md, memory).
 */
export const STATIC_ALLOW_DOORKEEPER = 4 * STATIC_ALLOW_IDENTITIES;

interface Kept {
  opts: ResponseOptions;
  permission: string | null;
  parts: StaticAllow;
}

// Built once per identity (one object per key record held in memory: check/pipeline.ts),
// permission and options, and frozen, so the encoder writes their bytes once (wire.ts); from the
// identity's second allow on (STATIC_ALLOW_DOORKEEPER).
const staticAllows = boundedLru<Identity, Kept[]>(STATIC_ALLOW_IDENTITIES);
const seenOnce = boundedLru<Identity, true>(STATIC_ALLOW_DOORKEEPER);

/**
 * Whether an allow carries anything beyond the identity, permission and options: forwarded metadata
 * (its values come from the key, its fields from the policy), or an inference route's reservation id,
 * token headers and removal of a client-sent reservation id. Those are built per call (okResponse).
 */
function perRequest(d: Allow): boolean {
  return (d.metadata !== undefined && d.metadata.length > 0) || d.inference === true || d.reservationId !== undefined || (d.tokenLimits !== undefined && d.tokenLimits.length > 0);
}

function staticAllow(d: Allow, opts: ResponseOptions): StaticAllow {
  let kept = staticAllows.get(d.identity);
  if (!kept) {
    // First sight: built for this call only (not frozen, so the encoder keeps no bytes either).
    if (!seenOnce.has(d.identity)) {
      seenOnce.set(d.identity, true);
      return buildStaticAllow(d, opts);
    }
    seenOnce.delete(d.identity);
    staticAllows.set(d.identity, (kept = []));
  }
  for (const k of kept) if (k.opts === opts && k.permission === d.permission) return k.parts;
  const parts = deepFreeze(buildStaticAllow(d, opts));
  // A key seen under many permissions (or servers) keeps its latest few.
  if (kept.length >= 8) kept.shift();
  kept.push({ opts, permission: d.permission, parts });
  return parts;
}

function buildStaticAllow(d: Allow, opts: ResponseOptions): StaticAllow {
  return allowParts(allowResponse({ ...d, rateLimit: [] }, opts));
}

function allowParts(r: AllowResponse): StaticAllow {
  return {
    headers: r.identityHeaders.map(([k, v]) => overwrite(k, v)),
    headersToRemove: [...r.headersToRemove],
    metadata: { fields: Object.fromEntries(r.metadata.map(([k, v]) => [k, str(v)])) },
  };
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    for (const child of Object.values(v)) deepFreeze(child);
    Object.freeze(v);
  }
  return v;
}

const OK_STATUS = Object.freeze({ code: GrpcCode.OK });

function okResponse(d: Allow, requestId: string, opts: ResponseOptions): CheckResponse {
  // Per call: the request id and the limit headers; the rest is kept per identity unless it varies per request.
  const dynamic = perRequest(d) ? allowResponse(d, opts) : undefined;
  const parts = dynamic ? allowParts(dynamic) : staticAllow(d, opts);
  const responseHeaders = [overwrite('x-request-id', requestId)];
  for (const [k, v] of dynamic ? dynamic.responseHeaders : rateLimitHeaders(d.rateLimit ?? [])) responseHeaders.push(overwrite(k, v));
  return {
    status: OK_STATUS,
    ok_response: {
      headers: parts.headers as HeaderValueOption[],
      headers_to_remove: parts.headersToRemove as string[],
      response_headers_to_add: responseHeaders,
    },
    dynamic_metadata: parts.metadata,
  };
}

export function deniedResponse(d: Deny, requestId: string, path: string, opts: ResponseOptions): CheckResponse {
  const r = denialResponse(d, { mcpResourceMetadataUrl: opts.mcpResourceMetadataUrl, path });
  return {
    status: { code: r.grpcCode, message: d.reason },
    denied_response: {
      status: { code: r.httpStatus },
      headers: [...r.headers.map(([k, v]) => overwrite(k, v)), overwrite('x-request-id', requestId)],
      body: r.body,
    },
  };
}
