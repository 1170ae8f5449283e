// GCRA (the generic cell rate algorithm): the arithmetic shared by the Redis script and the local limiter.
//
// A limit of `requests` per `windowMs` with a `burst` admits one request every
// T = windowMs / requests on average, and up to `burst` at once. At any moment at
// most requests + burst - 1 are admitted in a window, unlike a fixed window,
// which admits twice the limit across a window edge. The state is one number per
// limit: the theoretical arrival time (TAT) of the next request.

export interface Limit {
  /** Name reported in RateLimit-Policy and logs: `key` or `account`. */
  name: 'key' | 'account';
  requests: number;
  windowMs: number;
  burst: number;
}

export interface LimitState {
  limit: Limit;
  /** Requests that could be admitted right now, after this one. */
  remaining: number;
  /** Until the limit is back to its full burst. */
  resetMs: number;
}

export interface GcraResult {
  allowed: boolean;
  /** When denied: until the first limit that denied admits a request again. */
  retryAfterMs: number;
  states: LimitState[];
}

export const emissionInterval = (l: Limit): number => l.windowMs / l.requests;
export const tolerance = (l: Limit): number => emissionInterval(l) * (l.burst - 1);

/**
 * Decides one request against every limit at once. `tats` are the stored TATs
 * (undefined: never used); on an allow the caller stores `newTats`. A request
 * denied by one limit consumes from none.
 */
export function gcra(limits: readonly Limit[], tats: ReadonlyArray<number | undefined>, now: number): GcraResult & { newTats: number[] } {
  let allowed = true;
  let retryAfterMs = 0;
  const newTats: number[] = [];
  for (let i = 0; i < limits.length; i++) {
    const l = limits[i]!;
    const t = emissionInterval(l);
    const tat = Math.max(tats[i] ?? now, now);
    if (tat - now > tolerance(l)) {
      allowed = false;
      retryAfterMs = Math.max(retryAfterMs, tat - now - tolerance(l));
    }
    newTats.push(tat + t);
  }
  const states = limits.map((l, i) => {
    const t = emissionInterval(l);
    const after = allowed ? newTats[i]! : Math.max(tats[i] ?? now, now);
    return { limit: l, remaining: Math.max(0, Math.floor((tolerance(l) + t - (after - now)) / t)), resetMs: Math.max(0, after - now) };
  });
  return { allowed, retryAfterMs: Math.ceil(retryAfterMs), states, newTats };
}

/** The state to report: the limit closest to running out (least remaining, relative to its burst). */
export function tightest(states: readonly LimitState[]): LimitState | undefined {
  let best: LimitState | undefined;
  for (const s of states) {
    if (!best || s.remaining / s.limit.burst < best.remaining / best.limit.burst) best = s;
  }
  return best;
}

/** A requests-per-minute override, with the same default burst as the policy file's limits. */
export function perMinute(name: Limit['name'], rpm: number): Limit {
  return { name, requests: rpm, windowMs: 60_000, burst: Math.max(1, Math.ceil(rpm / 10)) };
}

/**
 * The limits of one request: the account's (its own override, else its plan's)
 * and the key's (its own override, else the plan's key limit, if any).
 */
export function limitsFor(
  plan: { account?: Omit<Limit, 'name'>; key?: Omit<Limit, 'name'> },
  overrides: { accountRpm: number | null; keyRpm: number | null },
): Limit[] {
  const limits: Limit[] = [];
  if (overrides.accountRpm !== null) limits.push(perMinute('account', overrides.accountRpm));
  else if (plan.account) limits.push({ name: 'account', ...plan.account });
  if (overrides.keyRpm !== null) limits.push(perMinute('key', overrides.keyRpm));
  else if (plan.key) limits.push({ name: 'key', ...plan.key });
  return limits;
}
