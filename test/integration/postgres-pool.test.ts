// The Postgres pool's saturation, as Prometheus scrapes it: connections in use and queries waiting.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type pg from 'pg';
import type { RunningService } from '../../src/service.js';
import { startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;

beforeAll(async () => {
  db = await freshDatabase();
  service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper(), DATABASE_POOL_MAX: '3' });
});

afterAll(async () => {
  await service?.stop();
  await db?.drop();
});

/** One sample of the service's /metrics text. */
async function scraped(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${service.opsPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`${name} not in the scrape`);
  return Number(line.split(' ')[1]);
}

describe('Postgres pool metrics', () => {
  it('a saturated pool shows every connection in use and the queries waiting for one', async () => {
    expect(await scraped('ryvion_authz_postgres_pool_max')).toBe(3);
    const held: pg.PoolClient[] = [];
    let waiting: Promise<unknown> | undefined;
    try {
      // Take every connection (lease renewals may hold one for a moment), then queue a query behind them.
      await vi.waitFor(async () => {
        held.push(await service.pool.connect());
        expect(held.length).toBe(3);
      }, { timeout: 10_000, interval: 10 });
      waiting = service.pool.query('SELECT 1').catch(() => undefined);
      expect(await scraped('ryvion_authz_postgres_pool_in_use')).toBe(3);
      expect(await scraped('ryvion_authz_postgres_pool_waiting')).toBeGreaterThanOrEqual(1);
    } finally {
      for (const c of held) c.release();
    }
    await waiting;
    await vi.waitFor(async () => expect(await scraped('ryvion_authz_postgres_pool_waiting')).toBe(0), { timeout: 5000 });
  });
});
