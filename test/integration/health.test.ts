// Health surfaces: /healthz shows store health, while /readyz and grpc.health.v1 do not follow
// Postgres or Redis (a shared store outage must not mark every replica unready at once).
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { RunningService } from '../../src/service.js';
import { CHECK_SERVICE_NAME } from '../../src/transport/grpc/server.js';
import { metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db?.drop();
});

type HealthCheckFn = (req: { service: string }, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void) => void;

/** A replica of its own for one test, reaching Postgres and Redis through TCP proxies the test can cut. */
async function replica(): Promise<{
  service: RunningService;
  pgProxy: TcpProxy;
  redisProxy: TcpProxy;
  ops: (path: string) => Promise<{ status: number; body: Record<string, unknown> }>;
  grpcHealth: (name: string) => Promise<string>;
  until: (what: string, ok: () => Promise<boolean>, timeoutMs?: number) => Promise<void>;
  storesAre: (postgres: string, redis: string) => () => Promise<boolean>;
  close: () => Promise<void>;
}> {
  const pgTarget = new URL(db.url);
  const redisTarget = new URL(testRedisUrl());
  const pgProxy = new TcpProxy(pgTarget.hostname, Number(pgTarget.port || 5432));
  const redisProxy = new TcpProxy(redisTarget.hostname, Number(redisTarget.port || 6379));
  await pgProxy.start();
  await redisProxy.start();
  const viaProxy = new URL(db.url);
  viaProxy.hostname = '127.0.0.1';
  viaProxy.port = String(pgProxy.port);
  const service = await startTestService(
    { DATABASE_URL: viaProxy.toString(), KEY_PEPPER: testPepper(), REDIS_URL: `redis://127.0.0.1:${redisProxy.port}`, REDIS_KEY_PREFIX: redisPrefix(),
      // A probe slowed by a busy test machine must not read as an outage.
      STORE_TIMEOUT_MS: '1000' },
    { postgresProbeIntervalMs: 100 },
  );
  const health = new (grpc.makeGenericClientConstructor(healthService, 'Health'))(`127.0.0.1:${service.grpcPort}`, grpc.credentials.createInsecure());
  const ops = async (path: string): Promise<{ status: number; body: Record<string, unknown> }> => {
    const res = await fetch(`http://127.0.0.1:${service.opsPort}${path}`);
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const grpcHealth = (name: string): Promise<string> =>
    new Promise((resolve, reject) => (health as unknown as { check: HealthCheckFn }).check({ service: name }, (e, r) => (e ? reject(e) : resolve(r!.status))));
  async function until(what: string, ok: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await ok())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify((await ops('/healthz')).body)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const storesAre = (postgres: string, redis: string) => async (): Promise<boolean> => {
    const { body } = await ops('/healthz');
    const stores = body.stores as Record<string, string>;
    return stores.postgres === postgres && stores.redis === redis;
  };
  return {
    service,
    pgProxy,
    redisProxy,
    ops,
    grpcHealth,
    until,
    storesAre,
    close: async () => {
      health.close();
      await service.stop();
      await pgProxy.cut();
      await redisProxy.cut();
    },
  };
}

let r: Awaited<ReturnType<typeof replica>>;
// Each case gets its own replica: one cuts the stores, one brings them back, one stops the service.
beforeEach(async () => {
  r = await replica();
});
afterEach(async () => {
  await r?.close();
});

describe('health while the stores come and go', () => {
  it('with both stores up: /healthz alive with both up, /readyz 200, gRPC SERVING, ready gauge 1', async () => {
    await r.until('redis up', r.storesAre('up', 'up'));
    expect(await r.ops('/healthz')).toEqual({ status: 200, body: { status: 'alive', ready: true, shutting_down: false, stores: { postgres: 'up', redis: 'up' } } });
    expect(await r.ops('/readyz')).toEqual({ status: 200, body: { ready: true } });
    expect(await r.grpcHealth('')).toBe('SERVING');
    expect(await r.grpcHealth(CHECK_SERVICE_NAME)).toBe('SERVING');
    expect(await metricValue(r.service, 'ryvion_authz_ready')).toBe(1);
    expect(await metricValue(r.service, 'ryvion_authz_store_up', { store: 'postgres' })).toBe(1);
    expect(await metricValue(r.service, 'ryvion_authz_store_up', { store: 'redis' })).toBe(1);
  });

  it('with Postgres and Redis unreachable: /healthz says so, metrics say so, and the replica stays ready', async () => {
    await r.pgProxy.cut();
    await r.redisProxy.cut();
    await r.until('both stores down', r.storesAre('down', 'down'));
    expect(await r.ops('/healthz')).toMatchObject({ status: 200, body: { status: 'alive', ready: true } });
    expect(await r.ops('/readyz')).toEqual({ status: 200, body: { ready: true } });
    expect(await r.grpcHealth(CHECK_SERVICE_NAME)).toBe('SERVING');
    for (const store of ['postgres', 'redis']) {
      expect(await metricValue(r.service, 'ryvion_authz_store_up', { store }), store).toBe(0);
      expect(await metricValue(r.service, 'ryvion_authz_degraded', { component: store }), store).toBe(1);
    }
  });

  it('when they return, /healthz and the metrics recover without a restart', async () => {
    await r.pgProxy.cut();
    await r.redisProxy.cut();
    await r.until('both stores down', r.storesAre('down', 'down'));
    await r.pgProxy.restore();
    await r.redisProxy.restore();
    await r.until('both stores up again', r.storesAre('up', 'up'));
    // Redis leaves "degraded" only once the revocations it may have missed are replayed: a moment later.
    for (const store of ['postgres', 'redis']) {
      await expect.poll(() => metricValue(r.service, 'ryvion_authz_store_up', { store }), { message: store, timeout: 15_000 }).toBe(1);
      await expect.poll(() => metricValue(r.service, 'ryvion_authz_degraded', { component: store }), { message: store, timeout: 15_000 }).toBe(0);
    }
  });

  it('stop() reports not ready at once, on every surface, before it closes anything', async () => {
    await r.until('both stores up', r.storesAre('up', 'up'));
    const stopping = r.service.stop();
    expect(r.service.health.ready).toBe(false);
    expect(await metricValue(r.service, 'ryvion_authz_ready')).toBe(0);
    await stopping;
  });
});
