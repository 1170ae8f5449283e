// The local limiter's state (limiter.ts): one TAT per subject, bounded, and emptied of TATs that
// have passed.
//
// A TAT at or before now decides exactly as no TAT does (gcra.ts takes max(tat, now)), so once
// it has passed it is dropped: nothing any later decision reads changes (the clock, Date.now as
// everywhere in the limiter, is taken not to step back). Every shared decision
// writes its subjects' TATs here, and most subjects of a large key population are used once in a
// while, so an LRU kept them all until evicted for room: at 100 000 keys each used once, about
// 13 MB of heap (their subject strings, boxed numbers and the LRU's tables, in a heap snapshot
// after the bench's 100 k fill) holding TATs that had passed a fraction of a millisecond after
// they were written. Here every few writes a few of the oldest-written entries are examined: a
// passed TAT is deleted, a live one goes to the back. Writes add at most one entry each and the
// sweep examines two per write, so the passed TATs held stay below about as many as the live ones
// (a cycle through L live and N passed entries takes (L + N) / 2 writes, which add that many: N ≈ L),
// or below SWEEP_FLOOR in all.
// lru-cache has no such sweep (its TTLs are fixed at write time against its own clock, and purged
// only by a walk of every entry or a timer per entry), hence this Map.

/** A sweep every this many writes, of twice as many entries. */
const SWEEP_EVERY = 8;
const SWEEP_BATCH = 2 * SWEEP_EVERY;
/**
 * No sweep while this few are held (about 100 KB): a subject written on every check (one busy key)
 * would otherwise be deleted and written again each time its TAT passes, and each hole a deletion
 * leaves makes the Map's table be reallocated sooner.
 */
export const SWEEP_FLOOR = 1024;

export class TatStore {
  private readonly tats = new Map<string, number>();
  private writes = 0;

  constructor(private readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`TatStore: max must be a positive integer, got ${max}`);
  }

  /** Subjects held: those whose TAT may still be ahead, and at most `max`. */
  get size(): number {
    return this.tats.size;
  }

  get(subject: string): number | undefined {
    return this.tats.get(subject);
  }

  /** Stores `tat` for `subject` at time `now` (the clock the TATs are read against). */
  set(subject: string, tat: number, now: number): void {
    const tats = this.tats;
    if (tats.size >= this.max && !tats.has(subject)) {
      // Full of live TATs: the oldest-written goes, as an LRU would evict it.
      const oldest = tats.keys().next();
      if (!oldest.done) tats.delete(oldest.value);
    }
    tats.set(subject, tat);
    if (++this.writes >= SWEEP_EVERY) {
      this.writes = 0;
      this.sweep(now);
    }
  }

  private sweep(now: number): void {
    const tats = this.tats;
    if (tats.size <= SWEEP_FLOOR) return;
    // Bounded by the size at the start: an entry sent to the back is not examined twice in one sweep.
    let left = Math.min(SWEEP_BATCH, tats.size);
    for (const [subject, tat] of tats) {
      if (left-- <= 0) break;
      tats.delete(subject);
      if (tat > now) tats.set(subject, tat);
    }
  }
}
