// Runs Debian's nginx as a test process with the shipped deploy/nginx/nginx.conf, only its
// addresses (and the paths a test process needs) replaced.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './redis-server.js';

export const SHIPPED_NGINX_CONF = path.resolve(import.meta.dirname, '../../deploy/nginx/nginx.conf');

/** The one line a test fails with when nginx is not installed. */
export function requireNginx(): string {
  const found = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' }).stdout.trim();
  if (!found) throw new Error('nginx is not installed: apt-get install -y --no-install-recommends nginx (.ci/run installs it)');
  return found;
}

/** Replaces `from` by `to`, insisting it occurs exactly once, so a changed shipped file fails loudly. */
function replaceOnce(text: string, from: string, to: string): string {
  const at = text.indexOf(from);
  if (at === -1 || text.indexOf(from, at + 1) !== -1) throw new Error(`deploy/nginx/nginx.conf: expected exactly one "${from}"`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/** The shipped configuration pointed at test addresses, with its files under `dir`. */
export function nginxConfigFor(opts: { listenPort: number; authz: string; api: string; dir: string }): string {
  let conf = readFileSync(SHIPPED_NGINX_CONF, 'utf8');
  conf = replaceOnce(conf, 'listen 10000;', `listen 127.0.0.1:${opts.listenPort};`);
  conf = replaceOnce(conf, 'server ryvion-authz:8080;', `server ${opts.authz};`);
  conf = replaceOnce(conf, 'server ryvion-api:8000;', `server ${opts.api};`);
  conf = replaceOnce(conf, 'access_log /dev/stdout ryvion;', `access_log ${opts.dir}/access.log ryvion;`);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `    ${t}_temp_path ${opts.dir}/${t}_temp;`).join('\n');
  return replaceOnce(conf, 'http {\n', `http {\n${temp}\n`);
}

export class TestNginx {
  private child: ChildProcess | undefined;
  private readonly dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-nginx-'));
  private stderr = '';
  port = 0;

  constructor(private readonly addresses: { authz: string; api: string }) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** nginx's error log so far (for failure messages). */
  get errorLog(): string {
    return this.stderr;
  }

  accessLog(): string {
    try {
      return readFileSync(path.join(this.dir, 'access.log'), 'utf8');
    } catch {
      return '';
    }
  }

  async start(): Promise<string> {
    const bin = requireNginx();
    this.port = await freePort();
    // Workers run as an unprivileged user when the tests run as root: they must reach the temp paths.
    chmodSync(this.dir, 0o755);
    writeFileSync(path.join(this.dir, 'nginx.conf'), nginxConfigFor({ listenPort: this.port, dir: this.dir, ...this.addresses }));
    const check = spawnSync(bin, ['-t', '-q', '-p', `${this.dir}/`, '-c', 'nginx.conf', '-e', 'stderr', '-g', `pid ${this.dir}/nginx.pid;`], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`nginx -t rejected the generated configuration:\n${check.stderr}`);
    this.child = spawn(bin, ['-p', `${this.dir}/`, '-c', 'nginx.conf', '-e', 'stderr', '-g', `daemon off; pid ${this.dir}/nginx.pid;`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    const deadline = Date.now() + 5000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`nginx exited at start:\n${this.stderr}`);
      if (await accepts(this.port)) break;
      if (Date.now() > deadline) throw new Error(`nginx did not listen within 5 s:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.url;
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM'); // fast shutdown of the master and its workers
      await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
