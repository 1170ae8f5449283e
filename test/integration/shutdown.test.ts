// Graceful shutdown of `ryvion-authz serve` under load: SIGTERM flips readiness first, keeps
// serving through SHUTDOWN_READINESS_DELAY_MS, drains in-flight Checks, then exits 0; a second
// SIGTERM exits at once.
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyHasher } from '../../src/keys/hash.js';
import { KeyRepository } from '../../src/keys/repository.js';
import { CHECK_SERVICE_NAME } from '../../src/transport/grpc/server.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { startCliProcess, waitForExit } from '../helpers/cli.js';
import { freePort } from '../helpers/redis-server.js';
import { CheckClient } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

const READINESS_DELAY_MS = 1000;
const DRAIN_MS = 5000;
const LOAD_CLIENTS = 8;
const IN_FLIGHT = 4;

let db: Awaited<ReturnType<typeof freshDatabase>>;
let pool: pg.Pool;
let repo: KeyRepository;
let accountId: string;
const pepper = testPepper();
const children: ChildProcess[] = [];

beforeAll(async () => {
  db = await freshDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  repo = new KeyRepository(pool, new KeyHasher({ version: 1, secret: pepper }), 'live');
  accountId = (await repo.createAccount('shutdown@example.com', 'enterprise')).id;
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await pool?.end();
  await db?.drop();
});

async function serve(extra: Record<string, string>): Promise<{ child: ChildProcess; grpcPort: number; opsPort: number; output: () => string }> {
  const [grpcPort, httpPort, opsPort] = [await freePort(), await freePort(), await freePort()];
  const { child, output } = await startCliProcess(
    ['serve'],
    {
      DATABASE_URL: db.url,
      KEY_PEPPER: pepper,
      GRPC_PORT: String(grpcPort),
      HTTP_PORT: String(httpPort),
      OPS_PORT: String(opsPort),
      BIND_ADDRESS: '127.0.0.1',
      LOG_LEVEL: 'info',
      // This test is about shutdown, not limits.
      RATE_LIMIT_ENABLED: 'false',
      ...extra,
    },
    /ryvion-authz ready/,
  );
  children.push(child);
  return { child, grpcPort, opsPort, output };
}

const newKey = async (name: string): Promise<string> => (await repo.createKey({ accountId, name, scope: 'buyer', expiresAt: null })).secret;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const request = (key: string) => envoyCheckRequest({ headers: { authorization: `Bearer ${key}` } });

type HealthCheckFn = (req: { service: string }, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void) => void;

/** Polls grpc.health.v1, /readyz and a plain TCP connect, and records when each first changed. */
function watchShutdown(grpcPort: number, opsPort: number) {
  const HealthClient = grpc.makeGenericClientConstructor(healthService, 'Health');
  const health = new HealthClient(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
  const seen: { grpcNotServing?: number; readyz503?: number; refused?: number; grpcServingAfterSigterm?: number } = {};
  let stopped = false;
  const loop = async (fn: () => Promise<void>): Promise<void> => {
    while (!stopped) {
      await fn().catch(() => undefined);
      await sleep(10);
    }
  };
  const grpcStatus = (): Promise<string> =>
    new Promise((resolve, reject) =>
      (health as unknown as { check: HealthCheckFn }).check({ service: CHECK_SERVICE_NAME }, { deadline: Date.now() + 500 }, (e, r) =>
        e ? reject(e) : resolve(r!.status),
      ),
    );
  const loops = [
    loop(async () => {
      if ((await grpcStatus()) === 'NOT_SERVING') seen.grpcNotServing ??= Date.now();
    }),
    loop(async () => {
      if ((await fetch(`http://127.0.0.1:${opsPort}/readyz`)).status === 503) seen.readyz503 ??= Date.now();
    }),
    loop(
      () =>
        new Promise<void>((resolve) => {
          const s = net.connect(grpcPort, '127.0.0.1');
          s.once('connect', () => {
            s.destroy();
            resolve();
          });
          s.once('error', (err: NodeJS.ErrnoException) => {
            if (err.code === 'ECONNREFUSED') seen.refused ??= Date.now();
            resolve();
          });
        }),
    ),
  ];
  return {
    seen,
    grpcStatus,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      health.close();
    },
  };
}

describe('SIGTERM under load', () => {
  it('flips /readyz and gRPC health first, keeps serving, drains in-flight Checks, then exits 0 within the deadline', async () => {
    const { child, grpcPort, opsPort, output } = await serve({
      SHUTDOWN_READINESS_DELAY_MS: String(READINESS_DELAY_MS),
      SHUTDOWN_DRAIN_MS: String(DRAIN_MS),
      // In-flight look-ups below wait on a table lock; they must outlast the listener close, not time out.
      STORE_TIMEOUT_MS: '10000',
    });
    const hot = await newKey('hot');
    const cold = await Promise.all(Array.from({ length: IN_FLIGHT }, (_, i) => newKey(`cold-${i}`)));

    // Ready before: /readyz, /healthz (alive, store health in the body) and gRPC health agree.
    const readyz = await fetch(`http://127.0.0.1:${opsPort}/readyz`);
    expect([readyz.status, await readyz.json()]).toEqual([200, { ready: true }]);
    const healthz = await fetch(`http://127.0.0.1:${opsPort}/healthz`);
    expect(await healthz.json()).toMatchObject({ status: 'alive', ready: true, shutting_down: false, stores: { postgres: 'up', redis: 'not_configured' } });
    const watch = watchShutdown(grpcPort, opsPort);
    expect(await watch.grpcStatus()).toBe('SERVING');

    // Continuous load from clients that, like Envoy's health checking, stop sending once the server says NOT_SERVING.
    const results: Array<{ startedAt: number; endedAt: number; ok: boolean; error?: string }> = [];
    const call = async (client: CheckClient, key: string): Promise<void> => {
      const startedAt = Date.now();
      try {
        const res = await client.check(request(key), 15_000);
        results.push({ startedAt, endedAt: Date.now(), ok: res.ok_response !== undefined, ...(res.ok_response ? {} : { error: JSON.stringify(res.status) }) });
      } catch (err) {
        results.push({ startedAt, endedAt: Date.now(), ok: false, error: (err as Error).message });
      }
    };
    const clients = Array.from({ length: LOAD_CLIENTS }, () => new CheckClient(grpcPort));
    const load = clients.map(async (c) => {
      while (watch.seen.grpcNotServing === undefined && child.exitCode === null) await call(c, hot);
    });
    // One client that ignores readiness for half the delay: the listeners must still answer it.
    const stragglerClient = new CheckClient(grpcPort);
    const straggler = (async () => {
      while (watch.seen.grpcNotServing === undefined || Date.now() < watch.seen.grpcNotServing + READINESS_DELAY_MS / 2) {
        await call(stragglerClient, hot);
      }
    })();
    await sleep(500);

    // Checks for keys no cache holds, stuck behind a lock on the keys table: in flight when the listeners close.
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE');
    const inFlightClient = new CheckClient(grpcPort);
    const inFlight = cold.map(async (key) => {
      const startedAt = Date.now();
      const res = await inFlightClient.check(request(key), 15_000);
      return { startedAt, endedAt: Date.now(), ok: res.ok_response !== undefined };
    });
    await sleep(200);

    const sigtermAt = Date.now();
    const exited = waitForExit(child, READINESS_DELAY_MS + DRAIN_MS + 5000);
    child.kill('SIGTERM');

    // Release the lock only once new connections are refused, so those Checks are drained, not merely finished early.
    while (watch.seen.refused === undefined && Date.now() < sigtermAt + READINESS_DELAY_MS + 3000) await sleep(10);
    await sleep(300);
    // Draining: the ops port still answers, alive but not ready.
    const healthzDuringDrain = await (await fetch(`http://127.0.0.1:${opsPort}/healthz`)).json();
    await locker.query('ROLLBACK');
    await locker.end();

    const code = await exited;
    const exitedAt = Date.now();
    const drained = await Promise.all(inFlight);
    await Promise.all([...load, straggler]);
    await watch.stop();
    for (const c of [...clients, stragglerClient, inFlightClient]) c.close();

    const { grpcNotServing, readyz503, refused } = watch.seen;
    const log = output();
    console.log(
      `shutdown: not serving (gRPC) +${grpcNotServing! - sigtermAt} ms, /readyz 503 +${readyz503! - sigtermAt} ms, ` +
        `connections refused +${refused! - sigtermAt} ms, exit +${exitedAt - sigtermAt} ms; ${results.length} Checks under load`,
    );
    expect(code, log).toBe(0);
    // 1. Not ready first: both health surfaces flip well before the listeners close (the readiness delay).
    expect(refused).toBeDefined();
    expect(refused! - grpcNotServing!).toBeGreaterThanOrEqual(READINESS_DELAY_MS / 2);
    expect(refused! - readyz503!).toBeGreaterThanOrEqual(READINESS_DELAY_MS / 2);
    expect(refused! - sigtermAt).toBeGreaterThanOrEqual(READINESS_DELAY_MS * 0.9);
    expect(healthzDuringDrain).toMatchObject({ status: 'alive', ready: false, shutting_down: true });
    // 2. Nothing failed: not one Check under load, not the straggler's, not the in-flight ones drained after the close.
    expect(results.filter((r) => !r.ok)).toEqual([]);
    expect(results.filter((r) => r.startedAt > grpcNotServing!).length).toBeGreaterThan(0);
    expect(drained.every((d) => d.ok)).toBe(true);
    expect(Math.min(...drained.map((d) => d.endedAt))).toBeGreaterThan(refused!);
    // 3. Within the deadline: readiness delay + drain, with room for closing the stores.
    expect(exitedAt - sigtermAt).toBeLessThan(READINESS_DELAY_MS + DRAIN_MS);
    expect(log).toMatch(/shutting down: not ready, draining/);
    expect(log).toMatch(/"msg":"stopped"/);
  }, 30_000);

  it('a second SIGTERM exits at once, with a non-zero code', async () => {
    const { child, opsPort, output } = await serve({ SHUTDOWN_READINESS_DELAY_MS: '20000' });
    const exited = waitForExit(child, 10_000);
    child.kill('SIGTERM');
    // The first one is being handled: not ready, still inside the 20 s readiness delay.
    const deadline = Date.now() + 8000;
    for (;;) {
      const res = await fetch(`http://127.0.0.1:${opsPort}/readyz`, { signal: AbortSignal.timeout(1000) }).catch((e: Error) => e);
      if (!(res instanceof Error) && res.status === 503) break;
      if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
        throw new Error(`first SIGTERM not handled (exit ${child.exitCode}, signal ${child.signalCode}, readyz ${res instanceof Error ? res.message : res.status}): ${output()}`);
      }
      await sleep(20);
    }
    const secondAt = Date.now();
    child.kill('SIGTERM');
    const code = await exited;
    expect(code).not.toBe(0);
    expect(Date.now() - secondAt).toBeLessThan(1000);
    expect(output()).toMatch(/second signal: exiting now/);
  }, 30_000);
});
