// Throwaway Redis topologies for tests: nodes with passwords or ACL users, a Sentinel, a Cluster,
// TLS with certificates made here by openssl. Each process is this test's own; loopback only.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { waitForReady } from './child-ready.js';
import { promisify } from 'node:util';
import { commandPath } from './prometheus.js';
import { freePort } from './redis-server.js';

/** Fails with one line when a binary the topologies need is missing (Debian: redis-server, redis-tools, openssl). */
export function requireRedisTools(): void {
  for (const [command, pkg] of [['redis-server', 'redis-server'], ['redis-cli', 'redis-tools'], ['openssl', 'openssl']] as const) {
    if (!commandPath(command)) throw new Error(`${command} is not installed: apt-get install -y ${pkg}`);
  }
}

const run = promisify(execFile);

export interface Certificates {
  dir: string;
  caFile: string;
  certFile: string;
  keyFile: string;
}

/**
 * A CA and one server certificate it signs, with the given subjectAltName (e.g. `IP:127.0.0.1` or
 * `DNS:redis.internal`). EC keys: a few milliseconds each.
 */
export async function makeCertificates(dir: string, subjectAltName: string, name = 'server'): Promise<Certificates> {
  const p = (f: string): string => path.join(dir, f);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-keyout', p(`${name}-ca.key`), '-out', p(`${name}-ca.crt`), '-days', '2', '-subj', `/CN=${name} test CA`]);
  await run('openssl', ['req', ...ec, '-keyout', p(`${name}.key`), '-out', p(`${name}.csr`), '-subj', `/CN=${name}`]);
  writeFileSync(p(`${name}.ext`), `subjectAltName=${subjectAltName}\n`);
  await run('openssl', [
    'x509', '-req', '-in', p(`${name}.csr`), '-CA', p(`${name}-ca.crt`), '-CAkey', p(`${name}-ca.key`), '-CAcreateserial',
    '-out', p(`${name}.crt`), '-days', '2', '-extfile', p(`${name}.ext`),
  ]);
  return { dir, caFile: p(`${name}-ca.crt`), certFile: p(`${name}.crt`), keyFile: p(`${name}.key`) };
}

/** TLS-only listening on `port` (plain port off); clients need no certificate of their own. */
export function tlsArgs(port: number, certs: Certificates): string[] {
  return ['--port', '0', '--tls-port', String(port), '--tls-cert-file', certs.certFile, '--tls-key-file', certs.keyFile, '--tls-ca-cert-file', certs.caFile, '--tls-auth-clients', 'no'];
}

/** The processes of one topology, stopped together. */
export class RedisTopology {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'ryvion-redis-topology-'));
  private readonly children: ChildProcess[] = [];

  /** Starts `redis-server` with these arguments (after a config file when given) and waits for its ready line. */
  async start(args: string[], opts: { configFile?: string; ready?: RegExp } = {}): Promise<void> {
    const argv = [...(opts.configFile ? [opts.configFile] : []), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir, ...args];
    const child = spawn('redis-server', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.push(child);
    const ready = opts.ready ?? /Ready to accept connections/;
    await waitForReady(child, ready, `redis-server ${argv.join(' ')}`, 15_000);
  }

  /** A Sentinel (`redis-server --sentinel`, what Debian's redis-sentinel runs) from these config lines. */
  async startSentinel(lines: string[]): Promise<void> {
    const file = path.join(this.dir, `sentinel-${this.children.length}.conf`);
    // Sentinel rewrites its config file, so each gets its own.
    writeFileSync(file, [...lines, ''].join('\n'));
    await this.start(['--sentinel'], { configFile: file, ready: /Sentinel ID is/ });
  }

  /**
   * Three masters (no replicas) on free ports, joined into a cluster; `nodeArgs(port)` gives each
   * node's listening, auth and TLS arguments. Resolves once every node reports cluster_state:ok.
   */
  async startCluster(nodeArgs: (port: number) => string[], cliArgs: string[]): Promise<number[]> {
    const ports = [await freePort(), await freePort(), await freePort()];
    await Promise.all(
      ports.map((port) =>
        this.start(['--cluster-enabled', 'yes', '--cluster-config-file', path.join(this.dir, `nodes-${port}.conf`), ...nodeArgs(port)]),
      ),
    );
    await run('redis-cli', [...cliArgs, '--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    const deadline = Date.now() + 15_000;
    for (const port of ports) {
      for (;;) {
        const { stdout } = await run('redis-cli', [...cliArgs, '-p', String(port), 'cluster', 'info']);
        if (/cluster_state:ok/.test(stdout)) break;
        if (Date.now() > deadline) throw new Error(`cluster node ${port} not ok in 15 s: ${stdout}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return ports;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGKILL');
          }),
      ),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}
