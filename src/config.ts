// Configuration from the environment: parsed and checked once, at start-up.
import { z } from 'zod';
import { DEFAULT_TRUSTED_PROXIES, TrustedProxies } from './transport/http/client-address.js';

/** Thrown for a bad or missing setting; `message` is the one line the operator sees. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

const bool = z
  .string()
  .trim()
  .toLowerCase()
  .refine((v) => ['true', 'false', '1', '0', 'yes', 'no'].includes(v), 'must be true or false')
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const port = z.coerce.number().int('must be a whole number').min(1, 'must be 1-65535').max(65535, 'must be 1-65535');
const positiveInt = z.coerce.number().int('must be a whole number').positive('must be above 0');

const postgresUrl = z
  .string()
  .trim()
  .refine((v) => /^postgres(ql)?:\/\//.test(v), 'must be a postgres:// or postgresql:// URL');

const redisUrl = z
  .string()
  .trim()
  .refine((v) => /^rediss?:\/\//.test(v), 'must be a redis:// or rediss:// URL');

const hostPortList = z
  .string()
  .trim()
  .refine((v) => v.split(',').every((hp) => /^[^\s:,]+:\d{1,5}$/.test(hp.trim())), 'must be a comma-separated list of host:port')
  .transform((v) => v.split(',').map((hp) => {
    const [host, port] = hp.trim().split(':');
    return { host: host!, port: Number(port) };
  }));

const pepper = z
  .string()
  .refine((v) => Buffer.byteLength(v, 'utf8') >= 32, 'must be at least 32 bytes (generate one with: openssl rand -base64 48)');

// Name, default and unit side by side; README's configuration table follows this list.
const schema = z.object({
  DATABASE_URL: postgresUrl.optional(),
  DATABASE_POOL_MAX: positiveInt.default(10),
  // A direct (or session-pooled) connection for LISTEN, when DATABASE_URL goes through a transaction pooler.
  DATABASE_LISTEN_URL: postgresUrl.optional(),
  REDIS_URL: redisUrl.optional(),
  REDIS_SENTINELS: hostPortList.optional(),
  REDIS_SENTINEL_NAME: z.string().trim().min(1).optional(),
  REDIS_CLUSTER_NODES: hostPortList.optional(),
  REDIS_KEY_PREFIX: z.string().trim().min(1).max(64).default('ryvion:'),
  // Sentinel and Cluster credentials and TLS; REDIS_URL carries its own (redis://user:pass@host, rediss://).
  REDIS_USERNAME: z.string().trim().min(1).optional(),
  REDIS_PASSWORD: z.string().min(1).optional(),
  REDIS_SENTINEL_USERNAME: z.string().trim().min(1).optional(),
  REDIS_SENTINEL_PASSWORD: z.string().min(1).optional(),
  REDIS_TLS: bool.default(false),
  REDIS_TLS_CA_FILE: z.string().trim().min(1).optional(),
  REDIS_TLS_SERVER_NAME: z.string().trim().min(1).optional(),
  CACHE_MEMORY_MAX_KEYS: positiveInt.default(200_000),
  CACHE_MEMORY_TTL_MS: positiveInt.default(30_000),
  CACHE_NEGATIVE_TTL_MS: positiveInt.default(10_000),
  CACHE_REDIS_TTL_MS: positiveInt.default(300_000),
  INVALIDATION_LEASE_MS: positiveInt.min(1000, 'must be at least 1000').max(60_000, 'must be at most 60000').default(5000),
  // Default: DATABASE_POOL_MAX - 2 (at least 1), leaving pool room for lease renewals and usage flushes; never above the pool.
  POSTGRES_LOOKUP_CONCURRENCY: positiveInt.optional(),
  FAILED_AUTH_PER_SOURCE_PER_MINUTE: positiveInt.default(300),
  // Peers whose X-Forwarded-For / X-Real-IP name the client on HTTP_PORT (comma-separated CIDRs).
  TRUSTED_PROXIES: z
    .string()
    .superRefine((v, ctx) => {
      try {
        new TrustedProxies(v);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: `${(err as Error).message} (expected comma-separated CIDRs, e.g. 10.0.0.0/8,127.0.0.1/32)` });
      }
    })
    .default(DEFAULT_TRUSTED_PROXIES),
  // Requests on HTTP_PORT with more header lines are refused (431) rather than cut short.
  HTTP_MAX_HEADERS: positiveInt.max(2000, 'must be at most 2000').default(100),
  // Open connections per listening port (gRPC and HTTP); beyond it new ones are closed at once.
  MAX_CONNECTIONS_PER_PORT: positiveInt.default(4096),
  // A gRPC connection that has not sent the HTTP/2 preface within this is closed.
  GRPC_HANDSHAKE_TIMEOUT_MS: positiveInt.default(10_000),
  // A gRPC connection with no call for this long is closed; above Envoy's 1 h upstream idle_timeout, so Envoy closes first.
  GRPC_IDLE_TIMEOUT_MS: positiveInt.default(3_900_000),
  LAST_USED_FLUSH_MS: positiveInt.default(60_000),
  KEY_PEPPER: pepper.optional(),
  KEY_PEPPER_VERSION: positiveInt.default(1),
  KEY_PEPPER_PREVIOUS: pepper.optional(),
  KEY_ENVIRONMENT: z.enum(['live', 'test'], { error: 'must be live or test' }).default('live'),
  MIGRATE_ON_START: bool.default(false),
  BIND_ADDRESS: z.string().trim().min(1).default('0.0.0.0'),
  GRPC_PORT: port.default(9191),
  HTTP_PORT: port.default(8080),
  OPS_PORT: port.default(9090),
  POLICY_FILE: z.string().trim().min(1).optional(),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      error: 'must be one of fatal, error, warn, info, debug, trace, silent',
    })
    .default('info'),
  STORE_TIMEOUT_MS: positiveInt.max(10_000, 'must be at most 10000').default(100),
  STRIP_CREDENTIAL_HEADERS: bool.default(true),
  UNAVAILABLE_MODE: z.enum(['deny', 'rpc_error'], { error: 'must be deny or rpc_error' }).default('deny'),
  MCP_RESOURCE_METADATA_URL: z.url({ error: 'must be an absolute URL' }).optional(),
  SHUTDOWN_DRAIN_MS: positiveInt.default(10_000),
  // Not ready but still serving, so Envoy's health checks and endpoint updates steer traffic away before listeners close.
  SHUTDOWN_READINESS_DELAY_MS: z.coerce.number().int('must be a whole number').min(0, 'must be 0 or more').max(60_000, 'must be at most 60000').default(5000),
  // Fraction (0..1) of allowed decisions logged at info; the rest go to debug. Denials are always logged.
  LOG_ALLOWED_SAMPLE_RATE: z.coerce.number().min(0, 'must be between 0 and 1').max(1, 'must be between 0 and 1').default(0),
  RATE_LIMIT_ENABLED: bool.default(true),
  // Unset: 1 / the number of live replicas (replica_leases), at least 0.05 (MIN_LOCAL_SHARE in ratelimit/limiter.ts). Set: that fixed share.
  RATE_LIMIT_LOCAL_SHARE: z.coerce.number().gt(0, 'must be above 0').max(1, 'must be at most 1').optional(),
  MAX_KEYS_PER_ACCOUNT: positiveInt.default(100),
  // Each statement of a key create or revoke (not the Check path's STORE_TIMEOUT_MS), in milliseconds.
  MANAGEMENT_WRITE_TIMEOUT_MS: positiveInt.max(60_000, 'must be at most 60000').default(5000),
  // The longest overlap a roll may give the old key, in seconds (default 7 days).
  KEY_ROLL_MAX_OVERLAP_SECONDS: z.coerce.number().int('must be a whole number').min(0, 'must be 0 or more').max(366 * 86_400, 'must be at most 31622400').default(7 * 86_400),
  // How often each replica marks rolled keys whose overlap ended as revoked (they are refused from the end of the overlap regardless).
  KEY_ROLL_SWEEP_INTERVAL_MS: positiveInt.min(100, 'must be at least 100').default(30_000),
  // GitHub secret scanning: its signing keys pinned in a file (no fetching), or fetched from this URL and cached.
  GITHUB_SECRET_SCANNING_KEYS_FILE: z.string().optional(),
  GITHUB_SECRET_SCANNING_KEYS_URL: z.url({ error: 'must be an absolute URL' }).default('https://api.github.com/meta/public_keys/secret_scanning'),
  // An unknown key identifier re-fetches GitHub's keys at most once per this many ms.
  GITHUB_SECRET_SCANNING_REFETCH_MIN_MS: positiveInt.default(60_000),
  // GitHub batches matches: this route's body limit, above the key API's 16 KiB.
  SECRET_SCANNING_BODY_LIMIT_BYTES: positiveInt.max(16 * 1024 * 1024, 'must be at most 16777216').default(1024 * 1024),
  // Owner notification about a leaked key: POSTed here, signed with OWNER_NOTIFICATION_WEBHOOK_SECRET, retried until 2xx.
  OWNER_NOTIFICATION_WEBHOOK_URL: z.url({ error: 'must be an absolute URL' }).optional(),
  OWNER_NOTIFICATION_WEBHOOK_SECRET: z.string().min(16, 'must be at least 16 characters').optional(),
  OWNER_NOTIFICATION_INTERVAL_MS: positiveInt.min(100, 'must be at least 100').default(5000),
});

type ParsedConfig = z.infer<typeof schema>;

/** The settings, with the defaults derived from other settings filled in. */
export type Config = Omit<ParsedConfig, 'POSTGRES_LOOKUP_CONCURRENCY'> & { POSTGRES_LOOKUP_CONCURRENCY: number };

/** Every environment variable the service reads (the Helm chart's wiring test checks against it). */
export const CONFIG_VARIABLES: readonly string[] = Object.freeze(Object.keys(schema.shape));

export type RequiredSetting = 'DATABASE_URL' | 'KEY_PEPPER';

/**
 * Parses the environment. Empty strings count as unset, so a Helm value left
 * blank behaves like an absent one. `required` names what the command needs.
 */
export function loadConfig(env: NodeJS.ProcessEnv, required: readonly RequiredSetting[] = []): Config {
  const input: Record<string, string> = {};
  for (const key of Object.keys(schema.shape)) {
    const value = env[key];
    if (value !== undefined && value !== '') input[key] = value;
  }
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const name = String(issue?.path[0] ?? 'environment');
    // Never echo the value: it may be a secret (KEY_PEPPER, URLs with passwords).
    throw new ConfigError(`${name}: ${issue?.message ?? 'invalid value'}`);
  }
  const config = parsed.data;
  for (const name of required) {
    if (config[name] === undefined) {
      throw new ConfigError(`${name}: required but not set${REQUIRED_HINT[name]}`);
    }
  }
  if (config.KEY_PEPPER_PREVIOUS !== undefined && config.KEY_PEPPER_VERSION < 2) {
    throw new ConfigError('KEY_PEPPER_PREVIOUS: set KEY_PEPPER_VERSION to 2 or more when a previous pepper is given');
  }
  const redisModes = [config.REDIS_URL, config.REDIS_SENTINELS, config.REDIS_CLUSTER_NODES].filter((v) => v !== undefined).length;
  if (redisModes > 1) throw new ConfigError('REDIS_URL: set only one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES');
  if (config.REDIS_SENTINELS && !config.REDIS_SENTINEL_NAME) {
    throw new ConfigError('REDIS_SENTINEL_NAME: required with REDIS_SENTINELS (the name of the monitored master)');
  }
  if ((config.OWNER_NOTIFICATION_WEBHOOK_URL === undefined) !== (config.OWNER_NOTIFICATION_WEBHOOK_SECRET === undefined)) {
    throw new ConfigError('OWNER_NOTIFICATION_WEBHOOK_SECRET: set both OWNER_NOTIFICATION_WEBHOOK_URL and OWNER_NOTIFICATION_WEBHOOK_SECRET, or neither');
  }
  checkRedisSecurity(config);
  const ports = [config.GRPC_PORT, config.HTTP_PORT, config.OPS_PORT];
  if (new Set(ports).size !== ports.length) {
    throw new ConfigError('GRPC_PORT: GRPC_PORT, HTTP_PORT and OPS_PORT must differ');
  }
  // Look-ups beyond the pool would wait inside it: SPEC wants a 503 at the cap, not a queue.
  const lookups = config.POSTGRES_LOOKUP_CONCURRENCY ?? Math.max(1, config.DATABASE_POOL_MAX - 2);
  if (lookups > config.DATABASE_POOL_MAX) {
    throw new ConfigError(`POSTGRES_LOOKUP_CONCURRENCY: must be at most DATABASE_POOL_MAX (${config.DATABASE_POOL_MAX}): look-ups beyond the pool would queue inside it instead of answering 503`);
  }
  return { ...config, POSTGRES_LOOKUP_CONCURRENCY: lookups };
}

/** Credentials and TLS settings only where they take effect, so a forgotten mode switch is not silently ignored. */
function checkRedisSecurity(config: ParsedConfig): void {
  if (config.REDIS_URL !== undefined) {
    for (const name of ['REDIS_USERNAME', 'REDIS_PASSWORD', 'REDIS_TLS'] as const) {
      if (name === 'REDIS_TLS' ? config.REDIS_TLS : config[name] !== undefined) {
        throw new ConfigError(`${name}: not used with REDIS_URL: put credentials in the URL (redis://user:password@host:6379) and use rediss:// for TLS`);
      }
    }
  }
  if (config.REDIS_SENTINELS === undefined) {
    for (const name of ['REDIS_SENTINEL_USERNAME', 'REDIS_SENTINEL_PASSWORD'] as const) {
      if (config[name] !== undefined) throw new ConfigError(`${name}: only used with REDIS_SENTINELS`);
    }
  }
  if (config.REDIS_USERNAME !== undefined && config.REDIS_PASSWORD === undefined) {
    throw new ConfigError('REDIS_PASSWORD: required with REDIS_USERNAME');
  }
  if (config.REDIS_SENTINEL_USERNAME !== undefined && config.REDIS_SENTINEL_PASSWORD === undefined) {
    throw new ConfigError('REDIS_SENTINEL_PASSWORD: required with REDIS_SENTINEL_USERNAME');
  }
  const tls = config.REDIS_TLS || config.REDIS_URL?.startsWith('rediss://') === true;
  for (const name of ['REDIS_TLS_CA_FILE', 'REDIS_TLS_SERVER_NAME'] as const) {
    if (config[name] !== undefined && !tls) {
      throw new ConfigError(`${name}: needs TLS: set REDIS_TLS=true (Sentinel, Cluster) or use a rediss:// REDIS_URL`);
    }
  }
}

const REQUIRED_HINT: Record<RequiredSetting, string> = {
  DATABASE_URL: ' (postgres://user:pass@host:5432/db; `ryvion-authz dev` runs without one)',
  KEY_PEPPER: ' (at least 32 bytes, e.g. from: openssl rand -base64 48)',
};
