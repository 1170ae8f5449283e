import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';

const PEPPER = 'p'.repeat(32);

describe('configuration', () => {
  it('has the documented defaults', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      GRPC_PORT: 9191, HTTP_PORT: 8080, OPS_PORT: 9090, KEY_ENVIRONMENT: 'live', MIGRATE_ON_START: false,
      LOG_LEVEL: 'info', STRIP_CREDENTIAL_HEADERS: true, UNAVAILABLE_MODE: 'deny', STORE_TIMEOUT_MS: 100,
    });
  });

  it.each([
    [{ GRPC_PORT: 'abc' }, /^GRPC_PORT: /],
    [{ GRPC_PORT: '70000' }, /^GRPC_PORT: must be 1-65535/],
    [{ KEY_PEPPER: 'short' }, /^KEY_PEPPER: must be at least 32 bytes/],
    [{ KEY_ENVIRONMENT: 'prod' }, /^KEY_ENVIRONMENT: must be live or test/],
    [{ MIGRATE_ON_START: 'maybe' }, /^MIGRATE_ON_START: must be true or false/],
    [{ DATABASE_URL: 'mysql://x' }, /^DATABASE_URL: must be a postgres/],
    [{ HTTP_PORT: '9191' }, /^GRPC_PORT: GRPC_PORT, HTTP_PORT, OPS_PORT and USAGE_PORT must differ/],
    [{ LOG_LEVEL: 'loud' }, /^LOG_LEVEL: /],
    [{ STORE_TIMEOUT_MS: 'abc' }, /^STORE_TIMEOUT_MS: must be a whole number of milliseconds$/],
    [{ CACHE_MEMORY_MAX_KEYS: '1.5' }, /^CACHE_MEMORY_MAX_KEYS: must be a whole number of entries$/],
    [{ GRPC_PORT: 'x' }, /^GRPC_PORT: must be a port number, 1-65535$/],
    [{ HEAP_GROWING_PERCENT: 'lots' }, /^HEAP_GROWING_PERCENT: must be a whole number of percent$/],
    [{ HEAP_GROWING_PERCENT: '-5' }, /^HEAP_GROWING_PERCENT: must be 0-300$/],
    [{ HEAP_GROWING_PERCENT: '301' }, /^HEAP_GROWING_PERCENT: must be 0-300$/],
    [{ ACCESS_LOG_SECRET: 'too-short' }, /^ACCESS_LOG_SECRET: must be at least 32 characters/],
    [{ ACCESS_LOG_SECRET: `${'a'.repeat(20)} ${'b'.repeat(20)}` }, /^ACCESS_LOG_SECRET: must be printable ASCII without spaces/],
    [{ ACCESS_LOG_SECRET_PREVIOUS: 'a'.repeat(40) }, /^ACCESS_LOG_SECRET_PREVIOUS: set ACCESS_LOG_SECRET too/],
  ])('rejects %o with one line naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    try {
      loadConfig(env);
    } catch (err) {
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toContain('\n');
    }
  });

  it('never echoes a secret value in its error', () => {
    try {
      loadConfig({ KEY_PEPPER: 'my-short-secret' });
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).not.toContain('my-short-secret');
    }
  });

  it('names a missing required setting with a hint', () => {
    expect(() => loadConfig({ KEY_PEPPER: PEPPER }, ['DATABASE_URL', 'KEY_PEPPER'])).toThrow(/^DATABASE_URL: required but not set/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://h/db' }, ['DATABASE_URL', 'KEY_PEPPER'])).toThrow(/^KEY_PEPPER: required/);
  });

  it('treats an empty value as unset (a blank Helm value behaves like an absent one)', () => {
    const c = loadConfig({ GRPC_PORT: '', REDIS_URL: '' });
    expect(c.GRPC_PORT).toBe(9191);
    expect(c.REDIS_URL).toBeUndefined();
  });
});

describe('configuration: Redis credentials and TLS', () => {
  const sentinel = { REDIS_SENTINELS: '10.0.0.1:26379,10.0.0.2:26379', REDIS_SENTINEL_NAME: 'main' };

  it('accepts data-node and Sentinel credentials apart, and TLS with a CA file and a server name', () => {
    const c = loadConfig({
      ...sentinel,
      REDIS_USERNAME: 'ryvion', REDIS_PASSWORD: 'data-pass', REDIS_SENTINEL_USERNAME: 'watcher', REDIS_SENTINEL_PASSWORD: 'sentinel-pass',
      REDIS_TLS: 'true', REDIS_TLS_CA_FILE: '/etc/redis/ca.crt', REDIS_TLS_SERVER_NAME: 'redis.internal',
    });
    expect(c).toMatchObject({ REDIS_USERNAME: 'ryvion', REDIS_PASSWORD: 'data-pass', REDIS_SENTINEL_USERNAME: 'watcher', REDIS_TLS: true, REDIS_TLS_SERVER_NAME: 'redis.internal' });
    expect(loadConfig({}).REDIS_TLS).toBe(false);
    // A rediss:// URL is TLS already: its CA file is accepted.
    expect(loadConfig({ REDIS_URL: 'rediss://redis:6380', REDIS_TLS_CA_FILE: '/ca.crt' }).REDIS_TLS_CA_FILE).toBe('/ca.crt');
  });

  it.each([
    [{ REDIS_URL: 'redis://redis:6379', REDIS_PASSWORD: 'x' }, /^REDIS_PASSWORD: not used with REDIS_URL: put credentials in the URL/],
    [{ REDIS_URL: 'redis://redis:6379', REDIS_TLS: 'true' }, /^REDIS_TLS: not used with REDIS_URL: .*rediss:\/\//],
    [{ REDIS_CLUSTER_NODES: 'a:6379', REDIS_SENTINEL_PASSWORD: 'x' }, /^REDIS_SENTINEL_PASSWORD: only used with REDIS_SENTINELS/],
    [{ ...sentinel, REDIS_USERNAME: 'ryvion' }, /^REDIS_PASSWORD: required with REDIS_USERNAME/],
    [{ ...sentinel, REDIS_SENTINEL_USERNAME: 'watcher' }, /^REDIS_SENTINEL_PASSWORD: required with REDIS_SENTINEL_USERNAME/],
    [{ ...sentinel, REDIS_TLS_CA_FILE: '/ca.crt' }, /^REDIS_TLS_CA_FILE: needs TLS: set REDIS_TLS=true/],
    [{ REDIS_URL: 'redis://redis:6379', REDIS_TLS_SERVER_NAME: 'redis.internal' }, /^REDIS_TLS_SERVER_NAME: needs TLS/],
  ])('refuses %o, naming the setting, without echoing a password', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
    try {
      loadConfig(env);
    } catch (err) {
      expect((err as Error).message).not.toMatch(/data-pass|sentinel-pass/);
    }
  });
});

describe('configuration: Postgres look-up cap within the pool', () => {
  it('defaults the cap to the pool size less two (at least one), leaving room for lease renewals', () => {
    expect(loadConfig({}).POSTGRES_LOOKUP_CONCURRENCY).toBe(8);
    expect(loadConfig({ DATABASE_POOL_MAX: '20' }).POSTGRES_LOOKUP_CONCURRENCY).toBe(18);
    expect(loadConfig({ DATABASE_POOL_MAX: '2' }).POSTGRES_LOOKUP_CONCURRENCY).toBe(1);
    expect(loadConfig({ POSTGRES_LOOKUP_CONCURRENCY: '10' }).POSTGRES_LOOKUP_CONCURRENCY).toBe(10);
  });

  it('refuses a cap above the pool: those look-ups would queue inside the pool instead of answering 503', () => {
    expect(() => loadConfig({ POSTGRES_LOOKUP_CONCURRENCY: '32' })).toThrow(
      'POSTGRES_LOOKUP_CONCURRENCY: must be at most DATABASE_POOL_MAX (10): look-ups beyond the pool would queue inside it instead of answering 503',
    );
  });

  it('leaves RATE_LIMIT_LOCAL_SHARE unset by default (the share follows the live replicas), and takes a fixed one', () => {
    expect(loadConfig({}).RATE_LIMIT_LOCAL_SHARE).toBeUndefined();
    expect(loadConfig({ RATE_LIMIT_LOCAL_SHARE: '0.25' }).RATE_LIMIT_LOCAL_SHARE).toBe(0.25);
  });
});
