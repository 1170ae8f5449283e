// What a Redis that refuses writes costs: replicas stop reading key entries from it, so every
// memory miss goes to Postgres. Measured side by side in one run, same keys, same client:
//   A. Redis readable: memory flushed, each key checked once (served from Redis)
//   B. Redis refusing writes (CONFIG SET maxmemory 1): the same
//   C. B at a concurrency above POSTGRES_LOOKUP_CONCURRENCY: the share answered 503
// Run: npx tsx bench/redis-refusing-writes.ts  (local Postgres and redis-server from Debian; its own database and Redis)
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config.js';
import { keyHasherFrom } from '../src/keys/hash.js';
import { createLogger } from '../src/observability/logger.js';
import { startService } from '../src/service.js';
import { authorizationService, type CheckRequest, type CheckResponse } from '../src/transport/grpc/proto.js';
import { checkRequest } from './lib/request.js';
import { freePort } from './lib/procs.js';
import { percentile, round } from './lib/stats.js';
import { createBenchDatabase, insertBulkKeys } from './lib/stores.js';

const KEYS = Number(process.env.KEYS ?? 4000);
const CAP = 32;

async function main(): Promise<void> {
  const db = await createBenchDatabase(process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-bench-redis-'));
  const port = await freePort();
  const redisServer = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  const admin = new Redis(`redis://127.0.0.1:${port}`, { retryStrategy: (n) => (n > 50 ? null : 100) });
  admin.on('error', () => undefined);
  await admin.ping();
  const env = {
    DATABASE_URL: db.url, REDIS_URL: `redis://127.0.0.1:${port}`, KEY_PEPPER: 'b'.repeat(48), LOG_LEVEL: 'silent', BIND_ADDRESS: '127.0.0.1',
    RATE_LIMIT_ENABLED: 'false', SHUTDOWN_READINESS_DELAY_MS: '0', FAILED_AUTH_PER_SOURCE_PER_MINUTE: '100000000', POSTGRES_LOOKUP_CONCURRENCY: String(CAP),
  };
  const config = { ...loadConfig(env, ['DATABASE_URL', 'KEY_PEPPER']), GRPC_PORT: 0, HTTP_PORT: 0, OPS_PORT: 0 };
  const { keys } = await insertBulkKeys(db.pool, keyHasherFrom(config), { count: KEYS, accounts: 100, rpm: 1_000_000, scope: 'buyer' });
  const service = await startService(config, createLogger('silent'), { defaultMetrics: false });
  const Client = grpc.makeGenericClientConstructor(authorizationService(), 'Authorization');
  const client = new Client(`127.0.0.1:${service.grpcPort}`, grpc.credentials.createInsecure()) as unknown as {
    Check(r: CheckRequest, cb: (e: grpc.ServiceError | null, r?: CheckResponse) => void): void;
    close(): void;
  };
  const check = (key: string): Promise<number> =>
    new Promise((resolve, reject) => client.Check(checkRequest({ key, method: 'GET', path: '/v1/models' }), (e, r) => (e || !r ? reject(e) : resolve(r.ok_response ? 200 : r.denied_response!.status.code))));
  const gets = async (): Promise<number> => Number(/cmdstat_get:calls=(\d+)/.exec(await admin.info('commandstats'))?.[1] ?? 0);
  const degraded = async (): Promise<number> => (await service.metrics.degraded.get()).values.find((v) => v.labels.component === 'redis')?.value ?? -1;
  const waitFor = async (what: () => Promise<boolean>): Promise<void> => {
    for (let i = 0; i < 200 && !(await what()); i++) await new Promise((r) => setTimeout(r, 50));
  };

  async function round_(name: string, concurrency: number) {
    service.keyStore.memory.flush();
    const [x0, g0] = [await db.xacts(), await gets()];
    const latencies: number[] = [];
    const statuses = new Map<number, number>();
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < keys.length) {
        const k = keys[next++]!;
        const s = performance.now();
        const status = await check(k);
        latencies.push(performance.now() - s);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      }
    }));
    const seconds = (performance.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    return {
      round: name, concurrency, checks: keys.length, checks_per_s: round(keys.length / seconds, 0),
      p50_ms: round(percentile(latencies, 50)), p99_ms: round(percentile(latencies, 99)),
      pg_xacts_per_check: round((await db.xacts() - x0) / keys.length, 3), redis_gets_per_check: round((await gets() - g0) / keys.length, 3),
      statuses: Object.fromEntries(statuses),
    };
  }

  try {
    for (const k of keys) await check(k); // fills memory and Redis
    await waitFor(async () => (await admin.dbsize()) >= KEYS);
    const results: Array<Awaited<ReturnType<typeof round_>>> = [];
    for (let rep = 0; rep < 2; rep++) {
      await admin.config('SET', 'maxmemory', '0');
      await waitFor(async () => (await degraded()) === 0);
      results.push(await round_('A redis readable', 16));
      await admin.config('SET', 'maxmemory', '1');
      await waitFor(async () => (await degraded()) === 1);
      results.push(await round_('B redis refusing writes', 16));
    }
    results.push(await round_('C refusing writes, above the look-up cap', 4 * CAP));
    console.table(results);
    const a = results.filter((r) => r.round.startsWith('A'));
    const b = results.filter((r) => r.round.startsWith('B'));
    const mean = (rs: typeof results, f: (r: (typeof results)[number]) => number) => rs.reduce((s, r) => s + f(r), 0) / rs.length;
    console.log(`B/A throughput ${round(mean(b, (r) => r.checks_per_s) / mean(a, (r) => r.checks_per_s))}, p99 ${round(mean(b, (r) => r.p99_ms) / mean(a, (r) => r.p99_ms))}x`);
    console.log(JSON.stringify(results));
  } finally {
    client.close();
    await service.stop();
    admin.disconnect();
    redisServer.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    await db.drop();
  }
}

await main();
