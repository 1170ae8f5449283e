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
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, {}, now)).toEqual({ ok: true, expiresAt: in3min, keyRpm: null, allowedCidrs: null, tokenLimits: null });
  });

  it('an earlier or equal expiry is taken as asked', () => {
    const earlier = new Date(now + 60_000);
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, { expiresAt: earlier }, now)).toEqual({ ok: true, expiresAt: earlier, keyRpm: null, allowedCidrs: null, tokenLimits: null });
    expect(effectiveConstraints({ expiresAt: in3min, keyRpm: null }, { expiresAt: in3min }, now)).toMatchObject({ ok: true, expiresAt: in3min });
  });

  it('a caller without an expiry may create keys with or without one', () => {
    expect(effectiveConstraints(noLimits, { expiresAt: null }, now)).toEqual({ ok: true, expiresAt: null, keyRpm: null, allowedCidrs: null, tokenLimits: null });
    expect(effectiveConstraints(noLimits, { expiresAt: in1h }, now)).toEqual({ ok: true, expiresAt: in1h, keyRpm: null, allowedCidrs: null, tokenLimits: null });
    expect(effectiveConstraints(noLimits, {}, now)).toEqual({ ok: true, expiresAt: null, keyRpm: null, allowedCidrs: null, tokenLimits: null });
  });

  it('an expiry in the past is refused', () => {
    expect(effectiveConstraints(noLimits, { expiresAt: new Date(now) }, now)).toMatchObject({ ok: false, param: 'expires_at' });
  });

  it('the per-key limit follows the same rule: inherited when omitted, never raised or removed', () => {
    const caller = { expiresAt: null, keyRpm: 60 };
    expect(effectiveConstraints(caller, {}, now)).toEqual({ ok: true, expiresAt: null, keyRpm: 60, allowedCidrs: null, tokenLimits: null });
    expect(effectiveConstraints(caller, { keyRpm: 30 }, now)).toEqual({ ok: true, expiresAt: null, keyRpm: 30, allowedCidrs: null, tokenLimits: null });
    expect(effectiveConstraints(caller, { keyRpm: 61 }, now)).toMatchObject({ ok: false, param: 'rate_limit_rpm' });
    expect(effectiveConstraints(caller, { keyRpm: null }, now)).toMatchObject({ ok: false, param: 'rate_limit_rpm' });
    expect(effectiveConstraints(noLimits, { keyRpm: 1000 }, now)).toEqual({ ok: true, expiresAt: null, keyRpm: 1000, allowedCidrs: null, tokenLimits: null });
  });

  it('allowed_cidrs are capped by the caller\'s by CIDR containment, inherited when omitted, stored canonical', () => {
    const caller = { expiresAt: null, keyRpm: null, allowedCidrs: ['10.0.0.0/8', '2001:db8::/32'] };
    expect(effectiveConstraints(caller, {}, now)).toMatchObject({ ok: true, allowedCidrs: ['10.0.0.0/8', '2001:db8::/32'] });
    expect(effectiveConstraints(caller, { allowedCidrs: ['10.1.2.3/16', '2001:db8:1::/48', '10.9.9.9'] }, now)).toMatchObject({
      ok: true,
      allowedCidrs: ['10.1.0.0/16', '2001:db8:1::/48', '10.9.9.9/32'],
    });
    expect(effectiveConstraints(caller, { allowedCidrs: ['::ffff:10.2.0.0/112'] }, now)).toMatchObject({ ok: true, allowedCidrs: ['10.2.0.0/16'] });
    for (const wider of [['0.0.0.0/0'], ['11.0.0.0/8'], ['10.0.0.0/7'], ['2001:db9::/32'], ['::/0']]) {
      expect(effectiveConstraints(caller, { allowedCidrs: wider }, now), wider[0]).toMatchObject({ ok: false, param: 'allowed_cidrs' });
    }
    expect(effectiveConstraints(caller, { allowedCidrs: null }, now)).toMatchObject({ ok: false, param: 'allowed_cidrs' });
    expect(effectiveConstraints(noLimits, { allowedCidrs: null }, now)).toMatchObject({ ok: true, allowedCidrs: null, tokenLimits: null });
    for (const bad of [[], ['10.0.0.0/33'], ['not-an-ip'], ['10.0.0.0/8/1'], ['::ffff:10.0.0.0/64']]) {
      expect(effectiveConstraints(noLimits, { allowedCidrs: bad }, now), String(bad)).toMatchObject({ ok: false, param: 'allowed_cidrs' });
    }
  });

  it('token limits: omitted inherits the caller\'s, given may only tighten (lower tpm, same period and no larger budget, a subset of models)', () => {
    const caller = { expiresAt: null, keyRpm: null, tokenLimits: { tokens_per_minute: 1000, budget: { amount: 500, period: 'month' as const }, allowed_models: ['a', 'b'] } };
    expect(effectiveConstraints(caller, {}, now)).toMatchObject({ ok: true, tokenLimits: caller.tokenLimits });
    expect(effectiveConstraints(caller, { tokenLimits: { tokens_per_minute: 10, budget: { amount: 5, period: 'month' }, allowed_models: ['b'] } }, now)).toMatchObject({
      ok: true, tokenLimits: { tokens_per_minute: 10, budget: { amount: 5, period: 'month' }, allowed_models: ['b'] },
    });
    expect(effectiveConstraints(caller, { tokenLimits: { tokens_per_minute: 1001 } }, now)).toMatchObject({ ok: false, param: 'tokens_per_minute' });
    expect(effectiveConstraints(caller, { tokenLimits: { tokens_per_minute: null } }, now)).toMatchObject({ ok: false, param: 'tokens_per_minute' });
    expect(effectiveConstraints(caller, { tokenLimits: { budget: { amount: 501, period: 'month' } } }, now)).toMatchObject({ ok: false, param: 'budget' });
    expect(effectiveConstraints(caller, { tokenLimits: { budget: { amount: 5, period: 'day' } } }, now)).toMatchObject({ ok: false, param: 'budget' });
    expect(effectiveConstraints(caller, { tokenLimits: { budget: null } }, now)).toMatchObject({ ok: false, param: 'budget' });
    expect(effectiveConstraints(caller, { tokenLimits: { allowed_models: ['a', 'c'] } }, now)).toMatchObject({ ok: false, param: 'allowed_models' });
    expect(effectiveConstraints(caller, { tokenLimits: { allowed_models: null } }, now)).toMatchObject({ ok: false, param: 'allowed_models' });
    const free = { expiresAt: null, keyRpm: null };
    expect(effectiveConstraints(free, { tokenLimits: { tokens_per_minute: 5, allowed_models: ['x', 'x'] } }, now)).toMatchObject({ ok: true, tokenLimits: { tokens_per_minute: 5, allowed_models: ['x'] } });
    expect(effectiveConstraints(free, { tokenLimits: { tokens_per_minute: null } }, now)).toMatchObject({ ok: true, tokenLimits: null });
  });
});
