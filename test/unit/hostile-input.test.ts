// Inputs from the adversarial campaign (issue 16), judged by the pipeline with an in-memory key source.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { extractCredential } from '../../src/check/credential.js';
import { FailedAuthLimiter } from '../../src/check/failed-auth.js';
import { canonicalMethod } from '../../src/check/method.js';
import { CheckPipeline, type KeySource } from '../../src/check/pipeline.js';
import { acceptRequestId } from '../../src/check/request-id.js';
import { denialResponse } from '../../src/check/outcomes.js';
import { generateKey } from '../../src/keys/format.js';
import { KeyHasher, type KeyHash } from '../../src/keys/hash.js';
import { LookupThrottledError, type PostgresGuard } from '../../src/keys/lookup-guard.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';
import { DecisionRecorder, METHOD_LOG_MAX_CHARS } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../../src/policy/policy.js';
import { newRequestId, toAttributes } from '../../src/transport/grpc/check.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';

const hasher = new KeyHasher({ version: 1, secret: 'x'.repeat(32) });
const policy = loadPolicyFile(DEFAULT_POLICY_PATH);

function record(key: string, scope = 'read-only'): KeyRecord {
  return keyRecord({
    id: 'key_1', hash: hasher.candidates(key)[0]!.hash.toString('base64url'), accountId: 'acct_1', name: 'k', scope, plan: 'free',
    expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null,
  });
}

/** Memory, then "Redis", then "Postgres", like the resolver: the guard is asked only before Postgres. */
class TieredKeys implements KeySource {
  readonly memory = new Map<string, KeyRecord>();
  readonly redis = new Map<string, KeyRecord>();
  readonly postgres = new Map<string, KeyRecord>();
  postgresLookups = 0;
  find(c: readonly KeyHash[], beforePostgres?: PostgresGuard): KeyRecord | Promise<KeyRecord | null> {
    const id = c[0]!.hash.toString('base64url');
    return this.memory.get(id) ?? this.afterMemory(id, beforePostgres);
  }
  private async afterMemory(id: string, beforePostgres?: PostgresGuard): Promise<KeyRecord | null> {
    const cached = this.redis.get(id);
    if (cached) return cached;
    const wait = beforePostgres?.() ?? 0;
    if (wait > 0) throw new LookupThrottledError(wait);
    this.postgresLookups++;
    return this.postgres.get(id) ?? null;
  }
}

function pipeline(keys: KeySource, failedAuth?: FailedAuthLimiter): CheckPipeline {
  return new CheckPipeline({ environment: 'live', hasher, keys, policy: () => policy, ...(failedAuth ? { failedAuth } : {}) });
}

const checkOf = (init: Parameters<typeof envoyCheckRequest>[0]) => toAttributes(envoyCheckRequest(init));

describe('methods (item 7)', () => {
  const key = generateKey('live');
  const keys = new TieredKeys();
  keys.postgres.set(record(key).hash, record(key, 'buyer'));

  it('a CheckRequest without a method is refused with 400 invalid_request, not judged as GET', async () => {
    const req = envoyCheckRequest({ method: 'GET', path: '/v1/models', headers: { 'x-api-key': key } });
    req.attributes!.request!.http!.method = '';
    req.attributes!.request!.http!.header_map = { headers: [{ key: 'x-api-key', raw_value: Buffer.from(key) }] };
    delete req.attributes!.request!.http!.headers;
    const d = await pipeline(keys).decide(toAttributes(req));
    expect(d).toMatchObject({ allow: false, reason: 'invalid_request', detail: 'missing_method' });
    const r = denialResponse(d as never);
    expect([r.httpStatus, r.grpcCode, JSON.parse(r.body).error.code]).toEqual([400, 3, 'invalid_request']);
  });

  it.each([['poſt'], ['GET /v1/models'], ['G\u0000ET'], ['ＧＥＴ'], ['GET\r\nX-API-Key: x']])('a method that is not an HTTP token (%j) is refused with 400 invalid_request', async (method) => {
    const d = await pipeline(keys).decide(checkOf({ method, path: '/v1/chat/completions', headers: { 'x-api-key': key } }));
    expect(d).toMatchObject({ allow: false, reason: 'invalid_request', detail: 'invalid_method' });
  });

  it('methods are upper-cased by ASCII rules only', () => {
    expect(canonicalMethod('post')).toBe('POST');
    expect(canonicalMethod('pOsT')).toBe('POST');
    expect(canonicalMethod('GET')).toBe('GET');
    expect(canonicalMethod('M-SEARCH')).toBe('M-SEARCH');
    expect(canonicalMethod('poſt')).toBeUndefined();
    expect(canonicalMethod('ﬀ')).toBeUndefined();
  });

  it('a lower-case token method is judged as its upper-case form', async () => {
    const d = await pipeline(keys).decide(checkOf({ method: 'post', path: '/v1/chat/completions', headers: { 'x-api-key': key } }));
    expect(d.allow).toBe(true);
  });

  it('a 70 KB method is logged cut to a bounded length', () => {
    const chunks: string[] = [];
    const sink = new Writable({ write: (c: Buffer, _e, done) => void (chunks.push(c.toString()), done()) });
    const recorder = new DecisionRecorder(createLogger('info', sink), new Metrics({ defaultMetrics: false }));
    recorder.record('grpc', { allow: false, reason: 'invalid_request', detail: 'invalid_method' }, 'r1', 'M'.repeat(70_000), process.hrtime.bigint());
    const line = JSON.parse(chunks.join('')) as { method: string };
    expect(line.method.length).toBeLessThanOrEqual(METHOD_LOG_MAX_CHARS + 1);
    expect(chunks.join('').length).toBeLessThan(1000);
  });
});

describe('x-request-id (item 5)', () => {
  it.each([
    ['CR/LF', 'abc\r\nx-injected: 1'],
    ['NUL', 'abc\u0000def'],
    ['a key', generateKey('live')],
    ['a key inside a longer id', `req-${generateKey('live')}`],
    ['an overlong id', 'a'.repeat(129)],
    ['non-ASCII', 'réq-1'],
    ['spaces', 'req 1'],
  ])('gRPC: an id with %s is replaced by a fresh UUID, never echoed', (_n, id) => {
    const attrs = checkOf({ headers: { 'x-request-id': id } });
    expect(attrs.requestId).toBeUndefined();
    expect(newRequestId(attrs)).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('safe ids are kept: UUIDs, hex, req_ style ids', () => {
    for (const id of ['4f0c2b9e-3c1a-4a4e-9f0e-6a2b1c0d9e8f', 'a3f9c0de12', 'req_abc123', 'Root=1-5759e988-bd862e3fe1be46a994272793']) {
      expect(acceptRequestId(id)).toBe(id);
    }
  });
});

describe('credentials (item 9)', () => {
  const key = generateKey('live');

  it('header_map and headers that disagree on a credential header: refused as conflicting, never one form picked', () => {
    const req = envoyCheckRequest({ headers: { 'x-api-key': key }, rawHeaders: true });
    req.attributes!.request!.http!.headers = { 'x-api-key': generateKey('live') };
    expect(extractCredential(toAttributes(req))).toEqual({ kind: 'invalid', problem: 'conflicting_headers' });
    const onlyHeaders = envoyCheckRequest({ headers: {}, rawHeaders: true });
    onlyHeaders.attributes!.request!.http!.headers = { authorization: `Bearer ${key}` };
    expect(extractCredential(toAttributes(onlyHeaders))).toEqual({ kind: 'invalid', problem: 'conflicting_headers' });
  });

  it('header_map and headers that agree: the key is read', () => {
    const req = envoyCheckRequest({ headers: { 'x-api-key': key }, rawHeaders: true });
    req.attributes!.request!.http!.headers = { 'x-api-key': key, ':path': '/v1/models' };
    expect(extractCredential(toAttributes(req))).toEqual({ kind: 'key', key });
  });

  it.each([
    ['no-break space', '\u00a0'],
    ['ideographic space', '\u3000'],
    ['line separator', '\u2028'],
    ['BOM', '\ufeff'],
  ])('a key wrapped in %s is not trimmed into a valid key', (_n, ws) => {
    expect(extractCredential({ authorization: [], apiKey: [`${ws}${key}${ws}`] })).not.toEqual({ kind: 'key', key });
    expect(extractCredential({ authorization: [`Bearer ${ws}${key}`], apiKey: [] })).not.toEqual({ kind: 'key', key });
    expect(extractCredential({ authorization: [`Bearer${ws}${key}`], apiKey: [] })).not.toEqual({ kind: 'key', key });
  });

  it('SP and HTAB around a key are still trimmed', () => {
    expect(extractCredential({ authorization: [`\t Bearer \t${key} \t`], apiKey: [] })).toEqual({ kind: 'key', key });
    expect(extractCredential({ authorization: [], apiKey: [` \t${key}\t `] })).toEqual({ kind: 'key', key });
    expect(extractCredential({ authorization: [' \t '], apiKey: ['\t \t'] })).toEqual({ kind: 'missing' });
    expect(extractCredential({ authorization: ['Bearer \t '], apiKey: [] })).toEqual({ kind: 'missing' });
  });
});

describe('failed-auth throttling touches Postgres look-ups only (item 1)', () => {
  const flood = async (p: CheckPipeline, source: string, n: number) => {
    for (let i = 0; i < n; i++) await p.decide(checkOf({ path: '/v1/models', method: 'GET', source, headers: { 'x-api-key': generateKey('live') } }));
  };

  it('a source over the limit still gets a key that is in Redis but not in memory', async () => {
    const keys = new TieredKeys();
    const key = generateKey('live');
    keys.redis.set(record(key).hash, record(key));
    const p = pipeline(keys, new FailedAuthLimiter(5));
    await flood(p, '198.51.100.1', 10);
    const blocked = await p.decide(checkOf({ path: '/v1/models', method: 'GET', source: '198.51.100.1', headers: { 'x-api-key': generateKey('live') } }));
    expect(blocked).toMatchObject({ allow: false, reason: 'rate_limit_exceeded', detail: 'failed_auth_per_source' });
    const cached = await p.decide(checkOf({ path: '/v1/models', method: 'GET', source: '198.51.100.1', headers: { 'x-api-key': key } }));
    expect(cached.allow).toBe(true);
    expect(keys.postgresLookups).toBe(5);
  });

  it('strings that fail the offline shape check are not counted', async () => {
    const keys = new TieredKeys();
    const key = generateKey('live');
    keys.postgres.set(record(key).hash, record(key));
    const p = pipeline(keys, new FailedAuthLimiter(5));
    for (let i = 0; i < 50; i++) {
      await p.decide(checkOf({ path: '/v1/models', method: 'GET', source: '198.51.100.2', headers: { 'x-api-key': `ryv_live_${'a'.repeat(49)}` } }));
    }
    expect((await p.decide(checkOf({ path: '/v1/models', method: 'GET', source: '198.51.100.2', headers: { 'x-api-key': key } }))).allow).toBe(true);
  });
});
