// Compiles src/ and the bench's child programs to plain JavaScript in a temporary directory,
// so the service runs the way production runs it (node on compiled JS, no loader), while the
// working tree's dist/ is left alone. Transpile only: `npm run typecheck` does the type-checking.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import ts from 'typescript';

export interface BuiltTree {
  dir: string;
  /** Absolute path of a compiled module, from its source path relative to the repository root. */
  entry(relativeTs: string): string;
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
  return {
    dir,
    entry: (relativeTs) => path.join(dir, relativeTs.replace(/\.ts$/, '.js')),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A tree built before (BENCH_KEEP_BUILD=1), reused as it is. */
export function existingTree(dir: string): BuiltTree {
  return {
    dir,
    entry: (relativeTs) => path.join(dir, relativeTs.replace(/\.ts$/, '.js')),
    remove: () => undefined,
  };
}
