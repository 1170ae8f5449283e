// dist/ is what `npm start` and bin/ryvion-authz.js run (its bundle and code cache, dist/bundle/); tests that start them rebuild a stale one.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** dist/ is what `npm start` runs (bin/ryvion-authz.js imports it); `npm ci` builds it, a stale one is rebuilt here. */
export function ensureBuilt(): void {
  const entry = path.join(ROOT, 'dist', 'cli', 'entry.js');
  const newestSource = (dir: string): number =>
    Math.max(
      0,
      ...readdirSync(dir, { withFileTypes: true }).map((e) =>
        e.isDirectory() ? newestSource(path.join(dir, e.name)) : e.name.endsWith('.ts') ? statSync(path.join(dir, e.name)).mtimeMs : 0,
      ),
    );
  const bundle = path.join(ROOT, 'dist', 'bundle', 'ryvion-authz.cjs');
  const built = existsSync(entry) && existsSync(path.join(ROOT, 'dist', 'dev', 'command.js')) && existsSync(bundle) ? Math.min(statSync(entry).mtimeMs, statSync(bundle).mtimeMs) : 0;
  if (built >= newestSource(path.join(ROOT, 'src'))) return;
  // tsc emits even when another file has a type error; the type check is CI's job, not this test's.
  spawnSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'ignore', timeout: 180_000 });
  if (!existsSync(path.join(ROOT, 'dist', 'dev', 'command.js')) || !existsSync(bundle)) throw new Error('npm run build did not produce dist/dev/command.js and dist/bundle/ryvion-authz.cjs');
}
