// The ryvion-authz command line: serve, migrate, accounts, keys and check.
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { ConfigError, loadConfig, type Config } from '../config.js';
import { KeyRepository, NotFoundError, ConflictError, type Account } from '../keys/repository.js';
import { auditView, connectKeyService, keyNameProblem, keyView, REVOKED_CACHE_NOT_UPDATED, type KeyService } from '../keys/management.js';
import { effectiveConstraints } from '../keys/constraints.js';
import { isAccountId, isKeyId } from '../keys/ids.js';
import { tokenLimitsFrom, tokenLimitsInputSchema, type TokenLimits } from '../keys/token-limits.js';
import { checkKeyMetadata } from '../keys/metadata.js';
import { createLogger } from '../observability/logger.js';
import { loadPolicyFile, PolicyError } from '../policy/policy.js';
import { applyHeapGrowingPercent } from '../heap.js';
import { keyHasherFrom, policyPath, startService, StartupError } from '../service.js';
import { createPool, migrate } from '../store/postgres.js';
import { systemClock } from '../time/clock.js';
import { StoreUnavailableError, WriteOutcomeUnknownError } from '../store/errors.js';
import { installSignalHandlers } from '../signals.js';
import { adminConfig } from './admin-config.js';
import { packagePath } from '../paths.js';

/** Bad or missing arguments: exit 2, nothing written. */
class UsageError extends Error {}

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;

function print(json: boolean, value: unknown, human: string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human}\n`);
}

async function withRepository<T>(config: Config, fn: (repo: KeyRepository) => Promise<T>): Promise<T> {
  const pool = createPool({ connectionString: config.DATABASE_URL!, max: 2, timeoutMs: config.MANAGEMENT_WRITE_TIMEOUT_MS, applicationName: 'ryvion-authz-cli' });
  try {
    return await fn(new KeyRepository(pool, keyHasherFrom(config), config.KEY_ENVIRONMENT, config.MANAGEMENT_WRITE_TIMEOUT_MS));
  } finally {
    await pool.end().catch(() => undefined);
  }
}

/** The key service the HTTP API uses, connected for one command (with the invalidation channels only to revoke). */
async function withKeyService<T>(config: Config, fn: (keys: KeyService) => Promise<T>, revocations = false): Promise<T> {
  const { keys, close } = await connectKeyService(config, { clock: systemClock, logger: createLogger('silent'), revocations });
  try {
    return await fn(keys);
  } finally {
    await close();
  }
}

function parseRpm(value: string | undefined): number | null {
  if (value === undefined) return null;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new UsageError('--rpm: a whole number of requests per minute, 1 or more');
  return n;
}

function accountJson(a: Account): Record<string, unknown> {
  return {
    id: a.id, email: a.email, plan: a.plan, rate_limit_rpm: a.rateLimitRpm,
    tokens_per_minute: a.tokenLimits?.tokens_per_minute ?? null, budget: a.tokenLimits?.budget ?? null, allowed_models: a.tokenLimits?.allowed_models ?? null,
    created_at: a.createdAt.toISOString(),
  };
}

interface TokenOptions {
  tpm?: string;
  budget?: string;
  models?: string;
}

/** --tpm N, --budget AMOUNT/PERIOD (micro-units per day|week|month), --models a,b: checked as the key API checks them. */
function parseTokenOptions(o: TokenOptions): TokenLimits | null {
  const input: Record<string, unknown> = {};
  if (o.tpm !== undefined) {
    if (!/^\d+$/.test(o.tpm)) throw new UsageError('--tpm: a whole number of tokens per minute, 1 or more');
    input.tokens_per_minute = Number(o.tpm);
  }
  if (o.budget !== undefined) {
    const m = /^(\d+)\/(day|week|month)$/.exec(o.budget);
    if (!m) throw new UsageError('--budget: AMOUNT/PERIOD, the amount in micro-units of the policy\'s currency, e.g. 20000000/month');
    input.budget = { amount: Number(m[1]), period: m[2] };
  }
  if (o.models !== undefined) input.allowed_models = o.models.split(',').map((x) => x.trim()).filter((x) => x !== '');
  const parsed = tokenLimitsInputSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const flag = { tokens_per_minute: '--tpm', budget: '--budget', allowed_models: '--models' }[String(issue.path[0]) as 'budget'] ?? '--tpm';
    throw new UsageError(`${flag}: ${issue.message}`);
  }
  return tokenLimitsFrom(parsed.data);
}

const hasTokenOptions = (o: TokenOptions): boolean => o.tpm !== undefined || o.budget !== undefined || o.models !== undefined;

function requireAccountId(id: string): string {
  if (!isAccountId(id)) throw new UsageError(`--account: "${id}" is not an account id (acct_...)`);
  return id;
}

const OVERLAP_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** `--overlap`: whole seconds, or a number with s, m, h or d; at most `maxSeconds`. */
function parseOverlap(value: string, maxSeconds: number): number {
  const m = /^(\d{1,9})([smhd]?)$/.exec(value.trim());
  if (!m) throw new UsageError(`--overlap: "${value}" is not a duration (e.g. 0, 90s, 30m, 1h, 7d)`);
  const seconds = Number(m[1]) * OVERLAP_UNITS[m[2] || 's']!;
  if (seconds > maxSeconds) throw new UsageError(`--overlap: at most ${maxSeconds} seconds (KEY_ROLL_MAX_OVERLAP_SECONDS)`);
  return seconds;
}

function parseName(name: string): string {
  const problem = keyNameProblem(name);
  if (problem) throw new UsageError(`--name: ${problem}`);
  return name.trim();
}

function parseExpiry(value: string | undefined): Date | null {
  if (value === undefined) return null;
  const d = new Date(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(d.getTime())) throw new UsageError('--expires-at: not an ISO 8601 date-time');
  if (d.getTime() <= Date.now()) throw new UsageError('--expires-at: must be in the future');
  return d;
}

/**
 * `--allowed-cidrs`: comma-separated addresses or CIDR blocks, checked and made canonical by the
 * rule the key API applies (keys/constraints.ts), for a caller that is limited to nothing.
 */
function parseAllowedCidrs(value: string | undefined): string[] | null {
  if (value === undefined) return null;
  const requested = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const outcome = effectiveConstraints({ expiresAt: null, keyRpm: null, allowedCidrs: null }, { allowedCidrs: requested }, Date.now());
  if (!outcome.ok) throw new UsageError(`--allowed-cidrs: ${outcome.message.replace(/^Invalid value for '[^']+': /, '')}`);
  return outcome.allowedCidrs;
}

/** `--metadata`: a JSON object of at most 1 KiB, the key API's rule (keys/metadata.ts). */
function parseMetadata(value: string | undefined): Record<string, unknown> | null {
  if (value === undefined) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new UsageError('--metadata: not valid JSON; give a JSON object, e.g. \'{"team": "search"}\'');
  }
  const checked = checkKeyMetadata(parsed);
  if (!checked.ok) throw new UsageError(`--metadata: ${checked.problem}`);
  return checked.value;
}

function packageVersion(): string {
  return (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version;
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
      applyHeapGrowingPercent(config.HEAP_GROWING_PERCENT);
      if (!config.REDIS_URL && !config.REDIS_SENTINELS && !config.REDIS_CLUSTER_NODES) {
        logger.warn('no Redis (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES): caches and limits are local to this replica; run one replica only');
      }
      const service = await startService(config, logger);
      // Handlers first: whoever reads "ready" may send SIGTERM at once, and it must drain, not kill.
      installSignalHandlers(logger, () => service.stop());
      logger.info({ grpc_port: service.grpcPort, http_port: service.httpPort, ops_port: service.opsPort, startup_ms: service.startupMs }, 'ryvion-authz ready');
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

  accounts
    .command('set-tokens')
    .description("set or clear an account's own token limits: tokens per minute, spend budget, allowed models")
    .requiredOption('--account <id>', 'account id')
    .option('--tpm <n>', 'tokens per minute')
    .option('--budget <amount/period>', "spend budget: micro-units of the policy's currency per day, week or month (e.g. 20000000/month)")
    .option('--models <list>', 'allowed models, comma-separated')
    .option('--clear', "go back to the plan's token limits")
    .option('--json', 'print JSON')
    .action(async (o: TokenOptions & { account: string; clear?: boolean; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      if (hasTokenOptions(o) === !!o.clear) throw new UsageError('give --tpm, --budget or --models, or --clear');
      const limits = o.clear ? null : parseTokenOptions(o);
      const config = adminConfig(env);
      const account = await withRepository(config, async (repo) => ((await repo.setTokenLimits('account', accountId, limits)) ? repo.getAccount(accountId) : null));
      if (!account) throw new NotFoundError(`no account ${accountId}`);
      print(!!o.json, accountJson(account), `${accountId}: ${limits ? JSON.stringify(limits) : `the token limits of plan ${account.plan}`}`);
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
    .option('--allowed-cidrs <list>', 'comma-separated IP addresses or CIDR blocks the key may be used from (IPv4 and IPv6, at most 64); default: anywhere')
    .option('--metadata <json>', 'a JSON object of at most 1 KiB stored with the key, e.g. \'{"team": "search"}\'')
    .option('--tpm <n>', "the key's own tokens per minute")
    .option('--budget <amount/period>', "the key's own spend budget: micro-units of the policy's currency per day, week or month (e.g. 20000000/month)")
    .option('--models <list>', 'the models the key may use, comma-separated')
    .option('--json', 'print JSON')
    .action(async (o: TokenOptions & { account: string; name: string; scope: string; expiresAt?: string; rpm?: string; allowedCidrs?: string; metadata?: string; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      const name = parseName(o.name);
      const expiresAt = parseExpiry(o.expiresAt);
      const rateLimitRpm = parseRpm(o.rpm);
      const allowedCidrs = parseAllowedCidrs(o.allowedCidrs);
      const metadata = parseMetadata(o.metadata);
      const tokenLimits = parseTokenOptions(o);
      const config = adminConfig(env);
      const scopes = loadPolicyFile(policyPath(config)).scopes;
      if (!scopes.includes(o.scope)) throw new UsageError(`--scope: "${o.scope}" is not one of ${scopes.join(', ')}`);
      const created = await withKeyService(config, (keys) =>
        keys.createKey({ accountId, name, scope: o.scope, expiresAt, rateLimitRpm, allowedCidrs, metadata, tokenLimits }, { keyId: null, via: 'cli' }, { maxLiveKeys: config.MAX_KEYS_PER_ACCOUNT }),
      );
      if (created.kind === 'limit_reached') throw new ConflictError(`account ${accountId} already has ${created.limit} live keys (MAX_KEYS_PER_ACCOUNT)`);
      const { key, secret } = created;
      print(!!o.json, { ...keyView(key), key: secret }, `created key ${key.id} (${key.scope})\n\n  ${secret}\n\nThis is the only time the key is shown. Store it now.`);
    });

  keys
    .command('list')
    .description('list an account\'s keys (never their secrets)')
    .requiredOption('--account <id>', 'account id')
    .option('--json', 'print JSON')
    .action(async (o: { account: string; json?: boolean }) => {
      const accountId = requireAccountId(o.account);
      const config = adminConfig(env);
      const list = await withKeyService(config, async (keys) => {
        if (!(await keys.getAccount(accountId))) throw new NotFoundError(`no account ${accountId}`);
        return keys.listKeys(accountId);
      });
      const human = list.length
        ? list.map((k) => `${k.id}  ${k.prefix}  ${k.scope.padEnd(10)}  ${k.revokedAt ? 'revoked' : k.expiresAt && k.expiresAt <= new Date() ? 'expired' : 'active '}  ${k.name}${k.successorOf ? `  (successor of ${k.successorOf})` : ''}  last used ${k.lastUsedAt?.toISOString() ?? 'never'}`).join('\n')
        : 'no keys';
      print(!!o.json, list.map(keyView), human);
    });

  keys
    .command('set-tokens')
    .description("set or clear a key's own token limits (the operator's change: not bound by another key's limits)")
    .argument('<key-id>', 'key id (key_...)')
    .option('--tpm <n>', 'tokens per minute')
    .option('--budget <amount/period>', "spend budget: micro-units of the policy's currency per day, week or month (e.g. 20000000/month)")
    .option('--models <list>', 'allowed models, comma-separated')
    .option('--clear', "go back to the plan's token limits")
    .option('--json', 'print JSON')
    .action(async (keyId: string, o: TokenOptions & { clear?: boolean; json?: boolean }) => {
      if (!isKeyId(keyId)) throw new UsageError(`"${keyId}" is not a key id (key_...)`);
      if (hasTokenOptions(o) === !!o.clear) throw new UsageError('give --tpm, --budget or --models, or --clear');
      const limits = o.clear ? null : parseTokenOptions(o);
      const config = adminConfig(env);
      const key = await withRepository(config, async (repo) => ((await repo.setTokenLimits('key', keyId, limits)) ? repo.getKey(keyId) : null));
      if (!key) throw new NotFoundError(`no key ${keyId}`);
      print(!!o.json, keyView(key), `${keyId}: ${limits ? JSON.stringify(limits) : "the plan's token limits"} (replicas apply it as their cached entries expire)`);
    });

  keys
    .command('revoke')
    .description('revoke a key (revoking twice succeeds)')
    .argument('<key-id>', 'key id (key_...)')
    .option('--json', 'print JSON')
    .action(async (keyId: string, o: { json?: boolean }) => {
      if (!isKeyId(keyId)) throw new UsageError(`"${keyId}" is not a key id (key_...)`);
      const config = adminConfig(env);
      const result = await withKeyService(config, (keys) => keys.revoke(keyId, undefined, { keyId: null, via: 'cli' }), true);
      if (!result) throw new NotFoundError(`no key ${keyId}`);
      print(!!o.json, { ...keyView(result.key), cache: result.cache }, `revoked ${keyId} at ${result.key.revokedAt?.toISOString()}`);
      // Revoked, but not everything could be done: say what holds, and fail.
      if (result.cache === 'not_updated') throw new RevokeIncomplete(REVOKED_CACHE_NOT_UPDATED);
    });

  keys
    .command('roll')
    .description('roll a key: a successor with the same name, scope and limits (its secret printed this once); the old key keeps working for the overlap')
    .argument('<key-id>', 'key id (key_...)')
    .requiredOption('--overlap <duration>', 'how long the old key keeps working: 0 (stops now), or e.g. 90s, 30m, 1h, 7d')
    .option('--json', 'print JSON')
    .action(async (keyId: string, o: { overlap: string; json?: boolean }) => {
      if (!isKeyId(keyId)) throw new UsageError(`"${keyId}" is not a key id (key_...)`);
      const config = adminConfig(env);
      const overlapSeconds = parseOverlap(o.overlap, config.KEY_ROLL_MAX_OVERLAP_SECONDS);
      const result = await withKeyService(config, (keys) => keys.roll(keyId, undefined, overlapSeconds * 1000, { keyId: null, via: 'cli' }), true);
      if (!result) throw new NotFoundError(`no key ${keyId}`);
      if (result.kind === 'not_live') throw new ConflictError(`key ${keyId} is revoked or expired; there is nothing to roll`);
      if (result.kind === 'already_rolled') throw new ConflictError(`key ${keyId} was already rolled; roll its successor ${result.successorId} instead`);
      const { successor, secret, old } = result;
      print(
        !!o.json,
        { ...keyView(successor), key: secret, previous_key: keyView(old), cache: result.cache },
        `created key ${successor.id} (${successor.scope}), successor of ${keyId}\n\n  ${secret}\n\nThis is the only time the key is shown. Store it now.\n${keyId} stops working at ${old.expiresAt?.toISOString()}.`,
      );
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
      const events = await withKeyService(config, async (keys) => {
        if (!(await keys.getAccount(accountId))) throw new NotFoundError(`no account ${accountId}`);
        return keys.audit(accountId, limit);
      });
      const json = events.map(auditView);
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
/** The revoke committed, but part of its cache work failed. */
class RevokeIncomplete extends Error {}

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
  if (err instanceof RevokeIncomplete) return [EXIT_FAILED, err.message];
  if (err instanceof WriteOutcomeUnknownError) {
    return [EXIT_FAILED, 'the database did not confirm the write in time: it may or may not have been made; check with `keys list` before trying again (revoking again is safe)'];
  }
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
