// Store faults: thrown (never returned as a decision) and turned into 503 at the boundary.

/** A store could not answer in time or at all; the key may be fine. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError';
  constructor(
    readonly store: 'postgres' | 'redis',
    readonly kind: 'timeout' | 'connection' | 'overload' | 'query',
    cause?: unknown,
  ) {
    super(`${store} unavailable (${kind})`, cause === undefined ? undefined : { cause });
  }
}

/** Any Redis command failure: a timeout, or otherwise a lost connection. */
export function asRedisUnavailable(err: unknown): StoreUnavailableError {
  if (err instanceof StoreUnavailableError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new StoreUnavailableError('redis', /timed? ?out/i.test(msg) ? 'timeout' : 'connection', err);
}

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EHOSTUNREACH', 'ETIMEDOUT', 'EPIPE', '57P01', '57P03', '08006', '08001', '08003', '08004']);

/** Classifies a pg error: connection and timeout problems are outages, the rest are bugs or bad SQL. */
export function asPostgresUnavailable(err: unknown): StoreUnavailableError | undefined {
  if (err instanceof StoreUnavailableError) return err;
  if (!(err instanceof Error)) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) return new StoreUnavailableError('postgres', 'connection', err);
  if (code === '57014') return new StoreUnavailableError('postgres', 'timeout', err); // statement timeout
  const msg = err.message;
  if (/timeout|timed out/i.test(msg)) return new StoreUnavailableError('postgres', 'timeout', err);
  if (/Connection terminated|connect|Client was closed|not queryable/i.test(msg)) return new StoreUnavailableError('postgres', 'connection', err);
  return undefined;
}

/**
 * A write's COMMIT was sent but its answer never came: the change may or may
 * not have been made. Callers must say so, never "nothing was changed".
 */
export class WriteOutcomeUnknownError extends Error {
  override name = 'WriteOutcomeUnknownError';
  constructor(cause: StoreUnavailableError) {
    super(`postgres did not confirm the commit (${cause.kind})`, { cause });
  }
}
