// The Check service over real gRPC against a real Postgres, with Envoy-shaped requests.
import { systemClock } from '../../src/time/clock.js';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeyRepository } from '../../src/keys/repository.js';
import { generateKey } from '../../src/keys/format.js';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient, headersOf, startTestService, revokeKey } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let client: CheckClient;
let repo: KeyRepository;
let accountId: string;
let buyerKey: string;
let buyerKeyId: string;
const now = { ms: Date.now() };
const pepper = testPepper();

beforeAll(async () => {
  db = await freshDatabase();
  service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: pepper }, { clock: { now: () => now.ms, setTimer: systemClock.setTimer } });
  client = new CheckClient(service.grpcPort);
  repo = service.repository;
  accountId = (await repo.createAccount('check@example.com', 'free')).id;
  const created = await repo.createKey({ accountId, name: 'main', scope: 'buyer', expiresAt: null });
  buyerKey = created.secret;
  buyerKeyId = created.key.id;
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await db?.drop();
});

function denied(res: CheckResponse): { http: number; grpc: number; headers: Record<string, string>; body: { error: Record<string, unknown> } } {
  expect(res.ok_response).toBeUndefined();
  expect(res.denied_response).toBeDefined();
  return {
    http: res.denied_response!.status.code,
    grpc: res.status.code,
    headers: headersOf(res.denied_response!.headers),
    body: JSON.parse(res.denied_response!.body),
  };
}

describe('allowed requests', () => {
  it('a valid Bearer key is allowed with identity headers that overwrite client values', async () => {
    const res = await client.check(
      envoyCheckRequest({ headers: { authorization: `Bearer ${buyerKey}`, 'x-ryvion-account-id': 'acct_spoofed', 'x-request-id': 'req-allow-1' } }),
    );
    expect(res.status?.code ?? 0).toBe(0);
    const ok = res.ok_response!;
    expect(headersOf(ok.headers)).toEqual({ 'x-ryvion-account-id': accountId, 'x-ryvion-key-id': buyerKeyId, 'x-ryvion-scope': 'buyer' });
    for (const h of ok.headers) {
      expect(h.append).toEqual({ value: false });
      expect(h.append_action).toBe(2); // OVERWRITE_IF_EXISTS_OR_ADD
    }
    expect(ok.headers_to_remove).toEqual(['authorization', 'x-api-key']);
    expect(headersOf(ok.response_headers_to_add)).toEqual({ 'x-request-id': 'req-allow-1' });
  });

  it('carries the identity as dynamic metadata', async () => {
    const res = await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${buyerKey}` } }));
    const fields = res.dynamic_metadata!.fields;
    expect(fields.account_id?.stringValue).toBe(accountId);
    expect(fields.key_id?.stringValue).toBe(buyerKeyId);
    expect(fields.scope?.stringValue).toBe('buyer');
    expect(fields.permission?.stringValue).toBe('inference');
  });

  it('a valid X-API-Key is allowed the same way', async () => {
    const res = await client.check(envoyCheckRequest({ method: 'GET', path: '/v1/models', headers: { 'x-api-key': buyerKey } }));
    expect(headersOf(res.ok_response!.headers)['x-ryvion-key-id']).toBe(buyerKeyId);
  });

  it('the same key in both headers is allowed', async () => {
    const res = await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${buyerKey}`, 'x-api-key': buyerKey } }));
    expect(res.ok_response).toBeDefined();
  });

  it('a key in header_map raw_value (encode_raw_headers) is allowed', async () => {
    const res = await client.check(envoyCheckRequest({ rawHeaders: true, headers: { authorization: `bearer ${buyerKey}` } }));
    expect(headersOf(res.ok_response!.headers)['x-ryvion-key-id']).toBe(buyerKeyId);
  });
});

describe('401 rows of the outcome table', () => {
  it('no key: 401 missing_api_key with a Bearer realm challenge', async () => {
    const d = denied(await client.check(envoyCheckRequest({ headers: { 'x-request-id': 'req-missing' } })));
    expect(d).toMatchObject({ http: 401, grpc: 16 });
    expect(d.body.error).toMatchObject({ code: 'missing_api_key', type: 'invalid_request_error', param: null });
    expect(d.headers['www-authenticate']).toBe('Bearer realm="ryvion"');
    expect(d.headers['content-type']).toBe('application/json');
    expect(d.headers['x-request-id']).toBe('req-missing');
  });

  it('Basic credentials alone: 401 missing_api_key', async () => {
    const d = denied(await client.check(envoyCheckRequest({ headers: { authorization: 'Basic dXNlcjpwYXNz' } })));
    expect(d.body.error.code).toBe('missing_api_key');
  });

  const invalidCases: Array<[string, () => Record<string, string | string[]>]> = [
    ['a malformed key', () => ({ authorization: 'Bearer not-a-ryvion-key' })],
    ['a key with a wrong checksum', () => ({ authorization: `Bearer ${buyerKey.slice(0, -1)}${buyerKey.endsWith('a') ? 'b' : 'a'}` })],
    ['a well-formed unknown key', () => ({ authorization: `Bearer ${generateKey('live')}` })],
    ['a test-environment key on a live deployment', () => ({ 'x-api-key': generateKey('test') })],
    ['conflicting keys in the two headers', () => ({ authorization: `Bearer ${buyerKey}`, 'x-api-key': generateKey('live') })],
    ['the Authorization header sent twice', () => ({ authorization: [`Bearer ${buyerKey}`, `Bearer ${buyerKey}`] })],
    ['the X-API-Key header sent twice', () => ({ 'x-api-key': [buyerKey, buyerKey] })],
  ];
  it.each(invalidCases)('%s: 401 invalid_api_key with error="invalid_token"', async (_name, headers) => {
    const d = denied(await client.check(envoyCheckRequest({ headers: headers() })));
    expect(d).toMatchObject({ http: 401, grpc: 16 });
    expect(d.body.error).toMatchObject({ code: 'invalid_api_key', type: 'invalid_request_error' });
    expect(d.headers['www-authenticate']).toBe('Bearer realm="ryvion", error="invalid_token"');
    expect(JSON.stringify(d)).not.toContain(buyerKey);
  });

  it('a revoked key is denied on its next Check', async () => {
    const { secret, key } = await repo.createKey({ accountId, name: 'to-revoke', scope: 'buyer', expiresAt: null });
    const before = await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } }));
    expect(before.ok_response).toBeDefined();
    await revokeKey(service, key.id);
    const d = denied(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } })));
    expect(d).toMatchObject({ http: 401, body: { error: { code: 'invalid_api_key' } } });
  });

  it('an expired key is denied', async () => {
    const { secret } = await repo.createKey({ accountId, name: 'short-lived', scope: 'buyer', expiresAt: new Date(now.ms + 3_600_000) });
    expect((await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } }))).ok_response).toBeDefined();
    now.ms += 2 * 3_600_000;
    try {
      const d = denied(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } })));
      expect(d).toMatchObject({ http: 401, body: { error: { code: 'invalid_api_key' } } });
    } finally {
      now.ms -= 2 * 3_600_000;
    }
  });

  it('revoked, expired and unknown keys get the very same body (no enumeration)', async () => {
    const { secret, key } = await repo.createKey({ accountId, name: 'enum', scope: 'buyer', expiresAt: null });
    await revokeKey(service, key.id);
    const a = denied(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } })));
    const b = denied(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${generateKey('live')}` } })));
    expect(a.body).toEqual(b.body);
  });
});

describe('request ids', () => {
  it('a denial without x-request-id gets a generated one', async () => {
    const d = denied(await client.check(envoyCheckRequest()));
    expect(d.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('input that is not a normal request', () => {
  it('an empty CheckRequest gets a well-formed 400 (no method), not an RPC error', async () => {
    const d = denied(await client.check({}));
    expect(d).toMatchObject({ http: 400, body: { error: { code: 'invalid_request' } } });
  });

  it('a huge credential header is a 401, not a crash', async () => {
    const d = denied(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${'x'.repeat(100_000)}` } })));
    expect(d.http).toBe(401);
  });
});

describe('grpc.health.v1', () => {
  it('reports SERVING for the Check service once ready', async () => {
    const HealthClient = grpc.makeGenericClientConstructor(healthService, 'Health');
    const hc = new HealthClient(`127.0.0.1:${service.grpcPort}`, grpc.credentials.createInsecure()) as unknown as {
      check: (req: { service: string }, cb: (e: Error | null, r: { status: string }) => void) => void;
      close: () => void;
    };
    const status = await new Promise<string>((resolve, reject) =>
      hc.check({ service: 'envoy.service.auth.v3.Authorization' }, (e, r) => (e ? reject(e) : resolve(r.status))),
    );
    hc.close();
    expect(status).toBe('SERVING');
  });
});

describe('when Postgres is unreachable', () => {
  // A database of their own: a replica cut off from the file's database would stay listed there as
  // live without acknowledging, and a revocation on the file's service would wait on it.
  let cutDb: Awaited<ReturnType<typeof freshDatabase>>;
  let cutKey: string;

  /** A service of its own behind a TCP proxy to `cutDb`, with the proxy already cut. */
  async function cutOff(env: Record<string, string> = {}): Promise<{ proxy: TcpProxy; service: RunningService; client: CheckClient; close: () => Promise<void> }> {
    const target = new URL(cutDb.url);
    const proxy = new TcpProxy(target.hostname, Number(target.port || 5432));
    await proxy.start();
    const viaProxy = new URL(cutDb.url);
    viaProxy.hostname = '127.0.0.1';
    viaProxy.port = String(proxy.port);
    const cut = await startTestService({ DATABASE_URL: viaProxy.toString(), KEY_PEPPER: pepper, ...env });
    await proxy.cut();
    const c = new CheckClient(cut.grpcPort);
    return {
      proxy,
      service: cut,
      client: c,
      close: async () => {
        c.close();
        await cut.stop();
        await proxy.cut();
      },
    };
  }

  // One service cut off for the three cases that only read it: none of them brings Postgres back
  // or warms its caches with a key the others send.
  let shared: Awaited<ReturnType<typeof cutOff>>;
  let rpc: Awaited<ReturnType<typeof cutOff>>;

  beforeAll(async () => {
    cutDb = await freshDatabase();
    const seeder = await startTestService({ DATABASE_URL: cutDb.url, KEY_PEPPER: pepper });
    try {
      const account = await seeder.repository.createAccount('cut@example.com', 'free');
      cutKey = (await seeder.repository.createKey({ accountId: account.id, name: 'main', scope: 'buyer', expiresAt: null })).secret;
    } finally {
      await seeder.stop();
    }
    shared = await cutOff();
    rpc = await cutOff({ UNAVAILABLE_MODE: 'rpc_error' });
  });

  afterAll(async () => {
    await shared?.close();
    await rpc?.close();
    await cutDb?.drop();
  });

  it('a key that cannot be verified gets 503 auth_unavailable with retry-after, never a 401', async () => {
    const d = denied(await shared.client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${cutKey}` } })));
    expect(d).toMatchObject({ http: 503, grpc: 14 });
    expect(d.body.error).toMatchObject({ code: 'auth_unavailable', type: 'server_error' });
    expect(d.headers['retry-after']).toBe('1');
  });

  it('with UNAVAILABLE_MODE=rpc_error the answer is an UNAVAILABLE RPC error, for the proxy failure_mode_allow to decide', async () => {
    await expect(rpc.client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${cutKey}` } }))).rejects.toMatchObject({ code: 14 });
  });

  it('a malformed key is still a 401: it never needed the store', async () => {
    const d = denied(await shared.client.check(envoyCheckRequest({ headers: { authorization: 'Bearer nope' } })));
    expect(d.http).toBe(401);
  });

  // Its own service: bringing Postgres back (and the key it then caches) would change the cases above.
  it('decisions recover when Postgres comes back, without a restart', async () => {
    const own = await cutOff();
    try {
      const send = () => own.client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${cutKey}` } }));
      expect(denied(await send()).http).toBe(503);
      await own.proxy.restore();
      await expect.poll(async () => (await send()).ok_response !== undefined, { timeout: 15_000 }).toBe(true);
    } finally {
      await own.close();
    }
  });
});
