#!/usr/bin/env node
// The `ryvion-authz` command: the CLI and its dependencies in one bundle, dist/bundle/ (esbuild,
// made by `npm run build`, which `npm ci` runs through prepare), which starts faster than the
// module-per-file dist/ (bench/README.md). Stack traces point into src/ through its source maps.
process.setSourceMapsEnabled(true);
await import('../dist/bundle/ryvion-authz.js');
