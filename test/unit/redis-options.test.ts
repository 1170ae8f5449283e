// Which Redis commands skip ioredis's auto-pipelining (src/store/redis.ts): the key cache's miss path
// and the rate-limit script do (one Pipeline object per auto-pipelined turn: over a pass of 100 k keys
// these were most of what the young generation promoted, bench/README.md, memory); the token-budget
// scripts and everything else keep it.
import { describe, expect, it } from 'vitest';
import { COMMANDS_NOT_AUTO_PIPELINED, KEY_CACHE_FILL_COMMAND, RATE_LIMIT_COMMAND, optionsFor } from '../../src/store/redis.js';
import { RedisTier } from '../../src/keys/cache/redis-tier.js';
import { RedisGcra } from '../../src/ratelimit/redis-gcra.js';
import type { RedisClient } from '../../src/store/redis.js';

const definedBy = (make: (client: RedisClient) => unknown): string[] => {
  const defined: string[] = [];
  make({ defineCommand: (name: string) => void defined.push(name) } as unknown as RedisClient);
  return defined;
};

describe('Redis command clients and auto-pipelining', () => {
  it('send the key cache GET and fill and the rate-limit script as they come, the rest through auto-pipelines', () => {
    const o = optionsFor('command', 100, 'test');
    expect(o.enableAutoPipelining).toBe(true);
    expect(o.autoPipeliningIgnoredCommands).toEqual(expect.arrayContaining(['get', KEY_CACHE_FILL_COMMAND, RATE_LIMIT_COMMAND]));
    expect(o.autoPipeliningIgnoredCommands).not.toContain('ryvionTokenReserve');
    expect(o.autoPipeliningIgnoredCommands).toEqual([...COMMANDS_NOT_AUTO_PIPELINED]);
  });

  it('names the fill and rate-limit scripts as their modules define them, so the exceptions cannot drift', () => {
    const fill = definedBy((c) => new RedisTier(c, { prefix: 'p:', ttlMs: 1000, negativeTtlMs: 1000 }));
    expect(fill).toEqual([KEY_CACHE_FILL_COMMAND]);
    const gcra = definedBy((c) => new RedisGcra(c, 'p:'));
    expect(gcra).toEqual([RATE_LIMIT_COMMAND]);
    expect(COMMANDS_NOT_AUTO_PIPELINED).toEqual(expect.arrayContaining([...fill, ...gcra]));
  });
});
