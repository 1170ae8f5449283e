// Postgres probe: keeps store_up, degraded{postgres} and /healthz current even while every key is served from cache.
import type pg from 'pg';
import type { HealthState } from './health.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

/** Between probes; a probe itself is bounded by the pool's query timeout (STORE_TIMEOUT_MS). */
export const POSTGRES_PROBE_INTERVAL_MS = 5000;

export interface StoreProbe {
  /** Stops probing and waits for a probe in flight, so the pool can be closed after it. */
  stop(): Promise<void>;
}

export function startPostgresProbe(deps: {
  pool: Pick<pg.Pool, 'query'>;
  health: HealthState;
  metrics: Metrics;
  logger: Logger;
  intervalMs?: number;
}): StoreProbe {
  const { pool, health, metrics, logger } = deps;
  let up = true;
  let running: Promise<void> | undefined;

  const set = (next: boolean, err?: unknown): void => {
    metrics.storeUp.labels('postgres').set(next ? 1 : 0);
    metrics.degraded.labels('postgres').set(next ? 0 : 1);
    health.setStore('postgres', next ? 'up' : 'down');
    if (next === up) return;
    up = next;
    if (next) logger.info('postgres reachable again');
    else logger.warn({ problem: (err as Error | undefined)?.message }, 'postgres unreachable: deciding only for cached keys');
  };

  const probe = (): void => {
    if (running) return;
    running = pool
      .query('SELECT 1')
      .then(
        () => set(true),
        (err: unknown) => set(false, err),
      )
      .finally(() => (running = undefined));
  };

  const timer = setInterval(probe, deps.intervalMs ?? POSTGRES_PROBE_INTERVAL_MS);
  timer.unref();
  return {
    stop: async () => {
      clearInterval(timer);
      await running;
    },
  };
}
