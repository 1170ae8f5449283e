// Process entry of the CLI: runs it and sets the exit code (long-running commands keep the process alive).
// A promise chain, not a top-level await: the production bundle is CommonJS (esbuild.mjs), which has none.
import { runCli } from './main.js';

const command = process.argv[2] ?? '';
runCli(process.argv.slice(2)).then(
  (code) => {
    if (code !== 0 || !['serve', 'dev'].includes(command)) process.exitCode = code;
  },
  (err: unknown) => {
    // runCli reports its own failures; this is what escaped it. Printed as Node prints an uncaught error.
    process.exitCode = 1;
    console.error(err);
  },
);
