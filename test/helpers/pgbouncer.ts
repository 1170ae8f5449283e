// A throwaway PgBouncer (Debian's package) in transaction pooling mode, in front of the test Postgres.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './redis-server.js';
import { waitForReady } from './child-ready.js';

const BINARY = '/usr/sbin/pgbouncer';

export class ThrowawayPgBouncer {
  private child: ChildProcess | undefined;
  private readonly dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-pgbouncer-'));
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<void> {
    try {
      execFileSync(BINARY, ['--version'], { stdio: 'ignore' });
    } catch {
      throw new Error(`${BINARY} not found: install Debian's pgbouncer package (.ci/run does)`);
    }
    this.port = await freePort();
    writeFileSync(path.join(this.dir, 'users.txt'), '"postgres" ""\n');
    writeFileSync(
      path.join(this.dir, 'pgbouncer.ini'),
      [
        '[databases]',
        `* = host=${this.target.host} port=${this.target.port}`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${this.port}`,
        'unix_socket_dir =',
        'auth_type = trust',
        `auth_file = ${path.join(this.dir, 'users.txt')}`,
        'pool_mode = transaction',
        'ignore_startup_parameters = extra_float_digits,options',
        '',
      ].join('\n'),
    );
    // PgBouncer refuses to run as root: as root (CI), run it as the postgres user.
    const asRoot = process.getuid?.() === 0;
    if (asRoot) chownSync(this.dir, Number(execFileSync('id', ['-u', 'postgres']).toString().trim()), Number(execFileSync('id', ['-g', 'postgres']).toString().trim()));
    const [cmd, args] = asRoot
      ? ['runuser', ['-u', 'postgres', '--', BINARY, path.join(this.dir, 'pgbouncer.ini')]]
      : [BINARY, [path.join(this.dir, 'pgbouncer.ini')]];
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    await waitForReady(child, /process up|listening on/i, 'pgbouncer', 15_000);
  }

  /** The same database, through the pooler. */
  urlFor(databaseUrl: string): string {
    const u = new URL(databaseUrl);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }

  async dispose(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null) {
      await new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      });
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
