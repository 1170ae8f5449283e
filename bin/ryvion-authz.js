#!/usr/bin/env node
// The `ryvion-authz` command and the image's entrypoint: runs the CLI from one CommonJS bundle,
// dist/bundle/ryvion-authz.cjs (esbuild.mjs; `npm run build`, which `npm ci` runs through
// prepare), with the V8 code cache that the build wrote beside it (ryvion-authz.cjs.cache).
//
// Why this launcher and not an import() of the bundle: compiling the 5 MB bundle was a large part
// of a start (a CPU profile: V8 compiling it ~17 %, decoding its text ~5 %), and Node 20 has no
// code cache for ES modules (module.enableCompileCache is Node 22). vm.Script takes one, so the
// bundle is CommonJS, wrapped here as Node wraps a CommonJS module. The cache is V8's for the Node
// binary that built it: when V8 rejects it (another Node) or it is missing, this compiles, correct
// and only slower. Measured (bench/start-time.ts, 8 alternated starts, bench/README.md "What was
// changed"): the `process` phase of `serve` (Node and loading the code) 572 -> 372 ms median, start
// to ready 797 -> 615 ms, against the ES module bundle run as before (source maps on); the same
// CommonJS file without the cache (Node's own loader) 465 ms and 705 ms.
//
// Stack traces: Node 20 does not apply source maps to code compiled by vm.Script, and turning them
// on (process.setSourceMapsEnabled) cost about 70 ms per start anyway. So the Error.prepareStackTrace
// below formats stacks as Node and V8 do, and maps the bundle's frames to src/ files and lines
// with the bundle's source map, read on the first stack that has such a frame.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire, SourceMap } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { debuglog } from 'node:util';
import vm from 'node:vm';

// RYVION_CODE_CACHE_WRITE=BUNDLE: esbuild.mjs, at build time, runs that bundle (with --version:
// every module body runs, nothing starts) and has its cache written at exit, compiled as here.
const writeCache = process.env.RYVION_CODE_CACHE_WRITE;
const file = writeCache ? path.resolve(writeCache) : fileURLToPath(new URL('../dist/bundle/ryvion-authz.cjs', import.meta.url));
// NODE_DEBUG=ryvion-authz says whether V8 took the cache.
const debug = debuglog('ryvion-authz');

// As Node wraps a CommonJS module; the head shifts the columns of the bundle's first line.
const head = '(function (exports, require, module, __filename, __dirname) { ';
// The script's name in stack frames. Not its path: V8 (Node 20) keeps the name the script had when
// the cache was made (at build time, elsewhere: /src in the image's build stage), so one name for both.
const scriptName = 'dist/bundle/ryvion-authz.cjs';

// Stack traces. Node's own formatting (Node 20.20 has one in Error.prepareStackTrace) makes the
// first line, `Error: message`; each frame is V8's CallSite text, with the bundle's file:line:col
// replaced by the original one. The map is read and parsed once, on the first stack that needs it,
// not at start-up: that first stack takes 0.42-0.47 s on the 2-core bench machine (0.4-1.2 s while
// it was busy; the 3 MB map: 30-70 ms to read and JSON.parse, the rest in new SourceMap), about what
// Node's own source maps (the ES module bundle before) took on their first stack; later, under 1 ms.
const nodeFormat = Error.prepareStackTrace;
let sourceMap; // undefined: not read yet; null: unreadable
function original(line, column) {
  if (sourceMap === undefined) {
    try {
      sourceMap = new SourceMap(JSON.parse(readFileSync(`${file}.map`, 'utf8')));
    } catch {
      sourceMap = null;
    }
  }
  const entry = sourceMap?.findEntry(line - 1, (line === 1 ? column - head.length : column) - 1);
  if (!entry?.originalSource) return undefined;
  const source = new URL(entry.originalSource, pathToFileURL(file));
  return `${source.protocol === 'file:' ? fileURLToPath(source) : source.href}:${entry.originalLine + 1}:${entry.originalColumn + 1}`;
}
function frame(site) {
  const text = `${site}`;
  if (site.getFileName() !== scriptName) return text;
  const at = `${scriptName}:${site.getLineNumber()}:${site.getColumnNumber()}`;
  const i = text.lastIndexOf(at);
  const mapped = i < 0 ? undefined : original(site.getLineNumber(), site.getColumnNumber());
  return mapped === undefined ? text : text.slice(0, i) + mapped + text.slice(i + at.length);
}
function firstLine(error) {
  try {
    return nodeFormat ? nodeFormat(error, []) : Error.prototype.toString.call(error);
  } catch {
    // Its name or message threw (Node's own formatting would throw from `err.stack`).
    return '<error>';
  }
}
Error.prepareStackTrace = function prepareStackTrace(error, sites) {
  const frames = sites.map((site) => {
    try {
      return frame(site);
    } catch {
      return '<frame>';
    }
  });
  return [firstLine(error), ...frames].join('\n    at ');
};

let cachedData;
if (!writeCache) {
  try {
    cachedData = readFileSync(`${file}.cache`);
  } catch {
    // missing: compile
  }
}
// latin1: the bundle is ASCII (esbuild.mjs), and latin1 makes it a string without decoding it.
const script = new vm.Script(`${head}${readFileSync(file, 'latin1')}\n})`, {
  filename: scriptName,
  cachedData,
  // No importModuleDynamically: code taken from a cache loses it in Node 20, so the bundle has no
  // import() (esbuild.mjs makes it require()).
});
debug('code cache %s', cachedData === undefined ? 'missing' : script.cachedDataRejected ? 'rejected' : 'accepted');
if (writeCache) process.once('exit', () => writeFileSync(`${file}.cache`, script.createCachedData()));

const module = { exports: {} };
script.runInThisContext()(module.exports, createRequire(file), module, file, path.dirname(file));
