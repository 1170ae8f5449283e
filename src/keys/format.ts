// API key format: ryv_<env>_ + 43 random base62 chars + 6-char base62 CRC32 checksum.
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';

export type KeyEnvironment = 'live' | 'test';

export const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const RANDOM_LENGTH = 43; // 43 * log2(62) = 256.02 bits
const CHECKSUM_LENGTH = 6; // 62^6 > 2^32, so any CRC32 fits
const PREFIX_LENGTH = 'ryv_live_'.length;
export const KEY_LENGTH = PREFIX_LENGTH + RANDOM_LENGTH + CHECKSUM_LENGTH;

const IS_BASE62 = new Uint8Array(128);
for (const ch of BASE62) IS_BASE62[ch.charCodeAt(0)] = 1;

/** Random base62 text from the CSPRNG, by rejection sampling so every character is equally likely. */
export function randomBase62(length: number): string {
  let out = '';
  while (out.length < length) {
    const bytes = randomBytes(length * 2);
    for (const b of bytes) {
      if (b < 248) out += BASE62[b % 62];
      if (out.length === length) break;
    }
  }
  return out;
}

export function checksumOf(body: string): string {
  let n = crc32(body);
  let out = '';
  for (let i = 0; i < CHECKSUM_LENGTH; i++) {
    out = BASE62[n % 62] + out;
    n = Math.floor(n / 62);
  }
  return out;
}

export function generateKey(env: KeyEnvironment): string {
  const body = `ryv_${env}_${randomBase62(RANDOM_LENGTH)}`;
  return body + checksumOf(body);
}

export type KeyShape =
  | { ok: true }
  | { ok: false; problem: 'malformed' | 'bad_checksum' | 'wrong_environment' };

/**
 * Checks shape and checksum offline: no store is consulted for a string that
 * fails here. `expected` is the only environment this deployment accepts.
 */
export function checkKeyShape(key: string, expected: KeyEnvironment): KeyShape {
  if (key.length !== KEY_LENGTH || !key.startsWith('ryv_')) return { ok: false, problem: 'malformed' };
  const env = key.slice(4, 8);
  if ((env !== 'live' && env !== 'test') || key.charCodeAt(8) !== 95 /* _ */) return { ok: false, problem: 'malformed' };
  for (let i = PREFIX_LENGTH; i < KEY_LENGTH; i++) {
    const c = key.charCodeAt(i);
    if (c >= 128 || IS_BASE62[c] === 0) return { ok: false, problem: 'malformed' };
  }
  const split = KEY_LENGTH - CHECKSUM_LENGTH;
  if (checksumOf(key.slice(0, split)) !== key.slice(split)) return { ok: false, problem: 'bad_checksum' };
  if (env !== expected) return { ok: false, problem: 'wrong_environment' };
  return { ok: true };
}

/** What listings show: enough to recognise a key, far too little to use it. */
export function displayPrefix(key: string): string {
  return `${key.slice(0, PREFIX_LENGTH + 4)}…`;
}
