// `npx tsx bench/start-time.ts [starts]`: start to ready of `ryvion-authz serve`, the variants
// alternated start by start (default 8 starts each) on the bench's own database and Redis prefix:
//   modules  node dist/cli/entry.js serve         (tsc's output, one file per module: before the bundle)
//   bundle   node bin/ryvion-authz.js serve       (the esbuild bundle with its code cache: what ships)
//   bundle-no-cache  node dist/bundle/ryvion-authz.cjs serve  (the same bundle by Node's CommonJS
//            loader: compiled at every start, no code cache; what the cache gains)
//   compare  node $START_COMPARE serve, when set
// Start to ready: from spawn to the time on the service's "ryvion-authz ready" line; the line's
// startup_ms says where the time went. Needs `npm run build` first. Prints one JSON object.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, running, spawnChild } from './lib/procs.js';
import { median, round } from './lib/stats.js';
import { benchRedis, createBenchDatabase } from './lib/stores.js';
import { readFileSync } from 'node:fs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const starts = Number(process.argv[2] ?? 8);
const variants: Record<string, string> = {
  modules: path.join(ROOT, 'dist', 'cli', 'entry.js'),
  bundle: path.join(ROOT, 'bin', 'ryvion-authz.js'),
  'bundle-no-cache': path.join(ROOT, 'dist', 'bundle', 'ryvion-authz.cjs'),
};
// START_COMPARE=FILE: one more variant, `node FILE serve`, alternated with the others: say, a copy of
// dist/bundle made before a change (`cp -r dist/bundle dist/bundle-before` before rebuilding; under
// dist/ so that it finds the package's files), run by node itself: no launcher, no code cache, no
// source maps.
if (process.env.START_COMPARE) variants.compare = path.resolve(process.env.START_COMPARE);

async function main(): Promise<void> {
  const db = await createBenchDatabase(process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  const redis = await benchRedis(process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const dir = mkdtempSync(path.join(tmpdir(), 'ryvion-start-'));
  const ready: Record<string, number[]> = {};
  const phases: Record<string, Array<Record<string, number>>> = {};
  try {
    const names = Object.keys(variants);
    for (let i = 0; i < starts; i++) {
      for (const name of i % 2 === 0 ? names : [...names].reverse()) {
        const [grpcPort, opsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
        const logFile = path.join(dir, `${name}-${i}.log`);
        const child = await spawnChild({
          name, script: variants[name]!, grpcPort, opsPort, logFile,
          env: {
            DATABASE_URL: db.url, REDIS_URL: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379', REDIS_KEY_PREFIX: redis.prefix,
            KEY_PEPPER: randomBytes(48).toString('base64'), LOG_LEVEL: 'info', BIND_ADDRESS: '127.0.0.1',
            GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), OPS_PORT: String(opsPort), SHUTDOWN_READINESS_DELAY_MS: '0',
          },
        });
        await child.stop();
        const line = readFileSync(logFile, 'utf8').split('\n').find((l) => l.includes('"ryvion-authz ready"'));
        const startup = (JSON.parse(line ?? '{}') as { startup_ms?: Record<string, number> }).startup_ms ?? {};
        (ready[name] ??= []).push(child.readyLogMs ?? child.readyMs);
        (phases[name] ??= []).push(startup);
        process.stderr.write(`${name} #${i + 1}: ${round(child.readyLogMs ?? child.readyMs, 0)} ms ${JSON.stringify(startup)}\n`);
      }
    }
  } finally {
    await redis.close().catch(() => undefined);
    await db.drop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
  const out = Object.fromEntries(
    Object.entries(ready).map(([name, v]) => {
      const keys = [...new Set(phases[name]!.flatMap((p) => Object.keys(p)))];
      return [name, {
        startToReadyMs: { median: round(median(v), 0), min: round(Math.min(...v), 0), max: round(Math.max(...v), 0), all: v.map((x) => round(x, 0)) },
        medianPhasesMs: Object.fromEntries(keys.map((k) => [k, median(phases[name]!.map((p) => p[k] ?? 0))])),
      }];
    }),
  );
  process.stdout.write(`${JSON.stringify({ starts, at: new Date().toISOString(), variants: out }, null, 2)}\n`);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const child of running) child.kill('SIGKILL');
    process.exit(130);
  });
}
main().then(() => process.exit(0), (err: Error) => {
  process.stderr.write(`start-time failed: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
