// CheckPipeline.decide on in-memory twins (test/helpers/twins.ts, FakeClock): one test per outcome.
import { describe, expect, it } from 'vitest';
import type { RequestAttributes } from '../../src/check/attributes.js';
import { FailedAuthLimiter } from '../../src/check/failed-auth.js';
import { CheckPipeline, type RouteAuthorizer } from '../../src/check/pipeline.js';
import { generateKey } from '../../src/keys/format.js';
import { KeyHasher } from '../../src/keys/hash.js';
import { keyRecord, type KeyRecord, type KeyRecordFields } from '../../src/keys/repository.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import type { AuthorizeResult } from '../../src/policy/policy.js';
import { RateLimiter } from '../../src/ratelimit/limiter.js';
import { FakeClock } from '../../src/time/fake-clock.js';
import { InMemoryKeySource, InMemorySharedGcra } from '../helpers/twins.js';

const hasher = new KeyHasher({ version: 1, secret: 'p'.repeat(32) });

/** /open: any key; /chat: scope "buyer"; /shadow: would need "admin", not enforced; /bad: unsafe path; anything else: no rule. */
const routes: RouteAuthorizer = {
  authorize(_method, path, scope): AuthorizeResult {
    if (path === '/open') return { kind: 'allow', permission: null };
    if (path === '/chat') return scope === 'buyer' ? { kind: 'allow', permission: 'chat' } : { kind: 'insufficient_scope', permission: 'chat' };
    if (path === '/shadow') return { kind: 'shadow_deny', permission: 'admin' };
    if (path === '/bad') return { kind: 'invalid_path', reason: 'dot_dot_above_root' };
    return { kind: 'no_route' };
  },
  limitsOf: () => ({ key: { requests: 60, windowMs: 60_000, burst: 2 } }),
};

function setup(opts: { rateLimit?: boolean; failedAuthPerMinute?: number } = {}) {
  const clock = new FakeClock();
  const keys = new InMemoryKeySource();
  const touched: string[] = [];
  const failedAuth = opts.failedAuthPerMinute !== undefined ? new FailedAuthLimiter(opts.failedAuthPerMinute, () => clock.now()) : undefined;
  const rateLimiter = opts.rateLimit
    ? new RateLimiter({ redis: new InMemorySharedGcra(clock), liveReplicas: () => 1, clock, metrics: new Metrics({ defaultMetrics: false }), logger: createLogger('silent') })
    : undefined;
  const pipeline = new CheckPipeline({
    environment: 'live', hasher, keys, clock, policy: () => routes,
    usage: { touch: (id) => touched.push(id) },
    ...(failedAuth ? { failedAuth } : {}),
    ...(rateLimiter ? { rateLimiter } : {}),
  });
  const add = (over: Partial<KeyRecordFields> = {}, where: 'memory' | 'store' = 'store'): string => {
    const secret = generateKey('live');
    const hash = hasher.candidates(secret)[0]!.hash.toString('base64url');
    const rec: KeyRecord = keyRecord({ id: `key_${hash.slice(0, 6)}`, hash, accountId: 'acct_1', name: 'k', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null, ...over });
    keys[where].set(hash, rec);
    return secret;
  };
  return { clock, keys, pipeline, touched, add };
}

const req = (path: string, key?: string, extra: Partial<RequestAttributes> = {}): RequestAttributes => ({
  method: 'POST', path, authorization: key ? [`Bearer ${key}`] : [], apiKey: [], requestId: undefined, sourceAddress: '10.0.0.1', ...extra,
});

describe('CheckPipeline.decide', () => {
  it('a known key on a route its scope grants is allowed, with its identity, and its use is recorded', async () => {
    const { pipeline, add, touched } = setup();
    const key = add();
    const d = await pipeline.decide(req('/chat', key));
    expect(d).toMatchObject({ allow: true, permission: 'chat', identity: { accountId: 'acct_1', scope: 'buyer', plan: 'free' } });
    expect(touched).toHaveLength(1);
  });

  it('a key memory knows is allowed without a store look-up', async () => {
    const { pipeline, add, keys } = setup();
    const key = add({}, 'memory');
    expect((await pipeline.decide(req('/open', key))).allow).toBe(true);
    expect(keys.storeLookups).toBe(0);
  });

  it('no credential: missing_api_key', async () => {
    const { pipeline } = setup();
    expect(await pipeline.decide(req('/open'))).toEqual({ allow: false, reason: 'missing_api_key' });
  });

  it('a malformed key is invalid_api_key and never reaches a store', async () => {
    const { pipeline, keys } = setup();
    expect(await pipeline.decide(req('/open', 'sk-live-nonsense'))).toMatchObject({ allow: false, reason: 'invalid_api_key' });
    expect(keys.storeLookups).toBe(0);
  });

  it('a well-formed key the store does not know: invalid_api_key (unknown)', async () => {
    const { pipeline } = setup();
    expect(await pipeline.decide(req('/open', generateKey('live')))).toEqual({ allow: false, reason: 'invalid_api_key', detail: 'unknown' });
  });

  it('a revoked key: invalid_api_key (revoked), with the identity for the log', async () => {
    const { pipeline, add } = setup();
    const key = add({ revokedAt: new Date(0) });
    expect(await pipeline.decide(req('/open', key))).toMatchObject({ allow: false, reason: 'invalid_api_key', detail: 'revoked', identity: { accountId: 'acct_1' } });
  });

  it('a key is allowed until its expiry and invalid_api_key (expired) from then on', async () => {
    const { pipeline, add, clock } = setup();
    const key = add({ expiresAt: new Date(new FakeClock().now() + 1000) });
    expect((await pipeline.decide(req('/open', key))).allow).toBe(true);
    await clock.advance(1000);
    expect(await pipeline.decide(req('/open', key))).toMatchObject({ allow: false, reason: 'invalid_api_key', detail: 'expired' });
  });

  it('a scope that does not grant the route: insufficient_scope, naming the permission', async () => {
    const { pipeline, add } = setup();
    const key = add({ scope: 'read-only' });
    expect(await pipeline.decide(req('/chat', key))).toMatchObject({ allow: false, reason: 'insufficient_scope', permission: 'chat' });
  });

  it('a route no rule matches: route_not_allowed', async () => {
    const { pipeline, add } = setup();
    expect(await pipeline.decide(req('/elsewhere', add()))).toMatchObject({ allow: false, reason: 'route_not_allowed' });
  });

  it('an unsafe path: invalid_path', async () => {
    const { pipeline, add } = setup();
    expect(await pipeline.decide(req('/bad', add()))).toMatchObject({ allow: false, reason: 'invalid_path', detail: 'dot_dot_above_root' });
  });

  it('a shadow rule that would deny: allowed, and marked shadowDenied', async () => {
    const { pipeline, add } = setup();
    expect(await pipeline.decide(req('/shadow', add()))).toMatchObject({ allow: true, shadowDenied: 'admin' });
  });

  it('a missing or invalid method: invalid_request, whoever sends it', async () => {
    const { pipeline, add } = setup();
    const key = add();
    expect(await pipeline.decide(req('/open', key, { method: '' }))).toEqual({ allow: false, reason: 'invalid_request', detail: 'missing_method' });
    expect(await pipeline.decide(req('/open', key, { method: 'GE T' }))).toEqual({ allow: false, reason: 'invalid_request', detail: 'invalid_method' });
  });

  it('a store that cannot answer: auth_unavailable, never a 401', async () => {
    const { pipeline, add, keys } = setup();
    const key = add();
    keys.down = true;
    expect(await pipeline.decide(req('/open', key))).toEqual({ allow: false, reason: 'auth_unavailable', detail: 'postgres_timeout' });
  });

  it('past the per-key limit: rate_limit_exceeded (key) with a retry time, and the allows carry the limit state', async () => {
    const { pipeline, add } = setup({ rateLimit: true });
    const key = add();
    const first = await pipeline.decide(req('/open', key));
    expect(first).toMatchObject({ allow: true, rateLimit: [expect.objectContaining({ limit: expect.objectContaining({ name: 'key' }) })] });
    expect((await pipeline.decide(req('/open', key))).allow).toBe(true);
    const third = await pipeline.decide(req('/open', key));
    expect(third).toMatchObject({ allow: false, reason: 'rate_limit_exceeded', detail: 'key' });
    expect(third.allow === false && third.reason === 'rate_limit_exceeded' && third.retryAfterMs).toBeGreaterThan(0);
  });

  it('a source that keeps presenting unknown keys is throttled before the store: rate_limit_exceeded (failed_auth_per_source)', async () => {
    const { pipeline, keys } = setup({ failedAuthPerMinute: 2 });
    for (let i = 0; i < 2; i++) expect((await pipeline.decide(req('/open', generateKey('live')))).allow).toBe(false);
    const lookups = keys.storeLookups;
    expect(await pipeline.decide(req('/open', generateKey('live')))).toMatchObject({ allow: false, reason: 'rate_limit_exceeded', detail: 'failed_auth_per_source' });
    expect(keys.storeLookups).toBe(lookups);
  });

  // The hot path's invariant (bench/README.md, "A check decided in the same turn"): nothing is
  // awaited unless a store has to be asked.
  it('a key held in memory, with no rate limiter, is decided in the same turn, not through a promise', () => {
    const { pipeline, add } = setup();
    const key = add({}, 'memory');
    const d = pipeline.decide(req('/open', key));
    expect(d).not.toBeInstanceOf(Promise);
    expect(d).toMatchObject({ allow: true, identity: { scope: 'buyer' } });
    expect(pipeline.decide(req('/open'))).toEqual({ allow: false, reason: 'missing_api_key' });
  });

  it('a key that must be looked up, or a limit asked of the shared store, is decided through a promise, with the same answer', async () => {
    const { pipeline, add, keys } = setup({ rateLimit: true });
    const key = add();
    const looked = pipeline.decide(req('/open', key));
    expect(looked).toBeInstanceOf(Promise);
    expect(await looked).toMatchObject({ allow: true });
    const hash = [...keys.store.keys()][0]!;
    keys.memory.set(hash, keys.store.get(hash)!);
    const limited = pipeline.decide(req('/open', key));
    expect(limited).toBeInstanceOf(Promise);
    expect(await limited).toMatchObject({ allow: true, rateLimit: [expect.objectContaining({ remaining: 0 })] });
  });

  it('a key already known to be over its limit is refused in the same turn, without asking the shared store', async () => {
    const { pipeline, add } = setup({ rateLimit: true });
    const key = add({}, 'memory');
    expect((await pipeline.decide(req('/open', key))).allow).toBe(true);
    expect((await pipeline.decide(req('/open', key))).allow).toBe(true);
    expect(await pipeline.decide(req('/open', key))).toMatchObject({ allow: false, reason: 'rate_limit_exceeded' });
    const again = pipeline.decide(req('/open', key));
    expect(again).not.toBeInstanceOf(Promise);
    expect(again).toMatchObject({ allow: false, reason: 'rate_limit_exceeded', detail: 'key' });
  });
});
