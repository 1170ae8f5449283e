// Accounts and keys in Postgres, the source of truth. Only key hashes are stored.
import type pg from 'pg';
import { asPostgresUnavailable, WriteOutcomeUnknownError } from '../store/errors.js';
import { auditDetail, type AuditAction, type AuditActor, type AuditEvent } from './audit.js';
import { displayPrefix, generateKey, type KeyEnvironment } from './format.js';
import type { KeyHash, KeyHasher } from './hash.js';
import { newAccountId, newKeyId } from './ids.js';
import { recordStrings } from './intern.js';
import type { Invalidation } from './invalidation/messages.js';
import { readTokenLimits, type TokenLimits } from './token-limits.js';

/**
 * What a decision needs to know about a key. It is also the key's `Identity` (check/decision.ts),
 * which names two of its fields differently (`keyId`, `tokenLimits`): they are held here too, so
 * that no second object per key is kept (bench/README.md, memory). Made by `keyRecord`, frozen:
 * a new version of a key is a new record.
 */
export interface KeyRecord {
  id: string;
  /** `id` again, under the Identity's name. */
  readonly keyId: string;
  /** `keyTokens ?? null` again, under the Identity's name. */
  readonly tokenLimits: TokenLimits | null;
  /** The stored HMAC (base64url): the cache tiers' id for this key, and what revocations name. */
  hash: string;
  accountId: string;
  name: string;
  scope: string;
  plan: string;
  expiresAt: Date | null;
  revokedAt: Date | null;
  /** Bumped on revocation; caches refuse to replace a higher version with a lower one. */
  version: number;
  /** Request-per-minute overrides of the plan's limits (null: the plan's). */
  accountRpm: number | null;
  keyRpm: number | null;
  /** Canonical CIDR blocks the key may be used from; absent or null: any address. */
  allowedCidrs?: readonly string[] | null;
  /** The key's metadata object; absent or null: none. */
  metadata?: Readonly<Record<string, unknown>> | null;
  /** The account's and the key's own token limits (keys/token-limits.ts); absent or null: the plan's. */
  accountTokens?: TokenLimits | null;
  keyTokens?: TokenLimits | null;
}

/** A key record's own fields: what `keyRecord` is given. */
export type KeyRecordFields = Omit<KeyRecord, 'keyId' | 'tokenLimits'>;

// A record's class: the Identity's two names for fields it holds anyway are read through the
// prototype, where an own field each was 16 bytes a key held in memory (1.6 MB at 100 000 keys).
// Every field is set in the constructor, so that V8 sizes the object for all of them at once.
class HeldKeyRecord implements KeyRecord {
  readonly id: string;
  readonly hash: string;
  readonly accountId: string;
  readonly name: string;
  readonly scope: string;
  readonly plan: string;
  readonly expiresAt: Date | null;
  readonly revokedAt: Date | null;
  readonly version: number;
  readonly accountRpm: number | null;
  readonly keyRpm: number | null;
  readonly allowedCidrs: readonly string[] | null;
  readonly metadata: Readonly<Record<string, unknown>> | null;
  readonly accountTokens: TokenLimits | null;
  readonly keyTokens: TokenLimits | null;

  constructor(f: KeyRecordFields) {
    this.id = f.id;
    this.hash = f.hash;
    this.accountId = f.accountId;
    this.name = f.name;
    this.scope = f.scope;
    this.plan = f.plan;
    this.expiresAt = f.expiresAt;
    this.revokedAt = f.revokedAt;
    this.version = f.version;
    this.accountRpm = f.accountRpm;
    this.keyRpm = f.keyRpm;
    this.allowedCidrs = f.allowedCidrs ?? null;
    this.metadata = f.metadata ?? null;
    this.accountTokens = f.accountTokens ?? null;
    this.keyTokens = f.keyTokens ?? null;
  }

  get keyId(): string {
    return this.id;
  }

  get tokenLimits(): TokenLimits | null {
    return this.keyTokens;
  }
}

/** The frozen record of `f`, every field present (one object shape for every record). */
export function keyRecord(f: KeyRecordFields): KeyRecord {
  return Object.freeze(new HeldKeyRecord(f));
}

export interface Account {
  id: string;
  email: string;
  plan: string;
  /** Requests per minute that replace the plan's account limit; null: the plan's. */
  rateLimitRpm: number | null;
  /** Its own token limits; null: the plan's. */
  tokenLimits: TokenLimits | null;
  createdAt: Date;
}

interface AccountRow {
  id: string;
  email: string;
  plan: string;
  rate_limit_rpm: number | null;
  token_limits: unknown;
  created_at: Date;
}

const ACCOUNT_COLUMNS = 'id, email, plan, rate_limit_rpm, token_limits, created_at';
const toAccount = (r: AccountRow): Account => ({
  id: r.id, email: r.email, plan: r.plan, rateLimitRpm: r.rate_limit_rpm, tokenLimits: readTokenLimits(r.token_limits), createdAt: r.created_at,
});

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
  /** The key this one was rolled from; null for a key made by create. */
  successorOf: string | null;
  /** Its own requests-per-minute limit; null: the plan's. */
  rateLimitRpm: number | null;
  /** Canonical CIDR blocks it may be used from; null: any address. */
  allowedCidrs: string[] | null;
  metadata: Record<string, unknown> | null;
  /** Its own token limits; null: the plan's. */
  tokenLimits: TokenLimits | null;
}

/** What a roll did; `record` is the old key as it now is (shorter expiry, higher version). */
export type RollResult =
  | { kind: 'rolled'; old: KeyInfo; record: KeyRecord; successor: KeyInfo; secret: string }
  /** The key is revoked or already expired: there is nothing to rotate away from. */
  | { kind: 'not_live'; key: KeyInfo }
  /** The key was rolled before; its successor is the one to roll. */
  | { kind: 'already_rolled'; key: KeyInfo; successorId: string };

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
  key_hash: Buffer;
  account_id: string;
  name: string;
  scope: string;
  plan: string;
  expires_at: Date | null;
  revoked_at: Date | null;
  version: string;
  account_rpm: number | null;
  key_rpm: number | null;
  allowed_cidrs: string[] | null;
  metadata: Record<string, unknown> | null;
  account_tokens: unknown;
  key_tokens: unknown;
}

// What a decision reads about a key, from `api_keys k JOIN accounts a`.
const KEY_RECORD_COLUMNS =
  'k.id, k.key_hash, k.account_id, k.name, k.scope, a.plan, k.expires_at, k.revoked_at, k.version, a.rate_limit_rpm AS account_rpm, k.rate_limit_rpm AS key_rpm, k.allowed_cidrs, k.metadata, a.token_limits AS account_tokens, k.token_limits AS key_tokens';

const toKeyRecord = (r: KeyRow): KeyRecord => keyRecord({
  id: r.id,
  hash: r.key_hash.toString('base64url'),
  accountId: recordStrings.of(r.account_id),
  name: r.name,
  scope: recordStrings.of(r.scope),
  plan: recordStrings.of(r.plan),
  expiresAt: r.expires_at,
  revokedAt: r.revoked_at,
  version: Number(r.version),
  accountRpm: r.account_rpm,
  keyRpm: r.key_rpm,
  allowedCidrs: r.allowed_cidrs,
  metadata: r.metadata,
  accountTokens: readTokenLimits(r.account_tokens),
  keyTokens: readTokenLimits(r.key_tokens),
});

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
  successor_of: string | null;
  rate_limit_rpm: number | null;
  allowed_cidrs: string[] | null;
  metadata: Record<string, unknown> | null;
  token_limits: unknown;
}

const KEY_INFO_COLUMNS = 'id, account_id, name, scope, display_prefix, created_at, expires_at, last_used_at, revoked_at, successor_of, rate_limit_rpm, allowed_cidrs, metadata, token_limits';
// The KeyInfo columns that KEY_RECORD_COLUMNS (from `api_keys k`) does not already hold.
const KEY_INFO_EXTRA_COLUMNS = 'k.display_prefix, k.created_at, k.last_used_at, k.successor_of, k.rate_limit_rpm, k.token_limits';

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
  successorOf: r.successor_of,
  rateLimitRpm: r.rate_limit_rpm,
  allowedCidrs: r.allowed_cidrs,
  metadata: r.metadata,
  tokenLimits: readTokenLimits(r.token_limits),
});

export interface CreateKeyFields {
  accountId: string;
  name: string;
  scope: string;
  expiresAt: Date | null;
  rateLimitRpm?: number | null;
  /** Canonical CIDR blocks (net/cidr.ts); null or absent: any address. */
  allowedCidrs?: string[] | null;
  /** A JSON object of at most 1 KiB (checked by the caller); null or absent: none. */
  metadata?: Record<string, unknown> | null;
  /** Token limits (keys/token-limits.ts); null or absent: the plan's. */
  tokenLimits?: TokenLimits | null;
}

/** A leaked key's place in its account's owner notification for one secret scanning report. */
export interface LeakNotice {
  reportId: string;
  url: string | null;
  source: string | null;
  /** The notification waits at most this long for the rest of the report's keys. */
  holdMs: number;
}

/** A statement inside a management transaction, run with the write timeout. */
export interface Tx {
  query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

export class KeyRepository implements KeyLookup {
  /**
   * `writeTimeoutMs` bounds each statement of a management write (create,
   * revoke); look-ups keep the pool's own timeout (STORE_TIMEOUT_MS).
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly hasher: KeyHasher,
    private readonly environment: KeyEnvironment,
    private readonly writeTimeoutMs = 5000,
  ) {}

  async findByHash(candidates: readonly KeyHash[]): Promise<KeyRecord | null> {
    const rows = await this.run<KeyRow>(
      `SELECT ${KEY_RECORD_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_hash = ANY($1::bytea[])`,
      [candidates.map((c) => c.hash)],
    );
    return rows[0] ? toKeyRecord(rows[0]) : null;
  }

  async createAccount(email: string, plan: string, rateLimitRpm: number | null = null, tokenLimits: TokenLimits | null = null): Promise<Account> {
    try {
      const rows = await this.run<AccountRow>(
        `INSERT INTO accounts (id, email, plan, rate_limit_rpm, token_limits) VALUES ($1, $2, $3, $4, $5) RETURNING ${ACCOUNT_COLUMNS}`,
        [newAccountId(), email, plan, rateLimitRpm, tokenLimits ? JSON.stringify(tokenLimits) : null],
      );
      return toAccount(rows[0]!);
    } catch (err) {
      if ((err as { code?: string }).code === '23505') throw new ConflictError(`an account with email ${email} already exists`);
      throw err;
    }
  }

  async getAccount(id: string): Promise<Account | null> {
    const rows = await this.run<AccountRow>(`SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE id = $1`, [id]);
    return rows[0] ? toAccount(rows[0]) : null;
  }

  /**
   * Sets (or with null, clears) an account's own request limit. Replicas pick
   * it up as their cached key entries expire (CACHE_REDIS_TTL_MS at most).
   */
  async setAccountLimit(id: string, rateLimitRpm: number | null): Promise<Account | null> {
    const rows = await this.run<AccountRow>(`UPDATE accounts SET rate_limit_rpm = $2 WHERE id = $1 RETURNING ${ACCOUNT_COLUMNS}`, [id, rateLimitRpm]);
    return rows[0] ? toAccount(rows[0]) : null;
  }

  /**
   * Replaces (or with null, clears) an account's or a key's own token limits. Replicas pick it up
   * as their cached key entries expire (CACHE_REDIS_TTL_MS at most), as with the request limit.
   */
  async setTokenLimits(kind: 'account' | 'key', id: string, limits: TokenLimits | null): Promise<boolean> {
    const table = kind === 'account' ? 'accounts' : 'api_keys';
    const rows = await this.run<{ id: string }>(`UPDATE ${table} SET token_limits = $2 WHERE id = $1 RETURNING id`, [id, limits ? JSON.stringify(limits) : null]);
    return rows.length > 0;
  }

  /** Creates a key as the operator would (audited as via the CLI); the secret is returned this once. */
  async createKey(input: CreateKeyFields): Promise<{ key: KeyInfo; secret: string }> {
    const created = await this.createKeyAudited(input, { keyId: null, via: 'cli' });
    if (created.kind !== 'created') throw new ConflictError('key limit reached');
    return { key: created.key, secret: created.secret };
  }

  async listKeys(accountId: string): Promise<KeyInfo[]> {
    const rows = await this.run<KeyInfoRow>(
      `SELECT ${KEY_INFO_COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at, id`,
      [accountId],
    );
    return rows.map(toKeyInfo);
  }

  /**
   * Revocations and rolls (whose successor was made) since `sinceMs` ago, to replay into a Redis
   * that may have missed them: both bumped the key's version and changed what it may do.
   */
  async recentRevocations(sinceMs: number): Promise<KeyRecord[]> {
    const rows = await this.run<KeyRow>(
      `SELECT ${KEY_RECORD_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id
        WHERE k.revoked_at > now() - ($1::double precision * interval '1 millisecond')
       UNION
       SELECT ${KEY_RECORD_COLUMNS} FROM api_keys s JOIN api_keys k ON k.id = s.successor_of JOIN accounts a ON a.id = k.account_id
        WHERE s.successor_of IS NOT NULL AND s.created_at > now() - ($1::double precision * interval '1 millisecond')`,
      [sinceMs],
    );
    return rows.map(toKeyRecord);
  }

  /**
   * Records when keys were last used, one statement for a whole batch: key id -> time of use in
   * epoch milliseconds. Never moves a key's last_used_at back.
   */
  async touchLastUsed(batch: ReadonlyMap<string, number>): Promise<void> {
    if (batch.size === 0) return;
    await this.run(
      `UPDATE api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, u.at), u.at)
         FROM (SELECT id, to_timestamp(ms / 1000.0) AS at FROM unnest($1::text[], $2::bigint[]) AS v(id, ms)) AS u
        WHERE k.id = u.id`,
      [[...batch.keys()], [...batch.values()]],
    );
  }

  private async run<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<R[]> {
    try {
      return (await this.pool.query<R>(sql, params)).rows;
    } catch (err) {
      throw asPostgresUnavailable(err) ?? err;
    }
  }

  // Key management with its audit trail (HTTP API and CLI): the change and its audit row commit together.

  /**
   * Creates a key and its `key.created` audit row in one transaction. With
   * `maxLiveKeys`, refuses once the account holds that many live keys (not
   * revoked, not expired); creations for one account take a row lock on the
   * account first, so concurrent calls cannot overshoot the cap.
   */
  async createKeyAudited(
    input: CreateKeyFields,
    actor: AuditActor,
    opts: { maxLiveKeys?: number } = {},
  ): Promise<{ kind: 'created'; key: KeyInfo; secret: string } | { kind: 'limit_reached'; limit: number }> {
    const secret = generateKey(this.environment);
    const { hash, pepperVersion } = this.hasher.hashForStorage(secret);
    return this.transaction(async (tx) => {
      const account = await tx.query(`SELECT id FROM accounts WHERE id = $1 FOR NO KEY UPDATE`, [input.accountId]);
      if (account.rowCount === 0) throw new NotFoundError(`no account ${input.accountId}`);
      if (opts.maxLiveKeys !== undefined) {
        const live = await tx.query<{ n: string }>(
          `SELECT count(*) AS n FROM api_keys
            WHERE account_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())`,
          [input.accountId],
        );
        if (Number(live.rows[0]!.n) >= opts.maxLiveKeys) return { kind: 'limit_reached', limit: opts.maxLiveKeys };
      }
      const inserted = await tx.query<KeyInfoRow>(
        `INSERT INTO api_keys (id, account_id, name, scope, key_hash, pepper_version, display_prefix, expires_at, rate_limit_rpm, allowed_cidrs, metadata, token_limits)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ${KEY_INFO_COLUMNS}`,
        [
          newKeyId(), input.accountId, input.name, input.scope, hash, pepperVersion, displayPrefix(secret), input.expiresAt,
          input.rateLimitRpm ?? null, input.allowedCidrs ?? null, input.metadata ? JSON.stringify(input.metadata) : null,
          input.tokenLimits ? JSON.stringify(input.tokenLimits) : null,
        ],
      );
      const key = toKeyInfo(inserted.rows[0]!);
      await insertAudit(tx, key.accountId, actor, 'key.created', key.id, {
        name: key.name,
        scope: key.scope,
        expires_at: key.expiresAt?.toISOString() ?? null,
      });
      return { kind: 'created', key, secret };
    });
  }

  /**
   * Revokes a key in one transaction: the UPDATE (revoked_at, version + 1),
   * its `key.revoked` audit row and the NOTIFY on `notify.channel` commit
   * together, so the notification exists exactly when the revocation does.
   * Idempotent: revoking a revoked key changes nothing and writes no second
   * audit row, but notifies again (with the key's current version), so a
   * repeated call redoes the cache work. Null when no such key (owned by
   * `accountId`, when given).
   */
  async revoke(
    keyId: string,
    accountId: string | undefined,
    actor: AuditActor,
    notify: { channel: string; rid: string },
    extra: { detail?: Record<string, string | null>; notification?: LeakNotice } = {},
  ): Promise<{ key: KeyInfo; record: KeyRecord; changed: boolean } | null> {
    return this.transaction(async (tx) => {
      let row = await lockKey(tx, keyId, accountId);
      if (!row) return null;
      const changed = row.revoked_at === null;
      if (changed) {
        const updated = await tx.query<{ revoked_at: Date; version: string }>(
          `UPDATE api_keys SET revoked_at = now(), version = version + 1 WHERE id = $1 RETURNING revoked_at, version`,
          [keyId],
        );
        row = { ...row, ...updated.rows[0]! };
        await insertAudit(tx, row.account_id, actor, 'key.revoked', keyId, extra.detail);
        // The owner's notification exists exactly when the revocation does: the key joins its
        // account's notification for this report (one per account per report), which stays held
        // until the report is done (releaseLeakNotifications) or `holdMs` passed.
        if (extra.notification) {
          const n = extra.notification;
          const entry = { key_id: keyId, name: row.name, url: n.url, source: n.source, revoked_at: row.revoked_at?.toISOString() ?? null };
          await tx.query(
            `INSERT INTO leak_notifications (account_id, report_id, payload, next_attempt_at)
             SELECT a.id, $2::uuid,
                    jsonb_build_object('event', 'api_keys.leaked', 'account_id', a.id, 'account_email', a.email, 'report_id', $2::text, 'keys', jsonb_build_array($3::jsonb)),
                    now() + ($4::double precision * interval '1 millisecond')
               FROM accounts a WHERE a.id = $1
             ON CONFLICT (report_id, account_id) WHERE attempts = 0
             DO UPDATE SET payload = jsonb_set(leak_notifications.payload, '{keys}', (leak_notifications.payload->'keys') || (EXCLUDED.payload->'keys'))`,
            [row.account_id, n.reportId, JSON.stringify(entry), n.holdMs],
          );
        }
      }
      const record = toKeyRecord(row);
      const message = { rid: notify.rid, keyId: record.id, accountId: record.accountId, hash: record.hash, version: record.version };
      await tx.query(`SELECT pg_notify($1, $2)`, [notify.channel, JSON.stringify(message)]);
      return { key: toKeyInfo(row), record, changed };
    });
  }

  /**
   * Rolls a key in one transaction: a successor with the same name, scope, expiry and limit
   * (`successor_of` naming the old key), the old key's expiry brought forward to
   * `overlapEndsAt` (never pushed later) with its version bumped, a `key.rolled` audit row for
   * the old key and a `key.created` one for the successor, and the NOTIFY (kind `changed`), so
   * every replica re-reads the old key. Null when no such key (owned by `accountId`, when given).
   */
  async roll(
    keyId: string,
    accountId: string | undefined,
    times: { now: Date; overlapEndsAt: Date },
    actor: AuditActor,
    notify: { channel: string; rid: string },
  ): Promise<RollResult | null> {
    const secret = generateKey(this.environment);
    const { hash, pepperVersion } = this.hasher.hashForStorage(secret);
    return this.transaction(async (tx) => {
      const row = await lockKey(tx, keyId, accountId);
      if (!row) return null;
      const { now, overlapEndsAt } = times;
      if (row.revoked_at !== null || (row.expires_at !== null && row.expires_at <= now)) {
        return { kind: 'not_live', key: toKeyInfo(row) };
      }
      // The row lock above serialises rolls of one key, so this sees any earlier successor.
      const earlier = await tx.query<{ id: string }>(`SELECT id FROM api_keys WHERE successor_of = $1`, [keyId]);
      if (earlier.rows[0]) return { kind: 'already_rolled', key: toKeyInfo(row), successorId: earlier.rows[0].id };
      const inserted = await tx.query<KeyInfoRow>(
        `INSERT INTO api_keys (id, account_id, name, scope, key_hash, pepper_version, display_prefix, expires_at, rate_limit_rpm, successor_of, allowed_cidrs, metadata, token_limits)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING ${KEY_INFO_COLUMNS}`,
        [
          newKeyId(), row.account_id, row.name, row.scope, hash, pepperVersion, displayPrefix(secret), row.expires_at, row.key_rpm, keyId,
          row.allowed_cidrs, row.metadata ? JSON.stringify(row.metadata) : null, row.key_tokens ? JSON.stringify(row.key_tokens) : null,
        ],
      );
      const successor = toKeyInfo(inserted.rows[0]!);
      // A key that already expires sooner keeps its sooner time.
      const endsAt = row.expires_at !== null && row.expires_at < overlapEndsAt ? row.expires_at : overlapEndsAt;
      const updated = await tx.query<{ expires_at: Date; version: string }>(
        `UPDATE api_keys SET expires_at = $2, version = version + 1 WHERE id = $1 RETURNING expires_at, version`,
        [keyId, endsAt],
      );
      const oldRow = { ...row, ...updated.rows[0]! };
      await insertAudit(tx, row.account_id, actor, 'key.rolled', keyId, { successor_id: successor.id, expires_at: endsAt.toISOString() });
      await insertAudit(tx, row.account_id, actor, 'key.created', successor.id, {
        name: successor.name,
        scope: successor.scope,
        expires_at: successor.expiresAt?.toISOString() ?? null,
        successor_of: keyId,
      });
      const record = toKeyRecord(oldRow);
      const message: Invalidation = { rid: notify.rid, keyId, accountId: record.accountId, hash: record.hash, version: record.version, kind: 'changed' };
      await tx.query(`SELECT pg_notify($1, $2)`, [notify.channel, JSON.stringify(message)]);
      return { kind: 'rolled', old: toKeyInfo(oldRow), record, successor, secret };
    });
  }

  /** Rolled keys whose overlap has ended but that are not yet marked revoked (the sweeper's work). */
  async endedRollOverlaps(limit: number): Promise<string[]> {
    const rows = await this.run<{ id: string }>(
      `SELECT o.id FROM api_keys o JOIN api_keys s ON s.successor_of = o.id
        WHERE o.revoked_at IS NULL AND o.expires_at <= now() ORDER BY o.expires_at LIMIT $1`,
      [limit],
    );
    return rows.map((r) => r.id);
  }

  /**
   * Claims up to `limit` undelivered leak notifications that are due, pushing each one's next
   * attempt `leaseMs` ahead, so replicas delivering at once never send the same one twice at once.
   */
  async claimLeakNotifications(limit: number, leaseMs: number): Promise<Array<{ id: string; accountId: string; payload: Record<string, unknown>; attempts: number }>> {
    const rows = await this.run<{ id: string; account_id: string; payload: Record<string, unknown>; attempts: number }>(
      `UPDATE leak_notifications SET next_attempt_at = now() + ($2::double precision * interval '1 millisecond'), attempts = attempts + 1
        WHERE id IN (SELECT id FROM leak_notifications WHERE delivered_at IS NULL AND next_attempt_at <= now()
                      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING id, account_id, payload, attempts`,
      [limit, leaseMs],
    );
    return rows.map((r) => ({ id: r.id, accountId: r.account_id, payload: r.payload, attempts: r.attempts }));
  }

  /** The report is done: its accounts' notifications are due now instead of at the end of their hold. */
  async releaseLeakNotifications(reportId: string): Promise<void> {
    await this.run(`UPDATE leak_notifications SET next_attempt_at = now() WHERE report_id = $1 AND attempts = 0`, [reportId]);
  }

  async leakNotificationDelivered(id: string): Promise<void> {
    await this.run(`UPDATE leak_notifications SET delivered_at = now() WHERE id = $1`, [id]);
  }

  async leakNotificationFailed(id: string, retryInMs: number): Promise<void> {
    await this.run(`UPDATE leak_notifications SET next_attempt_at = now() + ($2::double precision * interval '1 millisecond') WHERE id = $1`, [id, retryInMs]);
  }

  /** One key as listings show it; null when unknown. */
  async getKey(keyId: string): Promise<KeyInfo | null> {
    const rows = await this.run<KeyInfoRow>(`SELECT ${KEY_INFO_COLUMNS} FROM api_keys WHERE id = $1`, [keyId]);
    return rows[0] ? toKeyInfo(rows[0]) : null;
  }

  /** An account's audit events, newest first. */
  async listAuditEvents(accountId: string, limit: number): Promise<AuditEvent[]> {
    const rows = await this.run<{
      id: string;
      occurred_at: Date;
      account_id: string;
      actor_key_id: string | null;
      action: AuditAction;
      target_key_id: string;
      detail: Record<string, unknown>;
    }>(
      `SELECT id, occurred_at, account_id, actor_key_id, action, target_key_id, detail
         FROM audit_events WHERE account_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2`,
      [accountId, limit],
    );
    return rows.map((r) => ({
      id: Number(r.id),
      occurredAt: r.occurred_at,
      accountId: r.account_id,
      actorKeyId: r.actor_key_id,
      action: r.action,
      targetKeyId: r.target_key_id,
      detail: r.detail,
    }));
  }

  private async transaction<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw asPostgresUnavailable(err) ?? err;
    }
    const timeout = this.writeTimeoutMs;
    const tx: Tx = { query: (text, values) => client.query({ text, values, query_timeout: timeout } as pg.QueryConfig) };
    let discard = false;
    let committing = false;
    try {
      await tx.query('BEGIN');
      const result = await fn(tx);
      committing = true;
      await tx.query('COMMIT');
      return result;
    } catch (err) {
      const outage = err instanceof NotFoundError ? undefined : asPostgresUnavailable(err);
      // A connection that timed out may still be busy: drop it (the server rolls back) rather than reuse it.
      if (outage) discard = true;
      else await client.query('ROLLBACK').catch(() => (discard = true));
      // COMMIT was sent and no answer came: it may have committed. Never report "nothing changed".
      if (outage && committing) throw new WriteOutcomeUnknownError(outage);
      throw outage ?? err;
    } finally {
      client.release(discard);
    }
  }
}

/** A key with what listings and decisions read, locked for this transaction; undefined when no such key (for that account). */
async function lockKey(tx: Tx, keyId: string, accountId: string | undefined): Promise<(KeyInfoRow & KeyRow) | undefined> {
  const found = await tx.query<KeyInfoRow & KeyRow>(
    `SELECT ${KEY_INFO_EXTRA_COLUMNS}, ${KEY_RECORD_COLUMNS}
       FROM api_keys k JOIN accounts a ON a.id = k.account_id
      WHERE k.id = $1 AND ($2::text IS NULL OR k.account_id = $2) FOR UPDATE OF k`,
    [keyId, accountId ?? null],
  );
  return found.rows[0];
}

async function insertAudit(
  tx: Tx,
  accountId: string,
  actor: AuditActor,
  action: AuditAction,
  targetKeyId: string,
  extra?: Record<string, string | null>,
): Promise<void> {
  await tx.query(
    `INSERT INTO audit_events (account_id, actor_key_id, action, target_key_id, detail) VALUES ($1, $2, $3, $4, $5)`,
    [accountId, actor.keyId, action, targetKeyId, JSON.stringify(auditDetail(actor, extra))],
  );
}
