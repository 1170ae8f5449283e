// Where the package's own files are (package.json, proto/, migrations/, policy/), found from this
// module's location. The code runs from src/ (tsx), from dist/ (tsc's output, one file per module)
// and from the one-file bundle dist/bundle/ryvion-authz.cjs (esbuild; there import.meta.url is the
// bundle's own URL, esbuild.mjs), each at its own depth, so the root is the nearest directory above
// that holds both package.json and proto/.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'proto'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`ryvion-authz: no package.json with proto/ above ${from}`);
  }
}

export const PACKAGE_ROOT: string = findPackageRoot(path.dirname(fileURLToPath(import.meta.url)));

/** A path inside the package, e.g. `packagePath('migrations')`. */
export function packagePath(...parts: string[]): string {
  return path.join(PACKAGE_ROOT, ...parts);
}
