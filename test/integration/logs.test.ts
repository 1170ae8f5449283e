// Decision logs from the real service: one line per denial with request id, key id, account id,
// reason and latency, and never a secret (the key, its random part, the pepper, the header value).
import { systemClock } from '../../src/time/clock.js';
import { Writable } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKey } from '../../src/keys/format.js';
import { createLogger } from '../../src/observability/logger.js';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient, startTestService, revokeKey } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

type Form = 'bearer' | 'x-api-key';
const FORMS: readonly Form[] = ['bearer', 'x-api-key'];
const credential = (form: Form, key: string): Record<string, string> =>
  form === 'bearer' ? { authorization: `Bearer ${key}` } : { 'x-api-key': key };

interface LogLine {
  level: string;
  msg: string;
  request_id?: string;
  decision?: string;
  reason?: string;
  detail?: string;
  key_id?: string;
  account_id?: string;
  latency_ms?: number;
}

const pepper = testPepper();
const now = { ms: Date.now() };
const output: string[] = [];
const sink = new Writable({
  write(chunk: Buffer, _encoding, done) {
    output.push(chunk.toString());
    done();
  },
});
/** Every secret a request carried: the keys, their random parts and the header values. */
const secrets = new Set<string>([pepper]);

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let client: CheckClient;
let accountId: string;
const keys: Record<string, { id: string; secret: string }> = {};

const lines = (): LogLine[] =>
  output
    .join('')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as LogLine);
const linesFor = (requestId: string): LogLine[] => lines().filter((l) => l.request_id === requestId);

async function check(requestId: string, headers: Record<string, string>, init: { method?: string; path?: string } = {}): Promise<CheckResponse> {
  for (const value of Object.values(headers)) secrets.add(value);
  return client.check(envoyCheckRequest({ ...init, headers: { ...headers, 'x-request-id': requestId } }));
}

async function newKey(name: string, scope = 'buyer', expiresAt: Date | null = null): Promise<{ id: string; secret: string }> {
  const { key, secret } = await service.repository.createKey({ accountId, name, scope, expiresAt });
  secrets.add(secret);
  secrets.add(secret.slice('ryv_live_'.length));
  return { id: key.id, secret };
}

beforeAll(async () => {
  db = await freshDatabase();
  // debug: allowed decisions (debug unless sampled) and every internal line are searched for secrets too.
  service = await startTestService(
    { DATABASE_URL: db.url, KEY_PEPPER: pepper, LOG_LEVEL: 'debug' },
    { clock: { now: () => now.ms, setTimer: systemClock.setTimer }, logger: createLogger('debug', sink) },
  );
  client = new CheckClient(service.grpcPort);
  accountId = (await service.repository.createAccount('logs@example.com', 'enterprise')).id;
  keys.buyer = await newKey('buyer');
  keys.readOnly = await newKey('read-only', 'read-only');
  keys.revoked = await newKey('revoked');
  keys.expiring = await newKey('expiring', 'buyer', new Date(now.ms + 3_600_000));
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await db?.drop();
});

describe('a log line for every decision', () => {
  const cases: Array<{
    name: string;
    reason: string;
    detail?: string;
    /** The key whose id the line must carry; none when no key was identified. */
    key?: string;
    send: (form: Form, requestId: string) => Promise<CheckResponse>;
  }> = [
    { name: 'allowed', reason: 'allowed', key: 'buyer', send: (f, id) => check(id, credential(f, keys.buyer!.secret)) },
    { name: 'missing', reason: 'missing_api_key', send: (_f, id) => check(id, {}) },
    { name: 'invalid malformed', reason: 'invalid_api_key', detail: 'malformed', send: (f, id) => check(id, credential(f, 'ryv_live_n0tAvalidKeyAtAll')) },
    { name: 'invalid unknown', reason: 'invalid_api_key', detail: 'unknown', send: (f, id) => check(id, credential(f, generateKey('live'))) },
    { name: 'revoked', reason: 'invalid_api_key', detail: 'revoked', key: 'revoked', send: (f, id) => check(id, credential(f, keys.revoked!.secret)) },
    {
      name: 'expired',
      reason: 'invalid_api_key',
      detail: 'expired',
      key: 'expiring',
      send: async (f, id) => {
        now.ms += 2 * 3_600_000;
        try {
          return await check(id, credential(f, keys.expiring!.secret));
        } finally {
          now.ms -= 2 * 3_600_000;
        }
      },
    },
    { name: 'insufficient scope', reason: 'insufficient_scope', key: 'readOnly', send: (f, id) => check(id, credential(f, keys.readOnly!.secret)) },
    { name: 'route not allowed', reason: 'route_not_allowed', key: 'buyer', send: (f, id) => check(id, credential(f, keys.buyer!.secret), { method: 'GET', path: '/v9/nothing-here' }) },
    { name: 'invalid path', reason: 'invalid_path', key: 'buyer', send: (f, id) => check(id, credential(f, keys.buyer!.secret), { method: 'GET', path: '/v1/models/a%2Fb' }) },
    {
      name: 'auth unavailable',
      reason: 'auth_unavailable',
      // A key no cache holds (made for this request), while the keys table is locked: the look-up times out (STORE_TIMEOUT_MS).
      send: async (f, id) => {
        const cold = await newKey(`cold-${id}`);
        const locker = new pg.Client({ connectionString: db.url });
        await locker.connect();
        try {
          await locker.query('BEGIN');
          await locker.query('LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE');
          return await check(id, credential(f, cold.secret));
        } finally {
          await locker.query('ROLLBACK');
          await locker.end();
        }
      },
    },
  ];

  beforeAll(async () => {
    await revokeKey(service, keys.revoked!.id);
    // Warm the caches with everything but the cold keys, so each case below decides as it would in steady state.
    await check('warm-up', credential('bearer', keys.buyer!.secret));
  });

  for (const c of cases) {
    for (const form of FORMS) {
      it(`${c.name} (${form}): one line with request id, reason, ${c.key ? 'key and account ids, ' : ''}latency`, async () => {
        const requestId = `req-${c.name.replaceAll(' ', '-')}-${form}`;
        const res = await c.send(form, requestId);
        const denied = c.reason !== 'allowed';
        expect(res.denied_response !== undefined).toBe(denied);
        const [line, ...more] = linesFor(requestId);
        expect(more).toEqual([]);
        expect(line).toMatchObject({ decision: denied ? 'deny' : 'allow', reason: c.reason, latency_ms: expect.any(Number) });
        expect(line!.level).toBe(denied ? 'info' : 'debug');
        if (c.detail) expect(line!.detail).toBe(c.detail);
        expect(line!.key_id).toBe(c.key ? keys[c.key]!.id : undefined);
        expect(line!.account_id).toBe(c.key ? accountId : undefined);
      });
    }
  }

  // Sends every case itself, so that it holds in any order and alone.
  it('no line anywhere carries a secret: keys, their random parts, header values or the pepper', async () => {
    for (const c of cases) for (const form of FORMS) await c.send(form, `req-secrets-${c.name.replaceAll(' ', '-')}-${form}`);
    const text = output.join('');
    expect(text.length).toBeGreaterThan(1000);
    expect(secrets.size).toBeGreaterThan(20);
    for (const secret of secrets) expect(text.includes(secret), `log contains a secret (${secret.slice(0, 12)}…)`).toBe(false);
  });
});
