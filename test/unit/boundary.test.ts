import { describe, expect, it } from 'vitest';
import { DecisionBoundary, UNKNOWN_REQUEST_ID } from '../../src/check/boundary.js';
import type { RequestAttributes } from '../../src/check/attributes.js';
import type { Decision } from '../../src/check/decision.js';
import { DecisionRecorder } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';

const attrs: RequestAttributes = { method: 'GET', path: '/v1/models', authorization: [], apiKey: [], requestId: undefined, sourceAddress: undefined };
const denied: Decision = { allow: false, reason: 'missing_api_key' };

function setup(decide: (a: RequestAttributes) => Promise<Decision>): { boundary: DecisionBoundary; metrics: Metrics; recorder: DecisionRecorder } {
  const metrics = new Metrics({ defaultMetrics: false });
  const recorder = new DecisionRecorder(createLogger('silent'), metrics);
  return { boundary: new DecisionBoundary({ decide }, recorder), metrics, recorder };
}

async function internalErrors(metrics: Metrics, transport: string): Promise<number> {
  const m = await metrics.internalErrors.get();
  return m.values.find((v) => v.labels.transport === transport)?.value ?? 0;
}

describe('DecisionBoundary.decideSafely', () => {
  it('passes the pipeline decision through with the attributes and the request id', async () => {
    const { boundary } = setup(async () => denied);
    const out = await boundary.decideSafely('grpc', () => attrs, () => 'rid-1');
    expect(out).toEqual({ decision: denied, attrs, requestId: 'rid-1' });
  });

  it('a pipeline that throws is answered auth_unavailable (internal) and counted as an internal error', async () => {
    const { boundary, metrics } = setup(async () => {
      throw new Error('bug');
    });
    const out = await boundary.decideSafely('http', () => attrs, 'rid-2');
    expect(out.decision).toEqual({ allow: false, reason: 'auth_unavailable', detail: 'internal' });
    expect(out.requestId).toBe('rid-2');
    expect(await internalErrors(metrics, 'http')).toBe(1);
  });

  it('a request parser that throws fails closed too, before any request id is known', async () => {
    const { boundary } = setup(async () => denied);
    const out = await boundary.decideSafely('grpc', () => {
      throw new Error('unparseable');
    }, () => 'never');
    expect(out).toEqual({ decision: { allow: false, reason: 'auth_unavailable', detail: 'internal' }, attrs: undefined, requestId: UNKNOWN_REQUEST_ID });
  });

  it('a recorder that throws still leaves the caller with an answer', async () => {
    const { boundary, recorder } = setup(async () => denied);
    recorder.record = () => {
      throw new Error('log sink down');
    };
    recorder.internalError = () => {
      throw new Error('log sink down');
    };
    const out = await boundary.decideSafely('http', () => attrs, 'rid-3');
    expect(out.decision).toEqual({ allow: false, reason: 'auth_unavailable', detail: 'internal' });
  });
});
