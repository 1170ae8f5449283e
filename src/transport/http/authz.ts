// HTTP authorization mode on HTTP_PORT: the Check decisions for Envoy `http_service`, nginx `auth_request` and Traefik `forwardAuth`.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { RequestAttributes } from '../../check/attributes.js';
import { DecisionBoundary } from '../../check/boundary.js';
import type { Allow, Decision, Deny } from '../../check/decision.js';
import { allowResponse, denialResponse } from '../../check/outcomes.js';
import type { CheckPipeline } from '../../check/pipeline.js';
import type { DecisionRecorder } from '../../check/decision-log.js';
import { asciiUpperCase } from '../../check/method.js';
import { requestIdOf, toAttributes } from './attributes.js';
import type { TrustedProxies } from '../../net/trusted-proxies.js';
import { PARTIAL_BODY_HEADER } from '../grpc/check.js';

/** `/authz` alone (nginx, Traefik) or followed by the original path (Envoy `path_prefix`). */
export const AUTHZ_PREFIX = '/authz';

/**
 * Sent by the shipped nginx configuration. nginx `auth_request` drops the auth response's body and
 * turns every status but 2xx/401/403 into 500, so for such a caller every denial is answered 403
 * with the real status in NGINX_STATUS_HEADER and the JSON body in NGINX_BODY_HEADER; the
 * configuration rebuilds the denial from them.
 */
export const NGINX_MODE_HEADER = 'x-ryvion-proxy';
export const NGINX_STATUS_HEADER = 'x-ryvion-status';
export const NGINX_BODY_HEADER = 'x-ryvion-error-body';
const NGINX_CARRIER_STATUS = 403;

/** Judged when the proxy's original-request headers contradict each other: no rule matches it, a valid key gets 400 invalid_path. */
export const AMBIGUOUS_ORIGINAL_PATH = '/%00';

export interface AuthzOptions {
  stripCredentialHeaders: boolean;
  mcpResourceMetadataUrl?: string | undefined;
  /** `rpc_error`: a store outage resets the connection unanswered, so the proxy's failure_mode_allow decides. */
  unavailableMode: 'deny' | 'rpc_error';
  /** Peers whose forwarding headers name the client (TRUSTED_PROXIES). */
  trustedProxies: TrustedProxies;
}

export interface AuthzDeps {
  pipeline: Pick<CheckPipeline, 'decide'>;
  recorder: DecisionRecorder;
  options: AuthzOptions;
}

/** True for `/authz`, `/authz?...` and `/authz/...`; every other path belongs to the key management API. */
export function isAuthzPath(url: string): boolean {
  if (!url.startsWith(AUTHZ_PREFIX)) return false;
  const next = url.charCodeAt(AUTHZ_PREFIX.length);
  return Number.isNaN(next) || next === 0x2f /* / */ || next === 0x3f /* ? */;
}

/**
 * The original request an auth call is about. Envoy style (`/authz/<path>`): the call's own method
 * and the rest of its path; headers cannot override it. On `/authz` itself: `x-original-method` /
 * `x-original-uri` (nginx) or `x-forwarded-method` / `x-forwarded-uri` (Traefik), each pair taken
 * whole. Two pairs, or repeats, that disagree leave the original request unknown: judged as an
 * unsafe path, never guessed. The client address comes from client-address.ts.
 */
export function toAuthzAttributes(req: IncomingMessage, trustedProxies: TrustedProxies): RequestAttributes {
  const base = toAttributes(req, trustedProxies);
  const url = req.url ?? AUTHZ_PREFIX;
  if (url.charCodeAt(AUTHZ_PREFIX.length) === 0x2f) {
    return { ...base, path: url.slice(AUTHZ_PREFIX.length) };
  }
  const h = valuesOf(req, ['x-original-method', 'x-original-uri', 'x-forwarded-method', 'x-forwarded-uri']);
  // "METHOD\nURI": a header value never holds a line feed.
  const candidates = new Set<string>();
  const pair = (methods: string[] | undefined, uris: string[] | undefined): void => {
    if (!methods && !uris) return;
    // ASCII case only (check/method.ts); the pipeline refuses what is not a method token.
    for (const m of methods ?? [base.method]) for (const u of uris ?? ['/']) candidates.add(`${asciiUpperCase(m.trim())}\n${u.trim() || '/'}`);
  };
  pair(h.get('x-original-method'), h.get('x-original-uri'));
  pair(h.get('x-forwarded-method'), h.get('x-forwarded-uri'));
  if (candidates.size === 0) return { ...base, path: '/' };
  if (candidates.size > 1) return { ...base, path: AMBIGUOUS_ORIGINAL_PATH };
  const [method, path] = [...candidates][0]!.split('\n') as [string, string];
  return { ...base, method, path };
}

/** Every value of the named headers (lower-case names), from `rawHeaders` so repeats stay visible. */
function valuesOf(req: IncomingMessage, names: readonly string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (!names.includes(name)) continue;
    const list = out.get(name);
    if (list) list.push(raw[i + 1]!);
    else out.set(name, [raw[i + 1]!]);
  }
  return out;
}

/** The most of a forwarded body read for token limits (the gRPC server's message cap); beyond it the body counts as truncated. */
export const MAX_AUTHZ_BODY_BYTES = 1024 * 1024;

/**
 * The body the proxy forwarded (Traefik `forwardBody`, Envoy http_service `with_request_body`),
 * up to MAX_AUTHZ_BODY_BYTES; nginx `auth_request` never sends one. Read only when the request
 * says it has one, so a bodiless auth call is decided at once.
 */
function readBody(req: IncomingMessage): Promise<{ body: Buffer | undefined; truncated: boolean }> {
  const length = req.headers['content-length'];
  if ((length === undefined || length === '0') && req.headers['transfer-encoding'] === undefined) return Promise.resolve({ body: undefined, truncated: false });
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let truncated = false;
    const done = (): void => resolve({ body: chunks.length > 0 ? Buffer.concat(chunks) : undefined, truncated });
    req.on('data', (chunk: Buffer) => {
      if (truncated) return;
      if (size + chunk.length > MAX_AUTHZ_BODY_BYTES) {
        truncated = true;
        return;
      }
      size += chunk.length;
      chunks.push(chunk);
    });
    req.once('end', done);
    req.once('error', done);
    req.once('close', done);
  });
}

/**
 * Answers one auth call. A forwarded body is read (bounded) for the token limits of inference
 * routes. Never rejects: every call gets one answer, a 503 denial when the pipeline throws (fail closed).
 */
export function createAuthzHandler(deps: AuthzDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { options } = deps;
  const boundary = new DecisionBoundary(deps.pipeline, deps.recorder);
  return (req, res) => {
    const nginx = req.headers[NGINX_MODE_HEADER] === 'nginx';
    void readBody(req).then(({ body, truncated }) => boundary.decideSafely('http', () => {
      const attrs = toAuthzAttributes(req, options.trustedProxies);
      if (body) attrs.body = body;
      if (truncated || String(req.headers[PARTIAL_BODY_HEADER] ?? '').toLowerCase() === 'true') attrs.bodyTruncated = true;
      return attrs;
    }, requestIdOf(req))).then(({ decision, attrs, requestId }) => {
      if (res.destroyed) return;
      const path = attrs?.path ?? '/';
      try {
        answer(res, decision, requestId, path, nginx, options);
      } catch (err) {
        // A decision the answer cannot be built from is a bug: it fails closed as the pipeline's do
        // (a throw here would otherwise be an unhandled rejection, which ends the process).
        const failed = boundary.failClosed('http', requestId, err);
        if (res.headersSent) {
          res.destroy();
          return;
        }
        for (const name of res.getHeaderNames()) res.removeHeader(name);
        answer(res, failed, requestId, path, nginx, options);
      }
    });
  };
}

function answer(res: ServerResponse, decision: Decision, requestId: string, path: string, nginx: boolean, options: AuthzOptions): void {
  res.setHeader('x-request-id', requestId);
  res.setHeader('cache-control', 'no-store');
  if (decision.allow) return allow(res, decision, options);
  if (decision.reason === 'auth_unavailable' && options.unavailableMode === 'rpc_error') {
    // No answer at all: Envoy counts a reset as a failed call, which its failure_mode_allow decides.
    res.destroy();
    return;
  }
  deny(res, decision, path, nginx, options);
}

function allow(res: ServerResponse, d: Allow, options: AuthzOptions): void {
  const r = allowResponse(d, options);
  for (const [name, value] of r.identityHeaders) res.setHeader(name, value);
  // Envoy http_service removes the headers named here from the upstream request (metadata fields the key lacks too).
  if (r.headersToRemove.length > 0) res.setHeader('x-envoy-auth-headers-to-remove', r.headersToRemove.join(', '));
  for (const [name, value] of r.responseHeaders) res.setHeader(name, value);
  // Exactly 200: Envoy treats any other status, 204 included, as a denial.
  res.writeHead(200, { 'content-length': '0' }).end();
}

function deny(res: ServerResponse, d: Deny, path: string, nginx: boolean, options: AuthzOptions): void {
  const r = denialResponse(d, { mcpResourceMetadataUrl: options.mcpResourceMetadataUrl, path });
  for (const [name, value] of r.headers) res.setHeader(name, value);
  let status = r.httpStatus;
  if (nginx) {
    res.setHeader(NGINX_STATUS_HEADER, String(r.httpStatus));
    res.setHeader(NGINX_BODY_HEADER, asciiJson(r.body));
    status = NGINX_CARRIER_STATUS;
  }
  const body = Buffer.from(r.body);
  res.writeHead(status, { 'content-length': String(body.length) }).end(body);
}

/** The same JSON with every non-ASCII character as a \u escape, so it is a valid header value. */
function asciiJson(json: string): string {
  return json.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
