// Composition root: builds the stores, pipeline and servers from a Config and starts them.
import type pg from 'pg';
import type { Config } from './config.js';
import { ConfigError } from './config.js';
import { CheckPipeline } from './check/pipeline.js';
import { systemClock, type Clock } from './time/clock.js';
import { keyHasherFrom } from './keys/hash.js';

export { keyHasherFrom };
import { KeyRepository } from './keys/repository.js';
import type { KeyService } from './keys/management.js';
import { startKeyStore, type KeyStore } from './keys/key-store.js';
import { FailedAuthLimiter } from './check/failed-auth.js';
import { RateLimiter } from './ratelimit/limiter.js';
import { startLiveReplicaCount, type LiveReplicaCount } from './ratelimit/live-replicas.js';
import { BatchingRedisGcra } from './ratelimit/redis-gcra-batch.js';
import { DecisionRecorder } from './check/decision-log.js';
import { HealthState } from './observability/health.js';
import type { Logger } from './observability/logger.js';
import { Metrics } from './observability/metrics.js';
import { closeHttp, createOpsServer, listenHttp } from './observability/ops-server.js';
import { startPostgresProbe } from './observability/store-probe.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile, PolicyError, type CompiledPolicy } from './policy/policy.js';
import { watchPolicy } from './policy/watch.js';
import { createPool, migrate, schemaState } from './store/postgres.js';
import { asPostgresUnavailable } from './store/errors.js';
import { decoderFallbacks, GrpcCheckServer, routeGrpcLogs } from './transport/grpc/server.js';
import { AccessLogReceiver, type UsageSink } from './transport/grpc/access-log.js';
import { GithubKeySource, SecretScanning } from './keys/secret-scanning.js';
import { LeakNotifier } from './keys/leak-notifier.js';
import { closeHttpServer, createHttpServer, listenHttpServer } from './transport/http/server.js';
import { TrustedProxies } from './net/trusted-proxies.js';
import { createUsageServer } from './transport/http/usage-server.js';
import { TokenGate } from './budget/gate.js';
import { Ledger } from './budget/ledger.js';
import { RedisTokens } from './budget/redis-tokens.js';
import { ReservationSigner } from './budget/reservation-id.js';

/** Start-up waits this many attempts for a Postgres that is slow to accept connections (each up to the pool's connect timeout). */
const STARTUP_POSTGRES_ATTEMPTS = 3;

async function patiently<T>(work: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await work();
    } catch (err) {
      if (attempt >= STARTUP_POSTGRES_ATTEMPTS || !asPostgresUnavailable(err)) throw err;
    }
  }
}

/** A start-up failure the operator can fix; the message is the one line to print. */
export class StartupError extends Error {
  override name = 'StartupError';
}

export interface RunningService {
  grpcPort: number;
  /** HTTP API: key management and the HTTP authorization mode (/authz). */
  httpPort: number;
  opsPort: number;
  /** POST /internal/usage (USAGE_PORT); undefined when off. */
  usagePort: number | undefined;
  /** Token limits and budgets: reserve, reconcile (`report`), expire, ledger. */
  tokens: TokenGate;
  health: HealthState;
  metrics: Metrics;
  repository: KeyRepository;
  /** Key management (create, list, revoke, audit), as the HTTP API and the CLI use it. */
  keys: KeyService;
  keyStore: KeyStore;
  pool: pg.Pool;
  /**
   * Where start-up went, in ms: `process` from the process's start to startService (Node itself
   * and loading the code), then each step of startService. Logged on the ready line.
   */
  startupMs: Record<string, number>;
  /** Graceful stop: not ready, keep serving SHUTDOWN_READINESS_DELAY_MS, drain up to SHUTDOWN_DRAIN_MS, close servers, then Redis, then Postgres. */
  stop(): Promise<void>;
}

export interface ServiceOptions {
  clock?: Clock;
  /** Off in tests that start several replicas in one process. */
  defaultMetrics?: boolean;
  /** Between Postgres health probes (default POSTGRES_PROBE_INTERVAL_MS); tests shorten it. */
  postgresProbeIntervalMs?: number;
  /** Between reads of the live replica count (default LIVE_REPLICAS_INTERVAL_MS); tests shorten it. */
  liveReplicasIntervalMs?: number;
  /**
   * The reconciler that Envoy's access log reports usage to (StreamAccessLogs, served when
   * ACCESS_LOG_SECRET is set). Without one, authenticated streams are refused with FAILED_PRECONDITION.
   */
  usageSink?: UsageSink;
}

/** A new replica is counted within this long, so the local rate-limit share follows scaling closely. */
const LIVE_REPLICAS_INTERVAL_MS = 2000;

export function policyPath(config: Config): string {
  return config.POLICY_FILE ?? DEFAULT_POLICY_PATH;
}

export async function startService(config: Config, logger: Logger, opts: ServiceOptions = {}): Promise<RunningService> {
  if (!config.DATABASE_URL) throw new ConfigError('DATABASE_URL: required but not set');
  // performance.now() counts from the process's start.
  let last = performance.now();
  const startupMs: Record<string, number> = { process: Math.round(last) };
  const step = (name: string): void => {
    const now = performance.now();
    startupMs[name] = Math.round(now - last);
    last = now;
  };
  const hasher = keyHasherFrom(config);
  const health = new HealthState();
  const metrics = new Metrics({ defaultMetrics: opts.defaultMetrics });
  health.onChange((ready) => metrics.ready.set(ready ? 1 : 0));

  let policy: CompiledPolicy;
  try {
    policy = loadPolicyFile(policyPath(config));
  } catch (err) {
    throw new StartupError(err instanceof PolicyError ? `POLICY_FILE: ${err.message}` : String(err));
  }
  health.setPolicyLoaded();
  metrics.policyLastReload.setToCurrentTime();
  step('policy');

  if (config.MIGRATE_ON_START) {
    const applied = await migrate(config.DATABASE_URL);
    if (applied.length > 0) logger.info({ migrations: applied }, 'applied migrations');
    step('migrations');
  }
  const pool = createPool({ connectionString: config.DATABASE_URL, max: config.DATABASE_POOL_MAX, timeoutMs: config.STORE_TIMEOUT_MS });
  metrics.observePostgresPool(config.DATABASE_POOL_MAX, () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }));
  try {
    const schema = await patiently(() => schemaState(pool));
    if (!schema.ok) {
      throw new StartupError(
        `database schema is older than this version needs (missing ${schema.missing.join(', ')}): run \`ryvion-authz migrate\` or set MIGRATE_ON_START=true`,
      );
    }
    if (schema.newer.length > 0) logger.info({ newer: schema.newer }, 'database schema is newer than this version; continuing');
    health.setStore('postgres', 'up');
  } catch (err) {
    await pool.end().catch(() => undefined);
    if (err instanceof StartupError) throw err;
    throw new StartupError(`DATABASE_URL: cannot reach Postgres (${(err as Error).message})`);
  }
  step('postgres_schema_check');
  health.setStore('redis', 'not_configured');
  metrics.storeUp.labels('postgres').set(1);
  // Down until its first `ready`, so the series exists from the first scrape.
  if (config.REDIS_URL || config.REDIS_SENTINELS || config.REDIS_CLUSTER_NODES) metrics.storeUp.labels('redis').set(0);

  const clock = opts.clock ?? systemClock;
  const repository = new KeyRepository(pool, hasher, config.KEY_ENVIRONMENT, config.MANAGEMENT_WRITE_TIMEOUT_MS);
  const keyStore = await startKeyStore({ config, pool, repository, logger, metrics, health, clock });
  step('key_store');
  // Only a shared limiter falls back to a share; a fixed RATE_LIMIT_LOCAL_SHARE needs no count.
  let liveReplicas: LiveReplicaCount | undefined;
  if (config.RATE_LIMIT_ENABLED && keyStore.redis && config.RATE_LIMIT_LOCAL_SHARE === undefined) {
    liveReplicas = await startLiveReplicaCount(async () => (await keyStore.bus.liveReplicas()).length, opts.liveReplicasIntervalMs ?? LIVE_REPLICAS_INTERVAL_MS, logger, () => {
      if (rateLimiter) metrics.rateLimitLocalShare.set(rateLimiter.share());
    });
  }
  const rateLimiter = config.RATE_LIMIT_ENABLED
    ? new RateLimiter({
        // Concurrent checks of one subject share a script call (redis-gcra-batch.ts); decisions are those of single calls.
        redis: keyStore.redis ? new BatchingRedisGcra(keyStore.redis, config.REDIS_KEY_PREFIX, metrics) : undefined,
        localShare: config.RATE_LIMIT_LOCAL_SHARE,
        liveReplicas: () => liveReplicas?.current() ?? 1,
        clock,
        metrics,
        logger,
      })
    : undefined;
  if (!config.KEY_PEPPER) throw new ConfigError('KEY_PEPPER: required but not set');
  const tokens = new TokenGate({
    redis: keyStore.redis ? new RedisTokens(keyStore.redis, config.REDIS_KEY_PREFIX) : undefined,
    ledger: new Ledger(pool),
    // Reservation ids are signed with a key derived from the pepper every replica already shares.
    signer: new ReservationSigner(config.KEY_PEPPER),
    reservationTtlMs: config.TOKEN_RESERVATION_TTL_MS,
    clock,
    logger,
    metrics,
    redisDown: config.BUDGET_REDIS_DOWN,
    localShare: () => rateLimiter?.share() ?? config.RATE_LIMIT_LOCAL_SHARE ?? 1 / Math.max(1, liveReplicas?.current() ?? 1),
  });
  tokens.start(config.SPEND_LEDGER_FLUSH_MS, config.RESERVATION_SWEEP_INTERVAL_MS);
  const pipeline = new CheckPipeline({
    environment: config.KEY_ENVIRONMENT,
    hasher,
    keys: keyStore.resolver,
    failedAuth: new FailedAuthLimiter(config.FAILED_AUTH_PER_SOURCE_PER_MINUTE, () => clock.now()),
    usage: keyStore.usage,
    tokens,
    ...(rateLimiter ? { rateLimiter } : {}),
    policy: () => policy,
    clock,
  });
  const recorder = new DecisionRecorder(logger, metrics, { allowedSampleRate: config.LOG_ALLOWED_SAMPLE_RATE });

  const watcher = watchPolicy(policyPath(config), {
    onReload: (next) => {
      policy = next;
      metrics.policyReloads.labels('success').inc();
      metrics.policyLastReload.setToCurrentTime();
      logger.info({ policy: next.source }, 'policy reloaded');
    },
    onError: (err) => {
      metrics.policyReloads.labels('failure').inc();
      logger.error({ problem: err.message }, 'policy reload rejected; keeping the last good policy');
    },
  });

  routeGrpcLogs(logger);
  const accessLog = config.ACCESS_LOG_SECRET
    ? new AccessLogReceiver({ secret: config.ACCESS_LOG_SECRET, previousSecret: config.ACCESS_LOG_SECRET_PREVIOUS, sink: opts.usageSink ?? tokens, metrics, logger })
    : undefined;
  if (!accessLog && opts.usageSink) logger.warn('ACCESS_LOG_SECRET is not set: the gRPC access log (StreamAccessLogs) is not served, so no usage arrives from Envoy');
  const grpcServer = new GrpcCheckServer(pipeline, recorder, {
    accessLog,
    stripCredentialHeaders: config.STRIP_CREDENTIAL_HEADERS,
    mcpResourceMetadataUrl: config.MCP_RESOURCE_METADATA_URL,
    unavailableMode: config.UNAVAILABLE_MODE,
    maxConnections: config.MAX_CONNECTIONS_PER_PORT,
    handshakeTimeoutMs: config.GRPC_HANDSHAKE_TIMEOUT_MS,
    idleTimeoutMs: config.GRPC_IDLE_TIMEOUT_MS,
    onDecoderFallback: decoderFallbacks(metrics, logger),
  });
  health.onChange((ready) => grpcServer.setServing(ready));
  let githubKeys: GithubKeySource;
  try {
    githubKeys = new GithubKeySource({
      file: config.GITHUB_SECRET_SCANNING_KEYS_FILE,
      url: config.GITHUB_SECRET_SCANNING_KEYS_URL,
      refetchMinIntervalMs: config.GITHUB_SECRET_SCANNING_REFETCH_MIN_MS,
      clock,
      logger,
    });
  } catch (err) {
    await keyStore.stop();
    await pool.end().catch(() => undefined);
    throw new StartupError(`GITHUB_SECRET_SCANNING_KEYS_FILE: ${(err as Error).message}`);
  }
  const secretScanning = new SecretScanning({
    keySource: githubKeys,
    keys: keyStore.keys,
    lookup: repository,
    hasher,
    environment: config.KEY_ENVIRONMENT,
    notifyOwners: config.OWNER_NOTIFICATION_WEBHOOK_URL !== undefined,
    logger,
    metrics,
  });
  const leakNotifier =
    config.OWNER_NOTIFICATION_WEBHOOK_URL && config.OWNER_NOTIFICATION_WEBHOOK_SECRET
      ? new LeakNotifier({
          url: config.OWNER_NOTIFICATION_WEBHOOK_URL,
          secret: config.OWNER_NOTIFICATION_WEBHOOK_SECRET,
          intervalMs: config.OWNER_NOTIFICATION_INTERVAL_MS,
          repository,
          clock,
          logger,
          metrics,
        })
      : undefined;
  leakNotifier?.start();
  const api = createHttpServer({
    pipeline,
    keys: keyStore.keys,
    recorder,
    metrics,
    logger,
    policy: () => policy,
    tokens,
    clock,
    secretScanning: { handler: secretScanning, bodyLimitBytes: config.SECRET_SCANNING_BODY_LIMIT_BYTES },
    options: {
      maxKeysPerAccount: config.MAX_KEYS_PER_ACCOUNT,
      maxRollOverlapSeconds: config.KEY_ROLL_MAX_OVERLAP_SECONDS,
      mcpResourceMetadataUrl: config.MCP_RESOURCE_METADATA_URL,
      stripCredentialHeaders: config.STRIP_CREDENTIAL_HEADERS,
      unavailableMode: config.UNAVAILABLE_MODE,
      trustedProxies: new TrustedProxies(config.TRUSTED_PROXIES),
      maxHeaders: config.HTTP_MAX_HEADERS,
      maxConnections: config.MAX_CONNECTIONS_PER_PORT,
    },
  });
  const ops = createOpsServer(metrics, health);
  const usage = config.USAGE_SECRET !== undefined ? createUsageServer({ reporter: tokens, secret: config.USAGE_SECRET, logger }) : undefined;

  step('servers');
  let grpcPort: number;
  let httpPort: number;
  let opsPort: number;
  let usagePort: number | undefined;
  try {
    grpcPort = await grpcServer.listen(config.BIND_ADDRESS, config.GRPC_PORT);
    httpPort = await listenHttpServer(api, config.BIND_ADDRESS, config.HTTP_PORT);
    opsPort = await listenHttp(ops, config.BIND_ADDRESS, config.OPS_PORT);
    if (usage) usagePort = await listenHttp(usage, config.BIND_ADDRESS, config.USAGE_PORT ?? 0);
  } catch (err) {
    watcher.close();
    liveReplicas?.stop();
    await tokens.stop();
    await grpcServer.shutdown(0);
    await api.close();
    await closeHttp(ops);
    if (usage) await closeHttp(usage);
    await leakNotifier?.stop();
    await keyStore.stop();
    await pool.end().catch(() => undefined);
    throw new StartupError(`cannot listen: ${(err as Error).message}`);
  }
  health.setListening();
  step('listen');
  const postgresProbe = startPostgresProbe({ pool, health, metrics, logger, intervalMs: opts.postgresProbeIntervalMs });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      health.setShuttingDown();
      watcher.close();
      // Not ready but still serving: Envoy's health checks and Kubernetes' endpoint updates move traffic away first.
      if (config.SHUTDOWN_READINESS_DELAY_MS > 0) await new Promise((r) => setTimeout(r, config.SHUTDOWN_READINESS_DELAY_MS));
      // Both stop taking new calls at once and drain within the same deadline.
      await Promise.all([grpcServer.shutdown(config.SHUTDOWN_DRAIN_MS), closeHttpServer(api, config.SHUTDOWN_DRAIN_MS)]);
      await closeHttp(ops);
      if (usage) await closeHttp(usage);
      await tokens.stop();
      await postgresProbe.stop();
      liveReplicas?.stop();
      await leakNotifier?.stop();
      await keyStore.stop();
      await pool.end().catch(() => undefined);
    })());

  return { grpcPort, httpPort, opsPort, usagePort, tokens, health, metrics, repository, keys: keyStore.keys, keyStore, pool, startupMs, stop };
}
