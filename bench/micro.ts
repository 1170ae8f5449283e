// Hot-path micro-benchmark: the service's own work per Check, stage by stage, in one process and
// without the network (the gRPC transport is what the do-nothing server measures). Numbers are
// CPU nanoseconds per operation. Usage: npx tsx bench/micro.ts [iterations]
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { CheckPipeline } from '../src/check/pipeline.js';
import { FailedAuthLimiter } from '../src/check/failed-auth.js';
import { generateKey } from '../src/keys/format.js';
import { KeyHasher } from '../src/keys/hash.js';
import { MemoryTier } from '../src/keys/cache/memory.js';
import { KeyResolver } from '../src/keys/resolver.js';
import { keyRecord, type KeyRecord } from '../src/keys/repository.js';
import { DecisionRecorder } from '../src/check/decision-log.js';
import { createLogger } from '../src/observability/logger.js';
import { Metrics } from '../src/observability/metrics.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../src/policy/policy.js';
import { RateLimiter } from '../src/ratelimit/limiter.js';
import { RedisGcra } from '../src/ratelimit/redis-gcra.js';
import { BatchingRedisGcra } from '../src/ratelimit/redis-gcra-batch.js';
import { attributesOf, newRequestId, toAttributes, toCheckResponse, viewOf } from '../src/transport/grpc/check.js';
import { decodeCheckView } from '../src/transport/grpc/request-wire.js';
import { encodeCheckResponse } from '../src/transport/grpc/wire.js';
import { loadAuthorizationDefinition, type CheckRequest, type CheckResponse } from '../src/transport/grpc/proto.js';
import { chatCompletionBody, checkRequest, encodeCheckRequest } from './lib/request.js';
import { readRequestBody } from '../src/budget/request-body.js';
import { periodEnd, periodStart } from '../src/budget/periods.js';
import { ReservationSigner } from '../src/budget/reservation-id.js';
import { systemClock } from '../src/time/clock.js';

const N = Number(process.argv[2] ?? 50_000);

function cpuNs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
}

function bench(name: string, fn: () => unknown): number {
  for (let i = 0; i < Math.min(N, 5000); i++) fn();
  const t0 = cpuNs();
  for (let i = 0; i < N; i++) fn();
  const ns = (cpuNs() - t0) / N;
  process.stdout.write(`${name.padEnd(44)} ${ns.toFixed(0).padStart(7)} ns\n`);
  return ns;
}

async function benchAsync(name: string, fn: () => unknown, inFlight = 100): Promise<number> {
  const run = async (n: number): Promise<void> => {
    let next = 0;
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next++ < n) await fn();
      }),
    );
  };
  await run(Math.min(N, 5000));
  const t0 = cpuNs();
  const w0 = performance.now();
  await run(N);
  const ns = (cpuNs() - t0) / N;
  process.stdout.write(`${name.padEnd(44)} ${ns.toFixed(0).padStart(7)} ns CPU (${((N / (performance.now() - w0)) * 1000).toFixed(0)}/s wall)\n`);
  return ns;
}

const key = generateKey('live');
const hasher = new KeyHasher({ version: 1, secret: randomBytes(48).toString('base64') });
const hash = hasher.hashForStorage(key).hash.toString('base64url');
const record: KeyRecord = keyRecord({
  id: 'key_0123456789ABCDEFGHIJ',
  hash,
  accountId: 'acct_0123456789ABCDEFGHIJ',
  name: 'bench',
  scope: 'buyer',
  plan: 'free',
  expiresAt: null,
  revokedAt: null,
  version: 1,
  accountRpm: 1_000_000_000,
  keyRpm: 1_000_000_000,
});
const metrics = new Metrics({ defaultMetrics: false });
const memory = new MemoryTier({ maxKeys: 200_000, ttlMs: 30_000, negativeTtlMs: 10_000 });
memory.fill(hash, { state: 'found', version: 1, record }, memory.epoch);
const resolver = new KeyResolver({
  memory,
  redis: undefined,
  postgres: { findByHash: () => Promise.resolve(null) },
  leaseHeld: () => true,
  redisTrusted: () => false,
  postgresConcurrency: 32,
  postgresDeadlineMs: 1000,
  clock: systemClock,
  metrics,
});
const policy = loadPolicyFile(DEFAULT_POLICY_PATH);
const usage = { touch: (): void => undefined };
const pipelineOff = new CheckPipeline({ environment: 'live', hasher, keys: resolver, failedAuth: new FailedAuthLimiter(300), usage, policy: () => policy });
const recorder = new DecisionRecorder(createLogger('silent'), metrics);
const opts = { stripCredentialHeaders: true };

const def = loadAuthorizationDefinition()['envoy.service.auth.v3.Authorization'] as unknown as {
  Check: { requestDeserialize(b: Buffer): CheckRequest; responseSerialize(r: CheckResponse): Buffer };
};
const requestBytes = encodeCheckRequest(checkRequest({ key }));
const request = def.Check.requestDeserialize(requestBytes);
const attrs = toAttributes(request);

process.stdout.write(`${N} iterations, CPU time per operation\n\n`);
bench('decode CheckRequest (grpc-js deserialize)', () => def.Check.requestDeserialize(requestBytes));
bench('toAttributes', () => toAttributes(request));
bench('decode CheckRequest to attributes (request-wire.ts)', () => attributesOf(decodeCheckView(requestBytes)!));
bench('hasher.candidates (HMAC-SHA256)', () => hasher.candidates(key));
bench('policy.authorize', () => policy.authorize('POST', '/v1/chat/completions', 'buyer'));
bench('resolver.find (memory hit)', () => resolver.find(hasher.candidates(key)));
// The token path's own work per check (scenario 8), before its Redis script and ZADD.
const chatBody = chatCompletionBody('gpt-4o-mini');
const requestWithBody = encodeCheckRequest(checkRequest({ key, body: chatBody }));
bench(`decode CheckRequest with a ${chatBody.length} B raw_body`, () => def.Check.requestDeserialize(requestWithBody));
const decodedWithBody = def.Check.requestDeserialize(requestWithBody);
bench('toAttributes with raw_body', () => toAttributes(decodedWithBody));
bench('  the same with request-wire.ts', () => attributesOf(decodeCheckView(requestWithBody)!));
bench('readRequestBody (JSON.parse + estimate)', () => readRequestBody(chatBody, false));
bench('periodStart + periodEnd (month)', () => periodEnd('month', Date.now()) + periodStart('month', Date.now()).length);
const signer = new ReservationSigner(randomBytes(48));
bench('reservation nonce (randomBytes 12)', () => signer.newNonce());
const claims = { nonce: signer.newNonce(), accountId: record.accountId, keyId: record.id, inputPerMillion: 150000, outputPerMillion: 600000, reservedAt: Date.now(), expiresAt: Date.now() + 900_000, inputTokens: 306, outputTokens: 512, costMicros: 354, periods: [`k:${record.id}|month|2026-12-01`] };
bench('reservation id sign (JSON + base64 + HMAC)', () => signer.sign(claims));
const decision = await pipelineOff.decide(attrs);
bench('recorder.record (metrics)', () => recorder.record('grpc', decision, 'rid', 'POST', process.hrtime.bigint()));
bench('toCheckResponse (allow, no rate limit)', () => toCheckResponse(decision, 'rid', '/v1/chat/completions', opts));
const response = toCheckResponse(decision, 'rid', '/v1/chat/completions', opts);
bench('encode CheckResponse (grpc-js serialize)', () => def.Check.responseSerialize(response));
bench('encode CheckResponse (wire.ts encoder)', () => encodeCheckResponse(response));
bench('encode minimal OK (do-nothing server)', () => def.Check.responseSerialize({ status: { code: 0 }, ok_response: { headers: [], headers_to_remove: [], response_headers_to_add: [] } }));
const serialize = (r: CheckResponse): Buffer => encodeCheckResponse(r) ?? def.Check.responseSerialize(r);
const minimalOk: CheckResponse = { status: { code: 0 }, ok_response: { headers: [], headers_to_remove: [], response_headers_to_add: [] } };
/** What the server's handler does per call (server.ts), minus grpc-js. */
async function wholeCheck(pipeline: CheckPipeline): Promise<Buffer> {
  const started = process.hrtime.bigint();
  const a = attributesOf(decodeCheckView(requestBytes) ?? viewOf(def.Check.requestDeserialize(requestBytes)));
  const requestId = newRequestId(a);
  const d = await pipeline.decide(a);
  recorder.record('grpc', d, requestId, a.method, started);
  return serialize(toCheckResponse(d, requestId, a.path, opts));
}
await benchAsync('pipeline.decide, rate limit off', () => pipelineOff.decide(attrs));
const baseline = await benchAsync('do-nothing server equivalent (decode + OK)', async () => {
  def.Check.requestDeserialize(requestBytes);
  return serialize(minimalOk);
});
const off = await benchAsync('whole check, rate limit off', () => wholeCheck(pipelineOff));
process.stdout.write(`${'  over the do-nothing equivalent'.padEnd(44)} ${(off - baseline).toFixed(0).padStart(7)} ns\n`);

const redisUrl = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
const prefix = `ryvion-bench:micro:${randomBytes(3).toString('hex')}:`;
try {
  await redis.connect();
  const limiter = new RateLimiter({ redis: new RedisGcra(redis, prefix), localShare: 0.5, liveReplicas: () => 1, clock: systemClock, metrics, logger: createLogger('silent') });
  const pipelineOn = new CheckPipeline({ environment: 'live', hasher, keys: resolver, failedAuth: new FailedAuthLimiter(300), usage, rateLimiter: limiter, policy: () => policy });
  const allowOn = await pipelineOn.decide(attrs);
  bench('toCheckResponse (allow, rate limit headers)', () => toCheckResponse(allowOn, 'rid', '/v1/chat/completions', opts));
  const responseOn = toCheckResponse(allowOn, 'rid', '/v1/chat/completions', opts);
  bench('encode CheckResponse with rate limit headers', () => def.Check.responseSerialize(responseOn));
  bench('  the same with the wire.ts encoder', () => encodeCheckResponse(responseOn));
  await benchAsync('pipeline.decide, rate limit on (Redis)', () => pipelineOn.decide(attrs));
  const on = await benchAsync('whole check, rate limit on (Redis)', () => wholeCheck(pipelineOn));
  process.stdout.write(`${'  over the do-nothing equivalent'.padEnd(44)} ${(on - baseline).toFixed(0).padStart(7)} ns (client side; Redis's own CPU not included)\n`);
  // As the service runs it: concurrent checks of one key share a script call (redis-gcra-batch.ts),
  // 100 in flight as h2load's 10 x 10 in scenario 1.
  const batchedLimiter = new RateLimiter({ redis: new BatchingRedisGcra(redis, prefix, metrics), localShare: 0.5, liveReplicas: () => 1, clock: systemClock, metrics, logger: createLogger('silent') });
  const pipelineBatched = new CheckPipeline({ environment: 'live', hasher, keys: resolver, failedAuth: new FailedAuthLimiter(300), usage, rateLimiter: batchedLimiter, policy: () => policy });
  await benchAsync('pipeline.decide, rate limit on, batched', () => pipelineBatched.decide(attrs));
  const batched = await benchAsync('whole check, rate limit on, batched', () => wholeCheck(pipelineBatched));
  process.stdout.write(`${'  over the do-nothing equivalent'.padEnd(44)} ${(batched - baseline).toFixed(0).padStart(7)} ns; over rate limit off ${(batched - off).toFixed(0)} ns\n`);
} catch (err) {
  process.stdout.write(`(rate limit on: skipped, Redis at ${redisUrl} unavailable: ${(err as Error).message})\n`);
} finally {
  const keys = await redis.keys(`${prefix}*`).catch(() => []);
  if (keys.length > 0) await redis.del(...keys).catch(() => undefined);
  redis.disconnect();
}
