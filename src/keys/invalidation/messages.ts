// The messages replicas exchange about revocations, and the channels they travel on.

export const PG_INVALIDATE_CHANNEL = 'ryvion_invalidate';
export const PG_ACK_CHANNEL = 'ryvion_ack';

/** A revocation as it travels: the key's stored hash and the version the revocation gave it. */
export interface Invalidation {
  /** One id per revoke call: acknowledgements name it, duplicates are told apart by it. */
  rid: string;
  keyId: string;
  accountId: string;
  hash: string;
  version: number;
  /**
   * `revoked` (the default, and what older publishers meant): replicas may write a revoked marker.
   * `changed` (a roll shortened its expiry): replicas drop what they hold and re-read it.
   */
  kind?: 'revoked' | 'changed';
}

export interface Ack {
  rid: string;
  instance: string;
}

export type ChannelName = 'postgres' | 'redis';

export function parseInvalidation(payload: string): Invalidation | undefined {
  try {
    const m = JSON.parse(payload) as Partial<Invalidation>;
    if (typeof m.rid !== 'string' || typeof m.keyId !== 'string' || typeof m.hash !== 'string' || typeof m.version !== 'number') return undefined;
    const base = { rid: m.rid, keyId: m.keyId, accountId: typeof m.accountId === 'string' ? m.accountId : '', hash: m.hash, version: m.version };
    return m.kind === 'changed' ? { ...base, kind: 'changed' } : base;
  } catch {
    return undefined;
  }
}

export function parseAck(payload: string): Ack | undefined {
  try {
    const { rid, instance } = JSON.parse(payload) as { rid?: unknown; instance?: unknown };
    return typeof rid === 'string' && typeof instance === 'string' ? { rid, instance } : undefined;
  } catch {
    return undefined;
  }
}
