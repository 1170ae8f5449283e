// The shared Redis tier: entries by key hash, written only by conditional fills.
import { KEY_CACHE_FILL_COMMAND, type RedisClient } from '../../store/redis.js';
import { asRedisUnavailable } from '../../store/errors.js';
import { decodeEntry, encodeEntry, type CacheEntry } from './entry.js';

// Sets the entry unless Redis already holds a higher version: a fill that read
// Postgres before a revoke can then never replace the revoked marker.
const FILL_SCRIPT = `
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, held = pcall(cjson.decode, cur)
  if ok and type(held) == 'table' and type(held.v) == 'number' and held.v > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
`;

type WithFill = RedisClient & { ryvionFill(key: string, value: string, version: number, ttlMs: number): Promise<number> };

export interface RedisTierOptions {
  prefix: string;
  ttlMs: number;
  negativeTtlMs: number;
}

/** The shared tier as resolution and revocation use it (RedisTier; an in-memory twin in tests). */
export interface SharedTier {
  get(hash: string): Promise<CacheEntry | undefined>;
  /** Conditional: never replaces a higher version. False when it did not write. */
  fill(hash: string, entry: CacheEntry): Promise<boolean>;
}

export class RedisTier implements SharedTier {
  private readonly client: WithFill;

  constructor(
    client: RedisClient,
    private readonly opts: RedisTierOptions,
  ) {
    client.defineCommand(KEY_CACHE_FILL_COMMAND, { numberOfKeys: 1, lua: FILL_SCRIPT });
    this.client = client as WithFill;
  }

  /** The hash tag keeps each key's entry in one slot on Redis Cluster. */
  keyFor(hash: string): string {
    return `${this.opts.prefix}key:{${hash}}`;
  }

  async get(hash: string): Promise<CacheEntry | undefined> {
    let text: string | null;
    try {
      text = await this.client.get(this.keyFor(hash));
    } catch (err) {
      throw asRedisUnavailable(err);
    }
    return text === null ? undefined : decodeEntry(hash, text);
  }

  /** Conditional fill; revoked entries live twice as long as others (they guard against stale fills). */
  async fill(hash: string, entry: CacheEntry): Promise<boolean> {
    const ttl =
      entry.state === 'absent' ? this.opts.negativeTtlMs : entry.record.revokedAt ? 2 * this.opts.ttlMs : this.opts.ttlMs;
    try {
      return (await this.client.ryvionFill(this.keyFor(hash), encodeEntry(entry), entry.version, ttl)) === 1;
    } catch (err) {
      throw asRedisUnavailable(err);
    }
  }
}
