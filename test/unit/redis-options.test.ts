// Which Redis commands skip ioredis's auto-pipelining (src/store/redis.ts): the key cache's miss path
// does (one Pipeline object per command promoted ~330 MB more to the old generation over a pass
// of 100 k keys: bench/README.md), the rate-limit script does not (checks of one turn share a write).
import { describe, expect, it } from 'vitest';
import { COMMANDS_NOT_AUTO_PIPELINED, KEY_CACHE_FILL_COMMAND, optionsFor } from '../../src/store/redis.js';
import { RedisTier } from '../../src/keys/cache/redis-tier.js';
import type { RedisClient } from '../../src/store/redis.js';

describe('Redis command clients and auto-pipelining', () => {
  it('send the key cache GET and fill as they come, everything else through auto-pipelines', () => {
    const o = optionsFor('command', 100, 'test');
    expect(o.enableAutoPipelining).toBe(true);
    expect(o.autoPipeliningIgnoredCommands).toEqual(expect.arrayContaining(['get', KEY_CACHE_FILL_COMMAND]));
    expect(o.autoPipeliningIgnoredCommands).not.toContain('ryvionGcra');
    expect(o.autoPipeliningIgnoredCommands).toEqual([...COMMANDS_NOT_AUTO_PIPELINED]);
  });

  it('names the fill script as the tier defines it, so the exception cannot drift from it', () => {
    const defined: string[] = [];
    const fake = { defineCommand: (name: string) => void defined.push(name) } as unknown as RedisClient;
    new RedisTier(fake, { prefix: 'p:', ttlMs: 1000, negativeTtlMs: 1000 });
    expect(defined).toEqual([KEY_CACHE_FILL_COMMAND]);
    expect(COMMANDS_NOT_AUTO_PIPELINED).toContain(defined[0]);
  });
});
