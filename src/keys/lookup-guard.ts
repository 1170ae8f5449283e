// A check consulted just before a key look-up reaches Postgres, so that throttling a source costs
// the cache tiers nothing: a key found in memory or Redis is answered whoever sends it.

/** Milliseconds the caller must wait before it may query Postgres; 0 when it may now. */
export type PostgresGuard = () => number;

/** The guard refused the look-up; not a store fault, so the pipeline answers it as a 429. */
export class LookupThrottledError extends Error {
  override name = 'LookupThrottledError';
  constructor(readonly retryAfterMs: number) {
    super(`key look-up throttled for ${retryAfterMs} ms`);
  }
}
