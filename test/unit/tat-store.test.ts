// The local limiter's TAT store: bounded, and emptied of TATs that have passed, never of live ones.
import { describe, expect, it } from 'vitest';
import { SWEEP_FLOOR, TatStore } from '../../src/ratelimit/tat-store.js';

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
    for (let i = 0; i < 2_000; i++) s.set(`live${i}`, 100_000, 0); // ahead until t = 100 000
    for (let t = 0; t < 20_000; t++) s.set(`once${t}`, t + 1, t); // each passes one ms after it is written
    for (let i = 0; i < 2_000; i++) expect(s.get(`live${i}`)).toBe(100_000);
    // Of the 20 000 passed TATs, about as many as the live ones remain (the sweep's bound), not all.
    expect(s.size).toBeLessThan(2 * 2_000 + 50);
  });

  it('below SWEEP_FLOOR entries, a TAT written again is updated in place, not swept and re-added', () => {
    const s = new TatStore(100_000);
    for (let t = 0; t < 1_000; t++) s.set('busy', t + 1, t + 2); // passed at every sweep
    expect(s.get('busy')).toBe(1_000);
    expect(s.size).toBe(1);
    for (let t = 0; t < 3 * SWEEP_FLOOR; t++) s.set(`once${t}`, t + 1, t + 2);
    expect(s.size).toBeLessThanOrEqual(SWEEP_FLOOR + 16);
  });

  it('rejects a bound that is not a positive integer', () => {
    expect(() => new TatStore(0)).toThrow(RangeError);
    expect(() => new TatStore(1.5)).toThrow(RangeError);
  });
});
