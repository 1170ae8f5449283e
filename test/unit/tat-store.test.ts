// The local limiter's TAT store: bounded, and emptied of TATs that have passed, never of live ones.
import { describe, expect, it } from 'vitest';
import { TatStore } from '../../src/ratelimit/tat-store.js';

describe('TatStore', () => {
  it('holds at most max subjects, the oldest-written going first', () => {
    const s = new TatStore(3);
    for (const [i, k] of ['a', 'b', 'c', 'd'].entries()) s.set(k, 1_000 + i, 0);
    expect(s.size).toBe(3);
    expect(s.get('a')).toBeUndefined();
    expect([s.get('b'), s.get('c'), s.get('d')]).toEqual([1_001, 1_002, 1_003]);
  });

  it('drops passed TATs as it is written to, and keeps every TAT still ahead', () => {
    const s = new TatStore(100_000);
    for (let i = 0; i < 500; i++) s.set(`live${i}`, 10_000, 0); // ahead until t = 10 000
    for (let t = 0; t < 5_000; t++) s.set(`once${t}`, t + 1, t); // each passes one ms after it is written
    for (let i = 0; i < 500; i++) expect(s.get(`live${i}`)).toBe(10_000);
    // Of the 5 000 passed TATs, about as many as the live ones remain (the sweep's bound), not all.
    expect(s.size).toBeLessThan(2 * 500 + 50);
  });

  it('rejects a bound that is not a positive integer', () => {
    expect(() => new TatStore(0)).toThrow(RangeError);
    expect(() => new TatStore(1.5)).toThrow(RangeError);
  });
});
