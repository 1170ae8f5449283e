// `npx tsx bench/profile-check.ts [alloc,gc,async,rate]`: scenario 1 (a valid key from memory, rate
// limiting on) profiled side by side with the do-nothing Check server, both driven by the same
// h2load settings and alternated. Writes one JSON object to stdout (and the progress to stderr).
//
//   alloc  bytes allocated per check: the sum of V8's `allocated=` figures (--trace-gc-nvp, bytes
//          allocated since the GC before) over every GC in a window of h2load -n N, divided by N; and
//          the bytes per check that survived the young generation (`new_space_survived=`)
//   gc     GC time per check and share of wall time under h2load load (perf_hooks GC entries)
//   async  async resources created per check (async_hooks init by type: PROMISE, TickObject, ...),
//          the difference between h2load -n 41 and -n 1 on one connection, divided by 40
//   rate   throughput and CPU per check, alternated rounds (as `npm run bench` scenario 1)
//
// PROFILE_COMPARE_TREE=DIR (a tree kept by BENCH_KEEP_BUILD=1, e.g. of the commit before a change)
// adds a third server, that tree's service, to every alternation: before and after in one run.
// PROFILE_ROUNDS (default 5), PROFILE_CHECKS (alloc window, default 20000).
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { KeyHasher } from '../src/keys/hash.js';
import { KeyRepository } from '../src/keys/repository.js';
import { buildTree, existingTree, type BuiltTree } from './lib/build.js';
import { runH2load, type H2loadResult } from './lib/h2load.js';
import { envPairs, freePort, running, spawnChild, type Child } from './lib/procs.js';
import { checkRequest, encodeCheckRequest, grpcFrame } from './lib/request.js';
import { median, round } from './lib/stats.js';
import { benchRedis, createBenchDatabase, insertBulkKeys } from './lib/stores.js';
import { runGrpcLoad, type GrpcLoadResult } from './lib/grpc-load.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const modes = new Set((process.argv[2] ?? 'alloc,gc,async,rate').split(','));
const rounds = Number(process.env.PROFILE_ROUNDS ?? 5);
// PROFILE_ENV="K=V ..." and PROFILE_NODE_ARGS="--flag ...": given to every server (do-nothing and service alike), for experiments.
const profileEnv = envPairs(process.env.PROFILE_ENV);
const allocChecks = Number(process.env.PROFILE_CHECKS ?? 20_000);
const log = (m: string): void => void process.stderr.write(`[profile ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

interface Probe {
  heapUsed: number;
  gc: { count: number; ms: number; minorMs: number; majorMs: number; incrementalMs: number };
  inits: Record<string, number>;
  cpu: { user: number; system: number };
}

interface Server {
  label: string;
  child: Child;
  probeFile: string;
}

async function probe(s: Server): Promise<Probe> {
  const lines = (): string[] => readFileSync(s.probeFile, 'utf8').split('\n').filter(Boolean);
  const before = lines().length;
  process.kill(s.child.pid, 'SIGUSR2');
  for (let i = 0; i < 500; i++) {
    const now = lines();
    if (now.length > before) return JSON.parse(now[now.length - 1]!) as Probe;
    await sleep(10);
  }
  throw new Error(`${s.label}: no probe line`);
}

/**
 * Sums over the GC trace lines written to the log since `offset`: `allocated=`, and what survived
 * the young generation (`new_space_survived=`, copied or promoted), which is what a minor
 * collection's time goes with.
 */
function allocatedSince(s: Server, offset: number): { bytes: number; survived: number; gcs: number } {
  const text = readFileSync(s.child.logFile, 'utf8').slice(offset);
  let bytes = 0;
  let survived = 0;
  let gcs = 0;
  for (const m of text.matchAll(/\ballocated=(\d+)/g)) {
    bytes += Number(m[1]);
    gcs++;
  }
  for (const m of text.matchAll(/\bnew_space_survived=(\d+)/g)) survived += Number(m[1]);
  return { bytes, survived, gcs };
}

interface HeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: HeapNode[];
}

/** Sampled bytes per check: by package (or src/ file), by function, and by the nearest src/ frame up the stack. */
function summariseHeapProfile(p: HeapNode | { head: HeapNode }, checks: number): Record<string, unknown> {
  const head = 'head' in p ? p.head : p;
  const byPackage = new Map<string, number>();
  const byFunction = new Map<string, number>();
  const bySrcCaller = new Map<string, number>();
  let total = 0;
  const where = (url: string): string => {
    const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
    if (nm) return nm[1]!;
    const src = /\/(src\/.*|bench\/.*)$/.exec(url);
    if (src) return src[1]!;
    return url.startsWith('node:') ? url : url === '' ? '(native/V8)' : url;
  };
  const add = (m: Map<string, number>, k: string, v: number): void => void m.set(k, (m.get(k) ?? 0) + v);
  const walk = (n: HeapNode, srcCaller: string): void => {
    const f = n.callFrame;
    const here = where(f.url);
    const caller = here.startsWith('src/') ? `${f.functionName || '(anonymous)'} ${here}:${f.lineNumber + 1}` : srcCaller;
    if (n.selfSize > 0) {
      total += n.selfSize;
      add(byPackage, here, n.selfSize);
      add(byFunction, `${f.functionName || '(anonymous)'} ${here}:${f.lineNumber + 1}`, n.selfSize);
      add(bySrcCaller, caller, n.selfSize);
    }
    for (const c of n.children) walk(c, caller);
  };
  walk(head, '(no src/ frame)');
  const top = (m: Map<string, number>, n: number): Record<string, number> =>
    Object.fromEntries([...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => [k, Math.round(v / checks)]));
  return { sampledBytesPerCheck: Math.round(total / checks), byPackage: top(byPackage, 15), bySrcCaller: top(bySrcCaller, 25), byFunction: top(byFunction, 25) };
}

async function main(): Promise<void> {
  const tree = buildTree(ROOT);
  const compare = process.env.PROFILE_COMPARE_TREE ? existingTree(process.env.PROFILE_COMPARE_TREE) : undefined;
  const db = await createBenchDatabase(process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres');
  const redis = await benchRedis(process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379');
  const servers: Server[] = [];
  const stopAll = async (): Promise<void> => {
    for (const s of servers.splice(0)) await s.child.stop().catch(() => undefined);
  };
  const out: Record<string, unknown> = { startedAt: new Date().toISOString(), modes: [...modes], rounds };
  try {
    const pepper = randomBytes(48).toString('base64');
    const hasher = new KeyHasher({ version: 1, secret: pepper });
    const repo = new KeyRepository(db.pool, hasher, 'live');
    const account = await repo.createAccount('bench@example.com', 'free', 1_000_000_000);
    const { secret } = await repo.createKey({ accountId: account.id, name: 'bench', scope: 'buyer', expiresAt: null, rateLimitRpm: 1_000_000_000 });
    const body = path.join(tree.dir, 'valid.bin');
    writeFileSync(body, grpcFrame(encodeCheckRequest(checkRequest({ key: secret }))));

    const start = async (label: string, t: BuiltTree | undefined, nodeOptions: string, extraEnv: Record<string, string> = {}): Promise<Server> => {
      const probeFile = path.join(tree.dir, `probe-${label}-${randomBytes(3).toString('hex')}.jsonl`);
      writeFileSync(probeFile, '');
      const grpcPort = await freePort();
      const env: Record<string, string> = { BENCH_PROBE_FILE: probeFile, ...profileEnv, ...extraEnv };
      const nodeArgs = [`--import=${tree.entry('bench/probe.ts')}`, ...nodeOptions.split(' ').filter(Boolean), ...(process.env.PROFILE_NODE_ARGS ?? '').split(' ').filter(Boolean)];
      let child: Child;
      if (!t) {
        child = await spawnChild({ name: label, script: tree.entry('bench/noop-server.ts'), grpcPort, nodeArgs, logFile: `${probeFile}.log`, env: { ...env, GRPC_PORT: String(grpcPort) } });
      } else {
        const opsPort = await freePort();
        child = await spawnChild({
          name: label, script: t.service, grpcPort, opsPort, nodeArgs, logFile: `${probeFile}.log`,
          env: {
            DATABASE_URL: db.url, REDIS_URL: process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379', REDIS_KEY_PREFIX: redis.prefix, KEY_PEPPER: pepper,
            LOG_LEVEL: 'info', BIND_ADDRESS: '127.0.0.1', GRPC_PORT: String(grpcPort), HTTP_PORT: String(await freePort()), OPS_PORT: String(opsPort),
            SHUTDOWN_READINESS_DELAY_MS: '0', SHUTDOWN_DRAIN_MS: '2000', RATE_LIMIT_ENABLED: 'true',
            ...env, // last: PROFILE_ENV may change any of the above (RATE_LIMIT_ENABLED=false, say)
          },
        });
      }
      const s = { label, child, probeFile };
      servers.push(s);
      return s;
    };
    const startAll = async (nodeOptions: string, extraEnv: Record<string, string> = {}): Promise<Server[]> => [
      await start('noop', undefined, nodeOptions, extraEnv),
      await start('service', tree, nodeOptions, extraEnv),
      ...(compare ? [await start('compare', compare, nodeOptions, extraEnv)] : []),
    ];
    const h2 = (s: Server, o: { durationS?: number; requests?: number; clients?: number; streams?: number }): Promise<H2loadResult> =>
      runH2load({
        url: `http://127.0.0.1:${s.child.grpcPort}/envoy.service.auth.v3.Authorization/Check`,
        bodyFile: body, clients: o.clients ?? 10, streams: o.streams ?? 10, durationS: o.durationS ?? 0, warmupS: 0,
        ...(o.requests ? { requests: o.requests } : {}),
        logFile: path.join(tree.dir, `h2load-${randomBytes(3).toString('hex')}.log`),
      });
    const order = (list: Server[], r: number): Server[] => (r % 2 === 0 ? list : [...list].reverse());
    const warm = async (list: Server[]): Promise<void> => {
      for (const s of list) await h2(s, { durationS: 2 });
    };

    // Allocation with --trace-gc-nvp; GC time without it (the trace's printing is not GC work).
    for (const mode of ['alloc', 'gc'].filter((m) => modes.has(m))) {
      const list = await startAll(mode === 'alloc' ? '--trace-gc-nvp' : '');
      await warm(list);
      const alloc: Record<string, number[]> = {};
      const survived: Record<string, number[]> = {};
      const gcMsPerKCheck: Record<string, number[]> = {};
      const gcShare: Record<string, number[]> = {};
      const gcCounts: Record<string, number[]> = {};
      for (let r = 0; r < rounds; r++) {
        for (const s of order(list, r)) {
          if (mode === 'alloc') {
            const offset = readFileSync(s.child.logFile, 'utf8').length;
            const res = await h2(s, { requests: allocChecks });
            await sleep(50);
            const a = allocatedSince(s, offset);
            (alloc[s.label] ??= []).push(a.bytes / res.done);
            (survived[s.label] ??= []).push(a.survived / res.done);
            log(`alloc ${s.label}: ${round(a.bytes / res.done, 0)} B/check over ${res.done} checks, ${a.gcs} GCs, ${round(a.survived / res.done, 0)} B/check survived the young generation`);
          }
          if (mode === 'gc') {
            const p0 = await probe(s);
            const t0 = performance.now();
            const res = await h2(s, { durationS: 3 });
            const p1 = await probe(s);
            const wall = performance.now() - t0;
            const ms = p1.gc.ms - p0.gc.ms;
            (gcMsPerKCheck[s.label] ??= []).push((ms / res.done) * 1000);
            (gcShare[s.label] ??= []).push(ms / wall);
            (gcCounts[s.label] ??= []).push(p1.gc.count - p0.gc.count);
            log(`gc ${s.label}: ${round(ms, 1)} ms in ${p1.gc.count - p0.gc.count} GCs (minor ${round(p1.gc.minorMs - p0.gc.minorMs, 1)}, major ${round(p1.gc.majorMs - p0.gc.majorMs, 1)}, incremental ${round(p1.gc.incrementalMs - p0.gc.incrementalMs, 1)}) over ${res.done} checks in ${round(wall, 0)} ms`);
          }
        }
      }
      const summary = (m: Record<string, number[]>, d = 1): Record<string, unknown> =>
        Object.fromEntries(Object.entries(m).map(([k, v]) => [k, { median: round(median(v), d), min: round(Math.min(...v), d), max: round(Math.max(...v), d) }]));
      if (mode === 'alloc') {
        out.allocatedBytesPerCheck = { checksPerWindow: allocChecks, ...summary(alloc, 0) };
        out.youngSurvivorBytesPerCheck = summary(survived, 0);
      }
      if (mode === 'gc') out.gc = { msPer1000Checks: summary(gcMsPerKCheck, 2), shareOfWallTime: summary(gcShare, 4), gcsPerRound: summary(gcCounts, 0) };
      await stopAll();
    }

    if (modes.has('heap')) {
      // Where the allocation goes: V8's sampling heap profiler over PROFILE_CHECKS checks, collected objects included.
      const profiles: Record<string, unknown> = {};
      for (const label of ['noop', 'service']) {
        const file = path.join(tree.dir, `heap-${label}.json`);
        const s = await start(label, label === 'noop' ? undefined : tree, '', { BENCH_PROBE_HEAP_PROFILE: file });
        await warm([s]);
        await probe(s);
        const res = await h2(s, { requests: allocChecks });
        await probe(s);
        for (let i = 0; i < 500 && !existsSync(file); i++) await sleep(10);
        await sleep(200);
        profiles[label] = summariseHeapProfile(JSON.parse(readFileSync(file, 'utf8')) as HeapNode | { head: HeapNode }, res.done);
        log(`heap ${label}: ${JSON.stringify(profiles[label]).slice(0, 400)}`);
        await stopAll();
      }
      out.heapSampling = profiles;
    }

    if (modes.has('memory')) {
      // 100 k keys through the service once (CACHE_MEMORY_TTL_MS=600000: all stay in memory), the
      // same pass through the do-nothing server; then RSS and heap of both, before and after a full
      // collection, and what the service's live heap was allocated by (sampling profile of live objects).
      const count = Number(process.env.PROFILE_KEYS ?? 100_000);
      const keys = (await insertBulkKeys(db.pool, hasher, { count, accounts: 1000, rpm: 1_000_000_000, scope: 'buyer' })).keys;
      const keysFile = path.join(tree.dir, 'fill.txt');
      writeFileSync(keysFile, keys.join('\n') + '\n');
      const heapFile = path.join(tree.dir, 'heap-live.json');
      const noop = await start('noop', undefined, '--expose-gc');
      const svc = await start('service', tree, '--expose-gc', { CACHE_MEMORY_TTL_MS: '600000', BENCH_PROBE_HEAP_PROFILE: heapFile, BENCH_PROBE_HEAP_LIVE: process.env.PROFILE_HEAP_PROMOTED === '1' ? 'promoted' : '1', ...(process.env.PROFILE_HEAP_SNAPSHOT ? { BENCH_PROBE_HEAP_SNAPSHOT: path.resolve(process.env.PROFILE_HEAP_SNAPSHOT) } : {}) });
      const fill = (s: Server): Promise<GrpcLoadResult> =>
        runGrpcLoad({ workerScript: tree.entry('bench/load-worker.ts'), port: s.child.grpcPort, keysFile, workers: 2, concurrencyPerWorker: 3, channelsPerWorker: 4, mode: 'once', sharedSequence: false, durationMs: 600_000 });
      const atStart = { noop: noop.child.rss().rss, service: svc.child.rss().rss };
      await probe(svc); // starts the live-object sampling
      const nf = await fill(noop);
      const sf = await fill(svc);
      log(`memory: filled ${nf.answered} (do-nothing) and ${sf.answered} (service, answers ${JSON.stringify(sf.codes)})`);
      const rss = { noop: noop.child.rss().rss, service: svc.child.rss().rss };
      const pn = (await probe(noop)) as Probe & { heapUsedAfterGc: number; rssAfterGc: number; spacesAfterGc: Record<string, number> };
      await probe(svc); // stops the sampling, writes the profile
      const ps = (await probe(svc)) as Probe & { heapUsedAfterGc: number; rssAfterGc: number; spacesAfterGc: Record<string, number> };
      for (let i = 0; i < 500 && !existsSync(heapFile); i++) await sleep(10);
      await sleep(500);
      const mb = (v: number): number => round(v / 2 ** 20, 1);
      out.memory = {
        keys: count,
        rssAtStartMb: { noop: mb(atStart.noop), service: mb(atStart.service) },
        rssAfterFillMb: { noop: mb(rss.noop), service: mb(rss.service), serviceAboveNoop: mb(rss.service - rss.noop) },
        heapUsedAfterFillMb: { noop: mb(pn.heapUsed), service: mb(ps.heapUsed) },
        heapUsedAfterFullGcMb: { noop: mb(pn.heapUsedAfterGc), service: mb(ps.heapUsedAfterGc) },
        rssAfterFullGcMb: { noop: mb(pn.rssAfterGc), service: mb(ps.rssAfterGc) },
        memoryAfterFullGc: { noop: (pn as unknown as { memoryAfterGc?: unknown }).memoryAfterGc, service: (ps as unknown as { memoryAfterGc?: unknown }).memoryAfterGc },
        spacesAfterFullGcMb: { noop: Object.fromEntries(Object.entries(pn.spacesAfterGc).map(([k, v]) => [k, mb(v)])), service: Object.fromEntries(Object.entries(ps.spacesAfterGc).map(([k, v]) => [k, mb(v)])) },
        serviceLiveHeapBytesPerKey: summariseHeapProfile(JSON.parse(readFileSync(heapFile, 'utf8')) as HeapNode | { head: HeapNode }, count),
      };
      log(`memory: ${JSON.stringify(out.memory).slice(0, 600)}`);
      await stopAll();
    }

    if (modes.has('async')) {
      const list = await startAll('', { BENCH_PROBE_ASYNC: '1' });
      await warm(list);
      const per: Record<string, Array<Record<string, number>>> = {};
      for (let r = 0; r < rounds; r++) {
        for (const s of order(list, r)) {
          const count = async (n: number): Promise<Record<string, number>> => {
            await sleep(200);
            const p0 = await probe(s);
            await h2(s, { requests: n, clients: 1, streams: 1 });
            await sleep(200);
            const p1 = await probe(s);
            return Object.fromEntries(Object.keys(p1.inits).map((k) => [k, (p1.inits[k] ?? 0) - (p0.inits[k] ?? 0)]));
          };
          const one = await count(1);
          const many = await count(41);
          const diff = Object.fromEntries(Object.keys(many).map((k) => [k, round(((many[k] ?? 0) - (one[k] ?? 0)) / 40, 2)]).filter(([, v]) => v !== 0));
          (per[s.label] ??= []).push(diff);
          log(`async ${s.label}: ${JSON.stringify(diff)}`);
        }
      }
      out.asyncResourcesPerCheck = Object.fromEntries(
        Object.entries(per).map(([label, rs]) => {
          const types = [...new Set(rs.flatMap((x) => Object.keys(x)))];
          return [label, Object.fromEntries(types.map((t) => [t, round(median(rs.map((x) => x[t] ?? 0)), 2)]))];
        }),
      );
      await stopAll();
    }

    if (modes.has('rate')) {
      const list = await startAll('');
      await warm(list);
      const rps: Record<string, number[]> = {};
      const cpu: Record<string, number[]> = {};
      const ratios: Record<string, number[]> = {};
      for (let r = 0; r < rounds; r++) {
        const got: Record<string, number> = {};
        for (const s of order(list, r)) {
          const c0 = s.child.cpuSeconds();
          const res = await h2(s, { durationS: 3 });
          const c = s.child.cpuSeconds() - c0;
          got[s.label] = res.rps;
          (rps[s.label] ??= []).push(res.rps);
          (cpu[s.label] ??= []).push((c / res.done) * 1e6);
        }
        for (const l of Object.keys(got)) if (l !== 'noop') (ratios[l] ??= []).push(got[l]! / got.noop!);
        log(`rate round ${r + 1}: ${Object.entries(got).map(([k, v]) => `${k} ${round(v, 0)}/s`).join(', ')}`);
      }
      const summary = (m: Record<string, number[]>, d: number): Record<string, unknown> =>
        Object.fromEntries(Object.entries(m).map(([k, v]) => [k, { median: round(median(v), d), min: round(Math.min(...v), d), max: round(Math.max(...v), d), all: v.map((x) => round(x, d)) }]));
      out.rate = { checksPerSec: summary(rps, 0), cpuUsPerCheck: summary(cpu, 1), ratioToNoop: summary(ratios, 3) };
      await stopAll();
    }
  } finally {
    await stopAll();
    await redis.close().catch(() => undefined);
    await db.drop().catch(() => undefined);
    // BENCH_KEEP_BUILD=1: the tree stays, with each server's log (`*.log` beside its probe file).
    if (process.env.BENCH_KEEP_BUILD === '1') log(`tree kept: ${tree.dir}`);
    else tree.remove();
  }
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const child of running) child.kill('SIGKILL');
    process.exit(130);
  });
}
main().then(() => process.exit(0), (err: Error) => {
  process.stderr.write(`profile failed: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
