// Redis Sentinel and Cluster with authentication and TLS, against real redis-server processes this
// file starts: ACL users (data nodes and Sentinel apart), requirepass, certificates made by openssl
// (a DNS name only, reached through REDIS_TLS_SERVER_NAME; IP SANs for announced addresses).
import tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config.js';
import type { Limit } from '../../src/ratelimit/gcra.js';
import { RedisGcra } from '../../src/ratelimit/redis-gcra.js';
import type { RunningService } from '../../src/service.js';
import { createRedis, redisTls, type RedisClient } from '../../src/store/redis.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { freePort } from '../helpers/redis-server.js';
import { makeCertificates, RedisTopology, requireRedisTools, tlsArgs, type Certificates } from '../helpers/redis-topology.js';
import { CheckClient, metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper } from '../helpers/stores.js';

const DATA_PASSWORD = 'data-secret-4f1c';
const SENTINEL_PASSWORD = 'sentinel-secret-9a2e';
const LIMIT: Limit = { name: 'account', requests: 10, windowMs: 60_000, burst: 5 };

const clients: RedisClient[] = [];

/** A command client built by the service's own factory, with every error it reports. */
function client(env: Record<string, string>): { redis: RedisClient; errors: string[] } {
  const redis = createRedis(loadConfig({ STORE_TIMEOUT_MS: '2000', ...env }), 'command')!;
  clients.push(redis);
  const errors: string[] = [];
  redis.on('error', (err: Error & { lastNodeError?: Error }) => errors.push(`${err.message} ${err.lastNodeError?.message ?? ''}`));
  return { redis, errors };
}

async function ready(redis: RedisClient): Promise<void> {
  await vi.waitFor(() => expect(redis.status).toBe('ready'), { timeout: 10_000, interval: 50 });
}

/** Polls until the client has reported an error matching `pattern`, and checks it never got ready. */
async function refused(c: { redis: RedisClient; errors: string[] }, pattern: RegExp): Promise<void> {
  await vi.waitFor(() => expect(c.errors.join('\n')).toMatch(pattern), { timeout: 10_000, interval: 50 });
  expect(c.redis.status).not.toBe('ready');
}

/** The TLS handshake the service's options make with one server: its error code, or 'ok'. */
function handshake(env: Record<string, string>, port: number): Promise<string> {
  const options = redisTls(loadConfig(env))!;
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...options }, () => {
      socket.end();
      resolve('ok');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

beforeAll(requireRedisTools);

afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});

describe('Redis Sentinel with ACL users: one for the data nodes, another for Sentinel itself', () => {
  const topology = new RedisTopology();
  let env: Record<string, string>;

  beforeAll(async () => {
    const [master, sentinel] = [await freePort(), await freePort()];
    await topology.start(['--port', String(master), '--user', 'default', 'off', '--user', 'ryvion', 'on', `>${DATA_PASSWORD}`, '~*', '&*', '+@all']);
    await topology.startSentinel([
      `port ${sentinel}`,
      'bind 127.0.0.1',
      `sentinel monitor main 127.0.0.1 ${master} 1`,
      'sentinel auth-user main ryvion',
      `sentinel auth-pass main ${DATA_PASSWORD}`,
      'user default off',
      `user watcher on >${SENTINEL_PASSWORD} allchannels +@all`,
    ]);
    env = {
      REDIS_SENTINELS: `127.0.0.1:${sentinel}`,
      REDIS_SENTINEL_NAME: 'main',
      REDIS_USERNAME: 'ryvion',
      REDIS_PASSWORD: DATA_PASSWORD,
      REDIS_SENTINEL_USERNAME: 'watcher',
      REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD,
    };
  }, 30_000);
  afterAll(() => topology.stop());

  it('connects through Sentinel as the data user and runs the rate-limit script', async () => {
    const { redis } = client(env);
    await ready(redis);
    expect(await redis.call('ACL', 'WHOAMI')).toBe('ryvion');
    const result = await new RedisGcra(redis, redisPrefix()).check([LIMIT], 'acct-sentinel', 'key-1');
    expect(result.allowed).toBe(true);
  });

  it('is refused by Sentinel without its own credentials, even with the data user set', async () => {
    const { REDIS_SENTINEL_USERNAME: _u, REDIS_SENTINEL_PASSWORD: _p, ...withoutSentinelAuth } = env;
    await refused(client(withoutSentinelAuth), /NOAUTH|WRONGPASS|sentinel/i);
  });

  it('is refused by the data node with a wrong data password', async () => {
    await refused(client({ ...env, REDIS_PASSWORD: 'not-the-password' }), /WRONGPASS|NOAUTH/);
  });
});

describe('Redis Sentinel over TLS with requirepass, certificate for a DNS name only', () => {
  const topology = new RedisTopology();
  let env: Record<string, string>;
  let certs: Certificates;
  let sentinelPort: number;
  let db: Awaited<ReturnType<typeof freshDatabase>>;
  let service: RunningService | undefined;
  let checks: CheckClient | undefined;

  beforeAll(async () => {
    // No IP SAN: 127.0.0.1 (what Sentinel announces) does not match; REDIS_TLS_SERVER_NAME does.
    certs = await makeCertificates(topology.dir, 'DNS:redis.internal');
    const [master, sentinel] = [await freePort(), await freePort()];
    sentinelPort = sentinel;
    await topology.start([...tlsArgs(master, certs), '--requirepass', DATA_PASSWORD]);
    await topology.startSentinel([
      'port 0',
      `tls-port ${sentinel}`,
      'bind 127.0.0.1',
      `tls-cert-file ${certs.certFile}`,
      `tls-key-file ${certs.keyFile}`,
      `tls-ca-cert-file ${certs.caFile}`,
      'tls-auth-clients no',
      'tls-replication yes',
      `requirepass ${SENTINEL_PASSWORD}`,
      `sentinel monitor main 127.0.0.1 ${master} 1`,
      `sentinel auth-pass main ${DATA_PASSWORD}`,
    ]);
    env = {
      REDIS_SENTINELS: `127.0.0.1:${sentinel}`,
      REDIS_SENTINEL_NAME: 'main',
      REDIS_PASSWORD: DATA_PASSWORD,
      REDIS_SENTINEL_PASSWORD: SENTINEL_PASSWORD,
      REDIS_TLS: 'true',
      REDIS_TLS_CA_FILE: certs.caFile,
      REDIS_TLS_SERVER_NAME: 'redis.internal',
    };
    db = await freshDatabase();
  }, 30_000);
  afterAll(async () => {
    checks?.close();
    await service?.stop();
    await db?.drop();
    await topology.stop();
  });

  it('the service decides with shared rate limits over TLS through Sentinel', async () => {
    service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper(), REDIS_KEY_PREFIX: redisPrefix(), RATE_LIMIT_ENABLED: 'true', STORE_TIMEOUT_MS: '2000', ...env });
    await vi.waitFor(async () => expect(await metricValue(service!, 'ryvion_authz_store_up', { store: 'redis' })).toBe(1), { timeout: 10_000, interval: 100 });
    const account = await service.repository.createAccount('sentinel-tls@example.com', 'free');
    const key = await service.repository.createKey({ accountId: account.id, name: 'tls', scope: 'buyer', expiresAt: null });
    checks = new CheckClient(service.grpcPort);
    const res = await checks.check(envoyCheckRequest({ headers: { authorization: `Bearer ${key.secret}` } }));
    expect(res.status?.code ?? 0).toBe(0);
    expect(await metricValue(service, 'ryvion_authz_ratelimit_decisions_total', { mode: 'shared' })).toBeGreaterThan(0);
    expect(await metricValue(service, 'ryvion_authz_ratelimit_decisions_total', { mode: 'local' })).toBe(0);
  });

  it('keeps hostname verification on: without the server name the certificate does not match 127.0.0.1', async () => {
    const { REDIS_TLS_SERVER_NAME: _n, ...withoutName } = env;
    // ioredis reports only "All sentinels are unreachable"; the handshake shows why.
    await refused(client(withoutName), /sentinels are unreachable/);
    expect(await handshake(withoutName, sentinelPort)).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(await handshake(env, sentinelPort)).toBe('ok');
  });

  it('refuses a certificate from a CA it was not given', async () => {
    const other = await makeCertificates(topology.dir, 'DNS:redis.internal', 'other');
    const wrongCa = { ...env, REDIS_TLS_CA_FILE: other.caFile };
    await refused(client(wrongCa), /sentinels are unreachable/);
    expect(await handshake(wrongCa, sentinelPort)).toMatch(/UNABLE_TO_VERIFY|SELF_SIGNED|UNABLE_TO_GET_ISSUER/);
  });
});

describe('Redis Cluster over TLS with requirepass, certificates with IP SANs', () => {
  const topology = new RedisTopology();
  let env: Record<string, string>;

  beforeAll(async () => {
    const certs = await makeCertificates(topology.dir, 'IP:127.0.0.1');
    const ports = await topology.startCluster(
      (port) => [...tlsArgs(port, certs), '--tls-cluster', 'yes', '--requirepass', DATA_PASSWORD, '--masterauth', DATA_PASSWORD],
      ['--tls', '--cacert', certs.caFile, '-a', DATA_PASSWORD, '--no-auth-warning'],
    );
    env = {
      REDIS_CLUSTER_NODES: ports.map((p) => `127.0.0.1:${p}`).join(','),
      REDIS_PASSWORD: DATA_PASSWORD,
      REDIS_TLS: 'true',
      REDIS_TLS_CA_FILE: certs.caFile,
    };
  }, 30_000);
  afterAll(() => topology.stop());

  it('reaches all three masters and runs the rate-limit script on keys across the slots', async () => {
    const { redis } = client(env);
    await ready(redis);
    expect((redis as import('ioredis').Cluster).nodes('master')).toHaveLength(3);
    const gcra = new RedisGcra(redis, redisPrefix());
    // Twenty accounts' hash tags spread over the three masters' slots.
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => gcra.check([LIMIT], `acct-${i}`, 'k')));
    expect(results.every((r) => r.allowed)).toBe(true);
  });

  it('is refused without the password', async () => {
    const { REDIS_PASSWORD: _p, ...withoutPassword } = env;
    await refused(client(withoutPassword), /NOAUTH|WRONGPASS|refresh slots/i);
  });

  it('keeps hostname verification on: a server name the certificates do not carry is refused', async () => {
    await refused(client({ ...env, REDIS_TLS_SERVER_NAME: 'redis.internal' }), /altnames|does not match|refresh slots/i);
  });
});

describe('a single node over rediss:// with the CA in REDIS_TLS_CA_FILE', () => {
  const topology = new RedisTopology();
  let url: string;
  let certs: Certificates;

  beforeAll(async () => {
    certs = await makeCertificates(topology.dir, 'IP:127.0.0.1');
    const port = await freePort();
    await topology.start([...tlsArgs(port, certs), '--requirepass', DATA_PASSWORD]);
    url = `rediss://:${DATA_PASSWORD}@127.0.0.1:${port}`;
  }, 30_000);
  afterAll(() => topology.stop());

  it('connects with the URL carrying the password and the CA from the file', async () => {
    const { redis } = client({ REDIS_URL: url, REDIS_TLS_CA_FILE: certs.caFile });
    await ready(redis);
    expect(await redis.ping()).toBe('PONG');
  });

  it('refuses the server without that CA (the system CAs do not know it)', async () => {
    await refused(client({ REDIS_URL: url }), /self.signed|unable to verify|certificate/i);
  });
});
