// Finds Postgres and Redis for the run (env, local services, or testcontainers),
// creates this run's template database and Redis prefix, and removes them after.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { probePostgres, probeRedis, storeWaitMs, type ProbeResult } from './store-probe.js';
import type { TestProject } from 'vitest/node';
import { migrate } from '../../src/store/postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pgAdminUrl: string;
    pgTemplateDb: string;
    redisUrl: string;
    runId: string;
  }
}

const LOCAL_PG = 'postgres://postgres@127.0.0.1:5432/postgres';
const LOCAL_REDIS = 'redis://127.0.0.1:6379';
const HOW = 'set TEST_DATABASE_URL (a Postgres server where tests may create databases) and TEST_REDIS_URL, or run Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379, or start a Docker engine';

/** Last resort when neither the environment nor local services answer. */
async function fromContainers(): Promise<{ pg: string; redis: string; stop: () => Promise<void> } | undefined> {
  try {
    const tc = await import('testcontainers');
    await tc.getContainerRuntimeClient();
    const pgc = await new tc.GenericContainer('postgres:15')
      .withEnvironment({ POSTGRES_HOST_AUTH_METHOD: 'trust' })
      .withExposedPorts(5432)
      .withWaitStrategy(tc.Wait.forLogMessage(/database system is ready to accept connections/, 2))
      .start();
    const rc = await new tc.GenericContainer('redis:7').withExposedPorts(6379).start();
    return {
      pg: `postgres://postgres@${pgc.getHost()}:${pgc.getMappedPort(5432)}/postgres`,
      redis: `redis://${rc.getHost()}:${rc.getMappedPort(6379)}`,
      stop: async () => {
        await pgc.stop();
        await rc.stop();
      },
    };
  } catch {
    return undefined;
  }
}

function fail(line: string): never {
  process.stderr.write(`\nryvion-authz tests: ${line}\n`);
  process.exit(1);
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let pgUrl = process.env.TEST_DATABASE_URL;
  let redisUrl = process.env.TEST_REDIS_URL;
  let stopContainers: (() => Promise<void>) | undefined;

  const waitMs = storeWaitMs();
  const [pgProbe, redisProbe] = await Promise.all([
    probePostgres(pgUrl ?? LOCAL_PG, waitMs),
    probeRedis(redisUrl ?? LOCAL_REDIS, waitMs),
  ]);
  const why = (p: ProbeResult): string => (p.ok ? '' : p.why);
  if (pgUrl && !pgProbe.ok) fail(`TEST_DATABASE_URL does not answer (${why(pgProbe)}); ${HOW}`);
  if (redisUrl && !redisProbe.ok) fail(`TEST_REDIS_URL does not answer (${why(redisProbe)}); ${HOW}`);
  if (!pgUrl && pgProbe.ok) pgUrl = LOCAL_PG;
  if (!redisUrl && redisProbe.ok) redisUrl = LOCAL_REDIS;
  if (!pgUrl || !redisUrl) {
    const containers = await fromContainers();
    const missing = [pgProbe, redisProbe].filter((p) => !p.ok).map(why).join('; ');
    if (!containers) fail(`no store to test against (${missing}; no Docker engine for testcontainers either): ${HOW}`);
    pgUrl ??= containers.pg;
    redisUrl ??= containers.redis;
    stopContainers = containers.stop;
  }

  const runId = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
  const templateDb = `ryvion_test_${runId}`;
  const admin = new pg.Client({ connectionString: pgUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${templateDb}`);
  await admin.end();
  const templateUrl = new URL(pgUrl);
  templateUrl.pathname = `/${templateDb}`;
  await migrate(templateUrl.toString());

  project.provide('pgAdminUrl', pgUrl);
  project.provide('pgTemplateDb', templateDb);
  project.provide('redisUrl', redisUrl);
  project.provide('runId', runId);

  return async () => {
    // Drop only what this run created: its template and the databases made from it.
    const cleanup = new pg.Client({ connectionString: pgUrl });
    await cleanup.connect();
    const { rows } = await cleanup.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname LIKE $1`, [`${templateDb}%`]);
    for (const { datname } of rows) await cleanup.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
    await cleanup.end();
    const redis = new Redis(redisUrl);
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `ryvion-test:${runId}:*`, 'COUNT', 1000);
      if (keys.length) await redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
    redis.disconnect();
    await stopContainers?.();
  };
}
