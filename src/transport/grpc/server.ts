// gRPC server: envoy.service.auth.v3.Authorization/Check, grpc.health.v1.Health and, when configured,
// envoy.service.accesslog.v3.AccessLogService (access-log.ts).
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { DecisionBoundary, type Decided } from '../../check/boundary.js';
import type { CheckPipeline } from '../../check/pipeline.js';
import type { DecisionRecorder } from '../../check/decision-log.js';
import type { Decision } from '../../check/decision.js';
import type { Logger } from '../../observability/logger.js';
import { authorizationService, type CheckResponse } from './proto.js';
import { attributesOf, newRequestId, toCheckResponse, viewOf, type CheckRequestView, type ResponseOptions } from './check.js';
import { withFastCheckResponse } from './wire.js';
import type { Metrics } from '../../observability/metrics.js';
import { withFastCheckRequest, type DecoderFallback } from './request-wire.js';
import { GrpcListener } from './listener.js';
import type { AccessLogReceiver } from './access-log.js';

export const CHECK_SERVICE_NAME = 'envoy.service.auth.v3.Authorization';

/**
 * grpc-js writes its own `E ...` lines to stderr for failures it also hands to its caller (a port
 * that cannot be bound, for one), which the service reports itself: keep them at debug, as JSON.
 */
export function routeGrpcLogs(logger: Logger): void {
  grpc.setLogger({ error: (...args: unknown[]) => logger.debug({ component: 'grpc-js' }, args.map(String).join(' ')) });
}

/**
 * Counts the CheckRequests proto-loader read because the service's own decoder gave up, and logs
 * the first fault of the decoder (a bug: every later request would fall back too), once.
 */
export function decoderFallbacks(metrics: Metrics, logger: Logger): DecoderFallback {
  let faultLogged = false;
  return (reason, fault) => {
    metrics.grpcRequestDecoderFallbacks.labels(reason).inc();
    if (reason === 'fault' && !faultLogged) {
      faultLogged = true;
      logger.error({ err: fault }, "the CheckRequest decoder failed: proto-loader's decoder reads every request it gives up on");
    }
  };
}

export interface GrpcServerOptions extends ResponseOptions {
  /** `deny`: a store outage is a 503 denial. `rpc_error`: an UNAVAILABLE RPC error, so the proxy's failure_mode_allow decides. */
  unavailableMode: 'deny' | 'rpc_error';
  /** MAX_CONNECTIONS_PER_PORT. */
  maxConnections?: number;
  /** GRPC_HANDSHAKE_TIMEOUT_MS: from accept to the end of the HTTP/2 preface. */
  handshakeTimeoutMs?: number;
  /** GRPC_IDLE_TIMEOUT_MS: a connection without a call for this long is closed; a call in progress, however long, keeps it. */
  idleTimeoutMs?: number;
  /** StreamAccessLogs on the same port (ACCESS_LOG_SECRET set); absent: that method answers UNIMPLEMENTED. */
  accessLog?: AccessLogReceiver | undefined;
  /** Told when a CheckRequest is read by proto-loader because the service's own decoder gave up (request-wire.ts). */
  onDecoderFallback?: DecoderFallback;
}

/**
 * The largest message the gRPC port accepts. The shipped Envoy configurations keep ext_authz's
 * `max_request_bytes` (the body in a CheckRequest) well below it, leaving room for the headers:
 * a larger CheckRequest would fail the RPC and fall to `status_on_error`.
 */
export const GRPC_MAX_RECEIVE_MESSAGE_BYTES = 1024 * 1024;

export const DEFAULT_GRPC_MAX_CONNECTIONS = 4096;
export const DEFAULT_GRPC_HANDSHAKE_TIMEOUT_MS = 10_000;
export const DEFAULT_GRPC_IDLE_TIMEOUT_MS = 3_900_000;

export class GrpcCheckServer {
  readonly server: grpc.Server;
  readonly health = new HealthImplementation({ '': 'NOT_SERVING', [CHECK_SERVICE_NAME]: 'NOT_SERVING' });
  private readonly listener: GrpcListener;
  private readonly boundary: DecisionBoundary;

  constructor(
    pipeline: Pick<CheckPipeline, 'decide'>,
    recorder: DecisionRecorder,
    private readonly opts: GrpcServerOptions,
  ) {
    this.boundary = new DecisionBoundary(pipeline, recorder);
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': GRPC_MAX_RECEIVE_MESSAGE_BYTES,
      'grpc.max_connection_idle_ms': opts.idleTimeoutMs ?? DEFAULT_GRPC_IDLE_TIMEOUT_MS,
    });
    this.listener = new GrpcListener(this.server.createConnectionInjector(grpc.ServerCredentials.createInsecure()), {
      maxConnections: opts.maxConnections ?? DEFAULT_GRPC_MAX_CONNECTIONS,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? DEFAULT_GRPC_HANDSHAKE_TIMEOUT_MS,
    });
    // CheckRequest through the hand-written decoder (request-wire.ts) and CheckResponse through the
    // hand-written encoder (wire.ts): the same attributes and bytes, a fraction of the CPU.
    this.server.addService(withFastCheckRequest(withFastCheckResponse(authorizationService()), opts.onDecoderFallback), { Check: this.check });
    this.health.addToServer(this.server);
    opts.accessLog?.addTo(this.server);
  }

  /** Binds and returns the port actually bound (0 picks a free one). */
  listen(host: string, port: number): Promise<number> {
    return this.listener.listen(host, port);
  }

  setServing(serving: boolean): void {
    const status = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', status);
    this.health.setStatus(CHECK_SERVICE_NAME, status);
  }

  /** Stops accepting calls and waits for in-flight ones, up to `deadlineMs`, then cuts the rest. */
  shutdown(deadlineMs: number): Promise<void> {
    this.listener.close();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, deadlineMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
      // Access-log streams never end on their own: end them once no new call can start, and Envoy
      // reconnects to another replica.
      this.opts.accessLog?.closeStreams();
    });
  }

  // Every call gets exactly one answer: the boundary never throws or rejects (check/boundary.ts),
  // a well-formed CheckResponse even when the pipeline throws (fail closed). A decision made
  // synchronously (a key in memory, no store asked) is answered in the same turn.
  private readonly check = (
    call: grpc.ServerUnaryCall<CheckRequestView, CheckResponse>,
    callback: grpc.sendUnaryData<CheckResponse>,
  ): void => {
    const decided = this.boundary.decideSafely('grpc', () => attributesOf(call.request ?? viewOf({})), newRequestId);
    if (decided instanceof Promise) void decided.then((d) => this.answer(d, callback));
    else this.answer(decided, callback);
  };

  private answer({ decision, attrs, requestId }: Decided, callback: grpc.sendUnaryData<CheckResponse>): void {
    const path = attrs?.path ?? '/';
    let answer: CheckResponse | grpc.ServiceError;
    try {
      answer = this.toAnswer(decision, requestId, path);
    } catch (err) {
      // A decision the answer cannot be built from is a bug: it fails closed as the pipeline's do
      // (on the deferred path nothing else would catch the throw).
      answer = this.toAnswer(this.boundary.failClosed('grpc', requestId, err), requestId, path);
    }
    if (answer instanceof Error) callback(answer);
    else callback(null, answer);
  }

  /** A CheckResponse, or under UNAVAILABLE_MODE=rpc_error an UNAVAILABLE error for a store outage. */
  private toAnswer(decision: Decision, requestId: string, path: string): CheckResponse | grpc.ServiceError {
    if (!decision.allow && decision.reason === 'auth_unavailable' && this.opts.unavailableMode === 'rpc_error') return unavailableError(decision.detail);
    return toCheckResponse(decision, requestId, path, this.opts);
  }
}

function unavailableError(detail: string): grpc.ServiceError {
  return Object.assign(new Error(`auth_unavailable: ${detail}`), {
    code: grpc.status.UNAVAILABLE,
    details: `auth_unavailable: ${detail}`,
    metadata: new grpc.Metadata(),
  });
}
