// Parent side of the multi-process gRPC generator over node:http2 (bench/load-worker.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import type { WorkerConfig, WorkerResult } from '../load-worker.js';
import { pinned, track } from './procs.js';
import { percentile } from './stats.js';

export interface GrpcLoadOptions {
  workerScript: string;
  port: number;
  keysFile: string;
  workers: number;
  concurrencyPerWorker: number;
  /** HTTP/2 connections per worker. */
  channelsPerWorker: number;
  mode: WorkerConfig['mode'];
  /** true: every worker walks the whole list in the same order (the same key arrives from several at once). */
  sharedSequence: boolean;
  durationMs: number;
  /** Paced load: calls per second over all workers (load-worker.ts); unset: closed loop. */
  ratePerSec?: number;
}

export interface GrpcLoadResult {
  rps: number;
  answered: number;
  /** Calls started: the most by one worker, and by all. */
  sentMax: number;
  sentTotal: number;
  codes: Record<string, number>;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  elapsedMs: number;
}

type FromWorker = { kind: 'ready'; bodies: number } | { kind: 'result'; result: WorkerResult };

export async function runGrpcLoad(o: GrpcLoadOptions): Promise<GrpcLoadResult> {
  const children: ChildProcess[] = [];
  const results: WorkerResult[] = [];
  try {
    const readies: Array<Promise<void>> = [];
    const done: Array<Promise<void>> = [];
    for (let w = 0; w < o.workers; w++) {
      const config: WorkerConfig = {
        port: o.port,
        keysFile: o.keysFile,
        offset: o.sharedSequence ? 0 : w,
        step: o.sharedSequence ? 1 : o.workers,
        mode: o.mode,
        concurrency: o.concurrencyPerWorker,
        channels: o.channelsPerWorker,
        ...(o.ratePerSec ? { ratePerSec: o.ratePerSec / o.workers } : {}),
      };
      const child = spawn(...pinned('generator', process.execPath, [o.workerScript]), {
        env: { PATH: process.env.PATH ?? '', BENCH_WORKER: JSON.stringify(config) },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      children.push(track(child));
      readies.push(
        new Promise((resolve, reject) => {
          child.once('exit', (code) => reject(new Error(`load worker exited ${code}`)));
          child.on('message', (m: FromWorker) => {
            if (m.kind === 'ready') resolve();
          });
        }),
      );
      done.push(
        new Promise((resolve) =>
          child.on('message', (m: FromWorker) => {
            if (m.kind === 'result') {
              results.push(m.result);
              resolve();
            }
          }),
        ),
      );
    }
    await Promise.all(readies);
    const started = performance.now();
    for (const c of children) c.send({ cmd: 'go', durationMs: o.durationMs });
    await Promise.all(done);
    const elapsedMs = performance.now() - started;
    const codes: Record<string, number> = {};
    let answered = 0;
    const all: number[] = [];
    for (const r of results) {
      for (const [k, v] of Object.entries(r.codes)) codes[k] = (codes[k] ?? 0) + v;
      for (const l of r.latenciesUs) all.push(l);
      answered += r.latenciesUs.length;
    }
    const sorted = Float64Array.from(all).sort();
    // Each worker stops sending at the deadline and waits for its calls in flight.
    const workerElapsed = Math.max(...results.map((r) => r.elapsedMs));
    return {
      rps: answered / (workerElapsed / 1000),
      answered,
      sentMax: Math.max(...results.map((r) => r.sent)),
      sentTotal: results.reduce((a, r) => a + r.sent, 0),
      codes,
      p50Ms: percentile(sorted, 50) / 1000,
      p99Ms: percentile(sorted, 99) / 1000,
      p999Ms: percentile(sorted, 99.9) / 1000,
      elapsedMs: Math.max(elapsedMs, workerElapsed),
    };
  } finally {
    for (const c of children) {
      if (c.connected) c.send({ cmd: 'exit' });
      setTimeout(() => c.kill('SIGKILL'), 2000).unref();
    }
  }
}
