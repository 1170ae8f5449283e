// Key hashing: HMAC-SHA256 under a server-side pepper, versioned so the pepper can rotate.
import { createHmac } from 'node:crypto';
import { ConfigError, type Config } from '../config.js';

export interface Pepper {
  version: number;
  secret: string;
}

export interface KeyHash {
  pepperVersion: number;
  hash: Buffer;
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
    return { pepperVersion: this.current.version, hash: hmac(this.current.secret, key) };
  }

  /** Every hash the key may be stored under, current pepper first. */
  candidates(key: string): KeyHash[] {
    return this.all.map((p) => ({ pepperVersion: p.version, hash: hmac(p.secret, key) }));
  }
}

function hmac(secret: string, key: string): Buffer {
  return createHmac('sha256', secret).update(key, 'utf8').digest();
}

/** The hasher a configuration names: KEY_PEPPER, and KEY_PEPPER_PREVIOUS during a rotation. */
export function keyHasherFrom(config: Config): KeyHasher {
  if (!config.KEY_PEPPER) throw new ConfigError('KEY_PEPPER: required but not set');
  return new KeyHasher(
    { version: config.KEY_PEPPER_VERSION, secret: config.KEY_PEPPER },
    config.KEY_PEPPER_PREVIOUS ? { version: config.KEY_PEPPER_VERSION - 1, secret: config.KEY_PEPPER_PREVIOUS } : undefined,
  );
}

