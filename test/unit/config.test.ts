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
    [{ HTTP_PORT: '9191' }, /^GRPC_PORT: GRPC_PORT, HTTP_PORT and OPS_PORT must differ/],
    [{ LOG_LEVEL: 'loud' }, /^LOG_LEVEL: /],
    [{ STORE_TIMEOUT_MS: 'abc' }, /^STORE_TIMEOUT_MS: must be a whole number of milliseconds$/],
    [{ CACHE_MEMORY_MAX_KEYS: '1.5' }, /^CACHE_MEMORY_MAX_KEYS: must be a whole number of entries$/],
    [{ GRPC_PORT: 'x' }, /^GRPC_PORT: must be a port number, 1-65535$/],
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
