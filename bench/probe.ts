// A preload (`node --import`) for bench/profile-check.ts: on SIGUSR2 the process appends one JSON
// line to BENCH_PROBE_FILE with its heap in use, its garbage collections so far (count and time,
// from perf_hooks GC entries) and, with BENCH_PROBE_ASYNC=1, the async resources created so far by
// type (async_hooks: PROMISE, TickObject, ...). The bench reads two lines around a measured window.
// With BENCH_PROBE_HEAP_PROFILE=FILE, each SIGUSR2 also starts or stops V8's sampling heap profiler
// with collected objects kept (what was allocated, not what survived) and writes FILE on the stop.
import { createHook } from 'node:async_hooks';
import { Session } from 'node:inspector';
import { appendFileSync, readFileSync } from 'node:fs';
import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';
import { getHeapSpaceStatistics, getHeapStatistics, writeHeapSnapshot } from 'node:v8';

const file = process.env.BENCH_PROBE_FILE;
if (file) {
  const gc = { count: 0, ms: 0, minorMs: 0, majorMs: 0, incrementalMs: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries() as Array<PerformanceEntry & { detail?: { kind?: number } }>) {
      gc.count++;
      gc.ms += e.duration;
      const kind = e.detail?.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) gc.minorMs += e.duration;
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) gc.majorMs += e.duration;
      else if (kind === constants.NODE_PERFORMANCE_GC_INCREMENTAL) gc.incrementalMs += e.duration;
    }
  }).observe({ entryTypes: ['gc'] });
  const inits: Record<string, number> = {};
  if (process.env.BENCH_PROBE_ASYNC === '1') {
    createHook({
      init(_id, type) {
        inits[type] = (inits[type] ?? 0) + 1;
      },
    }).enable();
  }
  const heapProfile = process.env.BENCH_PROBE_HEAP_PROFILE;
  let session: Session | undefined;
  // BENCH_PROBE_HEAP_LIVE=1: the sampling profile keeps only objects still alive at its stop (what holds the heap);
  // =promoted: also those a major collection freed (they outlived the young generation, then died:
  // what fills the old generation between major collections).
  const live = process.env.BENCH_PROBE_HEAP_LIVE;
  const collected = live !== '1' && live !== 'promoted';
  // With --expose-gc: each line also says the heap in use after a full collection.
  const gcNow = (globalThis as { gc?: () => void }).gc;
  let snapshots = 0;
  process.on('SIGUSR2', () => {
    if (heapProfile && !session) {
      session = new Session();
      session.connect();
      session.post('HeapProfiler.startSampling', {
        samplingInterval: collected ? 1024 : 16384,
        includeObjectsCollectedByMajorGC: collected || live === 'promoted',
        includeObjectsCollectedByMinorGC: collected,
      });
    } else if (heapProfile && session) {
      const s = session;
      session = undefined;
      s.post('HeapProfiler.stopSampling', (err, res) => {
        if (!err) appendFileSync(heapProfile, JSON.stringify(res.profile));
        s.disconnect();
      });
    }
    // BENCH_PROBE_HEAP_SNAPSHOT=FILE: a heap snapshot on every signal after the first (what the live heap is made of).
    if (process.env.BENCH_PROBE_HEAP_SNAPSHOT && (snapshots++ > 0)) writeHeapSnapshot(process.env.BENCH_PROBE_HEAP_SNAPSHOT);
    const h = getHeapStatistics();
    const line: Record<string, unknown> = { heapUsed: h.used_heap_size, heapTotal: h.total_heap_size, rss: process.memoryUsage.rss(), gc, inits, cpu: process.cpuUsage() };
    if (gcNow) {
      gcNow();
      line.heapUsedAfterGc = getHeapStatistics().used_heap_size;
      line.spacesAfterGc = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, s.space_used_size]));
      line.rssAfterGc = process.memoryUsage.rss();
      // Where the RSS outside the live heap is: V8's committed heap, memory V8 malloc'ed for itself,
      // Buffers and other external memory, and the process's pages by kind (smaps_rollup).
      const after = getHeapStatistics();
      const mu = process.memoryUsage();
      line.memoryAfterGc = {
        heapCommitted: after.total_heap_size, heapPhysical: after.total_physical_size, mallocedByV8: after.malloced_memory,
        external: mu.external, arrayBuffers: mu.arrayBuffers,
        spacesCommitted: Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, s.physical_space_size])),
        smaps: smapsRollup(),
      };
    }
    appendFileSync(file, `${JSON.stringify(line)}\n`);
  });
}

/** /proc/self/smaps_rollup in bytes (Linux); empty elsewhere. */
function smapsRollup(): Record<string, number> {
  try {
    const out: Record<string, number> = {};
    for (const m of readFileSync('/proc/self/smaps_rollup', 'utf8').matchAll(/^(\w+):\s+(\d+) kB$/gm)) out[m[1]!] = Number(m[2]) * 1024;
    return out;
  } catch {
    return {};
  }
}
