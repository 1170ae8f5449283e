// Time as a dependency: the current time and timers, so protocols can be tested on a fake clock.

/** A scheduled callback; cancelling one that already ran does nothing. */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Runs `fn` once after `ms`. Real timers never keep the process alive. */
  setTimer(fn: () => void, ms: number): Timer;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer: (fn, ms) => {
    const t = setTimeout(fn, Math.max(0, ms));
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

/** Runs `fn` every `ms` until cancelled (each run scheduled after the previous one started). */
export function every(clock: Clock, ms: number, fn: () => void): Timer {
  let current: Timer | undefined;
  let cancelled = false;
  const tick = (): void => {
    current = clock.setTimer(() => {
      if (cancelled) return;
      tick();
      fn();
    }, ms);
  };
  tick();
  return {
    cancel: () => {
      cancelled = true;
      current?.cancel();
    },
  };
}

/** Resolves after `ms` on `clock`. */
export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimer(resolve, ms));
}
