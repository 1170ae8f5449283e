// Rate-limit response headers: OpenAI's x-ratelimit-* and the IETF draft RateLimit / RateLimit-Policy pair.
import { tightest, type LimitState } from './gcra.js';

/** A duration the way OpenAI writes x-ratelimit-reset-requests: "20ms", "1s", "1m30s", "6m0s", "1h0m0s". */
export function formatResetDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.ceil(ms))}ms`;
  const totalSeconds = Math.ceil(ms / 100) / 10;
  const h = Math.floor(totalSeconds / 3600);
  const m = Math.floor((totalSeconds % 3600) / 60);
  const s = Math.round((totalSeconds % 60) * 10) / 10;
  if (h > 0) return `${h}h${m}m${s}s`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}

/** Headers describing the limit closest to running out; none when no limit applies. */
export function rateLimitHeaders(states: readonly LimitState[]): Array<[string, string]> {
  const s = tightest(states);
  if (!s) return [];
  const windowSeconds = Math.round(s.limit.windowMs / 1000);
  const resetSeconds = Math.ceil(s.resetMs / 1000);
  return [
    ['x-ratelimit-limit-requests', String(s.limit.requests)],
    ['x-ratelimit-remaining-requests', String(s.remaining)],
    ['x-ratelimit-reset-requests', formatResetDuration(s.resetMs)],
    ['ratelimit-policy', `"${s.limit.name}";q=${s.limit.requests};w=${windowSeconds}`],
    ['ratelimit', `"${s.limit.name}";r=${s.remaining};t=${resetSeconds}`],
  ];
}

/** OpenAI's token headers for the tokens-per-minute limit closest to running out; none when none applies. */
export function tokenLimitHeaders(states: ReadonlyArray<{ limit: { tokensPerMinute: number }; remaining: number; resetMs: number }>): Array<[string, string]> {
  let s: (typeof states)[number] | undefined;
  for (const x of states) if (!s || x.remaining / x.limit.tokensPerMinute < s.remaining / s.limit.tokensPerMinute) s = x;
  if (!s) return [];
  return [
    ['x-ratelimit-limit-tokens', String(s.limit.tokensPerMinute)],
    ['x-ratelimit-remaining-tokens', String(s.remaining)],
    ['x-ratelimit-reset-tokens', formatResetDuration(s.resetMs)],
  ];
}
