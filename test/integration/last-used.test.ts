// last_used_at as written by the batch the LastUsedRecorder flushes: the time of use, to the
// millisecond, and never moved back by an older use that arrives later (another replica's batch).
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyHasher } from '../../src/keys/hash.js';
import { LastUsedRecorder } from '../../src/keys/last-used.js';
import { KeyRepository } from '../../src/keys/repository.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let pool: pg.Pool;
let repo: KeyRepository;
let accountId: string;

beforeAll(async () => {
  db = await freshDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  repo = new KeyRepository(pool, new KeyHasher({ version: 1, secret: testPepper() }), 'live');
  accountId = (await repo.createAccount('last-used@example.com', 'free')).id;
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

const lastUsed = async (id: string): Promise<Date | null> =>
  (await pool.query<{ last_used_at: Date | null }>('SELECT last_used_at FROM api_keys WHERE id = $1', [id])).rows[0]!.last_used_at;

describe('last_used_at', () => {
  it('is the time of the first use since the last flush, to the millisecond', async () => {
    const { key } = await repo.createKey({ accountId, name: 'used', scope: 'buyer', expiresAt: null });
    const { key: unused } = await repo.createKey({ accountId, name: 'unused', scope: 'buyer', expiresAt: null });
    let now = Date.UTC(2026, 11, 3, 8, 15, 30, 123);
    const recorder = new LastUsedRecorder(repo, 3_600_000, () => now);
    recorder.touch(key.id);
    now += 5_000;
    recorder.touch(key.id);
    await recorder.stop();
    expect((await lastUsed(key.id))?.toISOString()).toBe('2026-12-03T08:15:30.123Z');
    expect(await lastUsed(unused.id)).toBeNull();
  });

  it('is never moved back by an older use written later', async () => {
    const { key } = await repo.createKey({ accountId, name: 'two replicas', scope: 'buyer', expiresAt: null });
    const later = Date.UTC(2026, 11, 3, 9, 0, 0, 999);
    await repo.touchLastUsed(new Map([[key.id, later]]));
    await repo.touchLastUsed(new Map([[key.id, later - 60_000]]));
    expect((await lastUsed(key.id))?.toISOString()).toBe('2026-12-03T09:00:00.999Z');
    await repo.touchLastUsed(new Map([[key.id, later + 1]]));
    expect((await lastUsed(key.id))?.toISOString()).toBe('2026-12-03T09:00:01.000Z');
  });
});
