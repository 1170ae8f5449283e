// Reservation ids: what the gate hands upstream (x-ryvion-reservation-id, dynamic metadata
// `reservation_id`) and what reconciliation accepts back. Signed with an HMAC under a server
// secret, so only ids this deployment issued are accepted, and self-describing, so usage reported
// for a reservation whose Redis record is gone (Redis restarted empty) can still be charged to the
// right key, account and periods, once (the ledger's settlement row is the once).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export interface ReservationClaims {
  /** Random, unique per reservation. */
  nonce: string;
  accountId: string;
  keyId: string;
  /** The model's prices when it was reserved (micro-units per million tokens): usage is charged at them. */
  inputPerMillion: number;
  outputPerMillion: number;
  /** When it was made and when it expires into a charge (ms since the epoch). */
  reservedAt: number;
  expiresAt: number;
  inputTokens: number;
  outputTokens: number;
  costMicros: number;
  /** The budget periods charged: `<subject>|<period>|<YYYY-MM-DD start>`. */
  periods: readonly string[];
}

const PREFIX = 'rsv1.';
const MAC_BYTES = 16;
/**
 * Longer than any id this code makes (under 450 characters: account and key ids have fixed lengths,
 * and no model name is carried, only its prices), and within the access-log receiver's 512.
 */
export const MAX_RESERVATION_ID_LENGTH = 512;

export class ReservationSigner {
  private readonly key: Buffer;

  /** `secret`: the deployment's shared secret; a key for this purpose alone is derived from it. */
  constructor(secret: string | Buffer) {
    this.key = createHmac('sha256', secret).update('ryvion-authz reservation ids v1').digest();
  }

  newNonce(): string {
    return randomBytes(12).toString('base64url');
  }

  sign(c: ReservationClaims): string {
    const payload = Buffer.from(
      JSON.stringify([c.nonce, c.accountId, c.keyId, c.inputPerMillion, c.outputPerMillion, c.reservedAt, c.expiresAt, c.inputTokens, c.outputTokens, c.costMicros, c.periods]),
    ).toString('base64url');
    return `${PREFIX}${payload}.${this.mac(payload).toString('base64url')}`;
  }

  /** The claims of an id this deployment signed; undefined for anything else (forged, altered, malformed). */
  verify(id: unknown): ReservationClaims | undefined {
    if (typeof id !== 'string' || id.length > MAX_RESERVATION_ID_LENGTH || !id.startsWith(PREFIX)) return undefined;
    const dot = id.indexOf('.', PREFIX.length);
    if (dot < 0) return undefined;
    const payload = id.slice(PREFIX.length, dot);
    const given = Buffer.from(id.slice(dot + 1), 'base64url');
    if (given.length !== MAC_BYTES || !timingSafeEqual(given, this.mac(payload))) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
    if (!Array.isArray(v) || v.length !== 11) return undefined;
    const [nonce, accountId, keyId, inputPerMillion, outputPerMillion, reservedAt, expiresAt, inputTokens, outputTokens, costMicros, periods] = v as unknown[];
    if (typeof nonce !== 'string' || typeof accountId !== 'string' || typeof keyId !== 'string') return undefined;
    const counts = [inputPerMillion, outputPerMillion, reservedAt, expiresAt, inputTokens, outputTokens, costMicros];
    if (!counts.every((n) => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0)) return undefined;
    if (!Array.isArray(periods) || !periods.every((p) => typeof p === 'string')) return undefined;
    return {
      nonce, accountId, keyId,
      inputPerMillion: inputPerMillion as number, outputPerMillion: outputPerMillion as number,
      reservedAt: reservedAt as number, expiresAt: expiresAt as number,
      inputTokens: inputTokens as number, outputTokens: outputTokens as number, costMicros: costMicros as number,
      periods: periods as string[],
    };
  }

  private mac(payload: string): Buffer {
    return createHmac('sha256', this.key).update(payload).digest().subarray(0, MAC_BYTES);
  }
}
