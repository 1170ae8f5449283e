// h2load as the load generator for one fixed gRPC body: throughput, and latency from --log-file.
import { spawn } from 'node:child_process';
import { pinned, track } from './procs.js';
import { readFileSync, rmSync } from 'node:fs';
import { percentile } from './stats.js';

export interface H2loadOptions {
  url: string;
  bodyFile: string;
  clients: number;
  streams: number;
  durationS: number;
  warmupS: number;
  /** Offered load per client (h2load --rps); unset: as fast as the server answers. */
  rpsPerClient?: number;
  /** A fixed number of requests (h2load -n) instead of a duration; durationS is then ignored. */
  requests?: number;
  logFile: string;
}

export interface H2loadResult {
  /** Completed requests per second over the measured duration (h2load's own figure). */
  rps: number;
  done: number;
  succeeded: number;
  failed: number;
  errored: number;
  timeout: number;
  status2xx: number;
  /** Logged requests whose HTTP status was not 200. */
  non200: number;
  inFlightAtWarmup: number;
  /** Latency percentiles (ms) of the measured requests, from the log file. */
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  samples: number;
}

export function h2loadCommand(o: H2loadOptions): string[] {
  return [
    '-c', String(o.clients),
    '-m', String(o.streams),
    ...(o.requests ? ['-n', String(o.requests)] : ['-D', String(o.durationS)]),
    ...(o.warmupS > 0 ? ['--warm-up-time', String(o.warmupS)] : []),
    ...(o.rpsPerClient ? ['--rps', String(o.rpsPerClient)] : []),
    '-d', o.bodyFile,
    '-H', 'content-type: application/grpc',
    '-H', 'te: trailers',
    `--log-file=${o.logFile}`,
    o.url,
  ];
}

export async function runH2load(o: H2loadOptions): Promise<H2loadResult> {
  const args = h2loadCommand(o);
  const output = await new Promise<string>((resolve, reject) => {
    const p = track(spawn(...pinned('generator', 'h2load', args), { stdio: ['ignore', 'pipe', 'pipe'] }));
    let text = '';
    p.stdout.on('data', (d: Buffer) => (text += d.toString()));
    p.stderr.on('data', (d: Buffer) => (text += d.toString()));
    p.once('error', (err) => reject(new Error(`h2load: ${err.message} (install it: apt-get install nghttp2-client)`)));
    p.once('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`h2load exited ${code}:\n${text}`))));
  });
  const num = (re: RegExp): number => Number(re.exec(output)?.[1] ?? NaN);
  const requests = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(output);
  if (!requests) throw new Error(`unexpected h2load output:\n${output}`);

  // Columns: start (µs since the epoch), HTTP status, duration (µs). The file holds the measured
  // requests only (not the warm-up); those in flight when the warm-up ended are logged with
  // status 0 and a duration that includes the warm-up, so they are left out.
  const durations: number[] = [];
  let non200 = 0;
  let inFlightAtWarmup = 0;
  for (const line of readFileSync(o.logFile, 'utf8').split('\n')) {
    if (!line) continue;
    const [, status, dur] = line.split('\t');
    if (status === '0') {
      inFlightAtWarmup++;
      continue;
    }
    durations.push(Number(dur));
    if (status !== '200') non200++;
  }
  rmSync(o.logFile, { force: true });
  const sorted = Float64Array.from(durations).sort();
  return {
    rps: num(/finished in [\d.]+\w+, ([\d.]+) req\/s/),
    done: Number(requests[3]),
    succeeded: Number(requests[4]),
    failed: Number(requests[5]),
    errored: Number(requests[6]),
    timeout: Number(requests[7]),
    status2xx: num(/status codes: (\d+) 2xx/),
    non200,
    inFlightAtWarmup,
    p50Ms: percentile(sorted, 50) / 1000,
    p99Ms: percentile(sorted, 99) / 1000,
    p999Ms: percentile(sorted, 99.9) / 1000,
    maxMs: sorted.length ? sorted[sorted.length - 1]! / 1000 : NaN,
    samples: sorted.length,
  };
}
