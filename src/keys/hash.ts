// Key hashing: HMAC-SHA256 under a server-side pepper, versioned so the pepper can rotate.
import { createHmac } from 'node:crypto';

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
