// Child processes of the bench: the service and the do-nothing server, each one Node process.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * BENCH_PIN=1: servers run on CPU 0 and the load generators on CPU 1 (taskset, util-linux), so
 * that both servers always get the same core and the same competition. Off by default: on this
 * kind of machine it did not narrow the spread of the per-round ratios (bench/README.md), and
 * unpinned is the setting the targets name (load generator included, sharing both cores).
 */
export const PIN = process.env.BENCH_PIN === '1' && availableParallelism() >= 2;

/** Every child process of the bench still running, so that an interrupted run can stop them all. */
export const running = new Set<ChildProcess>();

export function track<T extends ChildProcess>(child: T): T {
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

/** `command args` run on `cpu` when pinning is on. */
export function pinned(cpu: 'server' | 'generator', command: string, args: string[]): [string, string[]] {
  if (!PIN) return [command, args];
  return ['taskset', ['-c', cpu === 'server' ? '0' : '1', command, ...args]];
}

/** Settings written "K=V K=V" in one environment variable (BENCH_SERVICE_ENV, PROFILE_ENV), as an env object. */
export function envPairs(text: string | undefined): Record<string, string> {
  return Object.fromEntries((text ?? '').split(' ').filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface Child {
  name: string;
  pid: number;
  grpcPort: number;
  opsPort?: number;
  logFile: string;
  /** Spawn until the bench saw the ready log line (polled every 10 ms). */
  readyMs: number;
  /** Spawn until the time stamped on the service's own "ryvion-authz ready" log line: start to ready. */
  readyLogMs?: number;
  /** Resident set size now and at its peak, in bytes (/proc/PID/status). */
  rss(): { rss: number; peak: number };
  /** CPU time used so far (user + system), in seconds (/proc/PID/stat). */
  cpuSeconds(): number;
  /** The service's /metrics, parsed. */
  metrics(): Promise<MetricSample>;
  stop(): Promise<void>;
}

export interface SpawnOptions {
  name: string;
  script: string;
  env: Record<string, string>;
  grpcPort: number;
  opsPort?: number;
  logFile: string;
  /** A command (and its arguments) that runs `node …` for the child, e.g. to start it in a cgroup; none by default. */
  wrapper?: string[];
  /** Node options put before the script (V8 flags that NODE_OPTIONS refuses, such as --trace-gc-nvp). */
  nodeArgs?: string[];
  /** Directory for --cpu-prof output; no profiling when undefined. */
  cpuProfDir?: string;
  readyTimeoutMs?: number;
}

// Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ: 100 on Linux).
const CLOCK_TICKS = 100;

function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

function procStatus(pid: number): { rss: number; peak: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

export async function spawnChild(opts: SpawnOptions): Promise<Child> {
  const out = openSync(opts.logFile, 'w');
  const nodeArgs = [...(opts.nodeArgs ?? []), ...(opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`, `--cpu-prof-name=${opts.name}-${Date.now()}.cpuprofile`] : [])];
  const startedWall = Date.now();
  const started = performance.now();
  const [command, args] = pinned('server', opts.wrapper?.[0] ?? process.execPath, [
    ...(opts.wrapper ? [...opts.wrapper.slice(1), process.execPath] : []),
    ...nodeArgs,
    opts.script,
    ...(opts.opsPort ? ['serve'] : []),
  ]);
  const child: ChildProcess = track(spawn(command, args, {
    env: { PATH: process.env.PATH ?? '', ...opts.env },
    stdio: ['ignore', out, out],
  }));
  closeSync(out);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    }),
  );
  const log = (): string => readFileSync(opts.logFile, 'utf8');

  const deadline = started + (opts.readyTimeoutMs ?? 30_000);
  for (;;) {
    if (exited) throw new Error(`${opts.name} exited (${exited.code ?? exited.signal}) before ready:\n${log().slice(-2000)}`);
    if (performance.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${opts.name} not ready within ${opts.readyTimeoutMs ?? 30_000} ms:\n${log().slice(-2000)}`);
    }
    // The log line first (a file read: polling over HTTP would take CPU from the starting process),
    // then /readyz once, which must agree.
    if (log().includes(opts.opsPort ? '"ryvion-authz ready"' : '"noop ready"')) break;
    if (opts.opsPort && opts.env.LOG_LEVEL && !['info', 'debug', 'trace'].includes(opts.env.LOG_LEVEL)) {
      const ok = await fetch(`http://127.0.0.1:${opts.opsPort}/readyz`).then((r) => r.status === 200, () => false);
      if (ok) break;
    }
    await sleep(10);
  }
  const readyMs = performance.now() - started;
  if (opts.opsPort) {
    const status = await fetch(`http://127.0.0.1:${opts.opsPort}/readyz`).then((r) => r.status, () => 0);
    if (status !== 200) throw new Error(`${opts.name} logged ready but /readyz answered ${status}`);
  }

  let readyLogMs: number | undefined;
  for (const line of log().split('\n')) {
    if (!line.includes('"ryvion-authz ready"')) continue;
    const time = (JSON.parse(line) as { time?: string }).time;
    if (time) readyLogMs = Date.parse(time) - startedWall;
  }

  return {
    name: opts.name,
    pid: child.pid!,
    grpcPort: opts.grpcPort,
    ...(opts.opsPort ? { opsPort: opts.opsPort } : {}),
    logFile: opts.logFile,
    readyMs,
    ...(readyLogMs !== undefined ? { readyLogMs } : {}),
    rss: () => procStatus(child.pid!),
    cpuSeconds: () => procCpuSeconds(child.pid!),
    metrics: async () => {
      if (!opts.opsPort) return new MetricSample('');
      const res = await fetch(`http://127.0.0.1:${opts.opsPort}/metrics`);
      return new MetricSample(await res.text());
    },
    stop: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exitPromise;
      clearTimeout(timer);
    },
  };
}

/** A Prometheus text exposition, read for counters by name and labels. */
export class MetricSample {
  private readonly series: Array<{ name: string; labels: Record<string, string>; value: number }> = [];

  constructor(text: string) {
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels: Record<string, string> = {};
      for (const l of (m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
      this.series.push({ name: m[1]!, labels, value: Number(m[4]) });
    }
  }

  /** Sum over every series of `name` whose labels include `match` (a label value may be a list of accepted values). */
  sum(name: string, match: Record<string, string | string[]> = {}, exclude: Record<string, string> = {}): number {
    let total = 0;
    for (const s of this.series) {
      if (s.name !== name) continue;
      const ok = Object.entries(match).every(([k, v]) => (Array.isArray(v) ? v.includes(s.labels[k] ?? '') : s.labels[k] === v));
      const excluded = Object.entries(exclude).some(([k, v]) => s.labels[k] === v);
      if (ok && !excluded) total += s.value;
    }
    return total;
  }

  /** The sums of `name` per value of `label`, over the series whose labels include `match`. */
  by(name: string, label: string, match: Record<string, string> = {}): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.series) {
      if (s.name !== name || !Object.entries(match).every(([k, v]) => s.labels[k] === v)) continue;
      const v = s.labels[label] ?? '';
      out[v] = (out[v] ?? 0) + s.value;
    }
    return out;
  }
}
