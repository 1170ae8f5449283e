// The suite's own store probe (test/helpers/global-setup.ts): it waits for a store that is slow to
// accept a connection, and a failure names the store and why.
import { inject, describe, expect, it, afterEach } from 'vitest';
import { probePostgres, probeRedis } from '../helpers/store-probe.js';
import { freePort } from '../helpers/redis-server.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

const proxies: TcpProxy[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.cut();
});

async function proxyTo(url: string): Promise<{ proxy: TcpProxy; url: string }> {
  const u = new URL(url);
  const proxy = new TcpProxy(u.hostname, Number(u.port || (u.protocol.startsWith('redis') ? 6379 : 5432)));
  proxies.push(proxy);
  u.hostname = '127.0.0.1';
  u.port = String(await proxy.start());
  return { proxy, url: u.toString() };
}

describe('the test suite finds its stores on a loaded machine', () => {
  it('waits for a Postgres and a Redis that hold the first connection for 10 s', { timeout: 120_000 }, async () => {
    const pg = await proxyTo(inject('pgAdminUrl'));
    const redis = await proxyTo(inject('redisUrl'));
    pg.proxy.holdNextConnection(10_000);
    redis.proxy.holdNextConnection(10_000);
    const t0 = performance.now();
    const [pgResult, redisResult] = await Promise.all([probePostgres(pg.url), probeRedis(redis.url)]);
    expect(pgResult).toEqual({ ok: true });
    expect(redisResult).toEqual({ ok: true });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(9_900);
  });

  it('names the store and the reason when nothing listens, at once', async () => {
    const port = await freePort();
    const t0 = performance.now();
    const pgResult = await probePostgres(`postgres://postgres:secret@127.0.0.1:${port}/postgres`);
    const redisResult = await probeRedis(`redis://:secret@127.0.0.1:${port}`);
    expect(pgResult).toEqual({ ok: false, why: `Postgres at 127.0.0.1:${port}: ECONNREFUSED` });
    expect(redisResult).toEqual({ ok: false, why: `Redis at 127.0.0.1:${port}: ECONNREFUSED` });
    expect(performance.now() - t0).toBeLessThan(30_000);
  });

  it('names the store and its wait when it never answers', { timeout: 60_000 }, async () => {
    const pg = await proxyTo(inject('pgAdminUrl'));
    const redis = await proxyTo(inject('redisUrl'));
    pg.proxy.holdNextConnection(600_000);
    redis.proxy.holdNextConnection(600_000);
    const [pgResult, redisResult] = await Promise.all([probePostgres(pg.url, 2000), probeRedis(redis.url, 2000)]);
    expect(pgResult).toEqual({ ok: false, why: `Postgres at 127.0.0.1:${pg.proxy.port}: no answer within 2 s` });
    expect(redisResult).toEqual({ ok: false, why: `Redis at 127.0.0.1:${redis.proxy.port}: no answer within 2 s` });
  });
});
