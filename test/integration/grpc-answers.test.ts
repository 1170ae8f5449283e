// Every Check call gets exactly one answer, its own, whether the pipeline decides in the same turn
// (a key in memory, no store asked), later (a store asked), or throws either way (fail closed).
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestAttributes } from '../../src/check/attributes.js';
import type { Decision } from '../../src/check/decision.js';
import type { CheckPipeline } from '../../src/check/pipeline.js';
import { DecisionRecorder } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import * as grpc from '@grpc/grpc-js';
import { decoderFallbacks, GrpcCheckServer, type GrpcServerOptions } from '../../src/transport/grpc/server.js';
import { AUTHORIZATION_CHECK_PATH, authorizationService, type CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient } from '../helpers/service.js';

type Decide = (attrs: RequestAttributes) => Decision | Promise<Decision>;

let server: GrpcCheckServer | undefined;
let client: CheckClient | undefined;
let metrics: Metrics;
let port: number;

afterEach(async () => {
  client?.close();
  client = undefined;
  await server?.shutdown(1000);
  server = undefined;
});

async function start(decide: Decide, options: Partial<GrpcServerOptions> | ((m: Metrics) => Partial<GrpcServerOptions>) = {}): Promise<CheckClient> {
  metrics = new Metrics({ defaultMetrics: false });
  const opts = typeof options === 'function' ? options(metrics) : options;
  server = new GrpcCheckServer({ decide } as unknown as CheckPipeline, new DecisionRecorder(createLogger('silent'), metrics), {
    stripCredentialHeaders: true,
    unavailableMode: 'deny',
    ...opts,
  });
  server.setServing(true);
  port = await server.listen('127.0.0.1', 0);
  client = new CheckClient(port);
  return client;
}

const check = (c: CheckClient, path = '/v1/models') => c.check(envoyCheckRequest({ method: 'GET', path }), 10_000);
const deniedStatus = async (c: CheckClient, path?: string): Promise<number | undefined> => (await check(c, path)).denied_response?.status.code;

async function internalErrors(): Promise<number> {
  const m = await metrics.internalErrors.get();
  return m.values.find((v) => v.labels.transport === 'grpc')?.value ?? 0;
}

describe('Check answers, decided in the same turn or later', () => {
  it('a decision made synchronously is answered with its own status', async () => {
    const c = await start(() => ({ allow: false, reason: 'missing_api_key' }));
    expect(await deniedStatus(c)).toBe(401);
  });

  it('a pipeline that throws before returning is answered 503 auth_unavailable, counted, and the port keeps answering', async () => {
    let calls = 0;
    const c = await start(() => {
      if (calls++ === 0) throw new Error('bug in the same turn');
      return { allow: false, reason: 'missing_api_key' };
    });
    const first = await check(c);
    expect(first.denied_response?.status.code).toBe(503);
    expect(JSON.parse(first.denied_response!.body)).toMatchObject({ error: { code: 'auth_unavailable' } });
    expect(await internalErrors()).toBe(1);
    expect(await deniedStatus(c)).toBe(401);
  });

  it('a pipeline whose promise rejects is answered 503 auth_unavailable, counted, and the port keeps answering', async () => {
    let calls = 0;
    const c = await start(async () => {
      await new Promise((r) => setImmediate(r));
      if (calls++ === 0) throw new Error('bug after a wait');
      return { allow: false, reason: 'missing_api_key' };
    });
    expect(await deniedStatus(c)).toBe(503);
    expect(await internalErrors()).toBe(1);
    expect(await deniedStatus(c)).toBe(401);
  });

  it('with UNAVAILABLE_MODE=rpc_error, an outage decided synchronously is an UNAVAILABLE RPC error', async () => {
    const c = await start(() => ({ allow: false, reason: 'auth_unavailable', detail: 'redis_down' }), { unavailableMode: 'rpc_error' });
    await expect(check(c)).rejects.toMatchObject({ code: 14, details: 'auth_unavailable: redis_down' });
  });

  it('concurrent calls decided now and later, interleaved, each get their own answer exactly once', async () => {
    // Paths ending in an even number are decided at once (401), odd ones after a wait (400).
    const c = await start((attrs) => {
      const n = Number(attrs.path.split('/').pop());
      if (n % 2 === 0) return { allow: false, reason: 'missing_api_key' };
      return new Promise<Decision>((resolve) => setImmediate(() => resolve({ allow: false, reason: 'invalid_request', detail: 'invalid_method' })));
    });
    const n = 200;
    const answers = await Promise.all(Array.from({ length: n }, (_, i) => deniedStatus(c, `/v1/models/${i}`)));
    expect(answers).toEqual(Array.from({ length: n }, (_, i) => (i % 2 === 0 ? 401 : 400)));
    const m = await metrics.decisions.get();
    expect(m.values.reduce((sum, v) => sum + v.value, 0)).toBe(n);
  });

  it('a decision the answer cannot be built from fails closed: 503 auth_unavailable, counted, and the port keeps answering', async () => {
    let calls = 0;
    // An allow without its identity: building the response throws (a bug, not an input).
    const c = await start(() => (calls++ === 0 ? ({ allow: true } as unknown as Decision) : { allow: false, reason: 'missing_api_key' }));
    const first = await check(c);
    expect(first.denied_response?.status.code).toBe(503);
    expect(JSON.parse(first.denied_response!.body)).toMatchObject({ error: { code: 'auth_unavailable' } });
    expect(await internalErrors()).toBe(1);
    expect(await deniedStatus(c)).toBe(401);
  });
});

describe('the CheckRequest decoders', () => {
  /** Sends `bytes` as the Check request as they are, and returns the decoded answer. */
  function sendRaw(port: number, bytes: Buffer): Promise<CheckResponse> {
    const raw = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const decode = authorizationService().Check!.responseDeserialize as (b: Buffer) => CheckResponse;
    return new Promise<CheckResponse>((resolve, reject) => {
      raw.makeUnaryRequest(AUTHORIZATION_CHECK_PATH, (b: Buffer) => b, decode, bytes, (err, res) => (err || !res ? reject(err ?? new Error('empty')) : resolve(res)));
    }).finally(() => raw.close());
  }

  async function fallbacks(reason: string): Promise<number> {
    const m = await metrics.grpcRequestDecoderFallbacks.get();
    return m.values.find((v) => v.labels.reason === reason)?.value ?? 0;
  }

  it("a message outside the service's own decoder (a group, which Envoy never sends) is read by proto-loader: same decision, counted as unsupported", async () => {
    const seen: RequestAttributes[] = [];
    const decide: Decide = (attrs) => {
      seen.push(attrs);
      return { allow: false, reason: 'missing_api_key' };
    };
    const c = await start(decide, (m) => ({ onDecoderFallback: decoderFallbacks(m, createLogger('silent')) }));
    const plain = envoyCheckRequest({ method: 'GET', path: '/v1/models', headers: { 'x-api-key': 'k-1' } });
    await c.check(plain);
    expect(await fallbacks('unsupported')).toBe(0);
    // The same request with a group appended as an unknown field of CheckRequest (field 99).
    const bytes = Buffer.concat([authorizationService().Check!.requestSerialize(plain), Buffer.from([0x9b, 0x06, 0x08, 0x01, 0x9c, 0x06])]);
    await sendRaw(port, bytes);
    expect(seen).toHaveLength(2);
    expect(seen[1]).toEqual(seen[0]);
    expect(seen[1]).toMatchObject({ method: 'GET', path: '/v1/models', apiKey: ['k-1'] });
    expect(await fallbacks('unsupported')).toBe(1);
    expect(await fallbacks('fault')).toBe(0);
  });
});
