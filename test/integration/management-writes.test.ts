// Key-management writes run on their own timeout, and a write whose commit is unconfirmed says so.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningService } from '../../src/service.js';
import { startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let admin: pg.Client;
let accountId: string;
let owner: string;

beforeAll(async () => {
  db = await freshDatabase();
  service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper(), STORE_TIMEOUT_MS: '100', MANAGEMENT_WRITE_TIMEOUT_MS: '1500' });
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  accountId = (await service.repository.createAccount('writes@example.com', 'free')).id;
  owner = (await service.repository.createKey({ accountId, name: 'owner', scope: 'buyer', expiresAt: null })).secret;
});

afterAll(async () => {
  await admin?.end();
  await service?.stop();
  await db?.drop();
});

const api = (method: string, path: string, body?: unknown) =>
  fetch(`http://127.0.0.1:${service.httpPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${owner}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });

describe('key-management writes', () => {
  it('a create that waits 400 ms on a lock succeeds: writes are not held to the 100 ms Check budget', async () => {
    await admin.query('BEGIN');
    await admin.query('SELECT id FROM accounts WHERE id = $1 FOR UPDATE', [accountId]);
    const pending = api('POST', '/api/v1/auth/api-keys', { name: 'slow' });
    await new Promise((r) => setTimeout(r, 400)); // the lock is held this long on purpose
    await admin.query('COMMIT');
    const res = await pending;
    expect(res.status).toBe(201);
  });

  it('a create whose COMMIT is not confirmed in time answers 503 outcome_unknown and says to list the keys; the key was in fact created', async () => {
    // A deferred trigger makes COMMIT itself slow (2 s) beyond MANAGEMENT_WRITE_TIMEOUT_MS (1.5 s).
    await admin.query(`CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$`);
    await admin.query(`CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON api_keys DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()`);
    try {
      const res = await api('POST', '/api/v1/auth/api-keys', { name: 'unconfirmed' });
      expect(res.status).toBe(503);
      const body = (await res.json()) as { error: { code: string; message: string } };
      expect(body.error.code).toBe('outcome_unknown');
      expect(body.error.message).toMatch(/may or may not have been created/);
      expect(body.error.message).toMatch(/GET \/api\/v1\/auth\/api-keys/);
      expect(body.error.message).not.toMatch(/nothing was changed/);
      // The server finished the commit after the client stopped waiting.
      await expect
        .poll(async () => (await admin.query(`SELECT count(*)::int AS n FROM api_keys WHERE name = 'unconfirmed'`)).rows[0].n, { timeout: 10_000 })
        .toBe(1);
    } finally {
      await admin.query('DROP TRIGGER slow_commit ON api_keys');
    }
  });
});
