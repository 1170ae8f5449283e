#!/usr/bin/env node
// Entry point of the `ryvion-authz` command; the code lives in dist/ (built by `npm run build`, run by `npm ci` via `prepare`).
import { runCli } from '../dist/cli/main.js';

const code = await runCli(process.argv.slice(2));
// `serve` keeps running: only commands that finished set an exit code here.
if (code !== 0 || !['serve', 'dev'].includes(process.argv[2] ?? '')) process.exitCode = code;
