// Per-test-file isolation: a database copied from the run's migrated template, a Redis prefix.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';

let counter = 0;

/** A fresh database for one test file (migrated, unless `empty`); drop it with the returned function. */
export async function freshDatabase(opts: { empty?: boolean } = {}): Promise<{ url: string; name: string; drop: () => Promise<void> }> {
  const adminUrl = inject('pgAdminUrl');
  const template = inject('pgTemplateDb');
  const name = `${template}_${process.pid}_${++counter}_${randomBytes(2).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.query(opts.empty ? `CREATE DATABASE "${name}"` : `CREATE DATABASE "${name}" TEMPLATE "${template}"`);
        break;
      } catch (err) {
        // Two files copying the template at the same instant: the second waits its turn.
        if (attempt < 20 && /being accessed by other users/.test((err as Error).message)) {
          await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
          continue;
        }
        throw err;
      }
    }
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    drop: async () => {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        // pg.Pool.end() resolves before its clients have said goodbye: give them a moment, or FORCE
        // terminates them mid-close and the test process sees an unhandled 57P01 'error' event.
        const deadline = Date.now() + 5000;
        while (Date.now() < deadline) {
          const open = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [name]);
          if (open.rows[0]!.n === 0) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** A Redis key prefix no other run or file uses. */
export function redisPrefix(): string {
  return `ryvion-test:${inject('runId')}:${process.pid}:${randomBytes(3).toString('hex')}:`;
}

export const testRedisUrl = (): string => inject('redisUrl');

/** A pepper made for this test run; never a real secret. */
export const testPepper = (): string => randomBytes(48).toString('base64');
