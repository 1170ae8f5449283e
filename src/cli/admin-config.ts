// The configuration of the admin commands (accounts, keys, audit). With DATABASE_URL unset they
// use the running `dev` store in DATA_DIR, so the quick start reaches them; `serve` and `migrate`
// never do (production must not find a store by accident).
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, loadConfig, type Config } from '../config.js';

const DEFAULT_DATA_DIR = '.ryvion-authz';
/** The port in the socket's name (`.s.PGSQL.5432`); the dev store opens no TCP port. */
const SOCKET_PORT = 5432;
/** Settings the dev store provides itself, as `dev` does: a production value must not mix in. */
const DEV_PROVIDED = ['KEY_PEPPER_VERSION', 'KEY_PEPPER_PREVIOUS', 'REDIS_URL', 'REDIS_SENTINELS', 'REDIS_SENTINEL_NAME', 'REDIS_CLUSTER_NODES'];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The socket directory of the dev store's running Postgres, from its postmaster.pid (line 1 the
 * pid, line 5 the socket directory), or undefined when it is not running.
 */
function runningSocketDir(dataDir: string): string | undefined {
  let lines: string[];
  try {
    lines = readFileSync(path.join(dataDir, 'postgres', 'postmaster.pid'), 'utf8').split('\n');
  } catch {
    return undefined;
  }
  const pid = Number(lines[0]);
  const socketDir = lines[4]?.trim();
  if (!Number.isInteger(pid) || pid <= 0 || !socketDir || !alive(pid)) return undefined;
  return existsSync(path.join(socketDir, `.s.PGSQL.${SOCKET_PORT}`)) ? socketDir : undefined;
}

/**
 * Config for an admin command. DATABASE_URL set: the environment, as for `serve`. Unset, with a
 * dev store in DATA_DIR: its socket and pepper, announced by one line through `say`.
 */
export function adminConfig(env: NodeJS.ProcessEnv, say: (line: string) => void = (line) => process.stderr.write(`${line}\n`)): Config {
  if (env.DATABASE_URL?.trim()) return loadConfig(env, ['DATABASE_URL', 'KEY_PEPPER']);
  const dataDir = path.resolve(env.DATA_DIR?.trim() || DEFAULT_DATA_DIR);
  if (!existsSync(path.join(dataDir, 'postgres', 'PG_VERSION'))) return loadConfig(env, ['DATABASE_URL', 'KEY_PEPPER']);

  const socketDir = runningSocketDir(dataDir);
  if (!socketDir) {
    throw new ConfigError(`DATABASE_URL: not set, and the dev store in ${dataDir} is not running: run \`npm start\` first (or set DATABASE_URL)`);
  }
  let pepper: string;
  try {
    pepper = readFileSync(path.join(dataDir, 'pepper'), 'utf8').trim();
  } catch (err) {
    throw new ConfigError(`DATA_DIR: cannot read the dev store's pepper in ${dataDir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const devEnv: NodeJS.ProcessEnv = { ...env };
  for (const name of DEV_PROVIDED) delete devEnv[name];
  const config = loadConfig({
    ...devEnv,
    DATABASE_URL: `postgres://postgres@localhost:${SOCKET_PORT}/postgres?host=${encodeURIComponent(socketDir)}`,
    KEY_PEPPER: pepper,
  });
  say(`ryvion-authz: DATABASE_URL is unset: using the running dev store in ${dataDir}`);
  return config;
}
