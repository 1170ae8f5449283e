// The bench's own stores: a database ryvion_bench_<random> on the local Postgres (migrated with
// the service's own migrations, dropped at the end) and a Redis key prefix of its own (only its
// keys are deleted at the end). Nothing else on either server is touched.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Redis } from 'ioredis';
import { migrate } from '../../src/store/postgres.js';
import { displayPrefix, generateKey } from '../../src/keys/format.js';
import type { KeyHasher } from '../../src/keys/hash.js';
import { newAccountId, newKeyId } from '../../src/keys/ids.js';

export interface BenchDatabase {
  name: string;
  url: string;
  pool: pg.Pool;
  /** Transactions committed or rolled back in this database so far (pg_stat_database). */
  xacts(): Promise<number>;
  drop(): Promise<void>;
}

export async function createBenchDatabase(adminUrl: string): Promise<BenchDatabase> {
  const name = `ryvion_bench_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const u = new URL(adminUrl);
  u.pathname = `/${name}`;
  const url = u.toString();
  await migrate(url);
  const pool = new pg.Pool({ connectionString: url, max: 4, application_name: 'ryvion-bench' });
  const stats = new pg.Pool({ connectionString: adminUrl, max: 1, application_name: 'ryvion-bench-stats' });
  return {
    name,
    url,
    pool,
    // Read from the admin database, so the reading itself is not counted in ours.
    xacts: async () => {
      // Statistics reach the shared view within about a second of a transaction's end.
      await stats.query('SELECT pg_stat_clear_snapshot()');
      const r = await stats.query<{ n: string }>('SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1', [name]);
      return Number(r.rows[0]?.n ?? 0);
    },
    drop: async () => {
      await pool.end().catch(() => undefined);
      await stats.end().catch(() => undefined);
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

export interface BulkKeys {
  keys: string[];
  accounts: number;
}

/**
 * `count` valid keys spread over `accounts` accounts, inserted with one statement per batch
 * (the repository's audited path would take one transaction per key). Every account and key
 * carries its own huge limit, so rate limiting runs its full path without ever refusing.
 */
export async function insertBulkKeys(pool: pg.Pool, hasher: KeyHasher, opts: { count: number; accounts: number; rpm: number; scope: string }): Promise<BulkKeys> {
  const accountIds = Array.from({ length: opts.accounts }, () => newAccountId());
  await pool.query(
    `INSERT INTO accounts (id, email, plan, rate_limit_rpm)
       SELECT id, 'bench-' || id || '@example.com', 'free', $2 FROM unnest($1::text[]) AS u(id)`,
    [accountIds, opts.rpm],
  );
  const keys: string[] = [];
  const batch = 10_000;
  for (let start = 0; start < opts.count; start += batch) {
    const n = Math.min(batch, opts.count - start);
    const ids: string[] = [];
    const owners: string[] = [];
    const hashes: Buffer[] = [];
    const versions: number[] = [];
    const prefixes: string[] = [];
    for (let i = 0; i < n; i++) {
      const key = generateKey('live');
      const { hash, pepperVersion } = hasher.hashForStorage(key);
      keys.push(key);
      ids.push(newKeyId());
      owners.push(accountIds[(start + i) % accountIds.length]!);
      hashes.push(hash);
      versions.push(pepperVersion);
      prefixes.push(displayPrefix(key));
    }
    await pool.query(
      `INSERT INTO api_keys (id, account_id, name, scope, key_hash, pepper_version, display_prefix, rate_limit_rpm)
         SELECT id, account_id, 'bench', $6, key_hash, pepper_version, display_prefix, $7
           FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::text[]) AS u(id, account_id, key_hash, pepper_version, display_prefix)`,
      [ids, owners, hashes, versions, prefixes, opts.scope, opts.rpm],
    );
  }
  return { keys, accounts: opts.accounts };
}

/** Well-formed keys (right shape, right checksum) that no account holds. */
export function unknownKeys(count: number): string[] {
  return Array.from({ length: count }, () => generateKey('live'));
}

export interface BenchRedis {
  prefix: string;
  client: Redis;
  /**
   * Commands the Redis server has executed so far, all clients together (INFO commandstats):
   * the service's real command count while nothing else uses this Redis.
   */
  commands(): Promise<number>;
  /** Deletes every key under the bench's prefix (and nothing else). */
  clear(): Promise<number>;
  close(): Promise<void>;
}

export async function benchRedis(url: string): Promise<BenchRedis> {
  const prefix = `ryvion-bench:${randomBytes(4).toString('hex')}:`;
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await client.connect();
  const clear = async (): Promise<number> => {
    let cursor = '0';
    let deleted = 0;
    do {
      const [next, found] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (found.length > 0) deleted += await client.unlink(...found);
    } while (cursor !== '0');
    return deleted;
  };
  const commands = async (): Promise<number> => {
    const info = await client.info('commandstats');
    let total = 0;
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (m[1] !== 'info') total += Number(m[2]);
    return total;
  };
  return {
    prefix,
    client,
    commands,
    clear,
    close: async () => {
      await clear().catch(() => undefined);
      client.disconnect();
    },
  };
}
