// Three replicas share one account limit in Redis; Redis is cut in the middle of the traffic. Each
// replica then limits alone at 1/3 of the limit (the live count from replica_leases), continuing
// from the shared count, so all three together admit at most the limit plus one burst.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { RunningService } from '../../src/service.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { policyWithPlans } from '../helpers/policy.js';
import { ThrowawayRedis, freePort } from '../helpers/redis-server.js';
import { CheckClient, metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper } from '../helpers/stores.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

// 60 per 6 s (one every 100 ms) with a burst of 12: at a third, 20 per 6 s with a burst of 4.
const REQUESTS = 60;
const WINDOW_MS = 6000;
const BURST = 12;
const policy = policyWithPlans(`plans:
  outage:
    account: { requests: ${REQUESTS}, window: 6s, burst: ${BURST} }
default_plan: outage
`);

let db: Awaited<ReturnType<typeof freshDatabase>>;
let redis: ThrowawayRedis;
let proxy: TcpProxy;
const services: RunningService[] = [];
const clients: CheckClient[] = [];

beforeAll(async () => {
  db = await freshDatabase();
  redis = new ThrowawayRedis(await freePort());
  await redis.start();
  proxy = new TcpProxy('127.0.0.1', redis.port);
  await proxy.start();
  const pepper = testPepper();
  const prefix = redisPrefix();
  for (let i = 0; i < 3; i++) {
    const service = await startTestService(
      {
        DATABASE_URL: db.url,
        KEY_PEPPER: pepper,
        REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
        REDIS_KEY_PREFIX: prefix,
        POLICY_FILE: policy.file,
        RATE_LIMIT_ENABLED: 'true',
        FAILED_AUTH_PER_SOURCE_PER_MINUTE: '1000000',
        // A busy machine must not turn slow answers into timeouts before the cut.
        STORE_TIMEOUT_MS: '1000',
      },
      { liveReplicasIntervalMs: 200 },
    );
    services.push(service);
    clients.push(new CheckClient(service.grpcPort));
  }
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await Promise.all(services.map((s) => s.stop()));
  await proxy?.cut();
  await redis?.dispose();
  await db?.drop();
  policy.dispose();
});

describe('rate limits when Redis is cut, three replicas', () => {
  it('all three together admit at most the limit plus one burst over the window', async () => {
    // Every replica counts the three live leases, so its local share is a third.
    for (const s of services) {
      await vi.waitFor(async () => expect(await metricValue(s, 'ryvion_authz_ratelimit_local_share')).toBeCloseTo(1 / 3), { timeout: 15_000, interval: 100 });
    }
    const account = await services[0]!.repository.createAccount('outage@example.com', 'outage');
    const { secret } = await services[0]!.repository.createKey({ accountId: account.id, name: 'outage', scope: 'buyer', expiresAt: null });
    const request = envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } });
    // Each replica has the key in memory before the clock starts.
    for (const c of clients) await c.check(request);
    const warmed = clients.length;

    let admitted = 0;
    let answered = 0;
    const started = Date.now();
    const deadline = started + WINDOW_MS - 200;
    let cut = false;
    await Promise.all(
      clients.map(async (client) => {
        while (Date.now() < deadline) {
          if (!cut && Date.now() > started + WINDOW_MS / 3) {
            cut = true;
            await proxy.cut();
          }
          const res = await client.check(request);
          answered++;
          if ((res.status?.code ?? 0) === 0) admitted++;
          await new Promise((r) => setTimeout(r, 15));
        }
      }),
    );
    const elapsed = Date.now() - started;

    const local = (await Promise.all(services.map((s) => metricValue(s, 'ryvion_authz_ratelimit_decisions_total', { mode: 'local' })))).reduce((a, b) => a + b, 0);
    expect(cut).toBe(true);
    expect(local, 'decisions made locally after the cut').toBeGreaterThan(10);
    expect(answered).toBeGreaterThan(admitted);
    // GCRA's bound over `elapsed` (the warm-up checks count against the same bucket).
    const bound = Math.floor((REQUESTS * Math.max(elapsed, WINDOW_MS)) / WINDOW_MS) + BURST;
    expect(admitted + warmed, `admitted over ${elapsed} ms`).toBeLessThanOrEqual(bound);
    // And the replicas kept admitting after the cut (no replica stuck at zero).
    expect(admitted + warmed).toBeGreaterThan(REQUESTS / 2);
  }, 60_000);
});
