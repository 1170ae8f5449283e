// Accounts and keys in Postgres, the source of truth. Only key hashes are stored.
import type pg from 'pg';
import { asPostgresUnavailable } from '../store/errors.js';
import { displayPrefix, generateKey, type KeyEnvironment } from './format.js';
import type { KeyHash, KeyHasher } from './hash.js';
import { newAccountId, newKeyId } from './ids.js';

/** What a decision needs to know about a key. */
export interface KeyRecord {
  id: string;
  accountId: string;
  name: string;
  scope: string;
  plan: string;
  expiresAt: Date | null;
  revokedAt: Date | null;
  /** Bumped on revocation; caches refuse to replace a higher version with a lower one. */
  version: number;
}

export interface Account {
  id: string;
  email: string;
  plan: string;
  createdAt: Date;
}

/** A key as listings show it: never the secret, never the hash. */
export interface KeyInfo {
  id: string;
  accountId: string;
  name: string;
  scope: string;
  prefix: string;
  createdAt: Date;
  expiresAt: Date | null;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

export class NotFoundError extends Error {
  override name = 'NotFoundError';
}
export class ConflictError extends Error {
  override name = 'ConflictError';
}

/** Narrow read interface the decision path depends on (tiers and tests implement it too). */
export interface KeyLookup {
  findByHash(candidates: readonly KeyHash[]): Promise<KeyRecord | null>;
}

interface KeyRow {
  id: string;
  account_id: string;
  name: string;
  scope: string;
  plan: string;
  expires_at: Date | null;
  revoked_at: Date | null;
  version: string;
}

interface KeyInfoRow {
  id: string;
  account_id: string;
  name: string;
  scope: string;
  display_prefix: string;
  created_at: Date;
  expires_at: Date | null;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

const KEY_INFO_COLUMNS = 'id, account_id, name, scope, display_prefix, created_at, expires_at, last_used_at, revoked_at';

const toKeyInfo = (r: KeyInfoRow): KeyInfo => ({
  id: r.id,
  accountId: r.account_id,
  name: r.name,
  scope: r.scope,
  prefix: r.display_prefix,
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  lastUsedAt: r.last_used_at,
  revokedAt: r.revoked_at,
});

export class KeyRepository implements KeyLookup {
  constructor(
    private readonly pool: pg.Pool,
    private readonly hasher: KeyHasher,
    private readonly environment: KeyEnvironment,
  ) {}

  async findByHash(candidates: readonly KeyHash[]): Promise<KeyRecord | null> {
    const rows = await this.run<KeyRow>(
      `SELECT k.id, k.account_id, k.name, k.scope, a.plan, k.expires_at, k.revoked_at, k.version
         FROM api_keys k JOIN accounts a ON a.id = k.account_id
        WHERE k.key_hash = ANY($1::bytea[])`,
      [candidates.map((c) => c.hash)],
    );
    const r = rows[0];
    if (!r) return null;
    return {
      id: r.id,
      accountId: r.account_id,
      name: r.name,
      scope: r.scope,
      plan: r.plan,
      expiresAt: r.expires_at,
      revokedAt: r.revoked_at,
      version: Number(r.version),
    };
  }

  async createAccount(email: string, plan: string): Promise<Account> {
    try {
      const rows = await this.run<{ id: string; email: string; plan: string; created_at: Date }>(
        `INSERT INTO accounts (id, email, plan) VALUES ($1, $2, $3) RETURNING id, email, plan, created_at`,
        [newAccountId(), email, plan],
      );
      const r = rows[0]!;
      return { id: r.id, email: r.email, plan: r.plan, createdAt: r.created_at };
    } catch (err) {
      if ((err as { code?: string }).code === '23505') throw new ConflictError(`an account with email ${email} already exists`);
      throw err;
    }
  }

  async getAccount(id: string): Promise<Account | null> {
    const rows = await this.run<{ id: string; email: string; plan: string; created_at: Date }>(
      `SELECT id, email, plan, created_at FROM accounts WHERE id = $1`,
      [id],
    );
    const r = rows[0];
    return r ? { id: r.id, email: r.email, plan: r.plan, createdAt: r.created_at } : null;
  }

  /** Creates a key and returns its secret: the only time the secret exists outside the caller. */
  async createKey(input: { accountId: string; name: string; scope: string; expiresAt: Date | null }): Promise<{ key: KeyInfo; secret: string }> {
    const secret = generateKey(this.environment);
    const { hash, pepperVersion } = this.hasher.hashForStorage(secret);
    try {
      const rows = await this.run<KeyInfoRow>(
        `INSERT INTO api_keys (id, account_id, name, scope, key_hash, pepper_version, display_prefix, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ${KEY_INFO_COLUMNS}`,
        [newKeyId(), input.accountId, input.name, input.scope, hash, pepperVersion, displayPrefix(secret), input.expiresAt],
      );
      return { key: toKeyInfo(rows[0]!), secret };
    } catch (err) {
      if ((err as { code?: string }).code === '23503') throw new NotFoundError(`no account ${input.accountId}`);
      throw err;
    }
  }

  async listKeys(accountId: string): Promise<KeyInfo[]> {
    const rows = await this.run<KeyInfoRow>(
      `SELECT ${KEY_INFO_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at, id`,
      [accountId],
    );
    return rows.map(toKeyInfo);
  }

  /**
   * Marks a key revoked. Idempotent: revoking again keeps the first time and
   * version, and still returns the key, so a repeated call can redo whatever
   * cache work a crash interrupted. `accountId` restricts it to one owner.
   */
  async revokeKey(keyId: string, accountId?: string): Promise<{ key: KeyInfo; version: number } | null> {
    const rows = await this.run<KeyInfoRow & { version: string }>(
      `UPDATE api_keys
          SET revoked_at = COALESCE(revoked_at, now()),
              version = version + CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END
        WHERE id = $1 AND ($2::text IS NULL OR account_id = $2)
        RETURNING ${KEY_INFO_COLUMNS}, version`,
      [keyId, accountId ?? null],
    );
    const r = rows[0];
    return r ? { key: toKeyInfo(r), version: Number(r.version) } : null;
  }

  private async run<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<R[]> {
    try {
      return (await this.pool.query<R>(sql, params)).rows;
    } catch (err) {
      throw asPostgresUnavailable(err) ?? err;
    }
  }
}
