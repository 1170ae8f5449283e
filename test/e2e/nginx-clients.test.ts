// Two clients behind the shipped nginx configuration are limited separately for failed keys, on the
// API routes and on the key management API alike: one client cannot lock the other out (issue 16).
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/keys/format.js';
import type { RunningService } from '../../src/service.js';
import { TestNginx, requireNginx } from '../helpers/nginx.js';
import { startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let nginx: TestNginx;
let upstream: http.Server;
let accountId: string;

// Both clients reach nginx on 127.0.0.1 from addresses of their own (all of 127/8 is this host).
const ATTACKER = '127.0.0.2';
const OWNER = '127.0.0.3';

function get(path: string, key: string, localAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: nginx.port, path, headers: { authorization: `Bearer ${key}` }, localAddress, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode!));
    });
    req.on('error', reject);
    req.end();
  });
}

const freshKey = async (): Promise<string> => (await service.repository.createKey({ accountId, name: 'e2e', scope: 'buyer', expiresAt: null })).secret;

beforeAll(async () => {
  requireNginx();
  db = await freshDatabase();
  service = await startTestService({
    DATABASE_URL: db.url,
    KEY_PEPPER: testPepper(),
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: redisPrefix(),
    FAILED_AUTH_PER_SOURCE_PER_MINUTE: '5',
    // nginx connects from 127.0.0.1; its clients use other loopback addresses.
    TRUSTED_PROXIES: '127.0.0.1/32',
  });
  upstream = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"object":"list","data":[]}'));
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  nginx = new TestNginx({ authz: `127.0.0.1:${service.httpPort}`, api: `127.0.0.1:${(upstream.address() as AddressInfo).port}` });
  await nginx.start();
  accountId = (await service.repository.createAccount(`clients-${randomUUID()}@example.com`, 'free')).id;
});

afterAll(async () => {
  await nginx?.stop();
  await new Promise<void>((resolve) => (upstream ? upstream.close(() => resolve()) : resolve()));
  await service?.stop();
  await db?.drop();
});

describe('failed keys behind nginx', () => {
  it('a client sending random keys is throttled; another client behind the same nginx is not, on the API and on the key API', async () => {
    const attempts: number[] = [];
    for (let i = 0; i < 4; i++) attempts.push(await get('/api/v1/auth/me', generateKey('live'), ATTACKER));
    for (let i = 0; i < 4; i++) attempts.push(await get('/v1/models', generateKey('live'), ATTACKER));
    expect(attempts.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
    expect(attempts.at(-1)).toBe(429);
    expect(await get('/api/v1/auth/me', await freshKey(), ATTACKER)).toBe(429);
    expect(await get('/v1/models', await freshKey(), ATTACKER)).toBe(429);

    // The owner revoking a leaked key is not blocked by the attacker.
    expect(await get('/api/v1/auth/me', await freshKey(), OWNER)).toBe(200);
    expect(await get('/api/v1/auth/api-keys', await freshKey(), OWNER)).toBe(200);
    expect(await get('/v1/models', await freshKey(), OWNER)).toBe(200);
  });
});
