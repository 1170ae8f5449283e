// `ryvion-authz dev` and `npm start`: from an empty DATA_DIR to a working gate in one command, on an
// embedded Postgres. Real processes: the key is read from what a newcomer sees, then used over gRPC
// (Check) and HTTP; restarts keep every key and never print one again; a killed process leaves no
// Postgres behind. Start-to-ready times are printed (the README quotes them).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { sendCheck } from '../../src/cli/check-client.js';
import { postmasterPid } from '../../src/dev/embedded-postgres.js';
import { freePort } from '../helpers/redis-server.js';
import { runCliProcess } from '../helpers/cli.js';
import { ensureBuilt } from '../helpers/build.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const KEY_RE = /ryv_live_[0-9A-Za-z]{49}/g;
const timings: Record<string, number> = {};

interface Running {
  child: ChildProcess;
  output: () => string;
  readyMs: number;
}

const live = new Set<ChildProcess>();

function baseEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  // Only what the test passes: the developer's DATABASE_URL, REDIS_URL, KEY_PEPPER must not leak in.
  return { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'info', ...extra };
}

/** Starts a command in its own process group (as a terminal would) and resolves on "ryvion-authz ready". */
function start(cmd: string, args: string[], env: NodeJS.ProcessEnv, opts: { uid?: number; gid?: number } = {}): Promise<Running> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    live.add(child);
    let out = '';
    const timer = setTimeout(() => reject(new Error(`not ready in 45 s:\n${out}`)), 45_000);
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (/"msg":"ryvion-authz ready"/.test(out)) {
        clearTimeout(timer);
        resolve({ child, output: () => out, readyMs: Math.round(performance.now() - t0) });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => {
      live.delete(child);
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before ready:\n${out}`));
    });
  });
}

function exited(child: ChildProcess, ms = 20_000): Promise<number | null> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    const timer = setTimeout(() => reject(new Error('did not exit')), ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/** Ctrl-C in a terminal: the signal goes to the whole foreground process group (npm, sh, node). */
async function stopGroup(run: Running, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  process.kill(-run.child.pid!, signal);
  return exited(run.child);
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Nothing left running on DATA_DIR: the dev lock is released and no postmaster holds the data directory. */
async function expectNothingRunning(dataDir: string): Promise<void> {
  await until('dev.pid released', () => !existsSync(path.join(dataDir, 'dev.pid')));
  const pm = postmasterPid(dataDir);
  await until(`postmaster ${pm} gone`, () => !alive(pm));
}

interface Ports {
  grpc: number;
  http: number;
  ops: number;
}

async function ports(): Promise<Ports> {
  return { grpc: await freePort(), http: await freePort(), ops: await freePort() };
}

function portEnv(p: Ports): Record<string, string> {
  return { GRPC_PORT: String(p.grpc), HTTP_PORT: String(p.http), OPS_PORT: String(p.ops) };
}

async function check(p: Ports, key: string): Promise<{ allowed: boolean; http_status: number; headers: Record<string, string> }> {
  return sendCheck({ target: `127.0.0.1:${p.grpc}`, method: 'POST', path: '/v1/chat/completions', headers: { authorization: `Bearer ${key}` }, timeoutMs: 5000 });
}

async function me(p: Ports, key: string): Promise<{ status: number; body: { account?: { id: string; email: string }; key?: { id: string; name: string; scope: string } } }> {
  const res = await fetch(`http://127.0.0.1:${p.http}/api/v1/auth/me`, { headers: { authorization: `Bearer ${key}` } });
  return { status: res.status, body: (await res.json()) as never };
}

async function createKey(p: Ports, key: string): Promise<{ status: number; body: { id: string; key: string; scope: string } }> {
  const res = await fetch(`http://127.0.0.1:${p.http}/api/v1/auth/api-keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'my-new-key' }),
  });
  return { status: res.status, body: (await res.json()) as never };
}

/** The one bootstrap key in the first start's output, and the checks on what is printed around it. */
function bootstrapKey(output: string, p: Ports): string {
  const keys = new Set(output.match(KEY_RE));
  expect(keys.size).toBe(1);
  const [key] = [...keys] as [string];
  // Plain text for people, never a structured log field (our logger would redact it anyway).
  for (const line of output.split('\n')) if (line.startsWith('{')) expect(line).not.toContain(key);
  expect(output).toContain(`curl http://localhost:${p.http}/api/v1/auth/me -H "Authorization: Bearer ${key}"`);
  expect(output).toContain(`curl -X POST http://localhost:${p.http}/api/v1/auth/api-keys -H "Authorization: Bearer ${key}"`);
  expect(output).toContain(`-H "Content-Type: application/json" -d '{"name":"my-new-key"}'`);
  // The Envoy snippet is valid YAML with the settings the README recommends.
  const snippet = output.slice(output.indexOf('http_filters:'), output.indexOf('\nData, pepper'));
  const envoy = parseYaml(snippet) as {
    http_filters: { name: string; typed_config: Record<string, unknown> & { grpc_service: { timeout: string; envoy_grpc: { cluster_name: string } } } }[];
    clusters: { load_assignment: { endpoints: { lb_endpoints: { endpoint: { address: { socket_address: { address: string; port_value: number } } } }[] }[] } }[];
  };
  const filter = envoy.http_filters[0]!;
  expect(filter.name).toBe('envoy.filters.http.ext_authz');
  expect(filter.typed_config.grpc_service.timeout).toBe('0.25s');
  expect(filter.typed_config.failure_mode_allow).toBe(false);
  expect(filter.typed_config.status_on_error).toEqual({ code: 'ServiceUnavailable' });
  expect(envoy.clusters[0]!.load_assignment.endpoints[0]!.lb_endpoints[0]!.endpoint.address.socket_address).toEqual({ address: '127.0.0.1', port_value: p.grpc });
  expect(output).toMatch(/"msg":"dev mode: .*single replica only/);
  return key;
}

async function expectKeyWorks(p: Ports, key: string, keyId?: string): Promise<void> {
  const decision = await check(p, key);
  expect(decision).toMatchObject({ allowed: true, http_status: 200 });
  if (keyId) expect(decision.headers['x-ryvion-key-id']).toBe(keyId);
  const who = await me(p, key);
  expect(who.status).toBe(200);
  expect(who.body.account?.email).toBe('dev@example.com');
}

function tempDataDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

const dirs: string[] = [];
afterEach(() => {
  // A failed test must not leave servers behind: the whole group of each process still running.
  for (const child of live) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  live.clear();
});
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  if (Object.keys(timings).length) console.log(`dev-mode start-to-ready (ms): ${JSON.stringify(timings)}`);
});

describe('ryvion-authz dev', () => {
  it('first start bootstraps one key; it works over gRPC and HTTP; restarts keep both keys, print none, and leave no Postgres behind', { timeout: 90_000 }, async () => {
    const dataDir = tempDataDir('ryvion-dev-');
    dirs.push(dataDir);
    const p = await ports();
    const env = baseEnv({ DATA_DIR: dataDir, ...portEnv(p) });
    const cli = [process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'dev']] as const;

    // 1. first start, empty DATA_DIR
    const first = await start(cli[0], [...cli[1]], env);
    timings['dev first start'] = first.readyMs;
    const key1 = bootstrapKey(first.output(), p);
    const who = await me(p, key1);
    expect(who).toMatchObject({ status: 200, body: { key: { name: 'bootstrap', scope: 'buyer' } } });
    await expectKeyWorks(p, key1, who.body.key!.id);
    const created = await createKey(p, key1);
    expect(created.status).toBe(201);
    const key2 = created.body.key;
    await expectKeyWorks(p, key2, created.body.id);
    expect(statSync(path.join(dataDir, 'pepper')).mode & 0o077).toBe(0);
    // As root, DATA_DIR (0700 from mkdtemp) is opened for the postgres user to enter, not to list or write.
    expect(statSync(dataDir).mode & 0o006).toBe(0);
    // One `dev` per DATA_DIR: a second one is refused with one line, and the first carries on.
    const again = spawnSync(cli[0], [...cli[1]], { cwd: ROOT, env: baseEnv({ DATA_DIR: dataDir, ...portEnv(await ports()) }), encoding: 'utf8', timeout: 30_000 });
    expect(again.status).toBe(1);
    expect(again.stderr.trim()).toMatch(/^ryvion-authz: DATA_DIR: .* is in use by another `ryvion-authz dev` \(pid \d+\)/);
    expect(again.stderr.trim().split('\n')).toHaveLength(1);
    await expectKeyWorks(p, key1);
    expect(await stopGroup(first)).toBe(0);
    await expectNothingRunning(dataDir);
    // Admin commands without DATABASE_URL find the dev store in DATA_DIR, and say when it is not running.
    const accountId = /Created account (acct_\w+)/.exec(first.output())![1]!;
    const stopped = await runCliProcess(['keys', 'list', '--account', accountId], { DATA_DIR: dataDir });
    expect(stopped).toMatchObject({ code: 2, stdout: '' });
    expect(stopped.stderr).toMatch(/is not running: run `npm start` first/);

    // 2. restart: same keys, nothing printed
    const second = await start(cli[0], [...cli[1]], env);
    timings['dev restart'] = second.readyMs;
    expect(second.output()).not.toMatch(KEY_RE);
    expect(second.output()).not.toContain('ryvion-authz dev: first start');
    await expectKeyWorks(p, key1);
    await expectKeyWorks(p, key2);
    const usingDevStore = `ryvion-authz: DATABASE_URL is unset: using the running dev store in ${dataDir}\n`;
    const listed = await runCliProcess(['keys', 'list', '--account', accountId, '--json'], { DATA_DIR: dataDir });
    expect(listed).toMatchObject({ code: 0, stderr: usingDevStore });
    expect((JSON.parse(listed.stdout) as { id: string }[]).map((k) => k.id).sort()).toEqual([who.body.key!.id, created.body.id].sort());
    expect(await runCliProcess(['accounts', 'set-limit', '--account', accountId, '--rpm', '120'], { DATA_DIR: dataDir })).toMatchObject({ code: 0, stderr: usingDevStore });
    const audit = await runCliProcess(['audit', '--account', accountId, '--json'], { DATA_DIR: dataDir });
    expect(audit).toMatchObject({ code: 0, stderr: usingDevStore });
    expect((JSON.parse(audit.stdout) as { action: string }[]).map((e) => e.action)).toContain('key.created');

    // 3. the process dies (SIGKILL, no handler runs): its Postgres stops by itself
    const pm = postmasterPid(dataDir);
    expect(alive(pm)).toBe(true);
    second.child.kill('SIGKILL');
    await exited(second.child);
    await until('the embedded Postgres to stop after its parent died', () => !alive(pm));

    // 4. and the next start still works, with the same keys
    const third = await start(cli[0], [...cli[1]], env);
    timings['dev restart after kill -9'] = third.readyMs;
    expect(third.output()).not.toMatch(KEY_RE);
    await expectKeyWorks(p, key1);
    await expectKeyWorks(p, key2);
    expect(await stopGroup(third, 'SIGINT')).toBe(0);
    await expectNothingRunning(dataDir);
  });

  // As root (CI), the non-root path runs as `nobody`, when that user can read this checkout.
  const nobody = process.getuid?.() === 0 ? spawnSync('id', ['-u', 'nobody'], { encoding: 'utf8' }) : undefined;
  const nobodyGid = nobody?.status === 0 ? Number(spawnSync('id', ['-g', 'nobody'], { encoding: 'utf8' }).stdout.trim()) : NaN;
  const nobodyCanRun =
    nobody?.status === 0 &&
    spawnSync('/bin/sh', ['-c', 'cd "$1" && test -r package.json && test -x "$2"', 'sh', ROOT, process.execPath], {
      uid: Number(nobody.stdout.trim()),
      gid: nobodyGid,
      stdio: 'ignore',
    }).status === 0;
  it.runIf(nobodyCanRun)('runs as a normal user too (here: root starts it as nobody)', { timeout: 60_000 }, async () => {
    const uid = Number(nobody!.stdout.trim());
    const gid = nobodyGid;
    const dataDir = tempDataDir('ryvion-dev-user-');
    dirs.push(dataDir);
    chownSync(dataDir, uid, gid);
    const p = await ports();
    const run = await start(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'dev'], baseEnv({ DATA_DIR: dataDir, HOME: dataDir, ...portEnv(p) }), { uid, gid });
    try {
      const key = bootstrapKey(run.output(), p);
      await expectKeyWorks(p, key);
      // Postgres ran as that user: no `postgres` system user involved.
      expect(statSync(path.join(dataDir, 'postgres')).uid).toBe(uid);
    } finally {
      expect(await stopGroup(run)).toBe(0);
    }
    await expectNothingRunning(dataDir);
  });
});


describe('npm start', () => {
  beforeAll(() => ensureBuilt(), 200_000);

  it('runs `ryvion-authz dev`: a working gate from an empty DATA_DIR, and the same keys after a restart', { timeout: 90_000 }, async () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBe('node bin/ryvion-authz.js dev');
    const dataDir = tempDataDir('ryvion-npm-start-');
    dirs.push(dataDir);
    const p = await ports();
    const env = baseEnv({ DATA_DIR: dataDir, ...portEnv(p) });

    const first = await start('npm', ['start', '--silent'], env);
    timings['npm start first start'] = first.readyMs;
    const key1 = bootstrapKey(first.output(), p);
    await expectKeyWorks(p, key1);
    const created = await createKey(p, key1);
    expect(created.status).toBe(201);
    await expectKeyWorks(p, created.body.key, created.body.id);
    await stopGroup(first);
    await expectNothingRunning(dataDir);

    const second = await start('npm', ['start', '--silent'], env);
    timings['npm start restart'] = second.readyMs;
    expect(second.output()).not.toMatch(KEY_RE);
    await expectKeyWorks(p, key1);
    await expectKeyWorks(p, created.body.key, created.body.id);
    await stopGroup(second);
    await expectNothingRunning(dataDir);
  });
});
