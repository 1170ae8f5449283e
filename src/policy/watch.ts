// Hot reload of the policy file, including Kubernetes ConfigMap volumes that swap a `..data` symlink.
//
// A ConfigMap update never writes to the file we were given: the kubelet writes a new
// timestamped directory and renames a fresh `..data` symlink over the old one. A watch on the
// file's inode therefore sees nothing, so we watch the containing directory and, because
// directory events can be lost (or the watch can die with the directory), also poll the
// resolved target's identity. Both only schedule a debounced re-read; the content decides.

import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { readFile, realpath, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { compilePolicy, PolicyError, type CompiledPolicy } from './policy.js';

export interface WatchPolicyOptions {
  // Called with a policy whose text differs from the last good one; never for the initial file.
  onReload(policy: CompiledPolicy): void;
  // Called once per distinct bad content or read failure; the caller keeps its last good policy.
  onError(err: PolicyError): void;
  debounceMs?: number;
  pollIntervalMs?: number;
}

export interface PolicyWatcher {
  close(): void;
}

const DEFAULT_DEBOUNCE_MS = 200;
const DEFAULT_POLL_INTERVAL_MS = 1000;

export function watchPolicy(path: string, opts: WatchPolicyOptions): PolicyWatcher {
  const debounceMs = opts.debounceMs ?? DEFAULT_DEBOUNCE_MS;
  const pollIntervalMs = opts.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
  const dir = dirname(path);

  let closed = false;
  let dirWatcher: FSWatcher | null = null;
  let checkTimer: NodeJS.Timeout | null = null;
  let checking = false;
  let checkAgain = false;
  let polling = false;
  let lastSignature: string | null = null;
  // The caller loaded the file just before starting us, so its current text is the baseline.
  let lastGoodText: string | null = readInitial(path);
  // Text or read-failure marker last acted on, so a broken file is reported once, not every poll.
  let lastSeen: string | null = lastGoodText;
  let consecutiveReadFailures = 0;

  const scheduleCheck = (delayMs: number = debounceMs): void => {
    if (closed) return;
    if (checkTimer !== null) clearTimeout(checkTimer);
    checkTimer = setTimeout(() => {
      checkTimer = null;
      void runCheck();
    }, delayMs);
    checkTimer.unref();
  };

  const runCheck = async (): Promise<void> => {
    if (checking) {
      checkAgain = true;
      return;
    }
    checking = true;
    try {
      await check();
    } finally {
      checking = false;
      if (checkAgain) {
        checkAgain = false;
        scheduleCheck();
      }
    }
  };

  const check = async (): Promise<void> => {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if (closed) return;
      consecutiveReadFailures += 1;
      // Editors that delete and recreate, or a swap caught half-way, leave the file missing for a
      // moment: only a failure that survives one more poll interval is worth reporting.
      if (consecutiveReadFailures === 1) {
        scheduleCheck(pollIntervalMs);
        return;
      }
      const marker = `\0unreadable:${errorCode(err)}`;
      if (lastSeen === marker) return;
      lastSeen = marker;
      opts.onError(new PolicyError([`${path}: cannot read policy file: ${errorCode(err)}`]));
      return;
    }
    if (closed) return;
    consecutiveReadFailures = 0;
    if (text === lastSeen) return;
    lastSeen = text;
    // Back to the last good text after a broken one: the caller already runs that policy.
    if (text === lastGoodText) return;
    let policy: CompiledPolicy;
    try {
      policy = compilePolicy(text, path);
    } catch (err) {
      opts.onError(err instanceof PolicyError ? err : new PolicyError([`${path}: ${String(err)}`]));
      return;
    }
    lastGoodText = text;
    opts.onReload(policy);
  };

  const ensureDirWatcher = (): void => {
    if (dirWatcher !== null || closed) return;
    try {
      const watcher = watch(dir, { persistent: false }, () => scheduleCheck());
      // A dead watch (directory removed, inotify limits) is retried on the next poll.
      watcher.on('error', () => {
        watcher.close();
        if (dirWatcher === watcher) dirWatcher = null;
      });
      dirWatcher = watcher;
    } catch {
      dirWatcher = null;
    }
  };

  const poll = async (): Promise<void> => {
    ensureDirWatcher();
    if (polling) return;
    polling = true;
    try {
      const signature = await fileSignature(path);
      if (signature !== lastSignature) {
        lastSignature = signature;
        scheduleCheck();
      }
    } finally {
      polling = false;
    }
  };

  ensureDirWatcher();
  void poll();
  const pollTimer = setInterval(() => void poll(), pollIntervalMs);
  pollTimer.unref();

  return {
    close(): void {
      closed = true;
      clearInterval(pollTimer);
      if (checkTimer !== null) clearTimeout(checkTimer);
      checkTimer = null;
      dirWatcher?.close();
      dirWatcher = null;
    },
  };
}

function readInitial(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

// Resolved target plus identity: a ConfigMap swap changes the real path and inode even when
// size and mtime happen to match.
async function fileSignature(path: string): Promise<string> {
  try {
    const real = await realpath(path);
    const s = await stat(real);
    return `${real}|${s.dev}|${s.ino}|${s.size}|${s.mtimeMs}|${s.ctimeMs}`;
  } catch (err) {
    return `missing:${errorCode(err)}`;
  }
}

function errorCode(err: unknown): string {
  if (err instanceof Error && 'code' in err && typeof err.code === 'string') return err.code;
  return String(err);
}
