// A key never mints a key that outlives it or outruns its per-key limit.
import { describe, expect, it } from 'vitest';
import { effectiveConstraints } from '../../src/keys/constraints.js';

const now = Date.parse('2030-01-01T00:00:00Z');
const in3min = new Date(now + 3 * 60_000);
const in1h = new Date(now + 3_600_000);
const noLimits = { expiresAt: null, keyRpm: null };

describe('effectiveConstraints', () => {
  it('a caller expiring in 3 minutes cannot create a key that never expires', () => {
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, { expiresAt: null }, now)).toMatchObject({ ok: false, param: 'expires_at' });
  });

  it('an explicit expiry later than the caller\'s is refused, naming the caller\'s expiry', () => {
    const r = effectiveConstraints({ expiresAt: in3min, keyRpm: null }, { expiresAt: in1h }, now);
    expect(r).toMatchObject({ ok: false, param: 'expires_at' });
    if (!r.ok) expect(r.message).toContain(in3min.toISOString());
  });

  it('an omitted expiry inherits the caller\'s', () => {
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, {}, now)).toEqual({ ok: true, expiresAt: in3min, keyRpm: null });
  });

  it('an earlier or equal expiry is taken as asked', () => {
    const earlier = new Date(now + 60_000);
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, { expiresAt: earlier }, now)).toEqual({ ok: true, expiresAt: earlier, keyRpm: null });
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, { expiresAt: in3min }, now)).toMatchObject({ ok: true, expiresAt: in3min });
  });

  it('a caller without an expiry may create keys with or without one', () => {
    expect(effectiveConstraints(noLimits, { expiresAt: null }, now)).toEqual({ ok: true, expiresAt: null, keyRpm: null });
    expect(effectiveConstraints(noLimits, { expiresAt: in1h }, now)).toEqual({ ok: true, expiresAt: in1h, keyRpm: null });
    expect(effectiveConstraints(noLimits, {}, now)).toEqual({ ok: true, expiresAt: null, keyRpm: null });
  });

  it('an expiry in the past is refused', () => {
    expect(effectiveConstraints(noLimits, { expiresAt: new Date(now) }, now)).toMatchObject({ ok: false, param: 'expires_at' });
  });

  it('the per-key limit follows the same rule: inherited when omitted, never raised or removed', () => {
    const caller = { expiresAt: null, keyRpm: 60 };
    expect(effectiveConstraints(caller, {}, now)).toEqual({ ok: true, expiresAt: null, keyRpm: 60 });
    expect(effectiveConstraints(caller, { keyRpm: 30 }, now)).toEqual({ ok: true, expiresAt: null, keyRpm: 30 });
    expect(effectiveConstraints(caller, { keyRpm: 61 }, now)).toMatchObject({ ok: false, param: 'rate_limit_rpm' });
    expect(effectiveConstraints(caller, { keyRpm: null }, now)).toMatchObject({ ok: false, param: 'rate_limit_rpm' });
    expect(effectiveConstraints(noLimits, { keyRpm: 1000 }, now)).toEqual({ ok: true, expiresAt: null, keyRpm: 1000 });
  });
});
