#!/usr/bin/env node
// The `ryvion-authz` command. The code is compiled into dist/ by `npm run build`, which `npm ci` runs (prepare).
import '../dist/cli/entry.js';
