// `npm test` (scripts/test.sh), the README's test command: on a machine without the Debian tools the
// suite needs, and without root's apt-get, it says in one line what to install, then runs vitest.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, inject, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function which(cmd: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.stdout.trim();
}

describe('the test command', () => {
  it('without nginx, prometheus and unzip (and no apt-get), says in one line what to install, then runs the tests', { timeout: 120_000 }, () => {
    // A PATH with only what the script itself needs: none of the tools, no apt-get.
    const bin = mkdtempSync(path.join(os.tmpdir(), 'ryvion-path-'));
    try {
      for (const cmd of ['bash', 'sh', 'node', 'npm', 'npx', 'id', 'dirname', 'rm', 'env']) symlinkSync(which(cmd), path.join(bin, cmd));
      const r = spawnSync('npm', ['test', '--', 'test/unit/config-docs.test.ts'], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 110_000,
        env: { PATH: bin, HOME: process.env.HOME, TEST_DATABASE_URL: inject('pgAdminUrl'), TEST_REDIS_URL: inject('redisUrl') },
      });
      const lines = r.stdout.split('\n').filter((l) => l.startsWith('ryvion-authz tests:'));
      expect(lines).toEqual([
        'ryvion-authz tests: install nginx prometheus unzip first (Debian: sudo apt-get install -y --no-install-recommends nginx prometheus unzip); the tests that need them fail without',
      ]);
      expect(r.status, r.stderr).toBe(0);
      const report = JSON.parse(readFileSync(path.join(ROOT, 'test-results', 'vitest.json'), 'utf8')) as { numPassedTests: number; numFailedTests: number };
      expect(report.numFailedTests).toBe(0);
      expect(report.numPassedTests).toBeGreaterThan(0);
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });
});
