// Postgres connection pool and schema migrations.
import { readdirSync } from 'node:fs';
import pg from 'pg';
import { packagePath } from '../paths.js';

export const MIGRATIONS_DIR = packagePath('migrations');
const MIGRATIONS_TABLE = 'pgmigrations';

export interface PoolOptions {
  connectionString: string;
  max: number;
  /** Applies to connecting and to each query: look-ups must fit inside Envoy's 200 ms budget. */
  timeoutMs: number;
  applicationName?: string;
}

export function createPool(opts: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: opts.connectionString,
    max: opts.max,
    // Look-ups on the Check path carry their own deadline (STORE_TIMEOUT_MS + a margin, in the
    // resolver), so a slow new connection can be waited for here: on a loaded machine Postgres
    // took seconds to accept one, and signals, writes and start-up must not fail for that.
    connectionTimeoutMillis: Math.max(opts.timeoutMs, 5000),
    query_timeout: opts.timeoutMs,
    idleTimeoutMillis: 30_000,
    application_name: opts.applicationName ?? 'ryvion-authz',
  });
  // An idle client that loses its server emits 'error' on the pool; without a
  // listener Node would crash. The next query reports the outage instead.
  pool.on('error', () => undefined);
  return pool;
}

/** Migration names the code needs, in order (file names without extension). */
export function knownMigrations(): string[] {
  return readdirSync(MIGRATIONS_DIR)
    .filter((f) => f.endsWith('.sql'))
    .map((f) => f.slice(0, -'.sql'.length))
    .sort();
}

/** Applies pending migrations under an advisory lock, so concurrent starts wait for one another. */
export async function migrate(databaseUrl: string, log: (msg: string) => void = () => undefined): Promise<string[]> {
  // Loaded here, not at start-up: node-pg-migrate adds about 0.1 s to every start of `serve` (bench/README.md).
  // node-pg-migrate creates a jiti loader (for JS/TS migrations) whose file cache goes to
  // node_modules/.cache, which makes every later `npx` reread node_modules. Ours are SQL files.
  process.env.JITI_FS_CACHE ??= 'false';
  const { runner } = await import('node-pg-migrate');
  const applied = await runner({
    databaseUrl,
    dir: MIGRATIONS_DIR,
    direction: 'up',
    migrationsTable: MIGRATIONS_TABLE,
    advisoryLockMode: 'wait',
    singleTransaction: true,
    log,
  });
  return applied.map((m) => m.name);
}

export type SchemaState = { ok: true; newer: string[] } | { ok: false; missing: string[] };

/**
 * Compares the database's applied migrations with the code's. A newer schema
 * is fine (old and new pods overlap during a rollout); an older one is not.
 */
export async function schemaState(pool: pg.Pool): Promise<SchemaState> {
  const exists = await pool.query<{ t: string | null }>(`SELECT to_regclass($1) AS t`, [MIGRATIONS_TABLE]);
  const applied = exists.rows[0]?.t
    ? new Set((await pool.query<{ name: string }>(`SELECT name FROM ${MIGRATIONS_TABLE}`)).rows.map((r) => r.name))
    : new Set<string>();
  const known = knownMigrations();
  const missing = known.filter((m) => !applied.has(m));
  if (missing.length > 0) return { ok: false, missing };
  const knownSet = new Set(known);
  return { ok: true, newer: [...applied].filter((m) => !knownSet.has(m)) };
}
