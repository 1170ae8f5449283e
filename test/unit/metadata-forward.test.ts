// Key metadata forwarded upstream: header-safe values only, one entry per field the policy names.
import { describe, expect, it } from 'vitest';
import { forwardedMetadata } from '../../src/check/metadata-forward.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';
import { compilePolicy } from '../../src/policy/policy.js';

const record = (metadata: Record<string, unknown> | null): KeyRecord => keyRecord({
  id: 'key_1', hash: 'h', accountId: 'acct_1', name: 'n', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null, metadata,
});

describe('forwarded metadata', () => {
  it('a value with CR/LF or non-ASCII never reaches a header as is; objects and null are not forwarded', () => {
    const out = forwardedMetadata(record({ team: 'a\r\nx-evil: 1', region: 'zürich', flag: true, obj: { a: 1 }, nil: null }), ['team', 'region', 'flag', 'obj', 'nil', 'missing']);
    expect(out.map((f) => [f.header, f.value])).toEqual([
      ['x-ryvion-meta-team', 'a%0D%0Ax-evil%3A%201'],
      ['x-ryvion-meta-region', 'z%C3%BCrich'],
      ['x-ryvion-meta-flag', 'true'],
      ['x-ryvion-meta-obj', undefined],
      ['x-ryvion-meta-nil', undefined],
      ['x-ryvion-meta-missing', undefined],
    ]);
    for (const f of out) expect(f.value ?? '').toMatch(/^[\x20-\x7e]*$/);
  });

  it('underscores in field names become dashes in the header; no fields named: nothing forwarded', () => {
    expect(forwardedMetadata(record({ cost_center: 1 }), ['cost_center'])[0]!.header).toBe('x-ryvion-meta-cost-center');
    expect(forwardedMetadata(record({ a: 1 }), [])).toEqual([]);
  });

  it('the policy names the fields; a bad field name is refused', () => {
    const base = `version: 1\nscopes: { s: [p] }\nrules: [{ paths: ['/**'], permission: p }]\n`;
    expect(compilePolicy(`${base}forward_metadata: [team, cost_center]\n`, 'p.yaml').forwardMetadata).toEqual(['team', 'cost_center']);
    expect(() => compilePolicy(`${base}forward_metadata: ['Bad Name']\n`, 'p.yaml')).toThrow();
  });
});
