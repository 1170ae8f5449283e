// What a key may hand down to a key it creates: never a longer life, a higher per-key limit or
// a wider IP allow-list than its own, nor more tokens per minute, a larger budget or more models
// (keys/token-limits.ts).
import { cidrContains, formatCidr, parseCidr } from '../net/cidr.js';
import { effectiveTokenLimits, type TokenLimitField, type TokenLimits, type TokenLimitsInput } from './token-limits.js';

/** The creating key's own constraints. */
export interface CallerConstraints {
  expiresAt: Date | null;
  /** Its per-key requests-per-minute limit; null: only the plan's limits apply. */
  keyRpm: number | null;
  /** Its IP allow-list (canonical CIDRs); absent or null: any address. */
  allowedCidrs?: readonly string[] | null;
  /** Its own token limits; absent or null: the plan's only. */
  tokenLimits?: TokenLimits | null;
}

/** What the request asked for; undefined: not given (inherits), null: explicitly none. */
export interface RequestedConstraints {
  expiresAt?: Date | null;
  keyRpm?: number | null;
  /** CIDR blocks or addresses as given; null: any address. */
  allowedCidrs?: readonly string[] | null;
  /** Token limit fields as given; an absent field inherits the caller's. */
  tokenLimits?: TokenLimitsInput;
}

export type ConstraintsOutcome =
  | { ok: true; expiresAt: Date | null; keyRpm: number | null; allowedCidrs: string[] | null; tokenLimits: TokenLimits | null }
  /** A 400 naming the request field at fault. */
  | { ok: false; param: 'expires_at' | 'rate_limit_rpm' | 'allowed_cidrs' | TokenLimitField; message: string };

export const MAX_ALLOWED_CIDRS = 64;

/**
 * The new key's effective constraints. An omitted value inherits the caller's; an explicit one may
 * tighten it but never loosen it, since a key that could mint a longer-lived or faster key would
 * escape its own expiry or limit through its child.
 */
export function effectiveConstraints(caller: CallerConstraints, requested: RequestedConstraints, nowMs: number): ConstraintsOutcome {
  let expiresAt = caller.expiresAt;
  if (requested.expiresAt !== undefined) {
    if (requested.expiresAt !== null && requested.expiresAt.getTime() <= nowMs) {
      return { ok: false, param: 'expires_at', message: "Invalid value for 'expires_at': must be in the future." };
    }
    if (caller.expiresAt !== null && (requested.expiresAt === null || requested.expiresAt.getTime() > caller.expiresAt.getTime())) {
      return {
        ok: false,
        param: 'expires_at',
        message: `Invalid value for 'expires_at': must not be later than the expiry of the key making this request (${caller.expiresAt.toISOString()}).`,
      };
    }
    expiresAt = requested.expiresAt;
  }
  let keyRpm = caller.keyRpm;
  if (requested.keyRpm !== undefined) {
    if (caller.keyRpm !== null && (requested.keyRpm === null || requested.keyRpm > caller.keyRpm)) {
      return {
        ok: false,
        param: 'rate_limit_rpm',
        message: `Invalid value for 'rate_limit_rpm': must not be above the limit of the key making this request (${caller.keyRpm}).`,
      };
    }
    keyRpm = requested.keyRpm;
  }
  const cidrs = allowedCidrsFor(caller.allowedCidrs ?? null, requested.allowedCidrs);
  if (!cidrs.ok) return { ok: false, param: 'allowed_cidrs', message: `Invalid value for 'allowed_cidrs': ${cidrs.problem}` };
  const tokens = effectiveTokenLimits(caller.tokenLimits ?? null, requested.tokenLimits);
  if (!tokens.ok) return { ok: false, param: tokens.param, message: `Invalid value for '${tokens.param}': ${tokens.message}` };
  return { ok: true, expiresAt, keyRpm, allowedCidrs: cidrs.value, tokenLimits: tokens.value };
}

/**
 * An omitted list inherits the caller's; a given one must lie inside it, block by block (CIDR
 * containment: 10.1.0.0/16 is inside 10.0.0.0/8). Stored canonical: host bits cleared, IPv4-mapped
 * IPv6 written as IPv4.
 */
function allowedCidrsFor(
  caller: readonly string[] | null,
  requested: readonly string[] | null | undefined,
): { ok: true; value: string[] | null } | { ok: false; problem: string } {
  if (requested === undefined) return { ok: true, value: caller === null ? null : [...caller] };
  const own = (caller ?? []).map((c) => parseCidr(c)).filter((c) => c !== undefined);
  if (requested === null) {
    return caller === null ? { ok: true, value: null } : { ok: false, problem: `must not be null: the key making this request is limited to ${caller.join(', ')}.` };
  }
  if (requested.length === 0) return { ok: false, problem: 'must not be empty (omit it, or null for any address).' };
  if (requested.length > MAX_ALLOWED_CIDRS) return { ok: false, problem: `at most ${MAX_ALLOWED_CIDRS} entries.` };
  const out: string[] = [];
  for (const text of requested) {
    const c = parseCidr(text);
    if (!c) return { ok: false, problem: `"${text.slice(0, 64)}" is not an IP address or CIDR block.` };
    if (caller !== null && !own.some((o) => cidrContains(o, c))) {
      return { ok: false, problem: `${formatCidr(c)} is not inside the allow-list of the key making this request (${caller.join(', ')}).` };
    }
    const canonical = formatCidr(c);
    if (!out.includes(canonical)) out.push(canonical);
  }
  return { ok: true, value: out };
}
