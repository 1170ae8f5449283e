// Key hashing: HMAC-SHA256 under a server-side pepper, versioned so the pepper can rotate.
import { createHmac, createSecretKey, type KeyObject } from 'node:crypto';
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

// A pepper as the HMAC takes it: a KeyObject made once, instead of the secret string encoded again
// at every check: 0.1-0.3 us of the 2.5-3.1 us a check's HMAC took (commit message has the figures).
interface PepperKey {
  version: number;
  key: KeyObject;
}

const pepperKey = (p: Pepper): PepperKey => ({ version: p.version, key: createSecretKey(Buffer.from(p.secret, 'utf8')) });

export class KeyHasher {
  private readonly current: PepperKey;
  private readonly all: readonly PepperKey[];

  /** `previous` stays accepted for look-ups while keys hashed under it are still in use. */
  constructor(current: Pepper, previous?: Pepper) {
    this.current = pepperKey(current);
    this.all = previous ? [this.current, pepperKey(previous)] : [this.current];
  }

  get currentVersion(): number {
    return this.current.version;
  }

  hashForStorage(key: string): KeyHash {
    return new KeyHash(this.current.version, hmac(this.current.key, key));
  }

  /** Every hash the key may be stored under, current pepper first. */
  candidates(key: string): KeyHash[] {
    return this.all.map((p) => new KeyHash(p.version, hmac(p.key, key)));
  }
}

function hmac(pepper: KeyObject, key: string): string {
  return createHmac('sha256', pepper).update(key, 'utf8').digest('base64url');
}

/** The hasher a configuration names: KEY_PEPPER, and KEY_PEPPER_PREVIOUS during a rotation. */
export function keyHasherFrom(config: Config): KeyHasher {
  if (!config.KEY_PEPPER) throw new ConfigError('KEY_PEPPER: required but not set');
  return new KeyHasher(
    { version: config.KEY_PEPPER_VERSION, secret: config.KEY_PEPPER },
    config.KEY_PEPPER_PREVIOUS ? { version: config.KEY_PEPPER_VERSION - 1, secret: config.KEY_PEPPER_PREVIOUS } : undefined,
  );
}

