// What the cache tiers hold for one key hash: a record, a revocation, or "no such key".
import { keyRecord, type KeyRecord } from '../repository.js';
import { recordStrings } from '../intern.js';
import { readTokenLimits, type TokenLimits } from '../token-limits.js';

/**
 * `version` orders entries: a fill never replaces a higher version, so a fill
 * that read Postgres before a revoke cannot land after the revoked marker.
 * Unknown keys have version 0.
 */
export type CacheEntry = { state: 'found'; version: number; record: KeyRecord } | { state: 'absent'; version: 0 };

export function entryFor(record: KeyRecord | null): CacheEntry {
  return record ? { state: 'found', version: record.version, record } : { state: 'absent', version: 0 };
}

interface WireRecord {
  i: string;
  a: string;
  n: string;
  s: string;
  p: string;
  e: number | null;
  r: number | null;
  ar?: number | null;
  kr?: number | null;
  c?: readonly string[] | null;
  m?: Record<string, unknown> | null;
  at?: TokenLimits;
  kt?: TokenLimits;
}

/** Compact JSON for Redis; `v` must stay a top-level number (the fill script reads it). */
export function encodeEntry(entry: CacheEntry): string {
  if (entry.state === 'absent') return '{"v":0}';
  const r = entry.record;
  const wire: WireRecord = {
    i: r.id,
    a: r.accountId,
    n: r.name,
    s: r.scope,
    p: r.plan,
    e: r.expiresAt ? r.expiresAt.getTime() : null,
    r: r.revokedAt ? r.revokedAt.getTime() : null,
    ar: r.accountRpm,
    kr: r.keyRpm,
    ...(r.allowedCidrs ? { c: r.allowedCidrs } : {}),
    ...(r.metadata ? { m: r.metadata } : {}),
    ...(r.accountTokens ? { at: r.accountTokens } : {}),
    ...(r.keyTokens ? { kt: r.keyTokens } : {}),
  };
  return JSON.stringify({ v: entry.version, k: wire });
}

/** Parses what encodeEntry wrote; anything else is treated as a miss by the caller. */
export function decodeEntry(hash: string, text: string): CacheEntry | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const { v, k } = parsed as { v?: unknown; k?: Partial<WireRecord> };
  if (typeof v !== 'number') return undefined;
  if (v === 0 || k === undefined) return { state: 'absent', version: 0 };
  if (typeof k.i !== 'string' || typeof k.a !== 'string' || typeof k.s !== 'string') return undefined;
  return {
    state: 'found',
    version: v,
    record: keyRecord({
      id: k.i,
      hash,
      accountId: recordStrings.of(k.a),
      name: typeof k.n === 'string' ? k.n : '',
      scope: recordStrings.of(k.s),
      plan: typeof k.p === 'string' ? recordStrings.of(k.p) : 'free',
      expiresAt: typeof k.e === 'number' ? new Date(k.e) : null,
      revokedAt: typeof k.r === 'number' ? new Date(k.r) : null,
      version: v,
      accountRpm: typeof k.ar === 'number' ? k.ar : null,
      keyRpm: typeof k.kr === 'number' ? k.kr : null,
      allowedCidrs: Array.isArray(k.c) && k.c.every((x) => typeof x === 'string') ? k.c : null,
      metadata: typeof k.m === 'object' && k.m !== null && !Array.isArray(k.m) ? k.m : null,
      accountTokens: k.at !== undefined ? readTokenLimits(k.at) : null,
      keyTokens: k.kt !== undefined ? readTokenLimits(k.kt) : null,
    }),
  };
}
