// The one fail-closed boundary between a transport and the pipeline: read the request, decide,
// record; anything thrown on the way is a bug, logged and counted, and answered auth_unavailable.
import type { RequestAttributes } from './attributes.js';
import type { Decision } from './decision.js';
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
   * Never rejects. `attrs` is read inside, so a parser that throws fails closed like the pipeline;
   * `requestId` may come from the attributes (gRPC takes the caller's x-request-id).
   */
  async decideSafely(
    transport: Transport,
    attrs: () => RequestAttributes,
    requestId: string | ((attrs: RequestAttributes) => string),
  ): Promise<Decided> {
    const started = process.hrtime.bigint();
    let read: RequestAttributes | undefined;
    let id = typeof requestId === 'string' ? requestId : UNKNOWN_REQUEST_ID;
    try {
      read = attrs();
      if (typeof requestId !== 'string') id = requestId(read);
      const decision = await this.pipeline.decide(read);
      this.recorder.record(transport, decision, id, read.method, started);
      return { decision, attrs: read, requestId: id };
    } catch (err) {
      try {
        this.recorder.internalError(transport, id, err);
      } catch {
        // Logging must not stand between the caller and its answer.
      }
      return { decision: { allow: false, reason: 'auth_unavailable', detail: 'internal' }, attrs: read, requestId: id };
    }
  }
}
