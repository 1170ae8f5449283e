// HEAP_GROWING_PERCENT: how far V8 lets the old generation grow past what survived its last full
// collection before it collects again. V8's own rule (0, the default) picks that factor from its
// collection and allocation speeds, capped by the heap limit: up to 4x what survived when the
// limit is 2 GB or more (a host or pod without a memory limit), about 1.3x at the chart's 384Mi.
// A fixed percentage replaces the rule entirely, tighter or looser, so it is for hosts without a
// memory limit; measured in bench/README.md ("Memory: HEAP_GROWING_PERCENT").
//
// Set here at run time, after the bundle is loaded: passed on the command line, the flag would
// make V8 reject the bundle's code cache (bin/ryvion-authz.js), and NODE_OPTIONS does not accept
// it. V8 reads it each time it computes the next limit, so it applies from the next collection.
import v8 from 'node:v8';

/** Applies a percentage above 0; returns whether it set anything. */
export function applyHeapGrowingPercent(percent: number): boolean {
  if (percent <= 0) return false;
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
  return true;
}
