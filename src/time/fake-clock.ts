// The in-memory twin of Clock: time moves only when a test advances it.
import type { Clock, Timer } from './clock.js';

interface Pending {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

export class FakeClock implements Clock {
  private current: number;
  private seq = 0;
  private pending: Pending[] = [];

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimer(fn: () => void, ms: number): Timer {
    const p: Pending = { at: this.current + Math.max(0, ms), seq: this.seq++, fn, cancelled: false };
    this.pending.push(p);
    return { cancel: () => void (p.cancelled = true) };
  }

  /** Timers still due to run. */
  get timers(): number {
    return this.pending.filter((p) => !p.cancelled).length;
  }

  /**
   * Moves time forward by `ms`, running each timer at its due time in order.
   * Between timers, pending promise callbacks run, so async work a timer
   * starts can settle (and schedule further timers) before time moves on.
   */
  async advance(ms: number): Promise<void> {
    const until = this.current + ms;
    await settle();
    for (;;) {
      this.pending = this.pending.filter((p) => !p.cancelled);
      const next = this.pending.filter((p) => p.at <= until).sort((a, b) => a.at - b.at || a.seq - b.seq)[0];
      if (!next) break;
      this.pending.splice(this.pending.indexOf(next), 1);
      this.current = Math.max(this.current, next.at);
      next.fn();
      await settle();
    }
    this.current = until;
    await settle();
  }
}

/** Lets queued promise callbacks (and those they queue) run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
}
