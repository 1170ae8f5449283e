// The test suite's probe of Postgres and Redis (used by global-setup.ts). A loaded machine can take
// many seconds to accept a connection, so a slow store is waited for; a refused connection (nothing
// listening) is answered at once, so the set-up can move on to the next way of finding a store.
import pg from 'pg';
import { Redis } from 'ioredis';

/** How long a store that accepts connections slowly is waited for (TEST_STORE_WAIT_MS overrides). */
export const DEFAULT_STORE_WAIT_MS = 60_000;

export type ProbeResult = { ok: true } | { ok: false; why: string };

/** The address in a store URL, without credentials: what a failure line may show. */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    const host = u.searchParams.get('host') ?? u.hostname;
    return `${host}${u.port ? `:${u.port}` : ''}`;
  } catch {
    return 'an unparsable URL';
  }
}

function reason(err: unknown, waitMs: number): string {
  const e = err as { code?: string; message?: string };
  if (/timeout|timed out/i.test(e.message ?? '')) return `no answer within ${Math.round(waitMs / 1000)} s`;
  return (e.code ?? e.message?.split('\n')[0] ?? String(err)).trim();
}

export async function probePostgres(url: string, waitMs = DEFAULT_STORE_WAIT_MS): Promise<ProbeResult> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: waitMs });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return { ok: true };
  } catch (err) {
    return { ok: false, why: `Postgres at ${describeUrl(url)}: ${reason(err, waitMs)}` };
  } finally {
    await client.end().catch(() => undefined);
  }
}

export async function probeRedis(url: string, waitMs = DEFAULT_STORE_WAIT_MS): Promise<ProbeResult> {
  const r = new Redis(url, { lazyConnect: true, connectTimeout: waitMs, commandTimeout: waitMs, maxRetriesPerRequest: 0, retryStrategy: () => null });
  let lastError: unknown;
  r.on('error', (err) => (lastError = err));
  try {
    await r.connect();
    const pong = await r.ping();
    return pong === 'PONG' ? { ok: true } : { ok: false, why: `Redis at ${describeUrl(url)}: PING answered ${pong}` };
  } catch (err) {
    return { ok: false, why: `Redis at ${describeUrl(url)}: ${reason(lastError ?? err, waitMs)}` };
  } finally {
    r.disconnect();
  }
}

export function storeWaitMs(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number(env.TEST_STORE_WAIT_MS);
  return Number.isInteger(n) && n > 0 ? n : DEFAULT_STORE_WAIT_MS;
}
