// `ryvion-authz dev` (what `npm start` runs): the real service, the same migrations and SQL, on an
// embedded Postgres kept in DATA_DIR, with in-process caches and rate limiter. For a first try on
// one machine; `serve` (production) never falls back to this.
import { loadConfig } from '../config.js';
import { installSignalHandlers } from '../signals.js';
import { createLogger } from '../observability/logger.js';
import { startService, type RunningService } from '../service.js';
import { createPool } from '../store/postgres.js';
import { KeyRepository } from '../keys/repository.js';
import { keyHasherFrom } from '../service.js';
import { ensureBootstrap, welcomeText } from './bootstrap.js';
import { lockDataDir, loadOrCreatePepper, prepareDataDir } from './data-dir.js';
import { startEmbeddedPostgres, type EmbeddedPostgres } from './embedded-postgres.js';

/** Settings `dev` provides itself; set in the environment, they are ignored (with a warning). */
const PROVIDED = [
  'DATABASE_URL',
  'KEY_PEPPER',
  'KEY_PEPPER_VERSION',
  'KEY_PEPPER_PREVIOUS',
  'MIGRATE_ON_START',
  'REDIS_URL',
  'REDIS_SENTINELS',
  'REDIS_SENTINEL_NAME',
  'REDIS_CLUSTER_NODES',
] as const;

const PLACEHOLDER_URL = 'postgres://embedded@localhost/postgres';
const PLACEHOLDER_PEPPER = 'x'.repeat(32);

export async function runDev(env: NodeJS.ProcessEnv): Promise<void> {
  const devEnv: NodeJS.ProcessEnv = { ...env };
  for (const name of PROVIDED) delete devEnv[name];
  // Local by default (a first try should not expose a buyer key's gate to the network), and no
  // readiness delay on Ctrl-C: nothing routes by this process's health. Both can be overridden.
  devEnv.BIND_ADDRESS = env.BIND_ADDRESS?.trim() || '127.0.0.1';
  devEnv.SHUTDOWN_READINESS_DELAY_MS = env.SHUTDOWN_READINESS_DELAY_MS?.trim() || '0';
  // Validates the user's settings (ports, log level, ...) before anything starts.
  const base = loadConfig({ ...devEnv, DATABASE_URL: PLACEHOLDER_URL, KEY_PEPPER: PLACEHOLDER_PEPPER, MIGRATE_ON_START: 'true' });
  const dataDir = prepareDataDir(env);
  const logger = createLogger(base.LOG_LEVEL);
  const ignored = PROVIDED.filter((name) => env[name]?.trim());
  if (ignored.length > 0) {
    logger.warn({ ignored }, '`dev` runs on its own embedded store and pepper, and ignores these settings; `serve` uses them');
  }

  const release = lockDataDir(dataDir);
  let db: EmbeddedPostgres | undefined;
  let service: RunningService | undefined;
  try {
    const { pepper } = loadOrCreatePepper(dataDir);
    logger.warn(
      { data_dir: dataDir },
      'dev mode: embedded Postgres in DATA_DIR, in-process key cache and rate limiter, no Redis: this serves a single replica only. Production runs `serve` with DATABASE_URL and REDIS_URL',
    );
    db = await startEmbeddedPostgres({ dataDir, logger });
    const config = { ...base, DATABASE_URL: db.url, KEY_PEPPER: pepper };
    service = await startService(config, logger);

    // Bootstrap through its own small pool: the service's pool keeps the tight per-query timeout of the decision path.
    const pool = createPool({ connectionString: db.url, max: 2, timeoutMs: 10_000, applicationName: 'ryvion-authz-dev' });
    try {
      const boot = await ensureBootstrap(pool, new KeyRepository(pool, keyHasherFrom(config), config.KEY_ENVIRONMENT));
      if (boot.kind === 'created') {
        process.stdout.write(
          welcomeText({ secret: boot.secret, keyId: boot.key.id, accountId: boot.accountId, httpPort: service.httpPort, grpcPort: service.grpcPort, dataDir }),
        );
        await boot.markShown();
      } else {
        logger.info(
          { account_id: boot.accountId, bootstrap_key_id: boot.keyId, shown_at: boot.at.toISOString() },
          'existing dev store: keys from earlier runs still work (the bootstrap key was shown on the first start only)',
        );
      }
    } finally {
      await pool.end().catch(() => undefined);
    }
  } catch (err) {
    await service?.stop().catch(() => undefined);
    await db?.stop().catch(() => undefined);
    release();
    throw err;
  }

  const running = service;
  const store = db;
  const stopAll = async (): Promise<void> => {
    await running.stop();
    await store.stop();
    release();
  };
  store.onUnexpectedExit((detail) => {
    logger.error({ detail }, 'the embedded Postgres exited; stopping');
    running.stop().finally(() => {
      release();
      process.exit(1);
    });
  });
  installSignalHandlers(logger, stopAll);
  logger.info(
    { grpc_port: running.grpcPort, http_port: running.httpPort, ops_port: running.opsPort, data_dir: dataDir, startup_ms: Math.round(performance.now()) },
    'ryvion-authz ready',
  );
}
