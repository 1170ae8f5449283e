// Per-key IP allow-lists: IPv4, IPv6 and IPv4-mapped IPv6 addresses against CIDR blocks.
import { describe, expect, it } from 'vitest';
import { ipAllowListDenial } from '../../src/check/ip-allow-list.js';
import { addressInCidrs, cidrContains, formatCidr, parseCidr } from '../../src/net/cidr.js';
import { decodeEntry, encodeEntry } from '../../src/keys/cache/entry.js';
import { keyRecord, type KeyRecord } from '../../src/keys/repository.js';

const cidrs = (...list: string[]) => list.map((c) => parseCidr(c)!);

describe('CIDR blocks', () => {
  it('IPv4: inside and outside a block', () => {
    const list = cidrs('203.0.113.0/24');
    expect(addressInCidrs('203.0.113.7', list)).toBe(true);
    expect(addressInCidrs('203.0.114.7', list)).toBe(false);
  });

  it('IPv6: inside and outside a block, in any spelling', () => {
    const list = cidrs('2001:db8:abcd::/48');
    expect(addressInCidrs('2001:db8:abcd:12::1', list)).toBe(true);
    expect(addressInCidrs('2001:0DB8:ABCD:0000:0000:0000:0000:0001', list)).toBe(true);
    expect(addressInCidrs('2001:db8:abce::1', list)).toBe(false);
    expect(addressInCidrs('203.0.113.7', list)).toBe(false);
  });

  it('an IPv4-mapped IPv6 address is judged as the IPv4 address it carries', () => {
    expect(addressInCidrs('::ffff:203.0.113.7', cidrs('203.0.113.0/24'))).toBe(true);
    expect(addressInCidrs('::ffff:cb00:7107', cidrs('203.0.113.0/24'))).toBe(true);
    expect(addressInCidrs('::ffff:198.51.100.1', cidrs('203.0.113.0/24'))).toBe(false);
  });

  it('no address, or garbage, is never inside', () => {
    expect(addressInCidrs(undefined, cidrs('0.0.0.0/0'))).toBe(false);
    expect(addressInCidrs('unix:/tmp/x', cidrs('0.0.0.0/0', '::/0'))).toBe(false);
  });

  it('canonical form and containment', () => {
    expect(formatCidr(parseCidr('10.1.2.3/8')!)).toBe('10.0.0.0/8');
    expect(formatCidr(parseCidr('2001:0db8:0000:0000:0001:0000:0000:0000/64')!)).toBe('2001:db8::/64');
    expect(formatCidr(parseCidr('::1')!)).toBe('::1/128');
    expect(cidrContains(parseCidr('10.0.0.0/8')!, parseCidr('10.255.0.0/16')!)).toBe(true);
    expect(cidrContains(parseCidr('10.0.0.0/16')!, parseCidr('10.0.0.0/8')!)).toBe(false);
    expect(cidrContains(parseCidr('::/0')!, parseCidr('10.0.0.0/8')!)).toBe(false);
  });
});

describe('a key\'s allow-list in the decision', () => {
  const record = (allowedCidrs: string[] | null): KeyRecord => keyRecord({
    id: 'key_1', hash: 'h', accountId: 'acct_1', name: 'n', scope: 'buyer', plan: 'free', expiresAt: null, revokedAt: null, version: 1, accountRpm: null, keyRpm: null, allowedCidrs,
  });

  it('a key from elsewhere is denied ip_not_allowed; without a list any address passes', () => {
    expect(ipAllowListDenial(record(['192.0.2.0/24']), '198.51.100.1')).toMatchObject({ reason: 'ip_not_allowed' });
    expect(ipAllowListDenial(record(['192.0.2.0/24']), undefined)).toMatchObject({ reason: 'ip_not_allowed' });
    expect(ipAllowListDenial(record(['192.0.2.0/24']), '192.0.2.9')).toBeUndefined();
    expect(ipAllowListDenial(record(null), '198.51.100.1')).toBeUndefined();
  });

  it('the allow-list survives the shared cache (Redis entry encoding)', () => {
    const decoded = decodeEntry('h', encodeEntry({ state: 'found', version: 1, record: record(['192.0.2.0/24']) }));
    expect(decoded?.state === 'found' && decoded.record.allowedCidrs).toEqual(['192.0.2.0/24']);
    const open = decodeEntry('h', encodeEntry({ state: 'found', version: 1, record: record(null) }));
    expect(open?.state === 'found' && (open.record.allowedCidrs ?? null)).toBeNull();
  });
});
