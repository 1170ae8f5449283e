// Counters for the hot path: a plain number per label set, added to the prom-client counter
// whenever the counter is read.
//
// prom-client hashes and validates the label set on every inc() (about 0.7 µs, three or four
// times per check: bench/README.md). A cell counts in a plain number instead; the counter's
// collect hook, which prom-client runs before every read (a /metrics scrape, or a test's
// get()), moves the cells' counts into it. Readers see exactly the same values.
import type { Counter, Histogram } from 'prom-client';

export interface HotCounterCell {
  inc(): void;
}

class Cell implements HotCounterCell {
  n = 0;
  constructor(readonly labels: Readonly<Record<string, string>>) {}
  inc(): void {
    this.n++;
  }
}

type Collectable = { collect?: () => unknown };

const cellsOf = new WeakMap<object, Map<string, Cell>>();

/** A cell of `counter` for one fixed label set (the same cell for the same labels). */
export function hotCounter<T extends string>(counter: Counter<T>, labels: Readonly<Record<T, string>>): HotCounterCell {
  let cells = cellsOf.get(counter);
  if (!cells) {
    const own = new Map<string, Cell>();
    cells = own;
    cellsOf.set(counter, own);
    const target = counter as unknown as Collectable;
    const previous = target.collect;
    target.collect = function (this: unknown) {
      for (const c of own.values()) {
        if (c.n === 0) continue;
        const n = c.n;
        c.n = 0;
        counter.inc(c.labels as Partial<Record<T, string>>, n);
      }
      return previous?.call(this);
    };
  }
  const id = JSON.stringify(Object.keys(labels).sort().map((k) => [k, labels[k as T]]));
  let cell = cells.get(id);
  if (!cell) {
    cell = new Cell({ ...labels });
    cells.set(id, cell);
  }
  return cell;
}

/**
 * `histogram.observe` for one fixed label set, with the labels object built once (labels()
 * builds and validates it on every call). Observations are not buffered: a histogram's
 * buckets have no bulk update in prom-client's API.
 */
export function histogramObserver<T extends string>(histogram: Histogram<T>, labels: Readonly<Record<T, string>>): (value: number) => void {
  const fixed = { ...labels } as Partial<Record<T, string>>;
  return (value) => histogram.observe(fixed, value);
}
