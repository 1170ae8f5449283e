// Key hashing: HMAC-SHA256 under a server-side pepper, versioned so the pepper can rotate.
import { createHmac } from 'node:crypto';
import { ConfigError, type Config } from '../config.js';

export interface Pepper {
  version: number;
  secret: string;
}

/**
 * A key's HMAC under one pepper. `id` is its base64url text, what the caches are keyed by and all
 * a check answered from memory needs; `hash`, the bytes Postgres stores, is made on first use.
 * The digest is taken as text directly: digest() then toString() costs about 0.5 us more per
 * check (bench/README.md).
 */
export class KeyHash {
  private bytes: Buffer | undefined;

  constructor(
    readonly pepperVersion: number,
    readonly id: string,
  ) {}

  get hash(): Buffer {
    return (this.bytes ??= Buffer.from(this.id, 'base64url'));
  }
}

export class KeyHasher {
  private readonly current: Pepper;
  private readonly all: readonly Pepper[];

  /** `previous` stays accepted for look-ups while keys hashed under it are still in use. */
  constructor(current: Pepper, previous?: Pepper) {
    this.current = current;
    this.all = previous ? [current, previous] : [current];
  }

  get currentVersion(): number {
    return this.current.version;
  }

  hashForStorage(key: string): KeyHash {
    return new KeyHash(this.current.version, hmac(this.current.secret, key));
  }

  /** Every hash the key may be stored under, current pepper first. */
  candidates(key: string): KeyHash[] {
    return this.all.map((p) => new KeyHash(p.version, hmac(p.secret, key)));
  }
}

function hmac(secret: string, key: string): string {
  return createHmac('sha256', secret).update(key, 'utf8').digest('base64url');
}

/** The hasher a configuration names: KEY_PEPPER, and KEY_PEPPER_PREVIOUS during a rotation. */
export function keyHasherFrom(config: Config): KeyHasher {
  if (!config.KEY_PEPPER) throw new ConfigError('KEY_PEPPER: required but not set');
  return new KeyHasher(
    { version: config.KEY_PEPPER_VERSION, secret: config.KEY_PEPPER },
    config.KEY_PEPPER_PREVIOUS ? { version: config.KEY_PEPPER_VERSION - 1, secret: config.KEY_PEPPER_PREVIOUS } : undefined,
  );
}

