// The HTTP authorization mode's adapter on its own: which request an auth call is about, and how
// a Decision becomes the answer (with a stub pipeline, over a real HTTP server).
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { Decision } from '../../src/check/decision.js';
import { denialResponse } from '../../src/check/outcomes.js';
import { DecisionRecorder } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { AMBIGUOUS_ORIGINAL_PATH, createAuthzHandler, isAuthzPath, toAuthzAttributes, type AuthzOptions } from '../../src/transport/http/authz.js';
import { TrustedProxies } from '../../src/net/trusted-proxies.js';

// The peer of every request below (10.0.0.5) is a proxy.
const proxies = new TrustedProxies('10.0.0.0/8');

function request(url: string, headers: Array<[string, string]> = [], method = 'GET', remoteAddress = '10.0.0.5'): IncomingMessage {
  const rawHeaders = headers.flat();
  const joined: Record<string, string> = {};
  for (const [k, v] of headers) joined[k.toLowerCase()] = k.toLowerCase() in joined ? `${joined[k.toLowerCase()]}, ${v}` : v;
  return { url, method, rawHeaders, headers: joined, socket: { remoteAddress } } as unknown as IncomingMessage;
}

describe('isAuthzPath', () => {
  it.each([
    ['/authz', true],
    ['/authz?x=1', true],
    ['/authz/', true],
    ['/authz/v1/models', true],
    ['/authzx', false],
    ['/authz-v1', false],
    ['/api/v1/auth/me', false],
    ['/', false],
    ['//authz', false],
  ])('%s -> %s', (url, expected) => expect(isAuthzPath(url)).toBe(expected));
});

describe('toAuthzAttributes: what the auth call is about', () => {
  it('Envoy style: the rest of the path with its query, and the call\'s own method', () => {
    const a = toAuthzAttributes(request('/authz/v1/chat/completions?stream=true', [['Authorization', 'Bearer k']], 'POST'), proxies);
    expect(a).toMatchObject({ method: 'POST', path: '/v1/chat/completions?stream=true', authorization: ['Bearer k'], apiKey: [] });
    expect(toAuthzAttributes(request('/authz/'), proxies).path).toBe('/');
  });

  it('Envoy style ignores the nginx and Traefik headers', () => {
    const a = toAuthzAttributes(request('/authz/v1/models', [['X-Original-URI', '/api/v1/billing'], ['X-Forwarded-Uri', '/mcp'], ['X-Original-Method', 'POST']]), proxies);
    expect(a).toMatchObject({ method: 'GET', path: '/v1/models' });
  });

  it('nginx: x-original-method and x-original-uri', () => {
    expect(toAuthzAttributes(request('/authz', [['X-Original-Method', 'post'], ['X-Original-URI', '/v1/embeddings?a=b']]), proxies)).toMatchObject({ method: 'POST', path: '/v1/embeddings?a=b' });
  });

  it('Traefik: x-forwarded-method and x-forwarded-uri on a GET', () => {
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-Method', 'DELETE'], ['X-Forwarded-Uri', '/api/v1/auth/api-keys/key_1']]), proxies)).toMatchObject({
      method: 'DELETE',
      path: '/api/v1/auth/api-keys/key_1',
    });
  });

  it('a pair with one half missing: the call\'s own method, or the root path', () => {
    expect(toAuthzAttributes(request('/authz', [['X-Original-URI', '/v1/models']], 'HEAD'), proxies)).toMatchObject({ method: 'HEAD', path: '/v1/models' });
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-Method', 'POST']]), proxies)).toMatchObject({ method: 'POST', path: '/' });
    expect(toAuthzAttributes(request('/authz'), proxies)).toMatchObject({ method: 'GET', path: '/' });
  });

  it('descriptions that disagree, across families or repeated, become an unsafe path; agreeing ones do not', () => {
    const ambiguous = [
      [['X-Original-URI', '/v1/models'], ['X-Forwarded-Uri', '/v1/chat/completions']],
      [['X-Original-URI', '/v1/models'], ['X-Original-URI', '/api/v1/billing']],
      [['X-Original-Method', 'GET'], ['X-Original-URI', '/v1/models'], ['X-Forwarded-Method', 'POST'], ['X-Forwarded-Uri', '/v1/models']],
    ] as Array<Array<[string, string]>>;
    for (const headers of ambiguous) expect(toAuthzAttributes(request('/authz', headers), proxies).path).toBe(AMBIGUOUS_ORIGINAL_PATH);
    expect(toAuthzAttributes(request('/authz', [['X-Original-URI', '/v1/models'], ['X-Forwarded-Uri', '/v1/models'], ['X-Original-URI', '/v1/models']]), proxies).path).toBe('/v1/models');
  });

  it('the client address behind a trusted proxy: the nearest untrusted x-forwarded-for entry, else x-real-ip, else the peer', () => {
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-For', '1.1.1.1, 203.0.113.9']]), proxies).sourceAddress).toBe('203.0.113.9');
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-For', '1.1.1.1'], ['X-Forwarded-For', '198.51.100.2']]), proxies).sourceAddress).toBe('198.51.100.2');
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-For', '198.51.100.2, 10.1.1.1']]), proxies).sourceAddress).toBe('198.51.100.2');
    expect(toAuthzAttributes(request('/authz/v1/models', [['X-Real-IP', '192.0.2.4']]), proxies).sourceAddress).toBe('192.0.2.4');
    expect(toAuthzAttributes(request('/authz'), proxies).sourceAddress).toBe('10.0.0.5');
  });

  it('a client that is not a trusted proxy cannot pick its own address with forwarding headers', () => {
    const direct = (headers: Array<[string, string]>) => toAuthzAttributes(request('/authz', headers, 'GET', '203.0.113.7'), proxies).sourceAddress;
    expect(direct([['X-Forwarded-For', '198.51.100.2']])).toBe('203.0.113.7');
    expect(direct([['X-Real-IP', '192.0.2.4']])).toBe('203.0.113.7');
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-For', '198.51.100.2']], 'GET', '::ffff:203.0.113.7'), proxies).sourceAddress).toBe('203.0.113.7');
  });

  it('an x-forwarded-for entry that is not an address ends the walk at the nearest trusted hop', () => {
    expect(toAuthzAttributes(request('/authz', [['X-Forwarded-For', '198.51.100.2, junk, 10.2.2.2']]), proxies).sourceAddress).toBe('10.2.2.2');
  });

  it('methods are upper-cased by ASCII rules only: a Unicode look-alike is not POST', () => {
    expect(toAuthzAttributes(request('/authz', [['X-Original-Method', 'poſt'], ['X-Original-URI', '/v1/embeddings']]), proxies).method).not.toBe('POST');
  });

  it('repeated credential headers stay visible', () => {
    expect(toAuthzAttributes(request('/authz/v1/models', [['x-api-key', 'a'], ['X-API-Key', 'a']]), proxies).apiKey).toEqual(['a', 'a']);
  });
});

describe('createAuthzHandler: the answer', () => {
  let server: http.Server | undefined;
  let metrics: Metrics;

  afterEach(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
  });

  async function serve(decide: () => Promise<Decision>, options: Partial<AuthzOptions> = {}): Promise<string> {
    metrics = new Metrics({ defaultMetrics: false });
    const handler = createAuthzHandler({
      pipeline: { decide },
      recorder: new DecisionRecorder(createLogger('silent'), metrics),
      options: { stripCredentialHeaders: true, unavailableMode: 'deny', trustedProxies: proxies, ...options },
    });
    server = http.createServer(handler);
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  const identity = { accountId: 'acct_1', keyId: 'key_1', scope: 'buyer', plan: 'free', expiresAt: null, keyRpm: null };

  it('STRIP_CREDENTIAL_HEADERS=false: no x-envoy-auth-headers-to-remove, the rest unchanged', async () => {
    const base = await serve(async () => ({ allow: true, identity, permission: 'inference' }), { stripCredentialHeaders: false });
    const res = await fetch(`${base}/authz/v1/models`);
    expect(res.status).toBe(200);
    expect(res.headers.get('x-envoy-auth-headers-to-remove')).toBeNull();
    expect(res.headers.get('x-ryvion-account-id')).toBe('acct_1');
  });

  it('a HEAD auth call is answered like a GET, without a body', async () => {
    const base = await serve(async () => ({ allow: true, identity, permission: null }));
    const res = await fetch(`${base}/authz/v1/models`, { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-ryvion-scope')).toBe('buyer');
  });

  it('a pipeline that throws: a 503 auth_unavailable denial, counted as an internal error', async () => {
    const base = await serve(async () => {
      throw new Error('bug');
    });
    const res = await fetch(`${base}/authz/v1/models`, { headers: { 'x-request-id': 'req-9' } });
    expect(res.status).toBe(503);
    expect(await res.text()).toBe(denialResponse({ allow: false, reason: 'auth_unavailable', detail: 'internal' }).body);
    expect(res.headers.get('x-request-id')).toBe('req-9');
    const counted = await metrics.registry.getSingleMetric('ryvion_authz_internal_errors_total')!.get();
    expect(counted.values.find((v) => v.labels.transport === 'http')?.value).toBe(1);
  });

  it('a decision the answer cannot be built from: a 503 auth_unavailable denial, counted, and the server keeps answering', async () => {
    let calls = 0;
    // An allow without its identity: building the answer throws (a bug, not an input).
    const base = await serve(async () => (calls++ === 0 ? ({ allow: true } as unknown as Decision) : { allow: false, reason: 'missing_api_key' }));
    const res = await fetch(`${base}/authz/v1/models`, { headers: { 'x-request-id': 'req-10' }, signal: AbortSignal.timeout(5000) });
    expect(res.status).toBe(503);
    expect(await res.text()).toBe(denialResponse({ allow: false, reason: 'auth_unavailable', detail: 'internal' }).body);
    expect(res.headers.get('x-request-id')).toBe('req-10');
    expect(res.headers.get('x-ryvion-account-id')).toBeNull();
    const counted = await metrics.registry.getSingleMetric('ryvion_authz_internal_errors_total')!.get();
    expect(counted.values.find((v) => v.labels.transport === 'http')?.value).toBe(1);
    expect((await fetch(`${base}/authz/v1/models`)).status).toBe(401);
  });

  it('UNAVAILABLE_MODE=rpc_error: a store outage resets the call; other denials are answered', async () => {
    let outage = true;
    const base = await serve(async () => (outage ? { allow: false, reason: 'auth_unavailable', detail: 'postgres_down' } : { allow: false, reason: 'missing_api_key' }), {
      unavailableMode: 'rpc_error',
    });
    await expect(fetch(`${base}/authz/v1/models`)).rejects.toThrow();
    outage = false;
    expect((await fetch(`${base}/authz/v1/models`)).status).toBe(401);
  });

  it('nginx mode: a body with non-ASCII text travels as a valid, ASCII header', async () => {
    const base = await serve(async () => ({ allow: false, reason: 'insufficient_scope', identity: { ...identity, scope: 'lecture-seule-é' }, permission: 'inference' }));
    const res = await fetch(`${base}/authz`, { headers: { 'x-ryvion-proxy': 'nginx', 'x-original-uri': '/v1/chat/completions', 'x-original-method': 'POST' } });
    expect(res.status).toBe(403);
    expect(res.headers.get('x-ryvion-status')).toBe('403');
    const carried = res.headers.get('x-ryvion-error-body')!;
    expect(carried).toMatch(/^[\x20-\x7e]+$/);
    expect(JSON.parse(carried)).toEqual(JSON.parse(await res.text()));
    expect(JSON.parse(carried).error.message).toContain('lecture-seule-é');
  });
});
