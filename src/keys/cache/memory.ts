// The per-replica memory tier: a bounded LRU of key entries, guarded by revocation tombstones and an epoch.
import type { LRUCache } from 'lru-cache';
import { boundedLru } from '../../lru.js';
import type { CacheEntry } from './entry.js';
import type { KeyRecord } from '../repository.js';

// What is held per key: its record itself, or one shared value for a key known not to exist. Not
// the CacheEntry the other tiers pass around: a wrapper per key held was 4.8 MB of heap at 100 000
// keys (a heap snapshot after the bench's fill), for a version and a state the record already says.
interface Absent {
  readonly version: 0;
}
const ABSENT: Absent = Object.freeze({ version: 0 });
type Held = KeyRecord | Absent;

export interface MemoryTierOptions {
  maxKeys: number;
  ttlMs: number;
  negativeTtlMs: number;
  /**
   * How long a revocation is remembered: to refuse late fills, and Redis entries
   * older than it. At least as long as a Redis entry can live.
   */
  tombstoneTtlMs?: number;
  /** A tombstone was evicted for room before its time: lower tiers can no longer be checked against it. */
  onTombstoneEvicted?: () => void;
}

export class MemoryTier {
  private readonly entries: LRUCache<string, Held>;
  // hash -> revoked version. A fill below it started before the revoke and must not land.
  private readonly tombstones: LRUCache<string, number>;
  private readonly negativeTtlMs: number;
  private epochValue = 0;

  constructor(opts: MemoryTierOptions) {
    this.entries = boundedLru(opts.maxKeys, { ttl: opts.ttlMs, ttlAutopurge: false, updateAgeOnGet: false });
    const evicted = opts.onTombstoneEvicted;
    this.tombstones = boundedLru(opts.maxKeys, {
      ttl: opts.tombstoneTtlMs ?? 10 * 60_000,
      ...(evicted ? { dispose: (_v: number, _k: string, reason: LRUCache.DisposeReason) => void (reason === 'evict' && evicted()) } : {}),
    });
    this.negativeTtlMs = opts.negativeTtlMs;
  }

  /** Fills captured before a flush carry an older epoch and are dropped. */
  get epoch(): number {
    return this.epochValue;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The key's record; null: known not to exist; undefined: not held. */
  get(hash: string): KeyRecord | null | undefined {
    const held = this.entries.get(hash);
    return held === ABSENT ? null : (held as KeyRecord | undefined);
  }

  /**
   * Stores an entry read from a lower tier, unless it is stale: the memory was
   * flushed since the read began (`epoch`), a revocation of a higher version
   * arrived meanwhile, or a higher version is already held.
   */
  fill(hash: string, entry: CacheEntry, epoch: number): boolean {
    if (epoch !== this.epochValue) return false;
    const tomb = this.tombstones.get(hash);
    if (tomb !== undefined && entry.version < tomb) return false;
    const current = this.entries.get(hash);
    if (current && current.version > entry.version) return false;
    if (entry.state === 'absent') this.entries.set(hash, ABSENT, { ttl: this.negativeTtlMs });
    else this.entries.set(hash, entry.record);
    return true;
  }

  /** The newest revoked version this replica knows of for `hash`. */
  revokedVersion(hash: string): number | undefined {
    return this.tombstones.get(hash);
  }

  /** A revocation: remember it and drop whatever is held for the key. */
  invalidate(hash: string, version: number): void {
    const tomb = this.tombstones.get(hash);
    if (tomb === undefined || tomb < version) this.tombstones.set(hash, version);
    this.entries.delete(hash);
  }

  /** Everything goes (a lease regained, a channel reconnected); in-flight fills are refused. */
  flush(): void {
    this.epochValue++;
    this.entries.clear();
  }
}
