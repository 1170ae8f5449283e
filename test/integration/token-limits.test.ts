// Token limits, spend budgets and model allow-lists (issue 19) against real Redis and Postgres:
// reserve at Check, reconcile through POST /internal/usage, the ledger, and what clients see.
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient, headersOf, metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';
import { policyWithPlans } from '../helpers/policy.js';
import { envoyEntry, envoyMessage, sendAccessLogs } from '../helpers/access-log.js';

const pepper = testPepper();
const usageSecret = 'usage-secret-'.padEnd(40, 'x');
const accessLogSecret = 'access-log-secret-'.padEnd(48, 'z');
// Prices in micro-dollars per million tokens: 1 per input token, 2 per output token.
const testPolicy = policyWithPlans(
  `plans:
  free:
    account: { requests: 100000, window: 1m, burst: 100000 }
  tpm:
    key: { tokens_per_minute: 1000 }
  budget:
    account: { budget: { amount: 5000, period: month } }
  models:
    key: { allowed_models: [small-model] }
  roomy:
    account: { requests: 100000, window: 1m, burst: 100000, tokens_per_minute: 100000000, budget: { amount: 100000000, period: day } }
default_plan: free
tokens:
  currency: USD
  default_model: { input_per_million: 1000000, output_per_million: 2000000, default_max_output: 100 }
  models:
    big-model: { input_per_million: 10000000, output_per_million: 20000000, default_max_output: 500 }
  unreadable_body: deny
`,
);

let db: Awaited<ReturnType<typeof freshDatabase>>;
let prefix: string;
let service: RunningService;
let client: CheckClient;
let sql: pg.Client;

beforeAll(async () => {
  db = await freshDatabase();
  prefix = redisPrefix();
  service = await startTestService({
    DATABASE_URL: db.url,
    KEY_PEPPER: pepper,
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: prefix,
    POLICY_FILE: testPolicy.file,
    RATE_LIMIT_ENABLED: 'true',
    USAGE_PORT: '1',
    USAGE_SECRET: usageSecret,
    ACCESS_LOG_SECRET: accessLogSecret,
    SPEND_LEDGER_FLUSH_MS: '100',
    FAILED_AUTH_PER_SOURCE_PER_MINUTE: '1000000',
  });
  client = new CheckClient(service.grpcPort);
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});

afterAll(async () => {
  client?.close();
  await sql?.end();
  await service?.stop();
  await db?.drop();
  testPolicy.dispose();
});

async function keyOn(plan: string, tokenLimits: Record<string, unknown> | null = null): Promise<{ secret: string; keyId: string; accountId: string }> {
  const account = await service.repository.createAccount(`${plan}-${Math.random().toString(36).slice(2)}@example.com`, plan);
  const { key, secret } = await service.repository.createKey({ accountId: account.id, name: 'k', scope: 'buyer', expiresAt: null, tokenLimits: tokenLimits as never });
  return { secret, keyId: key.id, accountId: account.id };
}

function chat(key: string, body: unknown, extra: Record<string, string> = {}): Promise<CheckResponse> {
  const req = envoyCheckRequest({ headers: { authorization: `Bearer ${key}`, ...extra } });
  if (body !== undefined) req.attributes!.request!.http!.raw_body = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return client.check(req);
}

const status = (r: CheckResponse): number => (r.ok_response ? 200 : r.denied_response!.status.code);
const responseHeaders = (r: CheckResponse): Record<string, string> => (r.ok_response ? headersOf(r.ok_response.response_headers_to_add) : headersOf(r.denied_response!.headers));
const errorOf = (r: CheckResponse): { code: string; type: string } => (JSON.parse(r.denied_response!.body) as { error: { code: string; type: string } }).error;
const reservationOf = (r: CheckResponse): string => headersOf(r.ok_response!.headers)['x-ryvion-reservation-id']!;

async function reportUsage(items: unknown, secret = usageSecret): Promise<{ status: number; body: { data?: Array<{ reservation_id: string; status: string }> } }> {
  const res = await fetch(`http://127.0.0.1:${service.usagePort}/internal/usage`, {
    method: 'POST',
    headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
    body: JSON.stringify(items),
  });
  return { status: res.status, body: (await res.json()) as { data?: Array<{ reservation_id: string; status: string }> } };
}

async function ledgerSpent(subject: string): Promise<number> {
  // The sum over the subject's periods (a test that runs across midnight UTC sees two rows).
  const r = await sql.query<{ s: string | null }>(`SELECT sum(spent_micros) AS s FROM spend_ledger WHERE subject = $1`, [subject]);
  return Number(r.rows[0]!.s ?? 0);
}

describe('at Check', () => {
  it('an allowed inference request carries the token headers, and a signed reservation id upstream and in the metadata', async () => {
    const { secret } = await keyOn('tpm');
    // 400 characters of prompt: 100 tokens (characters/4) + 4 for the message, plus 200 output.
    const r = await chat(secret, { model: 'small-model', max_tokens: 200, messages: [{ role: 'user', content: 'x'.repeat(400) }] });
    expect(status(r)).toBe(200);
    const h = responseHeaders(r);
    expect(h['x-ratelimit-limit-tokens']).toBe('1000');
    expect(h['x-ratelimit-remaining-tokens']).toBe(String(1000 - 304));
    expect(h['x-ratelimit-reset-tokens']).toMatch(/^\d/);
    const id = reservationOf(r);
    expect(id).toMatch(/^rsv1\./);
    expect(r.dynamic_metadata?.fields?.reservation_id?.stringValue).toBe(id);
  });

  it('a client-sent reservation id never reaches the upstream', async () => {
    const { secret } = await keyOn('free');
    const r = await chat(secret, { model: 'm' }, { 'x-ryvion-reservation-id': 'rsv1.forged.x' });
    expect(status(r)).toBe(200);
    expect(r.ok_response!.headers_to_remove).toContain('x-ryvion-reservation-id');
  });

  it('over tokens per minute: 429 rate_limit_exceeded with the token headers and retry-after-ms', async () => {
    const { secret } = await keyOn('tpm');
    const body = { model: 'small-model', max_tokens: 600, prompt: 'hi' };
    expect(status(await chat(secret, body))).toBe(200);
    const r = await chat(secret, body);
    expect(status(r)).toBe(429);
    expect(errorOf(r)).toMatchObject({ code: 'rate_limit_exceeded', type: 'rate_limit_error' });
    const h = responseHeaders(r);
    expect(h['x-ratelimit-limit-tokens']).toBe('1000');
    expect(Number(h['x-ratelimit-remaining-tokens'])).toBeLessThan(601);
    expect(Number(h['retry-after-ms'])).toBeGreaterThan(0);
    // A request larger than a whole minute's tokens can never pass.
    const huge = await chat(secret, { model: 'small-model', max_tokens: 5000, prompt: 'hi' });
    expect(status(huge)).toBe(429);
  });

  it('a model outside allowed_models: 403 model_not_allowed; a key may narrow it further', async () => {
    const { secret } = await keyOn('models');
    expect(status(await chat(secret, { model: 'small-model', prompt: 'a' }))).toBe(200);
    const r = await chat(secret, { model: 'big-model', prompt: 'a' });
    expect(status(r)).toBe(403);
    expect(errorOf(r).code).toBe('model_not_allowed');
    const own = await keyOn('free', { allowed_models: ['other-model'] });
    expect(status(await chat(own.secret, { model: 'small-model', prompt: 'a' }))).toBe(403);
    expect(status(await chat(own.secret, { model: 'other-model', prompt: 'a' }))).toBe(200);
  });

  it('a missing, unparsable or truncated body on an inference route is a 400 (policy: deny), never a silent pass', async () => {
    const { secret } = await keyOn('tpm');
    for (const [body, extra] of [[undefined, {}], ['{"model": "x", ', {}], [{ model: 'small-model', prompt: 'a' }, { 'x-envoy-auth-partial-body': 'true' }]] as const) {
      const r = await chat(secret, body, extra);
      expect(status(r)).toBe(400);
      expect(errorOf(r).code).toBe('invalid_body');
    }
  });

  it('routes that are not inference routes ignore token limits', async () => {
    const { secret } = await keyOn('tpm');
    const r = await client.check(envoyCheckRequest({ method: 'GET', path: '/v1/models', headers: { authorization: `Bearer ${secret}` } }));
    expect(status(r)).toBe(200);
    expect(responseHeaders(r)['x-ratelimit-limit-tokens']).toBeUndefined();
  });
});

describe('the key API', () => {
  async function create(secret: string, body: Record<string, unknown>): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`http://127.0.0.1:${service.httpPort}/api/v1/auth/api-keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'child', ...body }),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  }

  it('sets token limits on a new key, never beyond the calling key\'s own, and the new key is held to them at Check', async () => {
    const parent = await keyOn('free', { tokens_per_minute: 1000, budget: { amount: 10_000, period: 'day' }, allowed_models: ['small-model', 'big-model'] });
    const inherited = await create(parent.secret, {});
    expect(inherited.status).toBe(201);
    expect(inherited.body).toMatchObject({ tokens_per_minute: 1000, budget: { amount: 10_000, period: 'day' }, allowed_models: ['small-model', 'big-model'] });
    const narrower = await create(parent.secret, { tokens_per_minute: 500, budget: { amount: 100, period: 'day' }, allowed_models: ['small-model'] });
    expect(narrower.status).toBe(201);
    const child = narrower.body.key as string;
    expect(status(await chat(child, { model: 'big-model', prompt: 'x' }))).toBe(403);
    expect(status(await chat(child, { model: 'small-model', max_tokens: 600, prompt: 'x' }))).toBe(429);
    for (const [body, param] of [
      [{ tokens_per_minute: 1001 }, 'tokens_per_minute'],
      [{ tokens_per_minute: null }, 'tokens_per_minute'],
      [{ budget: { amount: 10_001, period: 'day' } }, 'budget'],
      [{ budget: { amount: 1, period: 'month' } }, 'budget'],
      [{ allowed_models: ['other'] }, 'allowed_models'],
      [{ budget: { amount: 1, period: 'year' } }, 'budget'],
      [{ allowed_models: [] }, 'allowed_models'],
    ] as const) {
      const r = await create(parent.secret, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect((r.body.error as { param: string }).param).toBe(param);
    }
  });
});

describe('budgets and reconciliation through POST /internal/usage', () => {
  it('budget exhausted: 429 insufficient_quota, x-should-retry: false and no retry-after; never above the budget by more than one request', async () => {
    const { secret, accountId } = await keyOn('budget');
    // Each reservation: (1 + 4) prompt tokens at 1 + 1000 output at 2 = 2005 micro-units; budget 5000.
    const body = { model: 'small-model', max_tokens: 1000, messages: [{ role: 'user', content: 'hi' }] };
    expect(status(await chat(secret, body))).toBe(200);
    expect(status(await chat(secret, body))).toBe(200);
    const r = await chat(secret, body);
    expect(status(r)).toBe(429);
    expect(errorOf(r)).toMatchObject({ code: 'insufficient_quota', type: 'insufficient_quota' });
    const h = responseHeaders(r);
    expect(h['x-should-retry']).toBe('false');
    expect(h['retry-after']).toBeUndefined();
    expect(h['retry-after-ms']).toBeUndefined();
    const redis = new Redis(testRedisUrl());
    try {
      const keys = await redis.keys(`${prefix}bg:{${accountId}}:*`);
      expect(keys).toHaveLength(1);
      expect(Number(await redis.get(keys[0]!))).toBe(4010);
    } finally {
      redis.disconnect();
    }
  });

  it('reported usage replaces the reservation (the difference is freed); the ledger holds the sum of reported usage; replays and forged ids are refused', async () => {
    const { secret, accountId } = await keyOn('budget');
    const body = { model: 'small-model', max_tokens: 1000, messages: [{ role: 'user', content: 'hi' }] };
    const first = reservationOf(await chat(secret, body));
    const second = reservationOf(await chat(secret, body));
    expect(status(await chat(secret, body))).toBe(429); // 2 x 2005 reserved of 5000
    // Actual: 10 in + 20 out = 50 micro-units each.
    const res = await reportUsage([
      { reservation_id: first, input_tokens: 10, output_tokens: 20 },
      { reservation_id: second, input_tokens: 10, output_tokens: 20 },
    ]);
    expect(res.status).toBe(200);
    expect(res.body.data!.map((d) => d.status)).toEqual(['reconciled', 'reconciled']);
    // Freed: the budget admits again.
    const third = reservationOf(await chat(secret, body));
    expect(third).toBeDefined();
    // A replay is idempotent, a forged or altered id refused.
    const tampered = first.slice(0, -4) + (first.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    const again = await reportUsage([
      { reservation_id: first, input_tokens: 999, output_tokens: 999 },
      { reservation_id: 'rsv1.eyJ4IjoxfQ.AAAAAAAAAAAAAAAAAAAAAA', input_tokens: 1, output_tokens: 1 },
      { reservation_id: tampered, input_tokens: 1, output_tokens: 1 },
      { reservation_id: third, input_tokens: 100, output_tokens: 0 },
    ]);
    expect(again.body.data!.map((d) => d.status)).toEqual(['replayed', 'forged', 'forged', 'reconciled']);
    // Spend = 50 + 50 + 100, in the ledger once the batch is written.
    await vi.waitFor(async () => expect(await ledgerSpent(`a:${accountId}`)).toBe(200), { timeout: 10_000, interval: 100 });
    const settled = await sql.query(`SELECT count(*)::int AS n FROM spend_settlements WHERE account_id = $1`, [accountId]);
    expect(settled.rows[0].n).toBe(3);
    expect(await metricValue(service, 'ryvion_authz_reservations_total', { event: 'report_forged' })).toBeGreaterThanOrEqual(2);
  });

  it('reported usage gives the unused tokens back to the tokens-per-minute bucket', async () => {
    const { secret } = await keyOn('tpm');
    const body = { model: 'small-model', max_tokens: 700, prompt: 'hi' }; // 701 of 1000
    const id = reservationOf(await chat(secret, body));
    expect(status(await chat(secret, body))).toBe(429);
    expect((await reportUsage([{ reservation_id: id, input_tokens: 1, output_tokens: 9 }])).body.data![0]!.status).toBe('reconciled');
    // 10 used: the next 701 fits, and what remains after it is about 1000 - 10 - 701.
    const after = await chat(secret, body);
    expect(status(after)).toBe(200);
    const remaining = Number(responseHeaders(after)['x-ratelimit-remaining-tokens']);
    expect(remaining).toBeGreaterThanOrEqual(289);
    expect(remaining).toBeLessThan(289 + 200); // plus what refilled meanwhile (1000 a minute)
  });

  it('through a real gRPC AccessLogService stream (Envoy\'s own protos; no Envoy binary here): usage in headers and in trailers reconciles, and the ledger holds the sum', async () => {
    const { secret, accountId } = await keyOn('budget'); // an account budget
    const body = { model: 'small-model', max_tokens: 1000, messages: [{ role: 'user', content: 'hi' }] };
    const first = reservationOf(await chat(secret, body));
    const second = reservationOf(await chat(secret, body));
    const usage = (input: string, output: string) => ({ 'x-ryvion-usage-input-tokens': input, 'x-ryvion-usage-output-tokens': output });
    const { error } = await sendAccessLogs(service.grpcPort, { 'x-ryvion-access-log-secret': accessLogSecret }, [
      envoyMessage([envoyEntry({ reservationId: first, headers: usage('7', '30') })], true),
      // A streamed completion: usage in the trailers.
      envoyMessage([envoyEntry({ reservationId: second, trailers: usage('3', '100') })]),
      // Envoy may send the same entry again; so may the usage endpoint: neither charges twice.
      envoyMessage([envoyEntry({ reservationId: first, headers: usage('7', '30') })]),
    ]);
    expect(error).toBeNull();
    // 7 + 60 and 3 + 200.
    await vi.waitFor(async () => expect(await ledgerSpent(`a:${accountId}`)).toBe(270), { timeout: 10_000, interval: 100 });
    expect((await reportUsage([{ reservation_id: second, input_tokens: 3, output_tokens: 100 }])).body.data![0]!.status).toBe('replayed');
    expect(await metricValue(service, 'ryvion_authz_tokens_reconciled_total', { source: 'access_log' })).toBeGreaterThanOrEqual(140);
  });

  it('the usage endpoint needs the secret and a well-formed batch', async () => {
    expect((await reportUsage([], 'wrong')).status).toBe(401);
    expect((await reportUsage({ nope: 1 })).status).toBe(400);
    expect((await reportUsage([{ reservation_id: 'x', input_tokens: -1, output_tokens: 0 }])).status).toBe(400);
    expect((await reportUsage([{ reservation_id: 'x', input_tokens: 1, output_tokens: 0 }])).body.data![0]!.status).toBe('forged');
  });

  it('/auth/me shows the limits and what remains of them', async () => {
    const { secret } = await keyOn('roomy', { tokens_per_minute: 500 });
    expect(status(await chat(secret, { model: 'small-model', max_tokens: 96, prompt: 'x'.repeat(16) }))).toBe(200);
    const res = await fetch(`http://127.0.0.1:${service.httpPort}/api/v1/auth/me`, { headers: { authorization: `Bearer ${secret}` } });
    expect(res.status).toBe(200);
    const me = (await res.json()) as { limits: { key: { tokens_per_minute: number; tokens_remaining: number }; account: { budget: { amount: number; spent: number; remaining: number; currency: string; period: string } } } };
    expect(me.limits.key.tokens_per_minute).toBe(500);
    // 500 - 100 reserved, refilling at 500 a minute since.
    expect(me.limits.key.tokens_remaining).toBeGreaterThanOrEqual(400);
    expect(me.limits.key.tokens_remaining).toBeLessThan(500);
    expect(me.limits.account.budget).toMatchObject({ amount: 100000000, currency: 'USD', period: 'day' });
    expect(me.limits.account.budget.spent).toBe(4 + 192);
    expect(me.limits.account.budget.remaining).toBe(100000000 - 196);
  });
});
