// Compiles src/ and the bench's child programs to plain JavaScript in a temporary directory, and
// bundles the service there as `npm run build` does (esbuild.mjs: the bundle, its source map and
// its code cache), so the service runs the way production runs it (bin/ryvion-authz.js, copied
// beside it, on the bundle and the cache), while the working tree's dist/ is left alone. Transpile only: `npm run typecheck` does the type-checking.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import ts from 'typescript';

export interface BuiltTree {
  dir: string;
  /** Absolute path of a compiled module, from its source path relative to the repository root. */
  entry(relativeTs: string): string;
  /** The service's command as production runs it: bin/ryvion-authz.js on the bundle (src/cli/entry.js in a tree kept from before the bundle). */
  service: string;
  remove(): void;
}

function sources(root: string, dir: string, out: string[]): string[] {
  for (const e of readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) sources(root, rel, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

export function buildTree(root: string): BuiltTree {
  const dir = mkdtempSync(path.join(tmpdir(), 'ryvion-bench-'));
  const files = [...sources(root, 'src', []), ...sources(root, 'bench', []).filter((f) => !f.startsWith(path.join('bench', 'results')))];
  const compilerOptions: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    // The package is ESM ("type": "module"); transpileModule cannot see package.json, so say so.
    module: ts.ModuleKind.ES2022,
    esModuleInterop: true,
    sourceMap: false,
  };
  for (const rel of files) {
    const out = ts.transpileModule(readFileSync(path.join(root, rel), 'utf8'), { compilerOptions, fileName: rel });
    const target = path.join(dir, rel.replace(/\.ts$/, '.js'));
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, out.outputText);
  }
  // What the compiled code reaches relative to itself (proto/, migrations/, policy/) or by package name.
  for (const name of ['proto', 'migrations', 'policy', 'node_modules', 'package.json']) {
    symlinkSync(path.join(root, name), path.join(dir, name));
  }
  const bundled = spawnSync(process.execPath, ['esbuild.mjs'], { cwd: root, env: { ...process.env, RYVION_BUNDLE_OUTDIR: path.join(dir, 'dist', 'bundle') }, encoding: 'utf8' });
  if (bundled.status !== 0) throw new Error(`esbuild.mjs failed: ${bundled.stderr}`);
  if (!existsSync(path.join(dir, 'dist', 'bundle', 'ryvion-authz.cjs.cache'))) throw new Error('esbuild.mjs wrote no code cache');
  mkdirSync(path.join(dir, 'bin'));
  copyFileSync(path.join(root, 'bin', 'ryvion-authz.js'), path.join(dir, 'bin', 'ryvion-authz.js'));
  return {
    dir,
    entry: (relativeTs) => path.join(dir, relativeTs.replace(/\.ts$/, '.js')),
    service: path.join(dir, 'bin', 'ryvion-authz.js'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A tree built before (BENCH_KEEP_BUILD=1), reused as it is. */
export function existingTree(dir: string): BuiltTree {
  const bin = path.join(dir, 'bin', 'ryvion-authz.js');
  return {
    dir,
    entry: (relativeTs) => path.join(dir, relativeTs.replace(/\.ts$/, '.js')),
    service: existsSync(bin) ? bin : path.join(dir, 'src', 'cli', 'entry.js'),
    remove: () => undefined,
  };
}
