// The README's quick start, run as written: `npm start` from its "Two commands" block, then every
// command of its "Quick start" block with the key and account the first start printed, on a
// scratch DATA_DIR and free ports in place of the documented 8080 / 9191 / 9090. When the README
// and the code part, this fails.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../helpers/build.js';
import { freePort } from '../helpers/redis-server.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** The ```sh blocks of one `## ` section of the README. */
function shBlocks(heading: string): string[] {
  const start = README.indexOf(`\n## ${heading}\n`);
  if (start === -1) throw new Error(`README.md has no "## ${heading}" section`);
  const end = README.indexOf('\n## ', start + 1);
  const section = README.slice(start, end === -1 ? undefined : end);
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

/** Shell commands of a block: continuation lines joined, comments and blank lines dropped. */
function commands(block: string): string[] {
  return block
    .replace(/\\\n\s*/g, '')
    .split('\n')
    .map((line) => line.replace(/\s+#.*$/, '').trim())
    .filter((line) => line && !line.startsWith('#'));
}

let dataDir: string;
let ports: { grpc: number; http: number; ops: number };
let env: NodeJS.ProcessEnv;
let service: ChildProcess | undefined;
let output = '';

beforeAll(async () => {
  ensureBuilt();
  dataDir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-quick-start-'));
  ports = { grpc: await freePort(), http: await freePort(), ops: await freePort() };
  // Only what a newcomer's shell would have, plus the scratch directory and ports.
  env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    DATA_DIR: dataDir,
    GRPC_PORT: String(ports.grpc),
    HTTP_PORT: String(ports.http),
    OPS_PORT: String(ports.ops),
  };
}, 200_000);

afterAll(async () => {
  const running = (): boolean => !!service && service.exitCode === null && service.signalCode === null;
  if (running()) {
    const exited = new Promise((resolve) => service!.once('exit', resolve));
    process.kill(-service!.pid!, 'SIGINT'); // Ctrl-C: the whole foreground group
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 20_000))]);
    if (running()) process.kill(-service!.pid!, 'SIGKILL');
  }
  rmSync(dataDir, { recursive: true, force: true });
});

describe('the README quick start', () => {
  it('works as written: npm start, then each command of the Quick start block', { timeout: 240_000 }, async () => {
    // 1. "Two commands": the first one, after `npm ci` (done: this suite runs from it).
    const [two] = shBlocks('Two commands');
    const first = commands(two!).find((c) => c.startsWith('npm ci && '));
    expect(first, 'the "Two commands" block starts the service with `npm ci && ...`').toBeDefined();
    const start = first!.slice('npm ci && '.length);
    expect(start).toBe('npm start');
    service = spawn('sh', ['-c', start], { cwd: ROOT, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`\`${start}\` not ready in 120 s:\n${output}`)), 120_000);
      const onData = (d: Buffer): void => {
        output += d.toString();
        if (/"msg":"ryvion-authz ready"/.test(output)) {
          clearTimeout(timer);
          resolve();
        }
      };
      service!.stdout!.on('data', onData);
      service!.stderr!.on('data', onData);
      service!.once('exit', (code) => reject(new Error(`\`${start}\` exited with ${code}:\n${output}`)));
    });
    const key = /ryv_live_[0-9A-Za-z]{49}/.exec(output)?.[0];
    const account = /Created account (acct_[0-9A-Za-z]+)/.exec(output)?.[1];
    expect(key, 'the first start prints a key').toBeDefined();
    expect(account, 'the first start prints its account').toBeDefined();

    // 2. "Quick start": every command, with the printed key and account and this test's ports.
    const blocks = shBlocks('Quick start');
    expect(blocks).toHaveLength(1);
    const cmds = commands(blocks[0]!);
    expect(cmds[0]).toBe('KEY=ryv_live_...');
    expect(cmds[1]).toBe('ACCOUNT=acct_...');
    const shellEnv = { ...env, KEY: key, ACCOUNT: account };
    const ran: { cmd: string; code: number | null; stdout: string; stderr: string }[] = [];
    for (const documented of cmds.slice(2)) {
      // Only the documented default ports appear; each is replaced by this test's.
      expect(documented.match(/:\d{2,5}\b/g)?.every((p) => p === ':8080') ?? true, documented).toBe(true);
      const cmd = documented
        .replaceAll('localhost:8080', `localhost:${ports.http}`)
        .replace(/ryvion-authz check /, `ryvion-authz check --target 127.0.0.1:${ports.grpc} `);
      const r = spawnSync('bash', ['-c', cmd], { cwd: ROOT, env: shellEnv, encoding: 'utf8', timeout: 90_000 });
      ran.push({ cmd: documented, code: r.status, stdout: r.stdout, stderr: r.stderr });
      expect(r.status, `${documented}\n${r.stdout}${r.stderr}`).toBe(0);
    }
    const out = (fragment: string): string => ran.find((r) => r.cmd.includes(fragment))?.stdout ?? '';

    const me = JSON.parse(out('/api/v1/auth/me')) as { object: string; account: { id: string } };
    expect(me).toMatchObject({ object: 'auth.me', account: { id: account } });
    const created = JSON.parse(out('-X POST')) as { object: string; key: string };
    expect(created.object).toBe('api_key');
    expect(created.key).toMatch(/^ryv_live_/);
    expect(out('check --key "$KEY"')).toMatch(/^ALLOW 200\n/);
    expect(out('check --key ryv_live_nope')).toMatch(/^DENY 401\n/);
    expect(out('accounts set-limit')).toBe(`${account}: 120 requests/min\n`);
    expect(out('keys list').trim().split('\n')).toHaveLength(2);
    expect(out('audit')).toMatch(/key\.created/);
    for (const r of ran.filter((x) => / (accounts|keys|audit) /.test(` ${x.cmd} `))) {
      expect(r.stderr).toBe(`ryvion-authz: DATABASE_URL is unset: using the running dev store in ${dataDir}\n`);
    }
  });
});
