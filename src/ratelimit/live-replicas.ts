// How many replicas are live, from the lease registry: the local rate-limit share is 1 / that count.
import type pg from 'pg';
import type { Logger } from '../observability/logger.js';

export interface LiveReplicaCount {
  /** The last count read (at least 1: this replica). */
  current(): number;
  stop(): void;
}

/**
 * Reads the count now and then every `intervalMs`; `onChange` hears of later changes. A failed
 * read keeps the last count: the share matters while Redis is down, and Postgres being down too
 * must not change it.
 */
export async function startLiveReplicaCount(pool: pg.Pool, intervalMs: number, logger: Logger, onChange: (count: number) => void): Promise<LiveReplicaCount> {
  let count = 1;
  const read = async (notify: boolean): Promise<void> => {
    try {
      const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM replica_leases WHERE lease_expires_at > now()');
      const next = Math.max(1, rows[0]?.n ?? 1);
      if (next !== count) {
        count = next;
        if (notify) onChange(count);
      }
    } catch (err) {
      logger.debug({ err: (err as Error).message }, 'live replica count not refreshed; keeping the last one');
    }
  };
  await read(false);
  const timer = setInterval(() => void read(true), intervalMs);
  timer.unref();
  return { current: () => count, stop: () => clearInterval(timer) };
}
