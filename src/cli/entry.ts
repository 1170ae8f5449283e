// Process entry of the CLI: runs it and sets the exit code (long-running commands keep the process alive).
import { runCli } from './main.js';

const command = process.argv[2] ?? '';
const code = await runCli(process.argv.slice(2));
if (code !== 0 || !['serve', 'dev'].includes(command)) process.exitCode = code;
