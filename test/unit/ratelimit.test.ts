import { describe, expect, it } from 'vitest';
import { gcra, limitsFor, tightest, type Limit } from '../../src/ratelimit/gcra.js';
import { formatResetDuration, rateLimitHeaders } from '../../src/ratelimit/headers.js';

const limit = (requests: number, windowMs: number, burst: number, name: Limit['name'] = 'account'): Limit => ({ name, requests, windowMs, burst });

function run(limits: Limit[], times: number[]): boolean[] {
  let tats: Array<number | undefined> = limits.map(() => undefined);
  return times.map((t) => {
    const r = gcra(limits, tats, t);
    if (r.allowed) tats = r.newTats;
    return r.allowed;
  });
}

describe('GCRA', () => {
  it('admits the burst at once, then one request per interval', () => {
    const l = limit(60, 60_000, 5);
    expect(run([l], [0, 0, 0, 0, 0, 0])).toEqual([true, true, true, true, true, false]);
    // 1 s later one more is admitted (60 per minute).
    expect(run([l], [...Array(5).fill(0), 1000, 1000])).toEqual([true, true, true, true, true, true, false]);
  });

  it('never admits more than requests + burst - 1 in any window, unlike a fixed window at its edge', () => {
    const l = limit(100, 1000, 1);
    const times = Array.from({ length: 4000 }, (_, i) => i); // one attempt per ms for 4 s
    const allowed = run([l], times);
    for (let start = 0; start + 1000 <= 4000; start += 50) {
      const inWindow = allowed.slice(start, start + 1000).filter(Boolean).length;
      expect(inWindow).toBeLessThanOrEqual(100);
    }
    expect(allowed.filter(Boolean).length).toBe(400);
  });

  it('a request denied by one limit consumes from none', () => {
    const account = limit(100, 1000, 100, 'account');
    const key = limit(1, 1000, 1, 'key');
    let tats: Array<number | undefined> = [undefined, undefined];
    const first = gcra([account, key], tats, 0);
    expect(first.allowed).toBe(true);
    tats = first.newTats;
    const second = gcra([account, key], tats, 0);
    expect(second.allowed).toBe(false);
    expect(second.retryAfterMs).toBe(1000);
    // The account limit was not charged for the denied request.
    expect(second.states[0]!.remaining).toBe(first.states[0]!.remaining);
  });

  it('reports remaining and reset', () => {
    const r = gcra([limit(10, 10_000, 5)], [undefined], 0);
    expect(r.states[0]).toMatchObject({ remaining: 4, resetMs: 1000 });
  });

  it('picks the limit closest to running out for the headers', () => {
    const states = [
      { limit: limit(100, 60_000, 50, 'account'), remaining: 40, resetMs: 1 },
      { limit: limit(10, 60_000, 5, 'key'), remaining: 1, resetMs: 1 },
    ];
    expect(tightest(states)?.limit.name).toBe('key');
  });

  it('uses the overrides over the plan', () => {
    const plan = { account: { requests: 60, windowMs: 60_000, burst: 6 } };
    expect(limitsFor(plan, { accountRpm: null, keyRpm: null })).toEqual([{ name: 'account', requests: 60, windowMs: 60_000, burst: 6 }]);
    expect(limitsFor(plan, { accountRpm: 120, keyRpm: 10 })).toEqual([
      { name: 'account', requests: 120, windowMs: 60_000, burst: 12 },
      { name: 'key', requests: 10, windowMs: 60_000, burst: 1 },
    ]);
    expect(limitsFor({}, { accountRpm: null, keyRpm: null })).toEqual([]);
  });
});

describe('rate-limit headers', () => {
  it.each([
    [20, '20ms'],
    [1000, '1s'],
    [1500, '1.5s'],
    [60_000, '1m0s'],
    [360_000, '6m0s'],
    [90_500, '1m30.5s'],
    [3_600_000, '1h0m0s'],
  ])('formats %i ms as %s, the way OpenAI writes x-ratelimit-reset-requests', (ms, text) => {
    expect(formatResetDuration(ms)).toBe(text);
  });

  it('writes the OpenAI and IETF draft headers for the tightest limit', () => {
    const headers = Object.fromEntries(rateLimitHeaders([{ limit: limit(100, 60_000, 10), remaining: 42, resetMs: 16_200 }]));
    expect(headers).toEqual({
      'x-ratelimit-limit-requests': '100',
      'x-ratelimit-remaining-requests': '42',
      'x-ratelimit-reset-requests': '16.2s',
      'ratelimit-policy': '"account";q=100;w=60',
      ratelimit: '"account";r=42;t=17',
    });
  });
});
