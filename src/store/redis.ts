// Redis clients (single node, Sentinel or Cluster) with settings that fail fast instead of queueing.
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { ConfigError, type Config } from '../config.js';

export type RedisClient = Redis | Cluster;

export type RedisRole = 'command' | 'subscriber';

/** The key cache's conditional fill script (keys/cache/redis-tier.ts defines it under this name). */
export const KEY_CACHE_FILL_COMMAND = 'ryvionFill';

/** The rate-limit script (ratelimit/redis-gcra.ts defines it under this name). */
export const RATE_LIMIT_COMMAND = 'ryvionGcra';

/**
 * Sent as they come instead of through an auto-pipeline: the key cache's GET and fill, which run
 * only when memory misses, and the rate-limit script, which redis-gcra-batch.ts already sends once
 * per subject per event-loop turn. Each auto-pipeline is a Pipeline object with its own bound
 * method per defined script, built for the one or two commands a turn has on these paths, and
 * under a pass over many keys those objects were most of what the young generation promoted to
 * the old one (bench/README.md, memory; over a 100 k fill: 734-743 MB through auto-pipelines,
 * 413 MB with the cache's commands out, 169 MB with the rate-limit script out too). The script
 * also no longer waits a second turn for the pipeline's flush. The token-budget scripts keep it.
 */
export const COMMANDS_NOT_AUTO_PIPELINED: readonly string[] = ['get', KEY_CACHE_FILL_COMMAND, RATE_LIMIT_COMMAND];

/** The options of a client in `role` (exported for tests). */
export function optionsFor(role: RedisRole, timeoutMs: number, name: string): RedisOptions {
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
  // Auto-pipelining sends the commands issued in one event-loop turn in one write, except
  // COMMANDS_NOT_AUTO_PIPELINED (above).
  return { ...base, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: timeoutMs, enableAutoPipelining: true, autoPipeliningIgnoredCommands: [...COMMANDS_NOT_AUTO_PIPELINED] };
}

/**
 * TLS options, or undefined for plain TCP. The certificate is always verified (never
 * `rejectUnauthorized: false`): against REDIS_TLS_SERVER_NAME when set, else against the address
 * connected to, so nodes announced by IP need certificates with IP SANs or a server name.
 */
export function redisTls(config: Config): ConnectionOptions | undefined {
  if (!config.REDIS_TLS && !config.REDIS_URL?.startsWith('rediss://')) return undefined;
  const tls: ConnectionOptions = { rejectUnauthorized: true };
  if (config.REDIS_TLS_CA_FILE) {
    try {
      tls.ca = readFileSync(config.REDIS_TLS_CA_FILE);
    } catch (err) {
      throw new ConfigError(`REDIS_TLS_CA_FILE: cannot read ${config.REDIS_TLS_CA_FILE} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  if (config.REDIS_TLS_SERVER_NAME) tls.servername = config.REDIS_TLS_SERVER_NAME;
  return tls;
}

/** Builds a client from REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES (ioredis reads only the first from a URL). */
export function createRedis(config: Config, role: RedisRole, name = `ryvion-authz-${role}`): RedisClient | undefined {
  const opts = optionsFor(role, config.STORE_TIMEOUT_MS, name);
  const tls = redisTls(config);
  // The data nodes' ACL user (Redis 6+) or plain `requirepass`; with REDIS_URL the URL carries them.
  const auth: RedisOptions = { username: config.REDIS_USERNAME, password: config.REDIS_PASSWORD };
  let client: RedisClient;
  if (config.REDIS_CLUSTER_NODES) {
    client = new Cluster(config.REDIS_CLUSTER_NODES, {
      redisOptions: { ...opts, ...auth, ...(tls ? { tls } : {}) },
      enableOfflineQueue: opts.enableOfflineQueue,
      clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
    });
  } else if (config.REDIS_SENTINELS) {
    client = new Redis({
      ...opts,
      ...auth,
      sentinels: config.REDIS_SENTINELS,
      name: config.REDIS_SENTINEL_NAME,
      // Sentinel's own credentials: separate from the data nodes' (Sentinel has its own `requirepass` / ACL users).
      sentinelUsername: config.REDIS_SENTINEL_USERNAME,
      sentinelPassword: config.REDIS_SENTINEL_PASSWORD,
      // REDIS_TLS covers both the Sentinels and the master they name.
      ...(tls ? { tls, sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
    });
  } else if (config.REDIS_URL) {
    client = new Redis(config.REDIS_URL, tls ? { ...opts, tls } : opts);
  } else {
    return undefined;
  }
  // Errors surface on the commands that hit them; without a listener ioredis would log to stderr.
  client.on('error', () => undefined);
  return client;
}
