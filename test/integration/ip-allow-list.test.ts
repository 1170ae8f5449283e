// Per-key IP allow-lists over gRPC (Envoy's source address) and HTTP mode (trusted-proxy address),
// capped by the creating key's own list, and what the openai SDK makes of a refusal.
import OpenAI, { PermissionDeniedError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { TestGateway } from '../helpers/gateway.js';
import { CheckClient, startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let client: CheckClient;
let owner: string;
/** Created through the API with allowed_cidrs: an IPv4 and an IPv6 block. */
let limited: { id: string; key: string; allowed_cidrs: string[] };

beforeAll(async () => {
  db = await freshDatabase();
  service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper() });
  client = new CheckClient(service.grpcPort);
  const accountId = (await service.repository.createAccount('cidr@example.com', 'free')).id;
  owner = (await service.repository.createKey({ accountId, name: 'owner', scope: 'buyer', expiresAt: null })).secret;
  const res = await api('POST', '/api/v1/auth/api-keys', owner, { name: 'office', allowed_cidrs: ['203.0.113.0/24', '2001:db8:ab::/48'] });
  expect(res.status).toBe(201);
  limited = (await res.json()) as typeof limited;
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await db?.drop();
});

function api(method: string, path: string, key: string, body?: unknown, forwardedFor?: string) {
  return fetch(`http://127.0.0.1:${service.httpPort}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${key}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      // The test talks from loopback, a trusted proxy by default: this names the client.
      ...(forwardedFor ? { 'x-forwarded-for': forwardedFor } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
}

const grpcFrom = (source: string, key = limited.key): Promise<CheckResponse> =>
  client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${key}` }, source }));

async function grpcOutcome(source: string): Promise<string> {
  const r = await grpcFrom(source);
  if (r.ok_response) return 'allowed';
  return `${r.denied_response!.status.code} ${(JSON.parse(r.denied_response!.body) as { error: { code: string } }).error.code}`;
}

async function httpOutcome(forwardedFor: string): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${service.httpPort}/authz/v1/models`, {
    headers: { authorization: `Bearer ${limited.key}`, 'x-forwarded-for': forwardedFor },
  });
  if (res.status === 200) return 'allowed';
  return `${res.status} ${((await res.json()) as { error: { code: string } }).error.code}`;
}

describe('IP allow-lists per key', () => {
  it('the key shows its canonical allow-list', () => {
    expect(limited.allowed_cidrs).toEqual(['203.0.113.0/24', '2001:db8:ab::/48']);
  });

  it('over gRPC: an address inside is allowed, one outside is 403 ip_not_allowed (IPv4, IPv6, IPv4-mapped IPv6)', async () => {
    expect(await grpcOutcome('203.0.113.7')).toBe('allowed');
    expect(await grpcOutcome('198.51.100.7')).toBe('403 ip_not_allowed');
    expect(await grpcOutcome('2001:db8:ab:1::5')).toBe('allowed');
    expect(await grpcOutcome('2001:db8:ac::5')).toBe('403 ip_not_allowed');
    expect(await grpcOutcome('::ffff:203.0.113.9')).toBe('allowed');
    expect(await grpcOutcome('::ffff:198.51.100.9')).toBe('403 ip_not_allowed');
    // A key without a list is not affected.
    expect((await grpcFrom('198.51.100.7', owner)).ok_response).toBeDefined();
  });

  it('over HTTP mode: judged on the trusted-proxy client address', async () => {
    expect(await httpOutcome('203.0.113.7')).toBe('allowed');
    expect(await httpOutcome('198.51.100.7')).toBe('403 ip_not_allowed');
    expect(await httpOutcome('2001:db8:ab::1')).toBe('allowed');
    expect(await httpOutcome('2001:db8:ffff::1')).toBe('403 ip_not_allowed');
    expect(await httpOutcome('::ffff:203.0.113.200')).toBe('allowed');
  });

  it('a key cannot create a key usable from outside its own list; an omitted list is inherited', async () => {
    const from = '203.0.113.7';
    const wider = await api('POST', '/api/v1/auth/api-keys', limited.key, { name: 'wider', allowed_cidrs: ['203.0.0.0/16'] }, from);
    expect(wider.status).toBe(400);
    expect(await wider.json()).toMatchObject({ error: { code: 'invalid_value', param: 'allowed_cidrs' } });
    const anywhere = await api('POST', '/api/v1/auth/api-keys', limited.key, { name: 'anywhere', allowed_cidrs: null }, from);
    expect(anywhere.status).toBe(400);
    const narrower = await api('POST', '/api/v1/auth/api-keys', limited.key, { name: 'narrower', allowed_cidrs: ['203.0.113.128/25'] }, from);
    expect(narrower.status).toBe(201);
    expect(await narrower.json()).toMatchObject({ allowed_cidrs: ['203.0.113.128/25'] });
    const inherited = await api('POST', '/api/v1/auth/api-keys', limited.key, { name: 'inherited' }, from);
    expect(await inherited.json()).toMatchObject({ allowed_cidrs: ['203.0.113.0/24', '2001:db8:ab::/48'] });
  });

  it('the key management API applies the list too', async () => {
    const res = await api('GET', '/api/v1/auth/me', limited.key, undefined, '198.51.100.7');
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: { code: 'ip_not_allowed', type: 'permission_error' } });
  });

  it('a rolled key\'s successor keeps the allow-list', async () => {
    const res = await api('POST', `/api/v1/auth/api-keys/${limited.id}/roll`, owner, { overlap_seconds: 600 });
    expect(res.status).toBe(201);
    expect(await res.json()).toMatchObject({ allowed_cidrs: ['203.0.113.0/24', '2001:db8:ab::/48'] });
  });

  it('the openai SDK raises PermissionDeniedError with code ip_not_allowed', async () => {
    // The test gateway reports 127.0.0.1 as the client, outside the key's list.
    const gateway = new TestGateway(client);
    try {
      const sdk = new OpenAI({ apiKey: limited.key, baseURL: `${await gateway.start()}/v1`, maxRetries: 0 });
      const err = await sdk.chat.completions.create({ model: 'ryvion-test', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PermissionDeniedError);
      expect((err as PermissionDeniedError).code).toBe('ip_not_allowed');
      expect((err as PermissionDeniedError).status).toBe(403);
    } finally {
      await gateway.stop();
    }
  });
});
