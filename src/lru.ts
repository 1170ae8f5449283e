// Bounded LRU caches that grow as they fill.
//
// lru-cache preallocates every slot of `max` up front (its key, value, link and TTL arrays): measured
// here, 107 ms and 13 MB of heap to construct the three caches a replica made at start-up (200 000
// entries with a TTL, two of 100 000), before a single entry is held. Bounded by `maxSize` with every
// entry counting 1 instead, it allocates per entry, keeps the same least-recently-used eviction
// (dispose reason 'evict'), the same TTL handling, and never holds more than `max` entries.
import { LRUCache } from 'lru-cache';

export type BoundedLruOptions<K extends NonNullable<unknown>, V extends NonNullable<unknown>> = Omit<LRUCache.Options<K, V, unknown>, 'max' | 'maxSize' | 'sizeCalculation' | 'maxEntrySize'>;

const one = (): number => 1;

export function boundedLru<K extends NonNullable<unknown>, V extends NonNullable<unknown>>(max: number, opts: BoundedLruOptions<K, V> = {}): LRUCache<K, V> {
  if (!Number.isInteger(max) || max < 1) throw new RangeError(`boundedLru: max must be a positive integer, got ${max}`);
  return new LRUCache<K, V>({ ...opts, maxSize: max, sizeCalculation: one } as LRUCache.Options<K, V, unknown>);
}
