// The one fail-closed boundary between a transport and the pipeline: read the request, decide,
// record; anything thrown on the way is a bug, logged and counted, and answered auth_unavailable.
import type { RequestAttributes } from './attributes.js';
import type { Decision, Deny } from './decision.js';
import type { CheckPipeline } from './pipeline.js';
import type { DecisionRecorder } from './decision-log.js';
import type { Transport } from '../observability/metrics.js';

export interface Decided {
  decision: Decision;
  /** Undefined only when reading the request threw. */
  attrs: RequestAttributes | undefined;
  requestId: string;
}

/** Before the request could be read, so before any id is known. */
export const UNKNOWN_REQUEST_ID = 'unknown';

export class DecisionBoundary {
  constructor(
    private readonly pipeline: Pick<CheckPipeline, 'decide'>,
    private readonly recorder: DecisionRecorder,
  ) {}

  /**
   * Never throws, never rejects. `attrs` is read inside, so a parser that throws fails closed like
   * the pipeline; `requestId` may come from the attributes (gRPC takes the caller's x-request-id).
   * Synchronous when the pipeline decides synchronously (pipeline.ts), else a promise.
   */
  decideSafely(
    transport: Transport,
    attrs: () => RequestAttributes,
    requestId: string | ((attrs: RequestAttributes) => string),
  ): Decided | Promise<Decided> {
    const started = process.hrtime.bigint();
    let read: RequestAttributes | undefined;
    let id = typeof requestId === 'string' ? requestId : UNKNOWN_REQUEST_ID;
    try {
      const a = (read = attrs());
      const rid = typeof requestId === 'string' ? requestId : (id = requestId(a));
      const decision = this.pipeline.decide(a);
      if (decision instanceof Promise) {
        return decision.then(
          (d) => this.recorded(transport, a, rid, started, d),
          (err: unknown) => this.failed(transport, a, rid, err),
        );
      }
      return this.recorded(transport, a, rid, started, decision);
    } catch (err) {
      return this.failed(transport, read, id, err);
    }
  }

  private recorded(transport: Transport, attrs: RequestAttributes, requestId: string, started: bigint, decision: Decision): Decided {
    try {
      this.recorder.record(transport, decision, requestId, attrs.method, started);
    } catch (err) {
      return this.failed(transport, attrs, requestId, err);
    }
    return { decision, attrs, requestId };
  }

  private failed(transport: Transport, attrs: RequestAttributes | undefined, requestId: string, err: unknown): Decided {
    return { decision: this.failClosed(transport, requestId, err), attrs, requestId };
  }

  /**
   * A bug met on the way to an answer (in the pipeline, or while a transport builds the answer from
   * its decision): logged and counted, and the denial to answer instead. Never throws.
   */
  failClosed(transport: Transport, requestId: string, err: unknown): Deny {
    try {
      this.recorder.internalError(transport, requestId, err);
    } catch {
      // Logging must not stand between the caller and its answer.
    }
    return { allow: false, reason: 'auth_unavailable', detail: 'internal' };
  }
}
