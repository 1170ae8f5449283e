// The HTTP authorization mode (/authz on HTTP_PORT) over plain HTTP against the real service,
// Postgres and Redis: Envoy `http_service` style, nginx and Traefik headers, allow and denial
// answers, and its separation from the key management API.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { denialResponse } from '../../src/check/outcomes.js';
import { generateKey } from '../../src/keys/format.js';
import type { RunningService } from '../../src/service.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';
import { metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';
import { policyWithPlans } from '../helpers/policy.js';

const pepper = testPepper();
const testPolicy = policyWithPlans(
  `plans:
  roomy:
    account: { requests: 1000, window: 1s, burst: 1000 }
  tiny:
    account: { requests: 1, window: 10s, burst: 1 }
default_plan: roomy
`,
);
const policyFile = testPolicy.file;

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let base: string;
let buyer: string;
let readOnly: string;

interface Answer {
  status: number;
  headers: Headers;
  text: string;
}

async function authz(target: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const res = await fetch(`${base}${target}`, { method: init.method ?? 'GET', headers: init.headers, body: init.body });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

const bearer = (key: string): Record<string, string> => ({ authorization: `Bearer ${key}` });

async function keyOn(plan: string, scope = 'buyer'): Promise<string> {
  const account = await service.repository.createAccount(`${plan}-${Math.random().toString(36).slice(2)}@example.com`, plan);
  return (await service.repository.createKey({ accountId: account.id, name: 'k', scope, expiresAt: null })).secret;
}

/** The status, headers and body SPEC section 5 gives a denial, as Check's outcome table builds them. */
function expectDenial(a: Answer, status: number, code: string): void {
  expect(a.status).toBe(status);
  expect(a.headers.get('content-type')).toBe('application/json');
  const body = JSON.parse(a.text) as { error: { code: string; type: string; param: null; message: string } };
  expect(body.error).toMatchObject({ code, param: null });
  expect(a.headers.get('x-request-id')).toBeTruthy();
  for (const name of ['x-ryvion-account-id', 'x-ryvion-key-id', 'x-ryvion-scope', 'x-envoy-auth-headers-to-remove']) {
    expect(a.headers.get(name)).toBeNull();
  }
}

function expectAllowed(a: Answer, scope = 'buyer'): void {
  expect(a.status).toBe(200);
  expect(a.text).toBe('');
  expect(a.headers.get('x-ryvion-account-id')).toMatch(/^acct_/);
  expect(a.headers.get('x-ryvion-key-id')).toMatch(/^key_/);
  expect(a.headers.get('x-ryvion-scope')).toBe(scope);
  expect(a.headers.get('x-envoy-auth-headers-to-remove')).toBe('authorization, x-api-key');
  expect(a.headers.get('x-request-id')).toBeTruthy();
}

beforeAll(async () => {
  db = await freshDatabase();
  service = await startTestService({
    DATABASE_URL: db.url,
    KEY_PEPPER: pepper,
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: redisPrefix(),
    POLICY_FILE: policyFile,
    RATE_LIMIT_ENABLED: 'true',
    FAILED_AUTH_PER_SOURCE_PER_MINUTE: '1000000',
  });
  base = `http://127.0.0.1:${service.httpPort}`;
  buyer = await keyOn('roomy');
  readOnly = await keyOn('roomy', 'read-only');
});

afterAll(async () => {
  await service?.stop();
  await db?.drop();
  testPolicy.dispose();
});

describe('Envoy http_service style: /authz + the original path, the call\'s own method', () => {
  it('an allowed request is exactly 200, empty, with identity, headers-to-remove and rate-limit headers', async () => {
    const a = await authz('/authz/v1/chat/completions', { method: 'POST', headers: { ...bearer(buyer), 'x-request-id': 'envoy-req-1' } });
    expectAllowed(a);
    expect(a.headers.get('x-request-id')).toBe('envoy-req-1');
    expect(a.headers.get('x-ratelimit-limit-requests')).toBe('1000');
    expect(a.headers.get('x-ratelimit-remaining-requests')).toMatch(/^\d+$/);
    expect(a.headers.get('x-ratelimit-reset-requests')).toBeTruthy();
  });

  it('the method is the call\'s own: GET on an inference path matches no rule (403 route_not_allowed)', async () => {
    expectDenial(await authz('/authz/v1/chat/completions', { headers: bearer(buyer) }), 403, 'route_not_allowed');
  });

  it('the query string is kept apart and the path is normalised like Check\'s', async () => {
    expectAllowed(await authz('/authz/v1/./models/../models?limit=5', { headers: { 'x-api-key': readOnly } }), 'read-only');
    expectDenial(await authz('/authz/v1/models%2Fx', { headers: bearer(buyer) }), 400, 'invalid_path');
  });

  it('nginx or Traefik headers cannot change what an Envoy-style call is about', async () => {
    const a = await authz('/authz/v1/chat/completions', {
      method: 'POST',
      headers: { ...bearer(readOnly), 'x-original-method': 'GET', 'x-original-uri': '/v1/models', 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/v1/models' },
    });
    expectDenial(a, 403, 'insufficient_scope');
  });

  it('a request body, of any type and size, is ignored', async () => {
    const big = 'x'.repeat(2 * 1024 * 1024);
    for (const contentType of ['text/plain', 'application/json', 'application/octet-stream', 'multipart/form-data; boundary=x']) {
      expectAllowed(await authz('/authz/v1/chat/completions', { method: 'POST', headers: { ...bearer(buyer), 'content-type': contentType }, body: big }));
    }
  });
});

describe('nginx auth_request style: x-original-method / x-original-uri on /authz', () => {
  it('judges the original method and URI, whatever the auth call\'s own method', async () => {
    const headers = { ...bearer(buyer), 'x-original-method': 'POST', 'x-original-uri': '/v1/chat/completions?stream=true' };
    expectAllowed(await authz('/authz', { headers }));
    expectAllowed(await authz('/authz', { method: 'POST', headers }));
    expectDenial(await authz('/authz', { headers: { ...headers, 'x-original-method': 'DELETE' } }), 403, 'route_not_allowed');
  });

  it('a read-only key on inference: 403 insufficient_scope with the section 5 headers and body', async () => {
    const a = await authz('/authz', { headers: { 'x-api-key': readOnly, 'x-original-method': 'POST', 'x-original-uri': '/v1/chat/completions' } });
    expectDenial(a, 403, 'insufficient_scope');
    expect(a.headers.get('www-authenticate')).toBe('Bearer realm="ryvion", error="insufficient_scope", scope="inference"');
  });

  it('in nginx mode every denial is 403 carrying the real status and the JSON body in headers', async () => {
    const key = await keyOn('tiny');
    const headers = { ...bearer(key), 'x-original-method': 'GET', 'x-original-uri': '/v1/models', 'x-ryvion-proxy': 'nginx' };
    expectAllowed(await authz('/authz', { headers }));
    const limited = await authz('/authz', { headers });
    expect(limited.status).toBe(403);
    expect(limited.headers.get('x-ryvion-status')).toBe('429');
    expect(limited.headers.get('x-ryvion-error-body')).toBe(limited.text);
    expect(JSON.parse(limited.text).error).toMatchObject({ code: 'rate_limit_exceeded', type: 'rate_limit_error' });
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Number(limited.headers.get('retry-after-ms'))).toBeGreaterThan(0);
    expect(limited.headers.get('x-ratelimit-remaining-requests')).toBe('0');

    const missing = await authz('/authz', { headers: { 'x-original-method': 'GET', 'x-original-uri': '/v1/models', 'x-ryvion-proxy': 'nginx' } });
    expect(missing.status).toBe(403);
    expect(missing.headers.get('x-ryvion-status')).toBe('401');
    expect(missing.headers.get('x-ryvion-error-body')).toBe(denialResponse({ allow: false, reason: 'missing_api_key' }).body);
    expect(missing.headers.get('www-authenticate')).toBe('Bearer realm="ryvion"');
  });

  it('without nginx mode a rate-limited call is a plain 429 with retry-after, retry-after-ms and x-ratelimit-*', async () => {
    const key = await keyOn('tiny');
    const headers = { ...bearer(key), 'x-original-method': 'GET', 'x-original-uri': '/v1/models' };
    expectAllowed(await authz('/authz', { headers }));
    const a = await authz('/authz', { headers });
    expectDenial(a, 429, 'rate_limit_exceeded');
    expect(a.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(Number(a.headers.get('retry-after-ms'))).toBeGreaterThan(5000);
    expect(a.headers.get('x-ratelimit-limit-requests')).toBe('1');
    expect(a.headers.get('x-ryvion-status')).toBeNull();
  });
});

describe('Traefik forwardAuth style: x-forwarded-method / x-forwarded-uri on /authz', () => {
  it('a GET auth call judges the forwarded method and URI', async () => {
    const headers = { ...bearer(readOnly), 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/v1/models/gpt-4o', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'api.ryvion.ai' };
    expectAllowed(await authz('/authz', { headers }), 'read-only');
    expectDenial(await authz('/authz', { headers: { ...headers, 'x-forwarded-method': 'POST', 'x-forwarded-uri': '/v1/chat/completions' } }), 403, 'insufficient_scope');
  });

  it('nginx and Traefik headers that disagree are never resolved by guessing: 400 invalid_path', async () => {
    const a = await authz('/authz', {
      headers: { ...bearer(buyer), 'x-original-method': 'GET', 'x-original-uri': '/v1/models', 'x-forwarded-method': 'POST', 'x-forwarded-uri': '/v1/chat/completions' },
    });
    expectDenial(a, 400, 'invalid_path');
    // When both say the same, there is nothing to guess.
    expectAllowed(await authz('/authz', {
      headers: { ...bearer(buyer), 'x-original-method': 'GET', 'x-original-uri': '/v1/models', 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/v1/models' },
    }));
  });
});

describe('denials', () => {
  it('no key: 401 missing_api_key with www-authenticate, and the body of the outcome table', async () => {
    const a = await authz('/authz/v1/models');
    expectDenial(a, 401, 'missing_api_key');
    expect(a.headers.get('www-authenticate')).toBe('Bearer realm="ryvion"');
    expect(a.text).toBe(denialResponse({ allow: false, reason: 'missing_api_key' }).body);
  });

  it('an unknown key: 401 invalid_api_key', async () => {
    const a = await authz('/authz/v1/models', { headers: bearer(generateKey('live')) });
    expectDenial(a, 401, 'invalid_api_key');
    expect(a.headers.get('www-authenticate')).toBe('Bearer realm="ryvion", error="invalid_token"');
  });

  it('the same credential header twice is a 401, even with the same valid key', async () => {
    const status = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(`${base}/authz/v1/models`, { method: 'GET' }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.setHeader('x-api-key', [readOnly, readOnly]);
      req.end();
    });
    expect(status.status).toBe(401);
    expect(JSON.parse(status.body).error.code).toBe('invalid_api_key');
    expectAllowed(await authz('/authz/v1/models', { headers: { 'x-api-key': readOnly } }), 'read-only');
  });

  it('different keys in Authorization and X-API-Key: 401', async () => {
    expectDenial(await authz('/authz/v1/models', { headers: { ...bearer(buyer), 'x-api-key': readOnly } }), 401, 'invalid_api_key');
  });
});

describe('request ids, records and the API next door', () => {
  it('every answer carries x-request-id: the proxy\'s when it sent one, else a new UUID', async () => {
    expect((await authz('/authz/v1/models', { headers: { 'x-request-id': 'abc-123' } })).headers.get('x-request-id')).toBe('abc-123');
    expect((await authz('/authz/v1/models')).headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect((await authz('/authz/v1/models', { headers: bearer(buyer) })).headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('decisions are counted under transport="http"', async () => {
    const before = await metricValue(service, 'ryvion_authz_decisions_total', { transport: 'http', outcome: 'deny', reason: 'missing_api_key' });
    await authz('/authz/v1/models');
    expect(await metricValue(service, 'ryvion_authz_decisions_total', { transport: 'http', outcome: 'deny', reason: 'missing_api_key' })).toBe(before + 1);
  });

  it('the key management API keeps its routes and 404s; /authz-lookalikes are not the authorization mode', async () => {
    const me = await authz('/api/v1/auth/me', { headers: bearer(buyer) });
    expect(me.status).toBe(200);
    expect(JSON.parse(me.text).object).toBe('auth.me');
    const lookalike = await authz('/authzx/v1/models', { headers: bearer(buyer) });
    expect(lookalike.status).toBe(404);
    expect(JSON.parse(lookalike.text).error.code).toBe('not_found');
    // An Envoy-style call about the management API is judged like any other path (buyer may manage keys).
    expectAllowed(await authz('/authz/api/v1/auth/api-keys', { headers: bearer(buyer) }));
  });
});

describe('stores down', () => {
  let proxy: TcpProxy;
  const stores: RunningService[] = [];

  beforeAll(async () => {
    const url = new URL(db.url);
    proxy = new TcpProxy(url.hostname, Number(url.port || 5432));
    await proxy.start();
    url.host = `127.0.0.1:${proxy.port}`;
    for (const mode of ['deny', 'rpc_error']) {
      stores.push(await startTestService({ DATABASE_URL: url.toString(), KEY_PEPPER: pepper, UNAVAILABLE_MODE: mode, STORE_TIMEOUT_MS: '200' }));
    }
    await proxy.cut();
  });

  afterAll(async () => {
    for (const s of stores) await s.stop();
  });

  it('a key that cannot be verified: 503 auth_unavailable with retry-after: 1, never a 401', async () => {
    const a = await fetch(`http://127.0.0.1:${stores[0]!.httpPort}/authz/v1/models`, { headers: bearer(generateKey('live')) });
    expectDenial({ status: a.status, headers: a.headers, text: await a.text() }, 503, 'auth_unavailable');
    expect(a.headers.get('retry-after')).toBe('1');
  });

  it('UNAVAILABLE_MODE=rpc_error: the call is reset unanswered, so the proxy\'s failure_mode_allow decides', async () => {
    await expect(fetch(`http://127.0.0.1:${stores[1]!.httpPort}/authz/v1/models`, { headers: bearer(generateKey('live')) })).rejects.toThrow();
    // A malformed key needs no store: still a plain 401.
    const bad = await fetch(`http://127.0.0.1:${stores[1]!.httpPort}/authz/v1/models`, { headers: bearer('ryv_live_nope') });
    expect(bad.status).toBe(401);
    await vi.waitFor(async () => expect(await metricValue(stores[1]!, 'ryvion_authz_decisions_total', { transport: 'http', reason: 'auth_unavailable' })).toBe(1));
  });
});
