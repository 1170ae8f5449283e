// Behind a transaction-pooling PgBouncer, LISTEN never receives: the replica must say so, and
// DATABASE_LISTEN_URL (a direct session for LISTEN) must fix it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import type { RunningService } from '../../src/service.js';
import { ThrowawayPgBouncer } from '../helpers/pgbouncer.js';
import { metricValue, revokeKey, startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let bouncer: ThrowawayPgBouncer;
const services: RunningService[] = [];
const pepper = testPepper();

beforeAll(async () => {
  db = await freshDatabase();
  const u = new URL(db.url);
  bouncer = new ThrowawayPgBouncer({ host: u.hostname, port: Number(u.port || 5432) });
  await bouncer.start();
});

afterAll(async () => {
  for (const s of services) await s.stop();
  await bouncer?.dispose();
  await db?.drop();
});

function logSink(): { lines: Array<Record<string, unknown>>; stream: { write(s: string): void } } {
  const lines: Array<Record<string, unknown>> = [];
  return { lines, stream: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } };
}

describe('PgBouncer in transaction pooling mode', () => {
  it('is detected: an error naming PgBouncer and DATABASE_LISTEN_URL, and degraded{invalidation}=1', async () => {
    const log = logSink();
    const s = await startTestService(
      { DATABASE_URL: bouncer.urlFor(db.url), KEY_PEPPER: pepper, INVALIDATION_LEASE_MS: '1000' },
      { logger: createLogger('info', log.stream) },
    );
    services.push(s);
    await expect.poll(() => metricValue(s, 'ryvion_authz_degraded', { component: 'invalidation' }), { timeout: 15_000 }).toBe(1);
    const line = log.lines.find((l) => l.level === 'error' && /PgBouncer/.test(String(l.msg)));
    expect(line?.msg).toMatch(/transaction pooling/);
    expect(line?.msg).toMatch(/DATABASE_LISTEN_URL/);
    expect(await metricValue(s, 'ryvion_authz_invalidation_channel_up', { channel: 'postgres' })).toBe(0);
  });

  it('with DATABASE_LISTEN_URL on a direct connection, NOTIFY is delivered and revocations are acknowledged', async () => {
    const s = await startTestService({ DATABASE_URL: bouncer.urlFor(db.url), DATABASE_LISTEN_URL: db.url, KEY_PEPPER: pepper, INVALIDATION_LEASE_MS: '1000' });
    services.push(s);
    await expect.poll(() => s.keyStore.bus.leaseHeld(), { timeout: 10_000 }).toBe(true);
    await expect.poll(() => metricValue(s, 'ryvion_authz_degraded', { component: 'invalidation' }), { timeout: 10_000 }).toBe(0);
    const accountId = (await s.repository.createAccount('bouncer@example.com', 'free')).id;
    const { key } = await s.repository.createKey({ accountId, name: 'k', scope: 'buyer', expiresAt: null });
    // Only this replica's lease counts: stop any replica without a working LISTEN first (in whatever order the tests ran).
    for (const other of services) if (other !== s) await other.stop();
    expect(await revokeKey(s, key.id)).toMatchObject({ acknowledged: true });
  });
});
