// Waits for a server the test spawned to say it is ready on stdout or stderr.
import type { ChildProcess } from 'node:child_process';

/** Resolves when `child`'s output matches `ready`; rejects if it exits first or `timeoutMs` passes. */
export function waitForReady(child: ChildProcess, ready: RegExp, name: string, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start in ${timeoutMs / 1000} s: ${out}`)), timeoutMs);
    const onData = (d: Buffer): void => {
      out += d.toString();
      if (ready.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code}: ${out}`));
    });
  });
}
