// The CLI's token-limit options (issue 19): keys create --tpm/--budget/--models, keys set-tokens,
// accounts set-tokens, and their one-line errors. Against a real Postgres, through the built CLI.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCliProcess } from '../helpers/cli.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let env: Record<string, string>;
let pool: pg.Pool;

beforeAll(async () => {
  db = await freshDatabase();
  env = { DATABASE_URL: db.url, KEY_PEPPER: testPepper() };
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

const json = (stdout: string): Record<string, unknown> => JSON.parse(stdout) as Record<string, unknown>;

describe('token limits from the CLI', () => {
  it('creates a key with its own token limits, changes and clears them, and sets an account\'s', async () => {
    const account = json((await runCliProcess(['accounts', 'create', '--email', `cli-${Date.now()}@example.com`, '--json'], env)).stdout);
    const created = await runCliProcess(['keys', 'create', '--account', String(account.id), '--name', 'k', '--scope', 'buyer', '--tpm', '1000', '--budget', '20000000/month', '--models', 'gpt-4o-mini, gpt-4o', '--json'], env);
    expect(created.code).toBe(0);
    const key = json(created.stdout);
    expect(key).toMatchObject({ tokens_per_minute: 1000, budget: { amount: 20_000_000, period: 'month' }, allowed_models: ['gpt-4o-mini', 'gpt-4o'] });
    const stored = await pool.query<{ token_limits: unknown }>(`SELECT token_limits FROM api_keys WHERE id = $1`, [key.id]);
    expect(stored.rows[0]!.token_limits).toEqual({ tokens_per_minute: 1000, budget: { amount: 20_000_000, period: 'month' }, allowed_models: ['gpt-4o-mini', 'gpt-4o'] });

    const changed = await runCliProcess(['keys', 'set-tokens', String(key.id), '--tpm', '50', '--json'], env);
    expect(json(changed.stdout)).toMatchObject({ tokens_per_minute: 50, budget: null, allowed_models: null });
    const cleared = await runCliProcess(['keys', 'set-tokens', String(key.id), '--clear', '--json'], env);
    expect(json(cleared.stdout)).toMatchObject({ tokens_per_minute: null });

    const acct = await runCliProcess(['accounts', 'set-tokens', '--account', String(account.id), '--budget', '5000/day', '--json'], env);
    expect(acct.code).toBe(0);
    expect(json(acct.stdout)).toMatchObject({ budget: { amount: 5000, period: 'day' }, tokens_per_minute: null });
  });

  it('refuses bad values with exit 2 and one line, changing nothing', async () => {
    const account = json((await runCliProcess(['accounts', 'create', '--email', `bad-${Date.now()}@example.com`, '--json'], env)).stdout);
    const before = (await pool.query(`SELECT count(*)::int AS n FROM api_keys`)).rows[0].n as number;
    for (const [flag, value, message] of [
      ['--budget', '5/year', /^ryvion-authz: --budget: AMOUNT\/PERIOD/],
      ['--tpm', '0', /^ryvion-authz: --tpm: /],
      ['--tpm', 'ten', /^ryvion-authz: --tpm: /],
      ['--models', 'bad model!', /^ryvion-authz: --models: /],
    ] as const) {
      const r = await runCliProcess(['keys', 'create', '--account', String(account.id), '--name', 'k', '--scope', 'buyer', flag, value], env);
      expect(r.code, `${flag} ${value}`).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect((await pool.query(`SELECT count(*)::int AS n FROM api_keys`)).rows[0].n).toBe(before);
    const neither = await runCliProcess(['accounts', 'set-tokens', '--account', String(account.id)], env);
    expect(neither.code).toBe(2);
  });
});
