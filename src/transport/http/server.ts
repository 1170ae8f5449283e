// HTTP API on HTTP_PORT: the key management calls, each authenticated by the same pipeline as Check,
// and the HTTP authorization mode (/authz, see authz.ts) in front of them.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { DecisionBoundary } from '../../check/boundary.js';
import type { Identity } from '../../check/decision.js';
import { denialResponse } from '../../check/outcomes.js';
import type { CheckPipeline } from '../../check/pipeline.js';
import { systemClock, type Clock } from '../../time/clock.js';
import type { DecisionRecorder } from '../../check/decision-log.js';
import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import type { CompiledPolicy } from '../../policy/policy.js';
import { StoreUnavailableError, WriteOutcomeUnknownError } from '../../store/errors.js';
import { toAttributes, requestIdOf } from './attributes.js';
import { createAuthzHandler, isAuthzPath } from './authz.js';
import type { TokenGate } from '../../budget/gate.js';
import { DEFAULT_TRUSTED_PROXIES, TrustedProxies } from '../../net/trusted-proxies.js';
import { ApiError, ApiErrorCode, errorBody, invalidRequest } from './errors.js';
import { KeyManagement } from './key-management.js';
import type { KeyService } from '../../keys/management.js';
import type { SecretScanning } from '../../keys/secret-scanning.js';

export const API_KEYS_PATH = '/api/v1/auth/api-keys';
export const API_KEY_PATH = `${API_KEYS_PATH}/:id`;
export const ME_PATH = '/api/v1/auth/me';
export const SECRET_SCANNING_PATH = '/api/v1/secret-scanning/github';

export const DEFAULT_BODY_LIMIT_BYTES = 16 * 1024;
export const DEFAULT_MAX_HEADERS = 100;

export interface HttpServerOptions {
  /** Live keys an account may hold (MAX_KEYS_PER_ACCOUNT). */
  maxKeysPerAccount: number;
  /** The longest overlap a roll may ask for (KEY_ROLL_MAX_OVERLAP_SECONDS); default 7 days. */
  maxRollOverlapSeconds?: number;
  /** Larger bodies get 413. */
  bodyLimitBytes?: number;
  mcpResourceMetadataUrl?: string | undefined;
  /** HTTP authorization mode: remove the credential headers before the upstream (STRIP_CREDENTIAL_HEADERS). */
  stripCredentialHeaders?: boolean;
  /** HTTP authorization mode: a store outage is a 503 denial, or an unanswered (reset) call (UNAVAILABLE_MODE). */
  unavailableMode?: 'deny' | 'rpc_error';
  /** Peers whose forwarding headers name the client, for per-source limits (TRUSTED_PROXIES). */
  trustedProxies?: TrustedProxies;
  /** More header lines than this: 431, never a silently shortened header list (HTTP_MAX_HEADERS). */
  maxHeaders?: number;
  /** Open connections on the port; beyond it new ones are closed (MAX_CONNECTIONS_PER_PORT). */
  maxConnections?: number;
}

export interface HttpServerDeps {
  pipeline: Pick<CheckPipeline, 'decide'>;
  keys: KeyService;
  recorder: DecisionRecorder;
  metrics: Metrics;
  logger: Logger;
  policy: () => Pick<CompiledPolicy, 'scopes' | 'permissionsOf'> & Partial<Pick<CompiledPolicy, 'limitsOf' | 'tokens'>>;
  /** Token limits and what remains of them, for /auth/me. */
  tokens?: Pick<TokenGate, 'status'>;
  clock?: Clock;
  options: HttpServerOptions;
  /** GitHub's secret scanning reports (POST /api/v1/secret-scanning/github), with that route's body limit. */
  secretScanning?: { handler: Pick<SecretScanning, 'handle'>; bodyLimitBytes: number };
}

// Methods served at each path, for 405 and its `allow` header.
const PATHS: ReadonlyArray<{ pattern: RegExp; methods: readonly string[] }> = [
  { pattern: /^\/api\/v1\/auth\/api-keys$/, methods: ['GET', 'POST'] },
  { pattern: /^\/api\/v1\/auth\/api-keys\/[^/]+$/, methods: ['DELETE'] },
  { pattern: /^\/api\/v1\/auth\/api-keys\/[^/]+\/roll$/, methods: ['POST'] },
  { pattern: /^\/api\/v1\/secret-scanning\/github$/, methods: ['POST'] },
  { pattern: /^\/api\/v1\/auth\/me$/, methods: ['GET'] },
];

export function createHttpServer(deps: HttpServerDeps): FastifyInstance {
  const bodyLimit = deps.options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES;
  const management = new KeyManagement({
    keys: deps.keys,
    policy: deps.policy,
    ...(deps.tokens ? { tokens: deps.tokens } : {}),
    clock: deps.clock ?? systemClock,
    logger: deps.logger,
    maxKeysPerAccount: deps.options.maxKeysPerAccount,
    maxRollOverlapSeconds: deps.options.maxRollOverlapSeconds ?? 7 * 86_400,
  });
  const callers = new WeakMap<FastifyRequest, Identity>();
  const boundary = new DecisionBoundary(deps.pipeline, deps.recorder);
  const trustedProxies = deps.options.trustedProxies ?? new TrustedProxies(DEFAULT_TRUSTED_PROXIES);
  const maxHeaders = deps.options.maxHeaders ?? DEFAULT_MAX_HEADERS;
  const authz = createAuthzHandler({
    pipeline: deps.pipeline,
    recorder: deps.recorder,
    options: {
      stripCredentialHeaders: deps.options.stripCredentialHeaders ?? true,
      mcpResourceMetadataUrl: deps.options.mcpResourceMetadataUrl,
      unavailableMode: deps.options.unavailableMode ?? 'deny',
      trustedProxies,
    },
  });

  const app = Fastify({
    // The authorization mode (/authz, /authz/...) is answered before Fastify: no router, no body
    // parsing, content-type or size limit, and no collision with the API's routes or 404s.
    serverFactory: (handler, opts) => {
      // Host is checked below, so that its absence gets an answer in the API's shape rather than Node's bare 400.
      const server = http.createServer({ requireHostHeader: false }, (req, res) => {
        const refusal = malformed(req, maxHeaders);
        if (refusal) return writeRefusal(req, res, refusal);
        return isAuthzPath(req.url ?? '/') ? authz(req, res) : handler(req, res);
      });
      // Node would silently drop header lines past its default 2000, hiding a second credential
      // header behind junk; every line is parsed (maxHeaderSize still bounds the bytes) and counted instead.
      server.maxHeadersCount = 0;
      if (deps.options.maxConnections !== undefined) server.maxConnections = deps.options.maxConnections;
      // What Fastify sets on the server it would have made itself.
      if (typeof opts.keepAliveTimeout === 'number') server.keepAliveTimeout = opts.keepAliveTimeout;
      if (typeof opts.requestTimeout === 'number') server.requestTimeout = opts.requestTimeout;
      return server;
    },
    // Our own log lines only (decisions, changes, errors), through the redacting logger.
    logger: false,
    bodyLimit,
    // HEAD is not in the policy; it gets 405 rather than a 403 from the pipeline.
    exposeHeadRoutes: false,
    // In-flight and keep-alive requests finish normally while the server drains.
    return503OnClosing: false,
    requestTimeout: 30_000,
    genReqId: requestIdOf,
    clientErrorHandler,
    // A URL Fastify cannot decode (`/api/v1/auth/me%g0`) or a path parameter over its limit: answered in the API's shape too.
    frameworkErrors: (err, req, reply) => {
      reply.header('x-request-id', req.id);
      reply.header('cache-control', 'no-store');
      return sendError(reply, err.code === 'FST_ERR_MAX_PARAM_LENGTH'
        ? invalidRequest(ApiErrorCode.invalid_request, 'The request URL is too long.', null, 414)
        : invalidRequest(ApiErrorCode.invalid_request, 'The request URL could not be decoded.'));
    },
  });
  // JSON only: anything else with a body is 415.
  app.removeContentTypeParser('text/plain');

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
    reply.header('cache-control', 'no-store');
  });
  // Labelled by route template, never by the raw path (key ids would be unbounded).
  app.addHook('onResponse', async (req, reply) => deps.metrics.recordManagementRequest(req.method, req.routeOptions.url, reply.statusCode));

  // Authenticates like Check: same extraction, same pipeline, same denials.
  const authenticate = async (req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> => {
    const { decision, attrs } = await boundary.decideSafely('http', () => toAttributes(req.raw, trustedProxies), req.id);
    if (decision.allow) {
      callers.set(req, decision.identity);
      return undefined;
    }
    const denial = denialResponse(decision, { mcpResourceMetadataUrl: deps.options.mcpResourceMetadataUrl, path: attrs?.path ?? '/' });
    for (const [name, value] of denial.headers) reply.header(name, value);
    return reply.code(denial.httpStatus).send(Buffer.from(denial.body));
  };

  const caller = (req: FastifyRequest): Identity => {
    const identity = callers.get(req);
    if (!identity) throw new Error('route handler reached without an authenticated caller');
    return identity;
  };

  app.post(API_KEYS_PATH, { onRequest: authenticate }, async (req, reply) =>
    sendJson(reply, 201, await management.create(caller(req), req.body, req.id)),
  );
  app.get(API_KEYS_PATH, { onRequest: authenticate }, async (req, reply) => sendJson(reply, 200, await management.list(caller(req))));
  app.delete<{ Params: { id: string } }>(API_KEY_PATH, { onRequest: authenticate }, async (req, reply) =>
    sendJson(reply, 200, await management.revoke(caller(req), req.params.id, req.id)),
  );
  app.post<{ Params: { id: string } }>(`${API_KEY_PATH}/roll`, { onRequest: authenticate }, async (req, reply) =>
    sendJson(reply, 201, await management.roll(caller(req), req.params.id, req.body, req.id)),
  );
  app.get(ME_PATH, { onRequest: authenticate }, async (req, reply) => sendJson(reply, 200, await management.me(caller(req))));

  const scanning = deps.secretScanning;
  if (scanning) {
    // GitHub signs the body as sent: this route keeps it as bytes (never a re-serialised object),
    // in its own scope so the other routes keep parsing JSON.
    void app.register(async (scope) => {
      scope.removeContentTypeParser('application/json');
      scope.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: scanning.bodyLimitBytes }, (_req, body, done) => done(null, body));
      scope.post(SECRET_SCANNING_PATH, { bodyLimit: scanning.bodyLimitBytes }, async (req, reply) => {
        const header = (name: string): string | undefined => {
          const v = req.headers[name];
          return typeof v === 'string' ? v : undefined;
        };
        const outcome = await scanning.handler.handle(req.body as Buffer, header('github-public-key-identifier'), header('github-public-key-signature'));
        if (outcome.status === 200) return sendJson(reply, 200, outcome.feedback);
        const code = outcome.status === 401 ? ApiErrorCode.invalid_signature : ApiErrorCode.invalid_value;
        return sendError(reply, new ApiError(outcome.status, 'invalid_request_error', code, outcome.message));
      });
    });
  }

  app.setNotFoundHandler(async (req, reply) => {
    const path = req.url.split('?')[0]!;
    const allowed = PATHS.find((p) => p.pattern.test(path))?.methods;
    if (allowed) {
      reply.header('allow', allowed.join(', '));
      return sendError(reply, invalidRequest(ApiErrorCode.method_not_allowed, `Method ${req.method} is not allowed here; use ${allowed.join(' or ')}.`, null, 405));
    }
    return sendError(reply, invalidRequest(ApiErrorCode.not_found, 'Unknown request URL. See the key management API in the documentation.', null, 404));
  });

  app.setErrorHandler(async (err: FastifyError | Error, req, reply) => {
    if (err instanceof ApiError) return sendError(reply, err);
    const framing = fromFastifyError(err as FastifyError, req.routeOptions.bodyLimit ?? bodyLimit);
    if (framing) return sendError(reply, framing);
    if (err instanceof WriteOutcomeUnknownError) {
      deps.logger.error({ request_id: req.id, method: req.method, route: req.routeOptions.url }, 'commit outcome unknown during a management call; answered 503');
      const create = req.method === 'POST';
      return sendError(reply, new ApiError(503, 'server_error', ApiErrorCode.outcome_unknown,
        create
          ? 'The key store did not confirm the write in time: the key may or may not have been created. List your keys (GET /api/v1/auth/api-keys) before trying again.'
          : 'The key store did not confirm the write in time: the key may or may not have been revoked. Revoking again is safe.',
        null, [['retry-after', '1']]));
    }
    if (err instanceof StoreUnavailableError) {
      deps.logger.warn({ request_id: req.id, store: err.store, kind: err.kind }, 'store unavailable during a management call; answered 503');
      return sendError(reply, new ApiError(503, 'server_error', ApiErrorCode.service_unavailable,
        'The key store did not answer in time; nothing was changed. Please retry shortly.', null, [['retry-after', '1']]));
    }
    deps.metrics.internalErrors.labels('http').inc();
    deps.logger.error({ request_id: req.id, method: req.method, route: req.routeOptions.url, err }, 'internal error in the HTTP API; answered 500');
    return sendError(reply, new ApiError(500, 'server_error', ApiErrorCode.internal_error, 'The server had an error while processing your request.'));
  });

  return app;
}

/** Maps Fastify's own request errors (body parsing, limits) to API errors; undefined for anything else. */
function fromFastifyError(err: FastifyError, bodyLimit: number): ApiError | undefined {
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return invalidRequest(ApiErrorCode.invalid_json, 'The request body is not valid JSON.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return invalidRequest(ApiErrorCode.invalid_json, 'The request body is empty; send a JSON object.');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return invalidRequest(ApiErrorCode.request_too_large, `The request body is too large; the limit is ${bodyLimit} bytes.`, null, 413);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return invalidRequest(ApiErrorCode.unsupported_media_type, 'Content-Type must be application/json.', null, 415);
  }
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    return invalidRequest(ApiErrorCode.invalid_request, 'The request could not be read.', null, err.statusCode);
  }
  return undefined;
}

// Bodies go out as bytes: a string would make Fastify append `; charset=utf-8` to the content-type,
// and the API answers with exactly the `application/json` that Check denials carry.
function sendJson(reply: FastifyReply, status: number, value: unknown): FastifyReply {
  return reply.code(status).header('content-type', 'application/json').send(Buffer.from(JSON.stringify(value)));
}

function sendError(reply: FastifyReply, err: ApiError): FastifyReply {
  for (const [name, value] of err.headers) reply.header(name, value);
  return reply.code(err.status).header('content-type', 'application/json').send(Buffer.from(err.body()));
}

interface Refusal {
  status: number;
  message: string;
}

/** What no route may see: a request whose header list is over the cap, or HTTP/1.1 without Host (RFC 9112 section 3.2). */
function malformed(req: http.IncomingMessage, maxHeaders: number): Refusal | undefined {
  if (req.rawHeaders.length / 2 > maxHeaders) return { status: 431, message: `The request has more than ${maxHeaders} header fields.` };
  if (req.httpVersionMajor === 1 && req.httpVersionMinor === 1 && req.headers.host === undefined) {
    return { status: 400, message: 'The request has no Host header.' };
  }
  return undefined;
}

function writeRefusal(req: http.IncomingMessage, res: http.ServerResponse, r: Refusal): void {
  const body = Buffer.from(errorBody('invalid_request_error', ApiErrorCode.invalid_request, r.message, null));
  res.writeHead(r.status, {
    'content-type': 'application/json',
    'content-length': String(body.length),
    'x-request-id': requestIdOf(req),
    'cache-control': 'no-store',
    // The body, if any, is not read: the connection cannot be reused.
    connection: 'close',
  });
  res.end(body);
}

// Requests Node cannot parse never reach Fastify: answer them in the same shape.
function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, reason] =
    err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large']
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout']
    : [400, 'Bad Request'];
  const body = errorBody('invalid_request_error', ApiErrorCode.invalid_request, `The request could not be read (${reason}).`, null);
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `x-request-id: ${randomUUID()}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(err);
}

/** Listens and returns the port actually bound (0 picks a free one). */
export async function listenHttpServer(app: FastifyInstance, host: string, port: number): Promise<number> {
  await app.listen({ host, port });
  const address = app.server.address();
  return typeof address === 'object' && address ? address.port : port;
}

/** Stops accepting, lets in-flight requests finish up to `deadlineMs`, then cuts the rest. */
export async function closeHttpServer(app: FastifyInstance, deadlineMs: number): Promise<void> {
  const timer = setTimeout(() => app.server.closeAllConnections(), deadlineMs);
  try {
    await app.close();
  } finally {
    clearTimeout(timer);
  }
}
