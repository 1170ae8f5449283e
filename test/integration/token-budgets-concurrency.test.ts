// Issue 19's "done when", measured against real Postgres and Redis: token limits and budgets under
// concurrency across replicas, spend equal to reported usage, a Redis restarted empty losing no
// spend, and what the OpenAI SDK makes of it all.
import { Redis } from 'ioredis';
import OpenAI, { RateLimitError } from 'openai';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { TestGateway } from '../helpers/gateway.js';
import { ThrowawayRedis, freePort } from '../helpers/redis-server.js';
import { CheckClient, headersOf, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';
import { policyWithPlans } from '../helpers/policy.js';

const pepper = testPepper();
const usageSecret = 'usage-secret-'.padEnd(40, 'y');
const testPolicy = policyWithPlans(
  `plans:
  free:
    account: { requests: 1000000, window: 1m, burst: 1000000 }
default_plan: free
tokens:
  currency: USD
  default_model: { input_per_million: 1000000, output_per_million: 2000000, default_max_output: 100 }
`,
);

let db: Awaited<ReturnType<typeof freshDatabase>>;
let sql: pg.Client;
const services: RunningService[] = [];
const clients: CheckClient[] = [];

async function replica(env: Record<string, string> = {}): Promise<{ service: RunningService; client: CheckClient }> {
  const service = await startTestService({
    DATABASE_URL: db.url,
    KEY_PEPPER: pepper,
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: prefix,
    POLICY_FILE: testPolicy.file,
    RATE_LIMIT_ENABLED: 'true',
    USAGE_PORT: '1',
    USAGE_SECRET: usageSecret,
    SPEND_LEDGER_FLUSH_MS: '100',
    FAILED_AUTH_PER_SOURCE_PER_MINUTE: '1000000',
    // Fifty clients on a shared 2-core machine: a store call may take far longer than the default 100 ms.
    STORE_TIMEOUT_MS: '2000',
    ...env,
  });
  const client = new CheckClient(service.grpcPort);
  services.push(service);
  clients.push(client);
  return { service, client };
}

let prefix: string;
beforeAll(async () => {
  db = await freshDatabase();
  prefix = redisPrefix();
  sql = new pg.Client({ connectionString: db.url });
  await sql.connect();
});

afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of services) await s.stop();
  await sql?.end();
  await db?.drop();
  testPolicy.dispose();
});

async function keyWith(s: RunningService, tokenLimits: Record<string, unknown>): Promise<{ secret: string; accountId: string; keyId: string }> {
  const account = await s.repository.createAccount(`t-${Math.random().toString(36).slice(2)}@example.com`, 'free');
  const { key, secret } = await s.repository.createKey({ accountId: account.id, name: 'k', scope: 'buyer', expiresAt: null, tokenLimits: tokenLimits as never });
  return { secret, accountId: account.id, keyId: key.id };
}

// "hi" as `prompt`: 1 token (characters/4, rounded up); 300 output: 301 tokens, 1 + 600 = 601 micro-units.
const BODY = Buffer.from(JSON.stringify({ model: 'any-model', max_tokens: 300, prompt: 'hi' }));
const RESERVED_TOKENS = 301;
const RESERVED_COST = 601;

function chat(c: CheckClient, key: string): Promise<CheckResponse> {
  const req = envoyCheckRequest({ headers: { authorization: `Bearer ${key}` } });
  req.attributes!.request!.http!.raw_body = BODY;
  return c.check(req, 20_000);
}

const reservationOf = (r: CheckResponse): string | undefined => (r.ok_response ? headersOf(r.ok_response.headers)['x-ryvion-reservation-id'] : undefined);
const errorStatus = (r: CheckResponse): number | undefined => r.denied_response?.status.code;
const codeOf = (r: CheckResponse): string | undefined => (r.denied_response ? (JSON.parse(r.denied_response.body) as { error: { code: string } }).error.code : undefined);

async function report(s: RunningService, items: Array<{ reservation_id: string; input_tokens: number; output_tokens: number }>): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${s.usagePort}/internal/usage`, {
    method: 'POST',
    headers: { authorization: `Bearer ${usageSecret}`, 'content-type': 'application/json' },
    body: JSON.stringify(items),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { data: Array<{ status: string }> }).data.map((d) => d.status);
}

async function ledgerSpent(subject: string): Promise<number> {
  const r = await sql.query<{ s: string | null }>(`SELECT sum(spent_micros) AS s FROM spend_ledger WHERE subject = $1`, [subject]);
  return Number(r.rows[0]!.s ?? 0);
}

/** 50 clients spread over the replicas, each sending one request after another until `stop` says so. */
async function hammer(cs: readonly CheckClient[], key: string, stop: (admitted: number, denied: number) => boolean): Promise<{ admitted: string[]; denied: CheckResponse[]; elapsedMs: number }> {
  const admitted: string[] = [];
  const denied: CheckResponse[] = [];
  const started = Date.now();
  await Promise.all(
    Array.from({ length: 50 }, async (_, i) => {
      const c = cs[i % cs.length]!;
      while (!stop(admitted.length, denied.length)) {
        const r = await chat(c, key);
        const id = reservationOf(r);
        if (id) admitted.push(id);
        else denied.push(r);
      }
    }),
  );
  return { admitted, denied, elapsedMs: Date.now() - started };
}

describe('three replicas, fifty concurrent clients, one key', () => {
  let replicas: Array<{ service: RunningService; client: CheckClient }>;
  beforeAll(async () => {
    replicas = [await replica(), await replica(), await replica()];
  });

  it('10,000 tokens per minute: the reservations admitted stay within the limit (plus what refilled meanwhile) and one request', async () => {
    const { secret } = await keyWith(replicas[0]!.service, { tokens_per_minute: 10_000 });
    // Until 200 denials: well past the limit, whatever the machine's speed.
    const run = await hammer(replicas.map((r) => r.client), secret, (_a, d) => d >= 200);
    const tokens = run.admitted.length * RESERVED_TOKENS;
    const refilled = (10_000 * run.elapsedMs) / 60_000;
    expect(tokens).toBeLessThanOrEqual(10_000 + refilled + RESERVED_TOKENS);
    // And the limit was actually reached, not starved: a bucket's worth was admitted.
    expect(tokens).toBeGreaterThan(10_000 - RESERVED_TOKENS);
    expect(new Set(run.denied.map(codeOf))).toEqual(new Set(['rate_limit_exceeded']));
  });

  it('a spend budget is never exceeded by more than one request\'s maximum, and spend equals the sum of reported usage', async () => {
    const { secret, accountId, keyId } = await keyWith(replicas[0]!.service, { budget: { amount: 30_000, period: 'month' } });
    const run = await hammer(replicas.map((r) => r.client), secret, (_a, d) => d >= 100);
    expect(new Set(run.denied.map(codeOf))).toEqual(new Set(['insufficient_quota']));
    expect(run.admitted.length * RESERVED_COST).toBeLessThanOrEqual(30_000);
    expect(run.admitted.length * RESERVED_COST).toBeGreaterThan(30_000 - RESERVED_COST);
    // Each upstream reports its actual usage (varied; each within its reservation), some to another replica.
    const items = run.admitted.map((id, i) => ({ reservation_id: id, input_tokens: 1, output_tokens: 100 + (i % 200) }));
    const statuses = await Promise.all(items.map((item, i) => report(replicas[i % 3]!.service, [item])));
    expect(statuses.flat().every((s) => s === 'reconciled')).toBe(true);
    const reported = items.reduce((sum, i) => sum + i.input_tokens + 2 * i.output_tokens, 0);
    await vi.waitFor(async () => expect(await ledgerSpent(`k:${keyId}`)).toBe(reported), { timeout: 15_000, interval: 100 });
    expect(reported).toBeLessThanOrEqual(30_000 + RESERVED_COST);
    // Reporting all of them again, through any replica, charges nothing more.
    const replays = await report(replicas[1]!.service, items);
    expect(replays.every((s) => s === 'replayed')).toBe(true);
    const direct = new Redis(testRedisUrl());
    try {
      const counters = await direct.keys(`${prefix}bg:{${accountId}}:k:${keyId}|month|*`);
      expect(Number(await direct.get(counters[0]!))).toBe(reported);
    } finally {
      direct.disconnect();
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(await ledgerSpent(`k:${keyId}`)).toBe(reported);
  });
});

describe('Redis restarted empty in the middle of a budget period', () => {
  let redis: ThrowawayRedis;
  let r: { service: RunningService; client: CheckClient };

  beforeAll(async () => {
    redis = new ThrowawayRedis(await freePort());
    await redis.start();
    r = await replica({ REDIS_URL: redis.url });
  });

  afterAll(async () => {
    await redis?.dispose();
  });

  it('loses no spend: the budget counter is rebuilt from the ledger before it is enforced, and old ids stay settled once', async () => {
    const { secret, keyId } = await keyWith(r.service, { budget: { amount: 5_000, period: 'day' } });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(reservationOf(await chat(r.client, secret))!);
    expect(ids.every((id) => id !== undefined)).toBe(true);
    // 5 x (1 + 2 x 400) = 4005 reported: over the reservations, as an upstream may.
    expect(await report(r.service, ids.map((id) => ({ reservation_id: id, input_tokens: 1, output_tokens: 400 })))).toEqual(Array(5).fill('reconciled'));
    await vi.waitFor(async () => expect(await ledgerSpent(`k:${keyId}`)).toBe(4005), { timeout: 15_000, interval: 100 });

    await redis.stop();
    await redis.start();
    // Back with nothing in it. Rebuilt from the ledger, 4005 + 601 = 4606 fits once and 5207 does not;
    // an empty counter would admit eight more.
    let first: CheckResponse | undefined;
    await vi.waitFor(async () => {
      first = await chat(r.client, secret);
      expect(codeOf(first)).not.toBe('auth_unavailable');
    }, { timeout: 30_000, interval: 200 });
    expect(reservationOf(first!)).toBeDefined();
    const second = await chat(r.client, secret);
    expect(codeOf(second)).toBe('insufficient_quota');
    // Reports of the old reservations, which Redis no longer knows, are replays (the ledger's settlement rows).
    expect(await report(r.service, ids.slice(0, 2).map((id) => ({ reservation_id: id, input_tokens: 1, output_tokens: 400 })))).toEqual(['replayed', 'replayed']);
    await new Promise((res) => setTimeout(res, 300));
    expect(await ledgerSpent(`k:${keyId}`)).toBe(4005);
  });
});

describe('Redis unreachable', () => {
  let redis: ThrowawayRedis;
  let deny: { service: RunningService; client: CheckClient };
  let local: { service: RunningService; client: CheckClient };

  beforeAll(async () => {
    redis = new ThrowawayRedis(await freePort());
    await redis.start();
    deny = await replica({ REDIS_URL: redis.url, STORE_TIMEOUT_MS: '200' });
    local = await replica({ REDIS_URL: redis.url, STORE_TIMEOUT_MS: '200', BUDGET_REDIS_DOWN: 'local', RATE_LIMIT_LOCAL_SHARE: '0.5' });
  });

  afterAll(async () => {
    await redis?.dispose();
  });

  it('budgeted requests fail closed (503) by default; BUDGET_REDIS_DOWN=local admits at most the replica\'s share of what remained', async () => {
    const a = await keyWith(deny.service, { budget: { amount: 10_000, period: 'day' } });
    const b = await keyWith(local.service, { budget: { amount: 10_000, period: 'day' } });
    // Seen once through Redis: 10,000 - 601 = 9,399 remaining.
    expect(reservationOf(await chat(deny.client, a.secret))).toBeDefined();
    expect(reservationOf(await chat(local.client, b.secret))).toBeDefined();
    await redis.stop();
    await vi.waitFor(async () => expect(codeOf(await chat(deny.client, a.secret))).toBe('auth_unavailable'), { timeout: 20_000, interval: 100 });
    expect(errorStatus(await chat(deny.client, a.secret))).toBe(503);
    // Half of 9,399 is 4,699.5: seven requests of 601 (4,207), not eight (4,808). Cached keys need no store.
    const outcomes: Array<string | undefined> = [];
    for (let i = 0; i < 10; i++) {
      const r = await chat(local.client, b.secret);
      outcomes.push(reservationOf(r) ? 'allowed' : codeOf(r));
    }
    expect(outcomes).toEqual([...Array(7).fill('allowed'), ...Array(3).fill('auth_unavailable')]);
  });
});

describe('a reservation never reconciled', () => {
  it('expires into a charge of the reserved amount, in the ledger; a late report charges nothing more', async () => {
    const r = await replica({ TOKEN_RESERVATION_TTL_MS: '10000', RESERVATION_SWEEP_INTERVAL_MS: '200' });
    const { secret, keyId } = await keyWith(r.service, { budget: { amount: 1_000_000, period: 'week' } });
    const id = reservationOf(await chat(r.client, secret))!;
    expect(id).toBeDefined();
    await vi.waitFor(async () => expect(await ledgerSpent(`k:${keyId}`)).toBe(RESERVED_COST), { timeout: 30_000, interval: 250 });
    const row = await sql.query(`SELECT kind, cost_micros::int AS cost FROM spend_settlements WHERE key_id = $1`, [keyId]);
    expect(row.rows).toEqual([{ kind: 'expired', cost: RESERVED_COST }]);
    expect(await report(r.service, [{ reservation_id: id, input_tokens: 1, output_tokens: 1 }])).toEqual(['replayed']);
  }, 45_000);
});

describe('the openai SDK (6.x)', () => {
  let gateway: TestGateway;
  let baseURL: string;
  let r: { service: RunningService; client: CheckClient };

  beforeAll(async () => {
    r = await replica();
    gateway = new TestGateway(r.client);
    baseURL = `${await gateway.start()}/v1`;
  });

  afterAll(() => gateway?.stop());

  it('sees the token headers on success, and surfaces insufficient_quota as a RateLimitError it does not retry', async () => {
    // Budget for exactly one request at its maximum: 5 prompt tokens + 100 default output = 205.
    const { secret } = await keyWith(r.service, { tokens_per_minute: 1_000_000, budget: { amount: 300, period: 'month' } });
    const sdk = new OpenAI({ apiKey: secret, baseURL, maxRetries: 3 });
    const ok = await sdk.chat.completions.create({ model: 'any-model', messages: [{ role: 'user', content: 'hi' }] }).withResponse();
    expect(ok.response.headers.get('x-ratelimit-limit-tokens')).toBe('1000000');
    expect(Number(ok.response.headers.get('x-ratelimit-remaining-tokens'))).toBe(1_000_000 - 105);
    expect(ok.response.headers.get('x-ratelimit-reset-tokens')).toMatch(/^\d/);

    const before = gateway.calls;
    const err = await sdk.chat.completions.create({ model: 'any-model', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RateLimitError);
    expect((err as RateLimitError).status).toBe(429);
    expect((err as RateLimitError).code).toBe('insufficient_quota');
    expect((err as RateLimitError).type).toBe('insufficient_quota');
    // maxRetries: 3, yet one request: x-should-retry: false.
    expect(gateway.calls - before).toBe(1);
  });
});
