// The ryvion-authz command line: serve, migrate, accounts, keys and check.
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { ConfigError, loadConfig, type Config } from '../config.js';
import { KeyRepository, NotFoundError, ConflictError, type Account, type KeyInfo } from '../keys/repository.js';
import { isAccountId, isKeyId } from '../keys/ids.js';
import { createLogger } from '../observability/logger.js';
import { loadPolicyFile, PolicyError } from '../policy/policy.js';
import { keyHasherFrom, policyPath, startService, StartupError } from '../service.js';
import { createPool, migrate } from '../store/postgres.js';
import { createRedis } from '../store/redis.js';
import { RedisTier } from '../keys/cache/redis-tier.js';
import { InvalidationBus } from '../keys/invalidation.js';
import { CacheAwareRevoker } from '../keys/revocation.js';
import { systemClock } from '../check/pipeline.js';
import { StoreUnavailableError } from '../store/errors.js';
import { installSignalHandlers } from './signals.js';
import { adminConfig } from './admin-config.js';

/** Bad or missing arguments: exit 2, nothing written. */
class UsageError extends Error {}

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

function print(json: boolean, value: unknown, human: string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human}\n`);
}

function keyJson(k: KeyInfo): Record<string, unknown> {
  return {
    id: k.id,
    account_id: k.accountId,
    name: k.name,
    scope: k.scope,
    prefix: k.prefix,
    created_at: k.createdAt.toISOString(),
    expires_at: k.expiresAt?.toISOString() ?? null,
    last_used_at: k.lastUsedAt?.toISOString() ?? null,
    revoked_at: k.revokedAt?.toISOString() ?? null,
  };
}

async function withRepository<T>(config: Config, fn: (repo: KeyRepository) => Promise<T>): Promise<T> {
  const pool = createPool({ connectionString: config.DATABASE_URL!, max: 2, timeoutMs: 10_000, applicationName: 'ryvion-authz-cli' });
  try {
    return await fn(new KeyRepository(pool, keyHasherFrom(config), config.KEY_ENVIRONMENT));
  } finally {
    await pool.end().catch(() => undefined);
  }
}

/** The same revocation path as the HTTP API: caches on every replica are cleared before this returns. */
async function revokeEverywhere(config: Config, repo: KeyRepository, keyId: string) {
  const pool = createPool({ connectionString: config.DATABASE_URL!, max: 2, timeoutMs: 10_000, applicationName: 'ryvion-authz-cli' });
  const redisPub = createRedis(config, 'command');
  const redisSub = redisPub ? createRedis(config, 'subscriber') : undefined;
  const logger = createLogger('silent');
  const bus = new InvalidationBus({
    mode: 'client',
    databaseUrl: config.DATABASE_URL!,
    pool,
    redisPub,
    redisSub,
    redisPrefix: config.REDIS_KEY_PREFIX,
    leaseMs: config.INVALIDATION_LEASE_MS,
    clock: systemClock,
    logger,
  });
  try {
    if (redisSub) await waitReady(redisSub, 2000);
    await bus.start();
    const redis = redisPub && (await waitReady(redisPub, 2000))
      ? new RedisTier(redisPub, { prefix: config.REDIS_KEY_PREFIX, ttlMs: config.CACHE_REDIS_TTL_MS, negativeTtlMs: config.CACHE_NEGATIVE_TTL_MS })
      : undefined;
    const revoker = new CacheAwareRevoker({ repository: repo, bus, redis, leaseMs: config.INVALIDATION_LEASE_MS, logger });
    return await revoker.revoke(keyId);
  } finally {
    await bus.stop();
    redisSub?.disconnect();
    redisPub?.disconnect();
    await pool.end().catch(() => undefined);
  }
}

/** Waits briefly for a Redis connection; the revoke goes on without Redis if it does not come. */
function waitReady(client: NonNullable<ReturnType<typeof createRedis>>, ms: number): Promise<boolean> {
  if (client.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    client.once('ready', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function parseRpm(value: string | undefined): number | null {
  if (value === undefined) return null;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new UsageError('--rpm: a whole number of requests per minute, 1 or more');
  return n;
}

function accountJson(a: Account): Record<string, unknown> {
  return { id: a.id, email: a.email, plan: a.plan, rate_limit_rpm: a.rateLimitRpm, created_at: a.createdAt.toISOString() };
}

function requireAccountId(id: string): string {
  if (!isAccountId(id)) throw new UsageError(`--account: "${id}" is not an account id (acct_...)`);
  return id;
}

function parseName(name: string): string {
  const n = name.trim();
  if (n.length < 1 || n.length > 128) throw new UsageError('--name: must be 1 to 128 characters');
  return n;
}

function parseExpiry(value: string | undefined): Date | null {
  if (value === undefined) return null;
  const d = new Date(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(d.getTime())) throw new UsageError('--expires-at: not an ISO 8601 date-time');
  if (d.getTime() <= Date.now()) throw new UsageError('--expires-at: must be in the future');
  return d;
}

/** package.json sits two levels above this file both in src/cli and in dist/cli. */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

export function buildProgram(env: NodeJS.ProcessEnv = process.env): Command {
  const program = new Command('ryvion-authz')
    .description('API-key external authorization for Envoy, Istio and Envoy Gateway')
    .version(packageVersion(), '-V, --version', 'print the version')
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('serve')
    .description('run the service (production): needs DATABASE_URL and KEY_PEPPER')
    .action(async () => {
      const config = loadConfig(env, ['DATABASE_URL', 'KEY_PEPPER']);
      const logger = createLogger(config.LOG_LEVEL);
      if (!config.REDIS_URL && !config.REDIS_SENTINELS && !config.REDIS_CLUSTER_NODES) {
        logger.warn('no Redis (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES): caches and limits are local to this replica; run one replica only');
      }
      const service = await startService(config, logger);
      // Handlers first: whoever reads "ready" may send SIGTERM at once, and it must drain, not kill.
      installSignalHandlers(logger, () => service.stop());
      logger.info({ grpc_port: service.grpcPort, http_port: service.httpPort, ops_port: service.opsPort }, 'ryvion-authz ready');
    });

  program
    .command('dev')
    .description('run the service on an embedded Postgres in DATA_DIR (default ./.ryvion-authz) for a first try: one replica, no Redis')
    .action(async () => {
      // Loaded only for `dev`: `serve` starts without the embedded-store code.
      const { runDev } = await import('../dev/command.js');
      await runDev(env);
    });

  program
    .command('migrate')
    .description('apply pending database migrations (safe to run concurrently)')
    .action(async () => {
      const config = loadConfig(env, ['DATABASE_URL']);
      const applied = await migrate(config.DATABASE_URL!);
      process.stdout.write(applied.length ? `applied ${applied.join(', ')}\n` : 'schema is up to date\n');
    });

  const accounts = program.command('accounts').description('manage accounts');
  accounts
    .command('create')
    .description('create an account')
    .requiredOption('--email <email>', 'account e-mail address')
    .option('--plan <plan>', 'rate-limit plan', 'free')
    .option('--rpm <n>', "the account's own request limit per minute, instead of its plan's")
    .option('--json', 'print JSON')
    .action(async (o: { email: string; plan: string; rpm?: string; json?: boolean }) => {
      const email = o.email.trim();
      if (!/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email) || email.length > 254) throw new UsageError(`--email: "${o.email}" is not an e-mail address`);
      if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(o.plan)) throw new UsageError('--plan: lower-case letters, digits, - and _ only');
      const rpm = parseRpm(o.rpm);
      const config = adminConfig(env);
      const account = await withRepository(config, (repo) => repo.createAccount(email, o.plan, rpm));
      print(!!o.json, accountJson(account), `created account ${account.id} (${account.email}, plan ${account.plan}${rpm ? `, ${rpm} requests/min` : ''})`);
    });

  accounts
    .command('set-limit')
    .description("set or clear an account's own request limit")
    .requiredOption('--account <id>', 'account id')
    .option('--rpm <n>', 'requests per minute')
    .option('--clear', "go back to the plan's limit")
    .option('--json', 'print JSON')
    .action(async (o: { account: string; rpm?: string; clear?: boolean; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      if ((o.rpm === undefined) === !o.clear) throw new UsageError('give exactly one of --rpm N and --clear');
      const rpm = o.clear ? null : parseRpm(o.rpm);
      const config = adminConfig(env);
      const account = await withRepository(config, (repo) => repo.setAccountLimit(accountId, rpm));
      if (!account) throw new NotFoundError(`no account ${accountId}`);
      print(!!o.json, accountJson(account), rpm ? `${accountId}: ${rpm} requests/min` : `${accountId}: the limit of plan ${account.plan}`);
    });

  const keys = program.command('keys').description('manage API keys');
  keys
    .command('create')
    .description('create a key; its secret is printed this once')
    .requiredOption('--account <id>', 'owning account id')
    .requiredOption('--name <name>', 'a name for the key (1-128 characters)')
    .requiredOption('--scope <scope>', 'scope: buyer, read-only or write-only (as the policy declares)')
    .option('--expires-at <iso>', 'expiry, ISO 8601 date-time')
    .option('--rpm <n>', "the key's own request limit per minute (meant to be lower than the account's)")
    .option('--json', 'print JSON')
    .action(async (o: { account: string; name: string; scope: string; expiresAt?: string; rpm?: string; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      const name = parseName(o.name);
      const expiresAt = parseExpiry(o.expiresAt);
      const rateLimitRpm = parseRpm(o.rpm);
      const config = adminConfig(env);
      const scopes = loadPolicyFile(policyPath(config)).scopes;
      if (!scopes.includes(o.scope)) throw new UsageError(`--scope: "${o.scope}" is not one of ${scopes.join(', ')}`);
      const created = await withRepository(config, (repo) =>
        repo.createKeyAudited({ accountId, name, scope: o.scope, expiresAt, rateLimitRpm }, { keyId: null, via: 'cli' }, { maxLiveKeys: config.MAX_KEYS_PER_ACCOUNT }),
      );
      if (created.kind === 'limit_reached') throw new ConflictError(`account ${accountId} already has ${created.limit} live keys (MAX_KEYS_PER_ACCOUNT)`);
      const { key, secret } = created;
      print(!!o.json, { ...keyJson(key), key: secret }, `created key ${key.id} (${key.scope})\n\n  ${secret}\n\nThis is the only time the key is shown. Store it now.`);
    });

  keys
    .command('list')
    .description('list an account\'s keys (never their secrets)')
    .requiredOption('--account <id>', 'account id')
    .option('--json', 'print JSON')
    .action(async (o: { account: string; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      const config = adminConfig(env);
      const list = await withRepository(config, async (repo) => {
        if (!(await repo.getAccount(accountId))) throw new NotFoundError(`no account ${accountId}`);
        return repo.listKeys(accountId);
      });
      const human = list.length
        ? list.map((k) => `${k.id}  ${k.prefix}  ${k.scope.padEnd(10)}  ${k.revokedAt ? 'revoked' : k.expiresAt && k.expiresAt <= new Date() ? 'expired' : 'active '}  ${k.name}`).join('\n')
        : 'no keys';
      print(!!o.json, list.map(keyJson), human);
    });

  keys
    .command('revoke')
    .description('revoke a key (revoking twice succeeds)')
    .argument('<key-id>', 'key id (key_...)')
    .option('--json', 'print JSON')
    .action(async (keyId: string, o: { json?: boolean }) => {
      if (!isKeyId(keyId)) throw new UsageError(`"${keyId}" is not a key id (key_...)`);
      const config = adminConfig(env);
      // The audited change first; the revoke path (idempotent) then clears every replica's caches.
      const result = await withRepository(config, async (repo) =>
        (await repo.revokeKeyAudited(keyId, undefined, { keyId: null, via: 'cli' })) ? revokeEverywhere(config, repo, keyId) : null,
      );
      if (!result) throw new NotFoundError(`no key ${keyId}`);
      print(!!o.json, keyJson(result.key), `revoked ${keyId} at ${result.key.revokedAt?.toISOString()}`);
    });

  program
    .command('audit')
    .description('list an account\'s key audit events (created, revoked), newest first')
    .requiredOption('--account <id>', 'account id')
    .option('--limit <n>', 'at most this many events', '100')
    .option('--json', 'print JSON')
    .action(async (o: { account: string; limit: string; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      const limit = Number(o.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError('--limit: a whole number from 1 to 10000');
      const config = adminConfig(env);
      const events = await withRepository(config, async (repo) => {
        if (!(await repo.getAccount(accountId))) throw new NotFoundError(`no account ${accountId}`);
        return repo.listAuditEvents(accountId, limit);
      });
      const json = events.map((e) => ({
        id: e.id,
        occurred_at: e.occurredAt.toISOString(),
        account_id: e.accountId,
        actor_key_id: e.actorKeyId,
        action: e.action,
        target_key_id: e.targetKeyId,
        detail: e.detail,
      }));
      const human = events.length
        ? events.map((e) => `${e.occurredAt.toISOString()}  ${e.action.padEnd(11)}  ${e.targetKeyId}  by ${e.actorKeyId ?? 'operator (cli)'}`).join('\n')
        : 'no events';
      print(!!o.json, json, human);
    });

  program
    .command('check')
    .description('send one Check to a running service and print the decision')
    .requiredOption('--key <key>', 'the API key to present')
    .option('--method <method>', 'HTTP method of the request to judge', 'POST')
    .option('--path <path>', 'request path (query string allowed)', '/v1/chat/completions')
    .option('--target <host:port>', 'gRPC address of the service', '127.0.0.1:9191')
    .addOption(new Option('--header <header>', 'which header carries the key').choices(['authorization', 'x-api-key']).default('authorization'))
    .option('--timeout-ms <ms>', 'deadline for the call', '5000')
    .option('--json', 'print JSON')
    .action(async (o: { key: string; method: string; path: string; target: string; header: string; timeoutMs: string; json?: boolean }) => {
      const timeoutMs = Number(o.timeoutMs);
      if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new UsageError('--timeout-ms: a positive whole number');
      if (!o.path.startsWith('/')) throw new UsageError('--path: must start with /');
      const headers: Record<string, string> = o.header === 'authorization' ? { authorization: `Bearer ${o.key}` } : { 'x-api-key': o.key };
      let outcome;
      try {
        // Loaded only for `check`: `serve` starts without the client code (13-21 ms of start-up).
        const { sendCheck } = await import('./check-client.js');
        outcome = await sendCheck({ target: o.target, method: o.method.toUpperCase(), path: o.path, headers, timeoutMs });
      } catch (err) {
        // grpc-js ends the message with "Resolution note: " even when it has no note.
        throw new CheckFailed(`cannot reach ${o.target}: ${(err as Error).message.split('\n')[0]!.replace(/\.?\s*Resolution note:\s*$/, '')}`);
      }
      const lines = outcome.allowed
        ? [`ALLOW ${outcome.http_status}`, ...Object.entries(outcome.headers).map(([k, v]) => `  ${k}: ${v}`), `  (removes: ${outcome.headers_to_remove.join(', ') || 'nothing'})`]
        : [`DENY ${outcome.http_status}`, ...Object.entries(outcome.headers).map(([k, v]) => `  ${k}: ${v}`), `  ${JSON.stringify(outcome.body)}`];
      print(!!o.json, outcome, lines.join('\n'));
    });

  return program;
}

class CheckFailed extends Error {}

/** Runs the CLI and returns the exit code; errors are one line on stderr. */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const program = buildProgram(env);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not failures; commander already printed its one-line usage error.
      return err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.help' ? EXIT_OK : EXIT_USAGE;
    }
    const [code, message] = classify(err);
    process.stderr.write(`ryvion-authz: ${message}\n`);
    return code;
  }
}

function classify(err: unknown): [number, string] {
  if (err instanceof UsageError) return [EXIT_USAGE, err.message];
  if (err instanceof ConfigError) return [EXIT_USAGE, err.message];
  if (err instanceof PolicyError) return [EXIT_FAILED, `POLICY_FILE: ${err.message}`];
  if (err instanceof StartupError || err instanceof NotFoundError || err instanceof ConflictError || err instanceof CheckFailed) return [EXIT_FAILED, err.message];
  if (err instanceof StoreUnavailableError) return [EXIT_FAILED, `database unreachable (${err.kind})`];
  const code = (err as { code?: unknown }).code;
  // undefined_table: the database exists but was never migrated.
  if (code === '42P01') return [EXIT_FAILED, 'the database has no ryvion-authz tables yet: run `ryvion-authz migrate` first'];
  if (typeof code === 'string' && /^(ECONNREFUSED|ENOTFOUND|ETIMEDOUT|EHOSTUNREACH|28P01|3D000)$/.test(code)) {
    return [EXIT_FAILED, `database unreachable: ${(err as Error).message.split('\n')[0]}`];
  }
  const message = err instanceof Error ? err.message.split('\n')[0] : String(err);
  return [EXIT_FAILED, message ?? 'failed'];
}
