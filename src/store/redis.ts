// Redis clients (single node, Sentinel or Cluster) with settings that fail fast instead of queueing.
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Config } from '../config.js';

export type RedisClient = Redis | Cluster;

export type RedisRole = 'command' | 'subscriber';

/** True when the configuration names a Redis of any kind. */
export function redisConfigured(config: Config): boolean {
  return config.REDIS_URL !== undefined || config.REDIS_SENTINELS !== undefined || config.REDIS_CLUSTER_NODES !== undefined;
}

function optionsFor(role: RedisRole, timeoutMs: number, name: string): RedisOptions {
  const base: RedisOptions = {
    // Shows in CLIENT LIST, so an operator can tell our connections apart.
    connectionName: name,
    connectTimeout: 1000,
    // Reconnect forever, never faster than every 100 ms nor slower than every 2 s.
    retryStrategy: (times) => Math.min(100 * times, 2000),
    lazyConnect: false,
  };
  if (role === 'subscriber') return { ...base, autoResubscribe: true, enableOfflineQueue: true, maxRetriesPerRequest: null };
  // Commands on the decision path: fail at once while disconnected (no queue) and
  // give up after the store timeout, so a look-up stays inside Envoy's budget.
  // Auto-pipelining sends the commands issued in one event-loop turn in one write:
  // each rate-limit decision stays one atomic script call and one round trip, with
  // half the write syscalls per check at 1 k checks/s (bench/README.md).
  return { ...base, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: timeoutMs, enableAutoPipelining: true };
}

/** Builds a client from REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES (ioredis reads only the first from a URL). */
export function createRedis(config: Config, role: RedisRole, name = `ryvion-authz-${role}`): RedisClient | undefined {
  const opts = optionsFor(role, config.STORE_TIMEOUT_MS, name);
  let client: RedisClient;
  if (config.REDIS_CLUSTER_NODES) {
    client = new Cluster(config.REDIS_CLUSTER_NODES, {
      redisOptions: opts,
      enableOfflineQueue: opts.enableOfflineQueue,
      clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
    });
  } else if (config.REDIS_SENTINELS) {
    client = new Redis({ ...opts, sentinels: config.REDIS_SENTINELS, name: config.REDIS_SENTINEL_NAME });
  } else if (config.REDIS_URL) {
    client = new Redis(config.REDIS_URL, opts);
  } else {
    return undefined;
  }
  // Errors surface on the commands that hit them; without a listener ioredis would log to stderr.
  client.on('error', () => undefined);
  return client;
}
