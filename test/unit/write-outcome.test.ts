// Management writes whose COMMIT gets no answer: the outcome is unknown, and nobody says "nothing was changed".
import { describe, expect, it } from 'vitest';
import type pg from 'pg';
import { KeyHasher } from '../../src/keys/hash.js';
import { KeyRepository } from '../../src/keys/repository.js';
import { StoreUnavailableError, WriteOutcomeUnknownError } from '../../src/store/errors.js';

/** A pool whose one client answers every statement, except `failOn`, which times out the way pg reports it. */
function poolFailingOn(failOn: RegExp): { pool: pg.Pool; statements: string[]; timeouts: Array<number | undefined> } {
  const statements: string[] = [];
  const timeouts: Array<number | undefined> = [];
  const client = {
    query: async (q: string | { text: string; query_timeout?: number }) => {
      const text = typeof q === 'string' ? q : q.text;
      statements.push(text.trim().split(/\s+/)[0]!);
      if (typeof q !== 'string') timeouts.push(q.query_timeout);
      if (failOn.test(text)) throw new Error('Query read timeout');
      if (/^\s*SELECT id FROM accounts/.test(text)) return { rows: [{ id: 'acct_1' }], rowCount: 1 };
      if (/^\s*INSERT INTO api_keys/.test(text)) {
        return { rows: [{ id: 'key_1', account_id: 'acct_1', name: 'n', scope: 'buyer', display_prefix: 'ryv_live_abcd…', created_at: new Date(), expires_at: null, last_used_at: null, revoked_at: null }], rowCount: 1 };
      }
      return { rows: [], rowCount: 0 };
    },
    release: () => undefined,
  };
  return { pool: { connect: async () => client } as unknown as pg.Pool, statements, timeouts };
}

const hasher = new KeyHasher({ version: 1, secret: 'p'.repeat(48) });
const create = (repo: KeyRepository) =>
  repo.createKeyAudited({ accountId: 'acct_1', name: 'n', scope: 'buyer', expiresAt: null }, { keyId: null, via: 'cli' });

describe('management writes', () => {
  it('a COMMIT that times out is reported as an unknown outcome, not as an outage', async () => {
    const { pool } = poolFailingOn(/^COMMIT/);
    await expect(create(new KeyRepository(pool, hasher, 'live', 5000))).rejects.toBeInstanceOf(WriteOutcomeUnknownError);
  });

  it('a statement before COMMIT that times out is an outage: nothing was changed', async () => {
    const { pool } = poolFailingOn(/^\s*INSERT INTO api_keys/);
    const err = await create(new KeyRepository(pool, hasher, 'live', 5000)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(err).not.toBeInstanceOf(WriteOutcomeUnknownError);
  });

  it('every statement of the transaction runs with the management write timeout, not the Check budget', async () => {
    const { pool, timeouts } = poolFailingOn(/^$/);
    await create(new KeyRepository(pool, hasher, 'live', 4321));
    expect(timeouts.length).toBeGreaterThan(3);
    expect(new Set(timeouts)).toEqual(new Set([4321]));
  });
});
