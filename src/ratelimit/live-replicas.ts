// How many replicas are live, from the lease registry (the one revokers read): the local rate-limit share is 1 / that count.
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
export async function startLiveReplicaCount(countLive: () => Promise<number>, intervalMs: number, logger: Logger, onChange: (count: number) => void): Promise<LiveReplicaCount> {
  let count = 1;
  const read = async (notify: boolean): Promise<void> => {
    try {
      const next = Math.max(1, await countLive());
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
