// What a key may hand down to a key it creates: never a longer life or a higher per-key limit than its own.

/** The creating key's own constraints. */
export interface CallerConstraints {
  expiresAt: Date | null;
  /** Its per-key requests-per-minute limit; null: only the plan's limits apply. */
  keyRpm: number | null;
}

/** What the request asked for; undefined: not given (inherits), null: explicitly none. */
export interface RequestedConstraints {
  expiresAt?: Date | null;
  keyRpm?: number | null;
}

export type ConstraintsOutcome =
  | { ok: true; expiresAt: Date | null; keyRpm: number | null }
  /** A 400 naming the request field at fault. */
  | { ok: false; param: 'expires_at' | 'rate_limit_rpm'; message: string };

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
  return { ok: true, expiresAt, keyRpm };
}
