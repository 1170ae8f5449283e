import { describe, expect, it } from 'vitest';
import { boundedLru } from '../../src/lru.js';
import { MemoryTier } from '../../src/keys/cache/memory.js';
import { entryFor } from '../../src/keys/cache/entry.js';

describe('bounded LRU caches (src/lru.ts)', () => {
  it('never holds more than max entries, evicting the least recently used', () => {
    const evicted: string[] = [];
    const c = boundedLru<string, number>(3, { dispose: (_v, k, reason) => void (reason === 'evict' && evicted.push(k)) });
    c.set('a', 1).set('b', 2).set('c', 3);
    expect(c.get('a')).toBe(1); // a is now the most recent; b the least
    c.set('d', 4);
    expect(c.size).toBe(3);
    expect(evicted).toEqual(['b']);
    expect([...c.keys()].sort()).toEqual(['a', 'c', 'd']);
    for (let i = 0; i < 1000; i++) c.set(`k${i}`, i);
    expect(c.size).toBe(3);
    expect([...c.keys()].sort()).toEqual(['k997', 'k998', 'k999']);
  });

  it('costs nothing per slot it has not filled (lru-cache alone preallocates max slots)', () => {
    const before = process.memoryUsage().heapUsed;
    const caches = [boundedLru<string, number>(10_000_000, { ttl: 60_000 }), boundedLru<string, number>(10_000_000)];
    const grown = process.memoryUsage().heapUsed - before;
    // Preallocated, 10⁷ slots are at least 80 MB of key array alone.
    expect(grown).toBeLessThan(4 * 1024 * 1024);
    caches[0]!.set('x', 1);
    expect(caches[0]!.get('x')).toBe(1);
  });

  it('refuses a bound that is not a positive integer', () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) expect(() => boundedLru(bad)).toThrow(/positive integer/);
  });

  it('keeps the memory tier at CACHE_MEMORY_MAX_KEYS, its most recently used keys kept', () => {
    const m = new MemoryTier({ maxKeys: 1000, ttlMs: 60_000, negativeTtlMs: 60_000 });
    for (let i = 0; i < 1000; i++) m.fill(`h${i}`, entryFor(null), m.epoch);
    m.get('h0');
    for (let i = 1000; i < 1500; i++) m.fill(`h${i}`, entryFor(null), m.epoch);
    expect(m.size).toBe(1000);
    expect(m.get('h0')).toBeDefined();
    expect(m.get('h1')).toBeUndefined();
    expect(m.get('h1499')).toBeDefined();
  });
});
