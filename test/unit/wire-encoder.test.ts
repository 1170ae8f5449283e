// The hand-written CheckResponse encoder writes exactly the bytes proto-loader's serializer writes,
// for every answer the service gives and for odd shapes, and steps aside for shapes it does not take.
import { describe, expect, it } from 'vitest';
import type { Decision } from '../../src/check/decision.js';
import { DenyReason } from '../../src/check/decision.js';
import type { LimitState } from '../../src/ratelimit/gcra.js';
import { toCheckResponse } from '../../src/transport/grpc/check.js';
import { authorizationService, HeaderAppendAction, type CheckResponse } from '../../src/transport/grpc/proto.js';
import { encodeCheckResponse, withFastCheckResponse } from '../../src/transport/grpc/wire.js';
import { memoryAfterGc } from '../helpers/gc.js';

const check = authorizationService().Check!;
const generic = (r: unknown): Buffer => check.responseSerialize(r) as Buffer;
const decode = (b: Buffer): unknown => check.responseDeserialize(b);

function same(r: CheckResponse): void {
  const ours = encodeCheckResponse(r);
  expect(ours, 'encoder declined a supported shape').toBeDefined();
  expect(Buffer.compare(ours!, generic(r)), JSON.stringify(r)).toBe(0);
  expect(decode(ours!)).toEqual(decode(generic(r)));
}

const identity = { accountId: 'acct_0123456789ABCDEFGHIJ', keyId: 'key_0123456789ABCDEFGHIJ', scope: 'buyer', plan: 'free', expiresAt: null, keyRpm: null };
const limit = { name: 'account' as const, requests: 600, windowMs: 60_000, burst: 60 };
const states: LimitState[] = [{ limit, remaining: 59, resetMs: 100 }];

const decisions: Decision[] = [
  { allow: true, identity, permission: 'inference' },
  { allow: true, identity, permission: null },
  { allow: true, identity, permission: 'inference', rateLimit: states },
  { allow: true, identity, permission: 'models.read', shadowDenied: 'models.read' },
  { allow: false, reason: DenyReason.missing_api_key },
  { allow: false, reason: DenyReason.invalid_api_key, detail: 'unknown' },
  { allow: false, reason: DenyReason.insufficient_scope, identity, permission: 'keys.manage' },
  { allow: false, reason: DenyReason.route_not_allowed, identity },
  { allow: false, reason: DenyReason.invalid_path, identity, detail: 'encoded_separator' },
  { allow: false, reason: DenyReason.rate_limit_exceeded, identity, retryAfterMs: 1500, detail: 'account', states },
  { allow: false, reason: DenyReason.auth_unavailable, detail: 'postgres_timeout' },
] as Decision[];

describe('encodeCheckResponse', () => {
  it.each(decisions.map((d) => [d.allow ? `allow ${'permission' in d ? d.permission : ''}` : d.reason, d] as const))('matches proto-loader for %s', (_name, d) => {
    for (const strip of [true, false]) {
      same(toCheckResponse(d, '5f1b6c1e-8f0a-4d7e-9a5e-2c3d4b5a6f70', '/v1/chat/completions', { stripCredentialHeaders: strip }));
    }
    same(toCheckResponse(d, 'rid', '/mcp/tools', { stripCredentialHeaders: true, mcpResourceMetadataUrl: 'https://api.ryvion.test/.well-known/oauth-protected-resource' }));
  });

  it('matches proto-loader for non-ASCII text, empty strings, defaults and every Struct value kind', () => {
    same({ status: { code: 0 } });
    same({ status: { code: 0, message: '' } });
    same({ status: { code: 16, message: 'clé invalide — 鍵 🔑 \u0000' } });
    same({ status: { code: 7 }, denied_response: { status: { code: 403 }, headers: [], body: '' } });
    same({
      status: { code: 0 },
      ok_response: {
        headers: [
          { header: { key: 'x-a', value: 'é' }, append: { value: false }, append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD },
          { header: { key: 'x-b', value: '' }, append: { value: true }, append_action: 0 },
          { header: { key: 'x-c' } },
        ],
        headers_to_remove: ['authorization', '', 'ünï'],
        response_headers_to_add: [{ header: { key: 'x-long', value: 'v'.repeat(300) } }],
      },
      dynamic_metadata: {
        fields: {
          s: { stringValue: '🔑' },
          n: { numberValue: 1.5 },
          z: { numberValue: 0 },
          neg: { numberValue: -3 },
          b: { boolValue: false },
          nul: { nullValue: 0 },
          nested: { structValue: { fields: { inner: { stringValue: 'x' } } } },
          l: { listValue: { values: [{ stringValue: 'a' }, { numberValue: 2 }, { listValue: { values: [] } }] } },
          empty: {},
        },
      },
    });
    same({ status: { code: 3, message: 'x'.repeat(20_000) } });
  });

  it('writes a lone surrogate as U+FFFD (valid UTF-8, as Buffer does), where protobufjs writes invalid bytes for short strings', () => {
    const ours = encodeCheckResponse({ status: { code: 3, message: 'a\ud800b' } })!;
    expect(ours.subarray(ours.length - 5).toString('hex')).toBe(Buffer.from('a\ufffdb').toString('hex'));
    expect((decode(ours) as { status: { message: string } }).status.message).toBe('a\ufffdb');
  });

  it('ignores properties that are not fields, as protobufjs does', () => {
    same({ status: { code: 0 }, extra: 1, http_response: 'ok_response' } as unknown as CheckResponse);
    same({ status: { code: 0 }, ok_response: { headers: [{ header: { key: 'k', value: 'v', other: 1 } }] } } as unknown as CheckResponse);
  });

  it('declines shapes outside CheckResponse, and the service definition then falls back', () => {
    const odd: unknown[] = [
      { status: { code: -1 } },
      { status: { code: 1.5 } },
      { status: { code: '16' } },
      { status: { code: 0, details: [{}] } },
      { status: { code: 0 }, ok_response: { headers: [{ header: { key: 'k', raw_value: Buffer.from('v') } }] } },
      { status: { code: 0 }, ok_response: {}, denied_response: {} },
      { status: { code: 0 }, ok_response: { headers: 'x' } },
      { status: { code: 0 }, ok_response: { headers: [{ header: { key: 'k' }, keep_empty_value: true }] } },
      { status: { code: 0 }, dynamic_metadata: { fields: { n: { numberValue: '1' } } } },
    ];
    const svc = withFastCheckResponse(authorizationService());
    for (const r of odd) {
      expect(encodeCheckResponse(r as CheckResponse), JSON.stringify(r)).toBeUndefined();
      // What the server sends for it is whatever proto-loader makes of it (or its error).
      let expected: Buffer | Error;
      try {
        expected = generic(r);
      } catch (err) {
        expected = err as Error;
      }
      if (expected instanceof Error) expect(() => svc.Check!.responseSerialize(r)).toThrow();
      else expect(Buffer.compare(svc.Check!.responseSerialize(r) as Buffer, expected)).toBe(0);
    }
  });

  it('builds the identity part of an allow once per key and options, and writes its bytes again exactly', () => {
    const opts = { stripCredentialHeaders: true };
    const first = toCheckResponse({ allow: true, identity, permission: 'inference', rateLimit: states }, 'rid-1', '/v1/chat/completions', opts);
    const later = [
      toCheckResponse({ allow: true, identity, permission: 'inference', rateLimit: [{ limit, remaining: 12, resetMs: 4500 }] }, 'rid-2', '/v1/chat/completions', opts),
      toCheckResponse({ allow: true, identity, permission: 'inference' }, 'rid-3', '/v1/chat/completions', opts),
    ];
    for (const r of [first, ...later, first]) same(r);
    for (const r of later) {
      // Shared (and frozen) with the first answer: encoded once, copied after.
      expect(r.ok_response!.headers).toBe(first.ok_response!.headers);
      expect(r.ok_response!.headers_to_remove).toBe(first.ok_response!.headers_to_remove);
      expect(r.dynamic_metadata).toBe(first.dynamic_metadata);
      expect(Object.isFrozen(r.ok_response!.headers[0]!.header)).toBe(true);
    }
    // Per call: the request id and the rate-limit headers.
    expect(later[0]!.ok_response!.response_headers_to_add.map((h) => h.header.value)).toContain('12');
    expect(later[1]!.ok_response!.response_headers_to_add.map((h) => h.header.key)).toEqual(['x-request-id']);
    // Another permission, other options or another key: other parts.
    const other = [
      toCheckResponse({ allow: true, identity, permission: null }, 'rid', '/', opts),
      toCheckResponse({ allow: true, identity, permission: 'inference' }, 'rid', '/', { stripCredentialHeaders: false }),
      toCheckResponse({ allow: true, identity: { ...identity, keyId: 'key_ZYXWVUTSRQPONMLKJIHG' }, permission: 'inference' }, 'rid', '/', opts),
    ];
    for (const r of other) {
      same(r);
      expect(r.dynamic_metadata).not.toBe(first.dynamic_metadata);
    }
  });

  it("an inference allow's reservation id and token headers are its own, never a kept allow's", () => {
    const opts = { stripCredentialHeaders: true };
    const ident = { ...identity, keyId: 'key_RESERVATIONSXXXXXXXX' };
    const tokens = [{ limit: { name: 'key' as const, tokensPerMinute: 10_000 }, remaining: 9_000, resetMs: 6_000 }];
    const plain = toCheckResponse({ allow: true, identity: ident, permission: 'inference' }, 'rid-0', '/v1/chat/completions', opts);
    const answers = ['res-1', 'res-2'].map((id, i) =>
      toCheckResponse({ allow: true, identity: ident, permission: 'inference', inference: true, reservationId: id, tokenLimits: [{ ...tokens[0]!, remaining: 9_000 - i }] }, `rid-${i + 1}`, '/v1/chat/completions', opts),
    );
    const header = (r: CheckResponse, name: string) => r.ok_response!.headers.find((h) => h.header.key === name)?.header.value;
    expect(answers.map((r) => header(r, 'x-ryvion-reservation-id'))).toEqual(['res-1', 'res-2']);
    expect(answers.map((r) => r.dynamic_metadata!.fields!['reservation_id'])).toEqual([{ stringValue: 'res-1' }, { stringValue: 'res-2' }]);
    expect(answers.map((r) => r.ok_response!.response_headers_to_add.find((h) => h.header.key === 'x-ratelimit-remaining-tokens')?.header.value)).toEqual(['9000', '8999']);
    // An inference allow without a reservation removes a client-sent one; a kept plain allow does not carry that.
    const none = toCheckResponse({ allow: true, identity: ident, permission: 'inference', inference: true }, 'rid-3', '/v1/chat/completions', opts);
    expect(none.ok_response!.headers_to_remove).toContain('x-ryvion-reservation-id');
    expect(header(plain, 'x-ryvion-reservation-id')).toBeUndefined();
    expect(plain.ok_response!.headers_to_remove).not.toContain('x-ryvion-reservation-id');
    for (const r of [plain, ...answers, none]) same(r);
  });

  it('writes a frozen part again only in the field it was first written in', () => {
    const headers = Object.freeze([Object.freeze({ header: Object.freeze({ key: 'x-a', value: 'b' }) })]);
    const asOk = { status: { code: 0 }, ok_response: { headers, headers_to_remove: [], response_headers_to_add: headers } } as unknown as CheckResponse;
    same(asOk);
    same(asOk);
    const asDenied = { status: { code: 7 }, denied_response: { status: { code: 403 }, headers, body: '' } } as unknown as CheckResponse;
    same(asDenied);
  });

  it('serves the fast encoding through the service definition', () => {
    const base = authorizationService();
    const svc = withFastCheckResponse(base);
    const r = toCheckResponse(decisions[2]!, 'rid', '/v1/chat/completions', { stripCredentialHeaders: true });
    expect(Buffer.compare(svc.Check!.responseSerialize(r) as Buffer, generic(r))).toBe(0);
    expect(svc.Check!.path).toBe(base.Check!.path);
    expect(svc.Check!.requestDeserialize).toBe(base.Check!.requestDeserialize);
    expect(svc.Check!.requestSerialize).toBe(base.Check!.requestSerialize);
  });

  it('keeps the bytes of an allow kept per key in memory of their own, not in slabs of the shared Buffer pool', () => {
    // Measured in the bench: 12 289 kept parts of about 100 bytes held 1 665 of Node's 8 KiB pool slabs
    // (12.7 MB), each slab otherwise full of short-lived buffers (responses, HTTP/2 frames).
    const arrayBuffers = (): number => memoryAfterGc().arrayBuffers;
    const before = arrayBuffers();
    const kept: unknown[] = [];
    for (let n = 0; n < 1000; n++) {
      const id = Object.freeze({ ...identity, keyId: `key_${String(n).padStart(20, '0')}` });
      const d = { allow: true, identity: id, permission: 'inference' } as Decision;
      encodeCheckResponse(toCheckResponse(d, `rid-${n}`, '/v1/chat/completions', { stripCredentialHeaders: true }));
      kept.push(id);
      Buffer.allocUnsafe(4000); // what else the process takes from the pool meanwhile
    }
    const grown = arrayBuffers() - before;
    expect(kept).toHaveLength(1000);
    // 1 000 keys' parts are a few hundred KB; held in pool slabs they would be 1 000 slabs (8 MB).
    expect(grown).toBeLessThan(2 * 1024 * 1024);
  });

  it('keeps no allow parts for a key checked once, and the same bytes either way', () => {
    const heap = (): number => memoryAfterGc().heapUsed;
    const allowOf = (n: number): Decision => ({
      allow: true, identity: Object.freeze({ ...identity, keyId: `key_${String(n).padStart(20, '0')}` }), permission: 'inference',
    }) as Decision;
    const once = Array.from({ length: 2000 }, (_, n) => allowOf(1_000_000 + n));
    const before = heap();
    for (const d of once) same(toCheckResponse(d, 'rid', '/v1/chat/completions', { stripCredentialHeaders: true }));
    const grown = heap() - before;
    expect(once).toHaveLength(2000);
    // Kept, the parts of 2 000 keys are about 4 MB; a key seen once costs its place among those seen once.
    expect(grown).toBeLessThan(1024 * 1024);
    // A key checked again and again gets the same answer from its first allow to its kept parts.
    const hot = allowOf(7);
    const opts = { stripCredentialHeaders: true };
    const first = encodeCheckResponse(toCheckResponse(hot, 'rid', '/v1/chat/completions', opts))!;
    for (let i = 0; i < 3; i++) expect(Buffer.compare(encodeCheckResponse(toCheckResponse(hot, 'rid', '/v1/chat/completions', opts))!, first)).toBe(0);
    same(toCheckResponse(hot, 'rid', '/v1/chat/completions', opts));
  });
});
