// A throwaway Prometheus server (Debian's package) that scrapes a test's service, and its HTTP query API.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './redis-server.js';

export const PROMETHEUS_MISSING =
  'prometheus is not installed: apt-get install -y --no-install-recommends prometheus (it brings promtool; .ci/run installs it)';

/** Absolute path of a command on PATH, or undefined. */
export function commandPath(name: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() || undefined : undefined;
}

export interface QueryResult {
  metric: Record<string, string>;
  value: [number, string];
}

export class PrometheusServer {
  private child: ChildProcess | undefined;
  private stderr = '';
  private dir = '';
  port = 0;

  constructor(
    private readonly binary: string,
    private readonly opts: { target: string; ruleFiles?: readonly string[]; intervalSeconds?: number },
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.dir = await mkdtemp(path.join(os.tmpdir(), 'ryvion-prometheus-'));
    const interval = `${this.opts.intervalSeconds ?? 1}s`;
    const config = [
      'global:',
      `  scrape_interval: ${interval}`,
      `  scrape_timeout: ${interval}`,
      `  evaluation_interval: ${interval}`,
      'rule_files:',
      ...(this.opts.ruleFiles ?? []).map((f) => `  - ${JSON.stringify(f)}`),
      'scrape_configs:',
      '  - job_name: ryvion-authz',
      '    static_configs:',
      `      - targets: [${JSON.stringify(this.opts.target)}]`,
      '',
    ].join('\n');
    const configFile = path.join(this.dir, 'prometheus.yml');
    await writeFile(configFile, config);
    this.port = await freePort();
    const child = spawn(
      this.binary,
      [`--config.file=${configFile}`, `--storage.tsdb.path=${path.join(this.dir, 'data')}`, `--web.listen-address=127.0.0.1:${this.port}`, '--log.level=warn'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.child = child;
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}: ${this.stderr}`);
      try {
        if ((await fetch(`${this.url}/-/ready`)).ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`prometheus not ready in 15 s: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async query(expr: string): Promise<QueryResult[]> {
    const res = await fetch(`${this.url}/api/v1/query?query=${encodeURIComponent(expr)}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: QueryResult[] } };
    if (body.status !== 'success') throw new Error(`query ${expr} failed: ${body.error}`);
    return body.data!.result;
  }

  async api<T>(pathname: string): Promise<T> {
    const body = (await (await fetch(`${this.url}${pathname}`)).json()) as { status: string; data: T };
    if (body.status !== 'success') throw new Error(`${pathname}: ${JSON.stringify(body)}`);
    return body.data;
  }

  /** Waits until `expr` returns at least one sample that `accept` likes. */
  async waitFor(expr: string, accept: (r: QueryResult[]) => boolean, timeoutMs = 10_000): Promise<QueryResult[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.query(expr);
      if (accept(r)) return r;
      if (Date.now() > deadline) throw new Error(`${expr}: no acceptable result in ${timeoutMs} ms: ${JSON.stringify(r)}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}
