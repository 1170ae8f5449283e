// Runs Debian's nginx as a test process with the shipped deploy/nginx/nginx.local.conf and the
// ryvion-http.conf it shares with nginx.conf, only their three ports and the access log replaced.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './redis-server.js';

const SHIPPED = path.resolve(import.meta.dirname, '../../deploy/nginx');

/** The one line a test fails with when nginx is not installed. */
export function requireNginx(): string {
  const found = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' }).stdout.trim();
  if (!found) throw new Error('nginx is not installed: apt-get install -y --no-install-recommends nginx (.ci/run installs it)');
  return found;
}

/** Replaces `from` by `to`, insisting it occurs exactly once, so a changed shipped file fails loudly. */
function replaceOnce(file: string, text: string, from: string, to: string): string {
  const at = text.indexOf(from);
  if (at === -1 || text.indexOf(from, at + 1) !== -1) throw new Error(`deploy/nginx/${file}: expected exactly one "${from}"`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/** The shipped local configuration pointed at test ports, written into `dir` (nginx's prefix); `edit` may change ryvion-http.conf further. */
export function writeNginxConfig(opts: { listenPort: number; authz: string; api: string; dir: string; edit?: ((http: string) => string) | undefined }): void {
  let local = readFileSync(path.join(SHIPPED, 'nginx.local.conf'), 'utf8');
  local = replaceOnce('nginx.local.conf', local, 'server 127.0.0.1:8080;', `server ${opts.authz};`);
  local = replaceOnce('nginx.local.conf', local, 'server 127.0.0.1:8000;', `server ${opts.api};`);
  let http = readFileSync(path.join(SHIPPED, 'ryvion-http.conf'), 'utf8');
  http = replaceOnce('ryvion-http.conf', http, 'listen 10000;', `listen 127.0.0.1:${opts.listenPort};`);
  http = replaceOnce('ryvion-http.conf', http, 'access_log /dev/stdout ryvion;', `access_log ${opts.dir}/access.log ryvion;`);
  if (opts.edit) http = opts.edit(http);
  writeFileSync(path.join(opts.dir, 'nginx.local.conf'), local);
  writeFileSync(path.join(opts.dir, 'ryvion-http.conf'), http);
}

/**
 * `nginx -t` on the shipped Kubernetes nginx.conf (with ryvion-http.conf beside it), its two
 * upstream hosts pointed at 127.0.0.1 so that they resolve here. Returns nginx's error output.
 */
export function checkKubernetesConfig(): { ok: boolean; stderr: string } {
  const bin = requireNginx();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-nginx-k8s-'));
  try {
    let conf = readFileSync(path.join(SHIPPED, 'nginx.conf'), 'utf8');
    conf = replaceOnce('nginx.conf', conf, 'server ryvion-authz:8080;', 'server 127.0.0.1:8080;');
    conf = replaceOnce('nginx.conf', conf, 'server ryvion-api:8000;', 'server 127.0.0.1:8000;');
    writeFileSync(path.join(dir, 'nginx.conf'), conf);
    // A test's stdout may be a socket, which nginx cannot open as /dev/stdout.
    const http = replaceOnce('ryvion-http.conf', readFileSync(path.join(SHIPPED, 'ryvion-http.conf'), 'utf8'), 'access_log /dev/stdout ryvion;', `access_log ${dir}/access.log ryvion;`);
    writeFileSync(path.join(dir, 'ryvion-http.conf'), http);
    const r = spawnSync(bin, ['-t', '-q', '-p', `${dir}/`, '-c', 'nginx.conf', '-e', 'stderr', '-g', `pid ${dir}/nginx.pid;`], { encoding: 'utf8' });
    return { ok: r.status === 0, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export class TestNginx {
  private child: ChildProcess | undefined;
  private readonly dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-nginx-'));
  private stderr = '';
  port = 0;

  constructor(private readonly addresses: { authz: string; api: string; edit?: (http: string) => string }) {}

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
    writeNginxConfig({ listenPort: this.port, dir: this.dir, ...this.addresses });
    const check = spawnSync(bin, ['-t', '-q', '-p', `${this.dir}/`, '-c', 'nginx.local.conf', '-e', 'stderr'], { encoding: 'utf8' });
    if (check.status !== 0) throw new Error(`nginx -t rejected the generated configuration:\n${check.stderr}`);
    this.child = spawn(bin, ['-p', `${this.dir}/`, '-c', 'nginx.local.conf', '-e', 'stderr', '-g', 'daemon off;'], {
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
