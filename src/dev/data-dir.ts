// DATA_DIR of `ryvion-authz dev`: where the embedded store, its pepper and the run lock live.
//
//   DATA_DIR/postgres   the Postgres data directory (see embedded-postgres.ts)
//   DATA_DIR/run        the server's Unix socket (no TCP port)
//   DATA_DIR/pepper     the HMAC secret for key hashes, generated on the first start (mode 0600)
//   DATA_DIR/dev.pid    held while a `dev` process runs on this DATA_DIR
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../config.js';
import { StartupError } from '../service.js';

export const DEFAULT_DATA_DIR = '.ryvion-authz';

/** DATA_DIR from the environment (empty counts as unset), absolute, created if missing (mode 0700). */
export function prepareDataDir(env: NodeJS.ProcessEnv, cwd = process.cwd()): string {
  const raw = env.DATA_DIR?.trim() ? env.DATA_DIR.trim() : DEFAULT_DATA_DIR;
  if (raw.includes('\0')) throw new ConfigError('DATA_DIR: must be a directory path');
  const dir = path.resolve(cwd, raw);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new ConfigError(`DATA_DIR: cannot create ${dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return dir;
}

function processLooksLikeNode(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // Pids are reused (quickly, in containers): a live pid that is not a Node process is not a `dev`.
    return /node|ryvion-authz/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return true; // no /proc (macOS): trust the pid
  }
}

/**
 * Takes DATA_DIR for this process: one `dev` per DATA_DIR. A lock left by a process that is gone
 * is taken over. Returns the release function (also run at exit).
 */
export function lockDataDir(dir: string): () => void {
  const file = path.join(dir, 'dev.pid');
  const mine = `${process.pid}\n`;
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, mine, { flag: 'wx', mode: 0o644 });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) {
        throw new StartupError(`DATA_DIR: cannot lock ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      const holder = Number(readFileSync(file, 'utf8').trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && processLooksLikeNode(holder)) {
        throw new StartupError(`DATA_DIR: ${dir} is in use by another \`ryvion-authz dev\` (pid ${holder}); stop it first or set another DATA_DIR`);
      }
      unlinkSync(file);
    }
  }
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    try {
      if (readFileSync(file, 'utf8') === mine) unlinkSync(file);
    } catch {
      // gone already
    }
  };
  process.once('exit', release);
  return release;
}

/**
 * The pepper: generated once (48 random bytes, base64) and kept in DATA_DIR/pepper. A store
 * without its pepper cannot verify any key, so a missing file next to an existing store is an error.
 */
export function loadOrCreatePepper(dir: string): { pepper: string; created: boolean } {
  const file = path.join(dir, 'pepper');
  if (existsSync(file)) {
    const pepper = readFileSync(file, 'utf8').trim();
    if (Buffer.byteLength(pepper, 'utf8') < 32) {
      throw new StartupError(`DATA_DIR: ${file} holds less than 32 bytes; restore it, or delete ${dir} to start over`);
    }
    return { pepper, created: false };
  }
  if (existsSync(path.join(dir, 'postgres', 'PG_VERSION'))) {
    throw new StartupError(`DATA_DIR: ${file} is missing, and the keys in ${dir} cannot be verified without it: restore it, or delete ${dir} to start over`);
  }
  const pepper = randomBytes(48).toString('base64');
  writeFileSync(file, `${pepper}\n`, { flag: 'wx', mode: 0o600 });
  return { pepper, created: true };
}
