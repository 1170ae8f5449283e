// The pure parts of token budgets: what a body costs, reservation ids, budget periods.
import { describe, expect, it } from 'vitest';
import { readRequestBody } from '../../src/budget/request-body.js';
import { ReservationSigner, type ReservationClaims } from '../../src/budget/reservation-id.js';
import { periodEnd, periodStart } from '../../src/budget/periods.js';
import { compilePolicy } from '../../src/policy/policy.js';

const body = (v: unknown): Uint8Array => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));

describe('readRequestBody', () => {
  it('takes the model, the maximum output (max_completion_tokens first), n, and characters/4 of the text plus 4 per message', () => {
    const r = readRequestBody(body({ model: 'm', max_tokens: 7, max_completion_tokens: 9, n: 2, messages: [{ role: 'system', content: 'abcd' }, { role: 'user', content: [{ type: 'text', text: 'efgh' }, { type: 'image_url', image_url: { url: 'x'.repeat(400) } }] }] }), false);
    expect(r).toEqual({ ok: true, cost: { model: 'm', maxOutput: 9, choices: 2, promptTokens: 2 + 8 } });
    expect(readRequestBody(body({ model: 'e', input: ['abcdefgh', 'ab'] }), false)).toEqual({ ok: true, cost: { model: 'e', maxOutput: undefined, choices: 1, promptTokens: 3 } });
  });

  it('tells missing, truncated, unparsable and model-less bodies apart, and never throws', () => {
    expect(readRequestBody(undefined, false)).toEqual({ ok: false, problem: 'missing' });
    expect(readRequestBody(body({ model: 'm' }), true)).toEqual({ ok: false, problem: 'truncated' });
    for (const bad of ['{', '[]', 'null', '"x"', '\u0000\u00ff']) expect(readRequestBody(body(bad), false)).toEqual({ ok: false, problem: 'unparsable' });
    expect(readRequestBody(body({ prompt: 'x' }), false)).toEqual({ ok: false, problem: 'no_model' });
    expect(readRequestBody(body({ model: 5 }), false)).toEqual({ ok: false, problem: 'no_model' });
  });
});

describe('ReservationSigner', () => {
  const claims: ReservationClaims = { nonce: 'n1', accountId: 'acct_1', keyId: 'key_1', inputPerMillion: 7, outputPerMillion: 8, reservedAt: 1, expiresAt: 2, inputTokens: 3, outputTokens: 4, costMicros: 5, periods: ['a:acct_1|month|2026-12-01'] };

  it('verifies what it signed, and nothing signed under another secret or altered', () => {
    const a = new ReservationSigner('a'.repeat(48));
    const id = a.sign(claims);
    expect(a.verify(id)).toEqual(claims);
    expect(new ReservationSigner('b'.repeat(48)).verify(id)).toBeUndefined();
    const [head, payload, mac] = [id.slice(0, 5), id.slice(5, id.lastIndexOf('.')), id.slice(id.lastIndexOf('.') + 1)];
    const altered = Buffer.from(JSON.stringify(JSON.parse(Buffer.from(payload, 'base64url').toString()).map((v: unknown, i: number) => (i === 9 ? 0 : v)))).toString('base64url');
    expect(a.verify(`${head}${altered}.${mac}`)).toBeUndefined();
    for (const junk of [undefined, 5, '', 'rsv1.', 'rsv1.x.y', `${id}x`, 'x'.repeat(5000)]) expect(a.verify(junk)).toBeUndefined();
  });
});

it('a reservation id at its largest stays within the 512 characters the access-log receiver accepts', () => {
  const big = Number.MAX_SAFE_INTEGER;
  const id = new ReservationSigner('a'.repeat(48)).sign({
    nonce: 'x'.repeat(16), accountId: `acct_${'A'.repeat(20)}`, keyId: `key_${'K'.repeat(20)}`, inputPerMillion: big, outputPerMillion: big,
    reservedAt: big, expiresAt: big, inputTokens: big, outputTokens: big, costMicros: big,
    periods: [`a:acct_${'A'.repeat(20)}|month|2026-12-01`, `k:key_${'K'.repeat(20)}|month|2026-12-01`],
  });
  expect(id.length).toBeLessThanOrEqual(512);
});

describe('budget periods (UTC)', () => {
  const t = Date.parse('2026-12-02T23:59:59.999Z'); // a Wednesday
  it('start on the day, the Monday and the first of the month, and end where the next begins', () => {
    expect(periodStart('day', t)).toBe('2026-12-02');
    expect(periodStart('week', t)).toBe('2026-11-30');
    expect(periodStart('month', t)).toBe('2026-12-01');
    expect(periodEnd('day', t)).toBe(Date.parse('2026-12-03T00:00:00Z'));
    expect(periodEnd('week', t)).toBe(Date.parse('2026-12-07T00:00:00Z'));
    expect(periodEnd('month', t)).toBe(Date.parse('2027-01-01T00:00:00Z'));
    expect(periodStart('week', Date.parse('2026-11-30T00:00:00Z'))).toBe('2026-11-30');
    expect(periodStart('week', Date.parse('2026-11-29T23:59:59Z'))).toBe('2026-11-23');
  });
});

describe('policy: token limits', () => {
  const base = `version: 1
scopes: { s: [inference] }
rules:
  - { methods: [POST], paths: [/v1/chat/completions], permission: inference, inference: true }
`;
  it('compiles plans with token limits and a tokens section, and marks inference routes', () => {
    const p = compilePolicy(`${base}plans:
  free:
    key: { tokens_per_minute: 100, budget: { amount: 5, period: day }, allowed_models: [a] }
tokens:
  currency: EUR
  default_model: { input_per_million: 1, output_per_million: 2, default_max_output: 3 }
  models: { big: { input_per_million: 10, output_per_million: 20, default_max_output: 30 } }
`, 'test.yaml');
    expect(p.authorize('POST', '/v1/chat/completions', 's')).toEqual({ kind: 'allow', permission: 'inference', inference: true });
    expect(p.limitsOf('free')).toEqual({ keyTokens: { tokens_per_minute: 100, budget: { amount: 5, period: 'day' }, allowed_models: ['a'] } });
    expect(p.tokens?.currency).toBe('EUR');
    expect(p.tokens?.priceOf('big').outputPerMillion).toBe(20);
    expect(p.tokens?.priceOf('other').defaultMaxOutput).toBe(3);
    expect(p.tokens?.unreadableBody).toBe('deny');
  });

  it('refuses token limits without a tokens section, and a request limit missing its window', () => {
    expect(() => compilePolicy(`${base}plans:\n  free:\n    key: { tokens_per_minute: 100 }\n`, 'test.yaml')).toThrow(/needs a "tokens:" section/);
    expect(() => compilePolicy(`${base}plans:\n  free:\n    key: { requests: 100 }\n`, 'test.yaml')).toThrow(/needs both "requests" and "window"/);
  });
});
