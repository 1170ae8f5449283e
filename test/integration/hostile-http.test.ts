// HTTP_PORT under hostile input (issue 16): client addresses, lock-out through a proxy, keys that
// would outlive their maker, and answers in the documented shape whatever Node or Fastify thinks
// of the request.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/keys/format.js';
import { KeyHasher } from '../../src/keys/hash.js';
import type { RunningService } from '../../src/service.js';
import { metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

let db: Awaited<ReturnType<typeof freshDatabase>>;
let a: RunningService;
let b: RunningService;
let accountId: string;
const pepper = testPepper();
const prefix = redisPrefix();

/** One request over its own connection, from `localAddress` (any 127/8 address is this host). */
function request(port: number, path: string, init: { method?: string; headers?: Record<string, string>; body?: string; localAddress?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: init.method ?? 'GET', headers: init.headers, localAddress: init.localAddress, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/** Raw bytes in, the parsed answer out: for requests no HTTP client would send. */
function raw(port: number, text: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.end(text));
    let data = '';
    socket.setEncoding('latin1');
    socket.on('data', (c: string) => (data += c));
    socket.on('error', reject);
    socket.on('close', () => {
      const [head = '', ...rest] = data.split('\r\n\r\n');
      const [statusLine = '', ...lines] = head.split('\r\n');
      const headers: http.IncomingHttpHeaders = {};
      for (const l of lines) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: rest.join('\r\n\r\n') });
    });
  });
}

function expectApiShape(r: Answer, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(r.headers['content-type']).toBe('application/json');
  expect(r.headers['cache-control']).toBe('no-store');
  expect(r.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  expect(JSON.parse(r.body)).toEqual({ error: { message: expect.any(String), type: 'invalid_request_error', param: null, code } });
}

async function newKey(scope: string, expiresAt: Date | null = null): Promise<string> {
  return (await a.repository.createKey({ accountId, name: scope, scope, expiresAt })).secret;
}

beforeAll(async () => {
  db = await freshDatabase();
  const env = {
    DATABASE_URL: db.url,
    KEY_PEPPER: pepper,
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: prefix,
    FAILED_AUTH_PER_SOURCE_PER_MINUTE: '5',
    TRUSTED_PROXIES: '127.0.0.1/32',
  };
  [a, b] = await Promise.all([startTestService(env), startTestService(env)]);
  // Redis is read only once revocations are replayed into it (key-store.ts): wait for both replicas.
  const deadline = Date.now() + 10_000;
  for (const s of [a, b]) {
    while ((await metricValue(s, 'ryvion_authz_store_up', { store: 'redis' })) !== 1) {
      if (Date.now() > deadline) throw new Error('Redis never became usable');
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  accountId = (await a.repository.createAccount(`hostile-${randomUUID()}@example.com`, 'free')).id;
});

afterAll(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
  await db?.drop();
});

describe('client addresses and failed-key throttling (item 1)', () => {
  const me = (service: RunningService, key: string, client: string) =>
    request(service.httpPort, '/api/v1/auth/me', { headers: { authorization: `Bearer ${key}`, 'x-forwarded-for': client } });

  it('key API behind a trusted proxy: a failing client is throttled alone, and still gets its key that is in Redis but not in this replica\'s memory', async () => {
    const warm = await newKey('buyer');
    expect((await me(a, warm, '203.0.113.50')).status).toBe(200);
    // a writes Redis after answering: wait until the entry is there (it is not in b's memory).
    const hash = new KeyHasher({ version: 1, secret: pepper }).candidates(warm)[0]!.hash.toString('base64url');
    const deadline = Date.now() + 10_000;
    while ((await a.keyStore.redis!.exists(`${prefix}key:{${hash}}`)) === 0) {
      if (Date.now() > deadline) throw new Error('the key never reached Redis');
      await new Promise((r) => setTimeout(r, 20));
    }
    // b reads Redis only while its revocation guard allows it (docs/revocation.md): wait for that too.
    await expect.poll(() => b.keyStore.guard.redisReadable(), { timeout: 10_000 }).toBe(true);
    const attacker = '198.51.100.1';
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await me(b, generateKey('live'), attacker)).status);
    expect(statuses.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
    expect(statuses.at(-1)).toBe(429);

    expect((await me(b, warm, attacker)).status).toBe(200);
    const cold = await me(b, await newKey('buyer'), attacker);
    expect(cold.status).toBe(429); // only Postgres look-ups are throttled
    expect(JSON.parse(cold.body).error.code).toBe('rate_limit_exceeded');
    expect((await me(b, await newKey('buyer'), '198.51.100.2')).status).toBe(200); // another client behind the same proxy
  });

  it('/authz from a peer that is not a trusted proxy: X-Forwarded-For is ignored, so rotating it does not escape the limit', async () => {
    const authz = (key: string, xff: string) =>
      request(b.httpPort, '/authz/v1/models', { headers: { 'x-api-key': key, 'x-forwarded-for': xff }, localAddress: '127.0.0.2' });
    for (let i = 0; i < 6; i++) await authz(generateKey('live'), `192.0.2.${i + 1}`);
    const r = await authz(await newKey('read-only'), '192.0.2.200');
    expect(r.status).toBe(429);
  });

  it('strings that fail the offline shape check do not count against the client', async () => {
    for (let i = 0; i < 20; i++) expect((await me(b, `ryv_live_${'x'.repeat(49)}`, '198.51.100.3')).status).toBe(401);
    expect((await me(b, await newKey('buyer'), '198.51.100.3')).status).toBe(200);
  });
});

describe('keys created by a key (item 2)', () => {
  const create = (key: string, body: object) =>
    request(a.httpPort, '/api/v1/auth/api-keys', { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('a buyer key expiring in 3 minutes cannot create a key that never expires, or expires later; an omitted expiry is inherited', async () => {
    const expiresAt = new Date(Math.floor(Date.now() / 1000) * 1000 + 3 * 60_000);
    const parent = await newKey('buyer', expiresAt);
    const forever = await create(parent, { name: 'child', expires_at: null });
    expect(forever.status).toBe(400);
    expect(JSON.parse(forever.body).error).toMatchObject({ code: 'invalid_value', param: 'expires_at' });
    const later = await create(parent, { name: 'child', expires_at: new Date(expiresAt.getTime() + 3_600_000).toISOString() });
    expect(later.status).toBe(400);
    const inherited = await create(parent, { name: 'child' });
    expect(inherited.status).toBe(201);
    expect(JSON.parse(inherited.body).expires_at).toBe(expiresAt.toISOString());
    const earlier = new Date(expiresAt.getTime() - 60_000).toISOString();
    const shorter = await create(parent, { name: 'child', expires_at: earlier });
    expect([shorter.status, JSON.parse(shorter.body).expires_at]).toEqual([201, earlier]);
  });

  it('a key with a per-key limit hands it down to the keys it creates', async () => {
    const { secret } = await a.repository.createKey({ accountId, name: 'limited', scope: 'buyer', expiresAt: null, rateLimitRpm: 30 });
    const child = await create(secret, { name: 'child' });
    expect(child.status).toBe(201);
    const { rows } = await a.pool.query<{ rate_limit_rpm: number | null }>('SELECT rate_limit_rpm FROM api_keys WHERE id = $1', [JSON.parse(child.body).id]);
    expect(rows[0]!.rate_limit_rpm).toBe(30);
  });
});

describe('every answer on HTTP_PORT in the documented shape (item 3)', () => {
  it.each(['/api/v1/auth/me%g0', '/authz%g0', '/api/v1/auth/api-keys/%zz'])('a URL that cannot be decoded (%s): 400 invalid_request with x-request-id', async (path) => {
    expectApiShape(await request(a.httpPort, path), 400, 'invalid_request');
  });

  it('a path parameter over Fastify\'s limit: 414 invalid_request with x-request-id', async () => {
    expectApiShape(await request(a.httpPort, `/api/v1/auth/api-keys/${'k'.repeat(200)}`, { method: 'DELETE' }), 414, 'invalid_request');
  });

  it.each(['/api/v1/auth/me', '/authz/v1/models', '/nowhere'])('HTTP/1.1 without Host (%s): 400 invalid_request with x-request-id', async (path) => {
    expectApiShape(await raw(a.httpPort, `GET ${path} HTTP/1.1\r\nConnection: close\r\n\r\n`), 400, 'invalid_request');
  });

  it('a request Node cannot parse carries cache-control: no-store too', async () => {
    expectApiShape(await raw(a.httpPort, 'GET /api/v1/auth/me HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n'), 400, 'invalid_request');
  });
});

describe('header count cap (item 4)', () => {
  const junk = 'a:\r\n'.repeat(2100);

  it('a valid key, 2,100 junk headers, then a conflicting X-API-Key: refused with 431, not allowed', async () => {
    const key = await newKey('buyer');
    const other = generateKey('live');
    const plain = await raw(a.httpPort, `GET /api/v1/auth/me HTTP/1.1\r\nHost: x\r\nX-API-Key: ${key}\r\nX-API-Key: ${other}\r\nConnection: close\r\n\r\n`);
    expect(plain.status).toBe(401);
    for (const path of ['/api/v1/auth/me', '/authz/v1/models']) {
      const r = await raw(a.httpPort, `GET ${path} HTTP/1.1\r\nHost: x\r\nX-API-Key: ${key}\r\n${junk}X-API-Key: ${other}\r\nConnection: close\r\n\r\n`);
      expectApiShape(r, 431, 'invalid_request');
    }
  });

  it('a repeated X-Original-URI hidden behind junk headers: refused with 431, not judged by the first', async () => {
    const key = await newKey('read-only');
    const r = await raw(
      a.httpPort,
      `GET /authz HTTP/1.1\r\nHost: x\r\nX-API-Key: ${key}\r\nX-Original-Method: GET\r\nX-Original-URI: /v1/models\r\n${junk}X-Original-URI: /v1/chat/completions\r\nConnection: close\r\n\r\n`,
    );
    expectApiShape(r, 431, 'invalid_request');
  });
});

describe('connection cap on HTTP_PORT (item 6)', () => {
  it('beyond MAX_CONNECTIONS_PER_PORT new connections are closed; a freed slot is served again', async () => {
    const capped = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper(), MAX_CONNECTIONS_PER_PORT: '2' });
    const open: net.Socket[] = [];
    try {
      const connect = () =>
        new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(capped.httpPort, '127.0.0.1', () => resolve(s));
          s.once('error', reject);
          open.push(s);
        });
      const held = [await connect(), await connect()];
      const third = await connect();
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('third connection still open after 10 s')), 10_000);
        third.on('error', () => undefined);
        third.once('close', () => (clearTimeout(timer), resolve()));
        third.resume();
      });
      held[0]!.destroy();
      const deadline = Date.now() + 10_000;
      for (;;) {
        const status = await request(capped.httpPort, '/api/v1/auth/me').then((r) => r.status, () => 0);
        if (status === 401) break;
        if (Date.now() > deadline) throw new Error('no request was served after a slot was freed');
      }
    } finally {
      for (const s of open) s.destroy();
      await capped.stop();
    }
  });
});
