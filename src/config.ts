// Configuration from the environment: parsed and checked once, at start-up.
import { z } from 'zod';
import { DEFAULT_TRUSTED_PROXIES, TrustedProxies } from './net/trusted-proxies.js';

/** Thrown for a bad or missing setting; `message` is the one line the operator sees. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

const WHOLE_NUMBER = 'must be a whole number';

const bool = z
  .string()
  .trim()
  .toLowerCase()
  .refine((v) => ['true', 'false', '1', '0', 'yes', 'no'].includes(v), 'must be true or false')
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const port = z.coerce.number({ error: 'must be a port number, 1-65535' }).int('must be a port number, 1-65535').min(1, 'must be 1-65535').max(65535, 'must be 1-65535');
// Its "not a number" message is completed with the setting's unit by loadConfig ("a whole number of milliseconds").
const positiveInt = z.coerce.number({ error: WHOLE_NUMBER }).int(WHOLE_NUMBER).positive('must be above 0');

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

// gRPC metadata values are printable ASCII; Envoy sends it in grpc_service.initial_metadata.
const accessLogSecret = z
  .string()
  .min(32, 'must be at least 32 characters (generate one with: openssl rand -hex 32)')
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces (it travels as a gRPC metadata value)');

/**
 * What docs/configuration.md says about a setting (`npm run docs:config` writes it from here).
 * `default` is only for a default the schema cannot show (computed elsewhere, or "required by ...");
 * otherwise the table shows what parsing an unset value gives.
 */
export type SettingDoc = {
  description: string;
  unit: string;
  default?: string;
};

const doc = (d: SettingDoc): SettingDoc => d;

// One line per setting: type, default, and what the reference says about it. Adding a setting is
// one line here, then `npm run docs:config`.
const schema = z.object({
  DATABASE_URL: postgresUrl.optional().meta(doc({ description: 'Postgres, `postgres://user:pass@host:5432/db`. Admin commands without it use a running `dev` store in `DATA_DIR`', unit: 'URL', default: 'required by `serve`, `migrate`' })),
  DATABASE_POOL_MAX: positiveInt.default(10).meta(doc({ description: 'Postgres pool size per replica', unit: 'connections' })),
  DATABASE_LISTEN_URL: postgresUrl.optional().meta(doc({ description: 'a direct (or session-pooled) Postgres connection for the LISTEN session, when `DATABASE_URL` goes through a transaction pooler such as PgBouncer (docs/revocation.md)', unit: 'URL', default: '`DATABASE_URL`' })),
  REDIS_URL: redisUrl.optional().meta(doc({ description: 'Redis single node: shared key cache, rate limits and invalidation channel. With none of `REDIS_URL`, `REDIS_SENTINELS`, `REDIS_CLUSTER_NODES`: one replica only (a warning at start)', unit: 'URL' })),
  REDIS_SENTINELS: hostPortList.optional().meta(doc({ description: 'Redis through Sentinel instead (with `REDIS_SENTINEL_NAME`)', unit: 'host:port,...' })),
  REDIS_SENTINEL_NAME: z.string().trim().min(1).optional().meta(doc({ description: 'the master name Sentinel monitors', unit: 'name' })),
  REDIS_CLUSTER_NODES: hostPortList.optional().meta(doc({ description: 'Redis Cluster instead', unit: 'host:port,...' })),
  REDIS_KEY_PREFIX: z.string().trim().min(1).max(64).default('ryvion:').meta(doc({ description: 'prefix of every Redis key and channel', unit: 'text' })),
  // Sentinel and Cluster credentials and TLS; REDIS_URL carries its own (redis://user:pass@host, rediss://).
  REDIS_USERNAME: z.string().trim().min(1).optional().meta(doc({ description: 'ACL user of the data nodes (Sentinel, Cluster; `REDIS_URL` carries its own)', unit: 'name' })),
  REDIS_PASSWORD: z.string().min(1).optional().meta(doc({ description: 'password of the data nodes (Sentinel, Cluster); from a Secret', unit: 'text' })),
  REDIS_SENTINEL_USERNAME: z.string().trim().min(1).optional().meta(doc({ description: "Sentinel's own ACL user (separate from the data nodes')", unit: 'name' })),
  REDIS_SENTINEL_PASSWORD: z.string().min(1).optional().meta(doc({ description: "Sentinel's own password; from a Secret", unit: 'text' })),
  REDIS_TLS: bool.default(false).meta(doc({ description: 'TLS to Sentinel and the data nodes, or to every Cluster node (`REDIS_URL`: use `rediss://`)', unit: 'bool' })),
  REDIS_TLS_CA_FILE: z.string().trim().min(1).optional().meta(doc({ description: 'CA bundle that signs the Redis certificates (also with `rediss://`)', unit: 'path', default: "the system's CAs" })),
  REDIS_TLS_SERVER_NAME: z.string().trim().min(1).optional().meta(doc({ description: 'name checked in the certificates when nodes are reached by IP address without IP SANs', unit: 'host name', default: 'the address connected to' })),
  CACHE_MEMORY_MAX_KEYS: positiveInt.default(200_000).meta(doc({ description: 'per-replica memory LRU bound', unit: 'entries' })),
  CACHE_MEMORY_TTL_MS: positiveInt.default(30_000).meta(doc({ description: 'lifetime of a memory entry (revocations do not wait for it)', unit: 'milliseconds' })),
  CACHE_NEGATIVE_TTL_MS: positiveInt.default(10_000).meta(doc({ description: 'lifetime of a cached "no such key", memory and Redis', unit: 'milliseconds' })),
  CACHE_REDIS_TTL_MS: positiveInt.default(300_000).meta(doc({ description: 'lifetime of a Redis entry (revoked markers live twice as long)', unit: 'milliseconds' })),
  INVALIDATION_LEASE_MS: positiveInt.min(1000, 'must be at least 1000').max(60_000, 'must be at most 60000').default(5000).meta(doc({ description: 'memory lease: the longest a revoke waits for a silent replica, and the longest an isolated replica answers from memory (1000-60000)', unit: 'milliseconds' })),
  // Default: DATABASE_POOL_MAX - 2 (at least 1), leaving pool room for lease renewals and usage flushes; never above the pool.
  POSTGRES_LOOKUP_CONCURRENCY: positiveInt.optional().meta(doc({ description: 'concurrent Postgres key look-ups per replica; beyond it 503 at once, not a queue; at most `DATABASE_POOL_MAX`', unit: 'look-ups', default: '`DATABASE_POOL_MAX` - 2, at least 1' })),
  FAILED_AUTH_PER_SOURCE_PER_MINUTE: positiveInt.default(300).meta(doc({ description: 'failed authentications per source address and replica; beyond it 429 for keys not in memory', unit: 'failures' })),
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
    .default(DEFAULT_TRUSTED_PROXIES)
    .meta(doc({ description: 'peers whose `X-Forwarded-For` / `X-Real-IP` name the client on `HTTP_PORT` (failed-auth throttling, key API)', unit: 'CIDRs, comma-separated' })),
  HTTP_MAX_HEADERS: positiveInt.max(2000, 'must be at most 2000').default(100).meta(doc({ description: 'requests on `HTTP_PORT` with more header lines are refused with 431 rather than cut short', unit: 'header lines' })),
  MAX_CONNECTIONS_PER_PORT: positiveInt.default(4096).meta(doc({ description: 'open connections per listening port (gRPC and HTTP); beyond it new ones are closed at once', unit: 'connections' })),
  GRPC_HANDSHAKE_TIMEOUT_MS: positiveInt.default(10_000).meta(doc({ description: 'a gRPC connection that has not sent the HTTP/2 preface within this is closed', unit: 'milliseconds' })),
  GRPC_IDLE_TIMEOUT_MS: positiveInt.default(3_900_000).meta(doc({ description: "a gRPC connection with no call for this long is closed; above Envoy's 1 h upstream idle timeout, so Envoy closes first", unit: 'milliseconds' })),
  LAST_USED_FLUSH_MS: positiveInt.default(60_000).meta(doc({ description: 'how often `last_used_at` is written (one statement per batch)', unit: 'milliseconds' })),
  KEY_PEPPER: pepper.optional().meta(doc({ description: 'HMAC secret for key hashes; from a Kubernetes Secret. Admin commands without `DATABASE_URL` use the `dev` store\'s', unit: '≥ 32 bytes', default: 'required by `serve`, `accounts`, `keys`, `audit`' })),
  KEY_PEPPER_VERSION: positiveInt.default(1).meta(doc({ description: 'version stored with new hashes', unit: 'whole number' })),
  KEY_PEPPER_PREVIOUS: pepper.optional().meta(doc({ description: 'the pepper before the current one, still accepted (`KEY_PEPPER_VERSION` 2 or more)', unit: '≥ 32 bytes' })),
  KEY_ENVIRONMENT: z.enum(['live', 'test'], { error: 'must be live or test' }).default('live').meta(doc({ description: 'prefix of issued keys (`ryv_live_`, `ryv_test_`) and the only one accepted', unit: '`live` or `test`' })),
  MIGRATE_ON_START: bool.default(false).meta(doc({ description: 'apply pending migrations before serving; otherwise `serve` refuses to start only when the schema is older than the code', unit: 'bool' })),
  BIND_ADDRESS: z.string().trim().min(1).default('0.0.0.0').meta(doc({ description: 'where all ports listen (`dev`: `127.0.0.1` unless set)', unit: 'address' })),
  GRPC_PORT: port.default(9191).meta(doc({ description: 'gRPC Check and `grpc.health.v1.Health`', unit: 'port' })),
  HTTP_PORT: port.default(8080).meta(doc({ description: 'HTTP: the key management API and the HTTP authorization mode (`/authz`)', unit: 'port' })),
  OPS_PORT: port.default(9090).meta(doc({ description: '`/metrics`, `/healthz`, `/readyz`', unit: 'port' })),
  POLICY_FILE: z.string().trim().min(1).optional().meta(doc({ description: 'route policy (YAML), reloaded on change', unit: 'path', default: '`policy/default.yaml`' })),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], {
      error: 'must be one of fatal, error, warn, info, debug, trace, silent',
    })
    .default('info')
    .meta(doc({ description: 'denials log at info, allowed decisions at debug (see `LOG_ALLOWED_SAMPLE_RATE`)', unit: '`fatal` … `trace`, `silent`' })),
  // Applied by `serve` only (src/heap.ts), after the code is loaded: a V8 flag on the command line would make V8 reject the
  // bundle's code cache. 0 (the default) leaves V8's own rule: measured in bench/README.md, "Memory: HEAP_GROWING_PERCENT".
  HEAP_GROWING_PERCENT: z.coerce.number({ error: WHOLE_NUMBER }).int(WHOLE_NUMBER).min(0, 'must be 0-300').max(300, 'must be 0-300').default(0).meta(doc({ description: "how far V8 lets the heap grow past what survived its last full collection before collecting again. 0: V8's own rule, which allows up to 300 % when the heap limit is 2 GB or more (no memory limit) and about 30 % in the chart's 384Mi; set 50-100 where there is no memory limit (docs/production.md, \"Memory\")", unit: 'percent' })),
  STORE_TIMEOUT_MS: positiveInt.max(10_000, 'must be at most 10000').default(100).meta(doc({ description: 'per Postgres query and Redis command (a Postgres connect gets at least 1 s); keep it well inside the proxy\'s 250 ms', unit: 'milliseconds' })),
  STRIP_CREDENTIAL_HEADERS: bool.default(true).meta(doc({ description: 'remove `authorization` and `x-api-key` before the upstream', unit: 'bool' })),
  UNAVAILABLE_MODE: z.enum(['deny', 'rpc_error'], { error: 'must be deny or rpc_error' }).default('deny').meta(doc({ description: 'store outage: a 503 denial, or an UNAVAILABLE RPC error so the proxy\'s `failure_mode_allow` decides', unit: '`deny` or `rpc_error`' })),
  MCP_RESOURCE_METADATA_URL: z.url({ error: 'must be an absolute URL' }).optional().meta(doc({ description: '401s on `/mcp` paths add `resource_metadata="<URL>"` to `www-authenticate` (off by default: it sends OAuth-capable MCP clients into an OAuth flow API keys do not need)', unit: 'URL' })),
  SHUTDOWN_DRAIN_MS: positiveInt.default(10_000).meta(doc({ description: 'on SIGTERM, how long in-flight calls may finish', unit: 'milliseconds' })),
  // Not ready but still serving, so Envoy's health checks and endpoint updates steer traffic away before listeners close.
  SHUTDOWN_READINESS_DELAY_MS: z.coerce.number().int('must be a whole number').min(0, 'must be 0 or more').max(60_000, 'must be at most 60000').default(5000).meta(doc({ description: 'on SIGTERM, how long the service keeps serving while it reports not ready, before the listeners close (0: at once; `dev`: 0 unless set)', unit: 'milliseconds' })),
  // Fraction (0..1) of allowed decisions logged at info; the rest go to debug. Denials are always logged.
  LOG_ALLOWED_SAMPLE_RATE: z.coerce.number().min(0, 'must be between 0 and 1').max(1, 'must be between 0 and 1').default(0).meta(doc({ description: 'share of allowed decisions logged at info instead of debug (a random sample)', unit: 'fraction 0-1' })),
  RATE_LIMIT_ENABLED: bool.default(true).meta(doc({ description: 'per-account and per-key request limits', unit: 'bool' })),
  // Unset: 1 / the number of live replicas (replica_leases), at least 0.05 (MIN_LOCAL_SHARE in ratelimit/limiter.ts). Set: that fixed share.
  RATE_LIMIT_LOCAL_SHARE: z.coerce.number().gt(0, 'must be above 0').max(1, 'must be at most 1').optional().meta(doc({ description: 'share of each limit a replica allows alone while Redis is down', unit: 'fraction 0-1', default: '1 / live replicas, at least 0.05' })),
  // LLM limits (issue 19; docs/budgets.md).
  USAGE_PORT: port.optional().meta(doc({ description: '`POST /internal/usage`: upstreams report the actual token usage of reservations here (own port, never the key API); needs `USAGE_SECRET`', unit: 'port', default: 'off' })),
  USAGE_SECRET: z.string().min(32, 'must be at least 32 characters (generate one with: openssl rand -base64 48)').optional().meta(doc({ description: 'bearer secret of `POST /internal/usage`; from a Kubernetes Secret', unit: '≥ 32 characters' })),
  TOKEN_RESERVATION_TTL_MS: positiveInt.min(10_000, 'must be at least 10000').max(86_400_000, 'must be at most 86400000').default(15 * 60_000).meta(doc({ description: 'how long a token reservation waits for its usage report before it expires into a charge of the reserved amount; longer than your longest streamed completion', unit: 'milliseconds' })),
  SPEND_LEDGER_FLUSH_MS: positiveInt.min(50, 'must be at least 50').max(60_000, 'must be at most 60000').default(1000).meta(doc({ description: 'how often settled spend is written to the Postgres ledger, in one batch', unit: 'milliseconds' })),
  BUDGET_REDIS_DOWN: z.enum(['deny', 'local'], { error: 'must be deny or local' }).default('deny').meta(doc({ description: 'while Redis is unreachable, requests with a spend budget: `deny` (503), or `local`: each replica admits at most its share (as `RATE_LIMIT_LOCAL_SHARE`) of what Redis last said remained of each budget, nothing for a budget it has not seen', unit: '`deny` or `local`' })),
  RESERVATION_SWEEP_INTERVAL_MS: positiveInt.min(100, 'must be at least 100').default(5000).meta(doc({ description: 'how often each replica expires reservations past `TOKEN_RESERVATION_TTL_MS` into charges', unit: 'milliseconds' })),
  MAX_KEYS_PER_ACCOUNT: positiveInt.default(100).meta(doc({ description: 'live (not revoked, not expired) keys an account may hold; one more is 409 `key_limit_reached` (API) or exit 1 (CLI)', unit: 'keys' })),
  MANAGEMENT_WRITE_TIMEOUT_MS: positiveInt.max(60_000, 'must be at most 60000').default(5000).meta(doc({ description: "each statement of a key create or revoke (not the Check path's `STORE_TIMEOUT_MS`); a COMMIT not confirmed in time answers 503 `outcome_unknown`", unit: 'milliseconds' })),
  KEY_ROLL_MAX_OVERLAP_SECONDS: z.coerce.number().int('must be a whole number').min(0, 'must be 0 or more').max(366 * 86_400, 'must be at most 31622400').default(7 * 86_400).meta(doc({ description: 'the longest overlap a roll may give the old key (default 7 days)', unit: 'seconds' })),
  KEY_ROLL_SWEEP_INTERVAL_MS: positiveInt.min(100, 'must be at least 100').default(30_000).meta(doc({ description: 'how often each replica records rolled keys whose overlap ended as revoked (they are refused from the end of the overlap regardless)', unit: 'milliseconds' })),
  GITHUB_SECRET_SCANNING_KEYS_FILE: z.string().optional().meta(doc({ description: "GitHub's secret-scanning signing keys pinned in a file (no fetching; air-gapped clusters, tests)", unit: 'path' })),
  GITHUB_SECRET_SCANNING_KEYS_URL: z.url({ error: 'must be an absolute URL' }).default('https://api.github.com/meta/public_keys/secret_scanning').meta(doc({ description: "where GitHub's secret-scanning signing keys are fetched (and cached) from", unit: 'URL' })),
  GITHUB_SECRET_SCANNING_REFETCH_MIN_MS: positiveInt.default(60_000).meta(doc({ description: "an unknown key identifier re-fetches GitHub's keys at most once per this long", unit: 'milliseconds' })),
  SECRET_SCANNING_BODY_LIMIT_BYTES: positiveInt.max(16 * 1024 * 1024, 'must be at most 16777216').default(1024 * 1024).meta(doc({ description: "body limit of the secret-scanning route (GitHub batches matches; the key API's is 16 KiB)", unit: 'bytes' })),
  OWNER_NOTIFICATION_WEBHOOK_URL: z.url({ error: 'must be an absolute URL' }).optional().meta(doc({ description: 'the owner of each account with leaked keys is notified by a POST here (one per account per GitHub report, listing its keys), signed with `OWNER_NOTIFICATION_WEBHOOK_SECRET`, retried until 2xx', unit: 'URL' })),
  OWNER_NOTIFICATION_WEBHOOK_SECRET: z.string().min(16, 'must be at least 16 characters').optional().meta(doc({ description: 'HMAC secret of the owner notifications (with `OWNER_NOTIFICATION_WEBHOOK_URL`)', unit: '≥ 16 characters' })),
  OWNER_NOTIFICATION_INTERVAL_MS: positiveInt.min(100, 'must be at least 100').default(5000).meta(doc({ description: 'how often the outbox of owner notifications is delivered', unit: 'milliseconds' })),
  ACCESS_LOG_SECRET: accessLogSecret.optional().meta(doc({ description: "shared secret of Envoy's gRPC access log (`StreamAccessLogs` on `GRPC_PORT`), sent as `x-ryvion-access-log-secret`; from a Secret. Unset: the method is not served (UNIMPLEMENTED)", unit: '≥ 32 characters' })),
  ACCESS_LOG_SECRET_PREVIOUS: accessLogSecret.optional().meta(doc({ description: 'during a rotation, the secret before `ACCESS_LOG_SECRET`, still accepted until every Envoy sends the new one', unit: '≥ 32 characters' })),
});

/** Each setting's name, reference text and the default an unset value gets (docs/configuration.md). */
export function settingDocs(): { name: string; doc: SettingDoc; parsedDefault: unknown }[] {
  return Object.entries(schema.shape).map(([name, field]) => ({
    name,
    doc: field.meta() as unknown as SettingDoc,
    parsedDefault: field.safeParse(undefined).data,
  }));
}

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
    const unit = (schema.shape[name as keyof typeof schema.shape]?.meta() as SettingDoc | undefined)?.unit;
    const message = issue?.message === WHOLE_NUMBER && unit && unit !== 'whole number' ? `${WHOLE_NUMBER} of ${unit}` : issue?.message;
    // Never echo the value: it may be a secret (KEY_PEPPER, URLs with passwords).
    throw new ConfigError(`${name}: ${message ?? 'invalid value'}`);
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
  if (config.ACCESS_LOG_SECRET_PREVIOUS !== undefined && config.ACCESS_LOG_SECRET === undefined) {
    throw new ConfigError('ACCESS_LOG_SECRET_PREVIOUS: set ACCESS_LOG_SECRET too (the new secret); the previous one is only accepted beside it');
  }
  checkRedisSecurity(config);
  if ((config.USAGE_PORT === undefined) !== (config.USAGE_SECRET === undefined)) {
    throw new ConfigError('USAGE_SECRET: set both USAGE_PORT and USAGE_SECRET, or neither');
  }
  const ports = [config.GRPC_PORT, config.HTTP_PORT, config.OPS_PORT, ...(config.USAGE_PORT !== undefined ? [config.USAGE_PORT] : [])];
  if (new Set(ports).size !== ports.length) {
    throw new ConfigError('GRPC_PORT: GRPC_PORT, HTTP_PORT, OPS_PORT and USAGE_PORT must differ');
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
