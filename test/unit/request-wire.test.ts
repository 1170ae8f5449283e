// The hand-written CheckRequest decoder (src/transport/grpc/request-wire.ts) against the decoder the
// service used before it, proto-loader's, whose reading of a request is the reference: on messages
// made with Envoy's own definitions (shipped with @grpc/grpc-js-xds), then mutated, cut, spliced
// and repeated. The invariant: whatever the fast decoder accepts, proto-loader accepts too and
// reads as the same RequestAttributes; whatever it gives up on goes to proto-loader.
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type * as grpc from '@grpc/grpc-js';
import { loadUpstreamProto } from '../helpers/access-log.js';
import { attributesOf, toAttributes } from '../../src/transport/grpc/check.js';
import { decodeCheckView, MAX_READ_HEADER_ENTRIES, withFastCheckRequest } from '../../src/transport/grpc/request-wire.js';
import { authorizationService, type CheckRequest } from '../../src/transport/grpc/proto.js';
import type { RequestAttributes } from '../../src/check/attributes.js';

const ours = authorizationService().Check!;
const generic = (b: Buffer): CheckRequest => ours.requestDeserialize(b) as CheckRequest;
const envoyDef = loadUpstreamProto(path.join('envoy', 'service', 'auth', 'v3', 'external_auth.proto'));
const envoyCheck = (envoyDef['envoy.service.auth.v3.Authorization'] as grpc.ServiceDefinition).Check!;
const encode = (req: object): Buffer => envoyCheck.requestSerialize(req);

/** proto-loader's reading, or 'rejected'. */
function reference(b: Buffer): RequestAttributes | 'rejected' {
  try {
    return toAttributes(generic(b));
  } catch {
    return 'rejected';
  }
}

const fast = (b: Buffer): RequestAttributes | undefined => {
  const view = decodeCheckView(b);
  return view && attributesOf(view);
};

// --- protobuf by hand, for what no serializer writes (repeats, wrong wire types, groups) ---
function varint(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return Buffer.from(out);
}
const tag = (field: number, wt: number): Buffer => varint(field * 8 + wt);
const len = (field: number, body: Buffer | string): Buffer => {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  return Buffer.concat([tag(field, 2), varint(bytes.length), bytes]);
};
const entry = (field: number, k: string | undefined, v: string | undefined): Buffer =>
  len(field, Buffer.concat([k === undefined ? Buffer.alloc(0) : len(1, k), v === undefined ? Buffer.alloc(0) : len(2, v)]));
/** CheckRequest { attributes { request { http { ...fields } } } }, with a source address. */
const wrapHttp = (http: Buffer, source = '203.0.113.9'): Buffer =>
  len(1, Buffer.concat([len(1, len(1, len(1, len(2, source)))), len(4, len(2, http))]));

const KEY = `ryv_live_${'A'.repeat(40)}`;

// --- generated requests, in Envoy's own shape ---
const readNames = ['authorization', 'Authorization', 'AUTHORIZATION', 'x-api-key', 'X-Api-Key', 'x-request-id', 'X-Request-ID', ':path', ':method', 'x-envoy-auth-partial-body', 'x-api-\u212aey', 'x-request-\u0130d'];
const otherNames = [':authority', ':scheme', 'user-agent', 'content-type', 'x-forwarded-for', '__proto__', 'constructor', '', '123', 'x-api-keys', 'authorizatio', 'ünïcode', 'x'.repeat(25)];
const headerValue = fc.oneof(
  fc.constantFrom(`Bearer ${KEY}`, KEY, `${KEY},${KEY}`, 'req-123', 'TRUE', ' true ', '/v1/models?x=1', 'GET', 'post', ''),
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 8 }),
);
const headerName = fc.oneof(fc.constantFrom(...readNames, ...otherNames), fc.string({ maxLength: 10 }));
const headerMapEntry = fc.record(
  { key: headerName, value: headerValue, raw_value: fc.oneof(fc.constant(undefined), headerValue.map((v) => Buffer.from(v, 'latin1'))) },
  { requiredKeys: [] },
);
const address = fc.oneof(fc.constant(undefined), fc.constantFrom('203.0.113.7', '2001:db8::1', ''), fc.string({ maxLength: 6 }));

const envoyRequest = fc.record(
  {
    source: address,
    method: fc.oneof(fc.constant(undefined), fc.constantFrom('GET', 'POST', 'poſt', '')),
    path: fc.oneof(fc.constant(undefined), fc.constantFrom('/v1/chat/completions', '/v1/models?limit=2', '')),
    headers: fc.oneof(fc.constant(undefined), fc.dictionary(headerName, headerValue, { maxKeys: 8 })),
    headerMap: fc.oneof(fc.constant(undefined), fc.array(headerMapEntry, { maxLength: 6 })),
    body: fc.oneof(fc.constant(undefined), fc.constantFrom('{"model":"m"}', 'ünï', '')),
    rawBody: fc.oneof(fc.constant(undefined), fc.uint8Array({ maxLength: 16 }).map((a) => Buffer.from(a))),
    extras: fc.boolean(),
  },
  { requiredKeys: ['extras'] },
).map(({ source, method, path, headers, headerMap, body, rawBody, extras }) => {
  const http: Record<string, unknown> = { id: '1352693', host: 'api.ryvion.ai', scheme: 'https', protocol: 'HTTP/2', size: '42' };
  if (method !== undefined) http['method'] = method;
  if (path !== undefined) http['path'] = path;
  if (headers !== undefined) http['headers'] = headers;
  if (headerMap !== undefined) http['header_map'] = { headers: headerMap };
  if (body !== undefined) http['body'] = body;
  if (rawBody !== undefined) http['raw_body'] = rawBody;
  const attributes: Record<string, unknown> = { request: { http } };
  if (source !== undefined) attributes['source'] = { address: { socket_address: { address: source, port_value: 52344 } }, principal: 'spiffe://x' };
  if (extras) {
    Object.assign(attributes, {
      destination: { address: { socket_address: { address: '10.0.0.12', port_value: 8000 } }, labels: { a: 'b' } },
      context_extensions: { tenant: 'acme' },
      metadata_context: { filter_metadata: { f: { fields: { sub: { stringValue: 'u' } } } } },
      tls_session: { sni: 'api.ryvion.test' },
    });
    (attributes['request'] as Record<string, unknown>)['time'] = { seconds: '1767225600', nanos: 5 };
  }
  return encode({ attributes });
});

describe('the fast CheckRequest decoder reads what proto-loader reads', () => {
  it("every request made with Envoy's definitions: accepted, and the same attributes", () => {
    fc.assert(
      fc.property(envoyRequest, (bytes) => {
        const got = fast(bytes);
        expect(got).toBeDefined();
        expect(got).toEqual(reference(bytes));
      }),
      { numRuns: 2000 },
    );
  });

  it('two messages one after the other (protobufjs keeps the later attributes whole, where protobuf would merge): the same attributes', () => {
    fc.assert(
      fc.property(envoyRequest, envoyRequest, (a, b) => {
        const bytes = Buffer.concat([a, b]);
        expect(fast(bytes)).toEqual(reference(bytes));
        expect(fast(bytes)).toBeDefined();
      }),
      { numRuns: 500 },
    );
  });

  it('bytes flipped, cut, inserted or dropped: anything accepted is accepted by proto-loader and read the same', () => {
    let accepted = 0;
    let givenUp = 0;
    fc.assert(
      fc.property(
        envoyRequest,
        fc.array(fc.tuple(fc.constantFrom('flip', 'set', 'cut', 'insert', 'drop'), fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 }),
        (bytes, edits) => {
          let b = Buffer.from(bytes);
          for (const [op, at, value] of edits) {
            const i = b.length === 0 ? 0 : at % b.length;
            if (op === 'flip') b[i] = b[i]! ^ (1 << (value % 8));
            else if (op === 'set') b[i] = value;
            else if (op === 'cut') b = b.subarray(0, i);
            else if (op === 'insert') b = Buffer.concat([b.subarray(0, i), Buffer.from([value]), b.subarray(i)]);
            else b = Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]);
          }
          const got = fast(b);
          if (got === undefined) {
            givenUp++;
            return;
          }
          accepted++;
          expect(reference(b)).toEqual(got);
        },
      ),
      { numRuns: 3000 },
    );
    // Both outcomes were exercised, so the assertion above was reached.
    expect(accepted).toBeGreaterThan(100);
    expect(givenUp).toBeGreaterThan(100);
  });

  it('a header named twice in `headers`: the first place, the last value, as the map reads; names differing in case are two names', () => {
    const http = Buffer.concat([
      len(2, 'GET'),
      entry(3, 'x-request-id', 'first'),
      entry(3, 'Authorization', `Bearer ${KEY}`),
      entry(3, 'x-request-id', 'second'),
      entry(3, 'X-Request-Id', 'third'),
      entry(3, 'authorization', `Bearer ${KEY}x`),
      entry(3, undefined, 'no name'),
      entry(3, 'x-api-key', undefined),
    ]);
    const bytes = wrapHttp(http);
    const got = fast(bytes);
    expect(got).toMatchObject({ requestId: 'second', authorization: [`Bearer ${KEY}`, `Bearer ${KEY}x`], apiKey: [''] });
    expect(got).toEqual(reference(bytes));
  });

  it('a name whose Unicode lower case is a read name (KELVIN SIGN for k) is read as proto-loader reads it', () => {
    const bytes = wrapHttp(Buffer.concat([len(2, 'GET'), len(4, '/v1/models'), entry(3, 'X-API-\u212aEY', KEY)]));
    expect(fast(bytes)).toMatchObject({ apiKey: [KEY] });
    expect(fast(bytes)).toEqual(reference(bytes));
  });

  it('`:path` and `:method` stand in only for empty fields', () => {
    const withFields = wrapHttp(Buffer.concat([entry(3, ':path', '/p'), entry(3, ':method', 'PUT'), len(2, 'GET'), len(4, '/v1/models')]));
    expect(fast(withFields)).toMatchObject({ method: 'GET', path: '/v1/models' });
    const without = wrapHttp(Buffer.concat([entry(3, ':path', '/p'), entry(3, ':method', 'PUT'), len(2, '')]));
    expect(fast(without)).toMatchObject({ method: 'PUT', path: '/p' });
    for (const b of [withFields, without]) expect(fast(b)).toEqual(reference(b));
  });

  it('repeated messages: the last source, http and header_map count, each whole', () => {
    const http1 = Buffer.concat([len(2, 'GET'), len(4, '/a'), len(13, entry(1, 'x-api-key', KEY))]);
    const http2 = Buffer.concat([len(4, '/b'), len(13, entry(1, 'x-request-id', 'r1')), len(13, entry(1, 'authorization', `Bearer ${KEY}`))]);
    const attrs = Buffer.concat([
      len(4, len(2, http1)),
      len(1, len(1, len(1, len(2, '198.51.100.1')))),
      len(4, len(2, http2)),
      len(1, len(4, 'principal only')),
    ]);
    const bytes = len(1, attrs);
    const got = fast(bytes);
    expect(got).toMatchObject({ method: '', path: '/b', apiKey: [], authorization: [`Bearer ${KEY}`], requestId: undefined, sourceAddress: undefined });
    expect(got).toEqual(reference(bytes));
    // Two http in one Request.
    const inOne = len(1, len(4, Buffer.concat([len(2, http1), len(2, http2)])));
    expect(fast(inOne)).toMatchObject({ method: '', path: '/b', apiKey: [], authorization: [`Bearer ${KEY}`] });
    expect(fast(inOne)).toEqual(reference(inOne));
  });
});

// --- messages built field by field, as no serializer writes them: padded varints (up to the 10
// bytes protobufjs allows, and past them), unknown fields of every wire type at every level, field
// number 0, both arms of Address, repeated messages and map keys, fields out of order ---
type Rng = () => number;
function rng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pick = <T,>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;

/** A varint of `n`, sometimes padded with continuation bytes to 6-11 bytes in all. */
function paddedVarint(r: Rng, n: number): Buffer {
  const min = varint(n);
  if (r() < 0.7) return min;
  const total = pick(r, [5, 6, 7, 9, 10, 10, 11]);
  if (total <= min.length) return min;
  const out = [...min];
  out[out.length - 1]! |= 0x80;
  while (out.length < total - 1) out.push(0x80);
  out.push(0x00);
  return Buffer.from(out);
}

function unknownField(r: Rng): Buffer {
  const field = pick(r, [0, 7, 15, 99, 1000]);
  switch (pick(r, [0, 1, 2, 5, 3])) {
    case 0: return Buffer.concat([tag(field, 0), paddedVarint(r, Math.floor(r() * 300))]);
    case 1: return Buffer.concat([tag(field, 1), Buffer.alloc(8, 7)]);
    case 5: return Buffer.concat([tag(field, 5), Buffer.alloc(4, 9)]);
    case 3: return Buffer.concat([tag(field, 3), tag(1, 0), varint(1), tag(field, 4)]);
    default: return len(field, 'zz');
  }
}

/** Fields in random order, some repeated, some unknown; `known` makes one occurrence of a field. */
function message(r: Rng, known: Array<() => Buffer>): Buffer {
  const parts: Buffer[] = [];
  for (const make of known) {
    const times = r() < 0.15 ? 2 : r() < 0.2 ? 0 : 1;
    for (let i = 0; i < times; i++) parts.push(make());
  }
  while (r() < 0.2) parts.push(unknownField(r));
  for (let i = parts.length - 1; i > 0; i--) {
    if (r() < 0.3) {
      const j = Math.floor(r() * (i + 1));
      [parts[i], parts[j]] = [parts[j]!, parts[i]!];
    }
  }
  return Buffer.concat(parts);
}

const varintField = (r: Rng, field: number): Buffer =>
  Buffer.concat([tag(field, 0), paddedVarint(r, pick(r, [0, 1, 6, 52344, 2 ** 31, 2 ** 32 - 1]))]);
const str = (r: Rng, xs: readonly string[]): string => pick(r, xs);

function socketAddressBytes(r: Rng): Buffer {
  return message(r, [() => varintField(r, 1), () => len(2, str(r, ['203.0.113.7', '198.51.100.2', ''])), () => varintField(r, 3), () => len(4, 'http')]);
}
function addressBytes(r: Rng): Buffer {
  return message(r, [() => len(1, socketAddressBytes(r)), () => len(2, message(r, [() => len(1, '/tmp/s'), () => varintField(r, 2)]))]);
}
function peerBytes(r: Rng): Buffer {
  return message(r, [() => len(1, addressBytes(r)), () => len(2, 'svc'), () => entry(3, 'l', 'v'), () => len(4, 'spiffe://p')]);
}
const NAMES = ['authorization', 'Authorization', 'x-api-key', 'X-API-KEY', 'x-request-id', ':path', ':method', 'x-envoy-auth-partial-body', 'X-API-\u212aEY', 'user-agent', '__proto__', ''];
const VALUES = [`Bearer ${KEY}`, KEY, 'r-1', 'true', '/v1/models', 'GET', ''];
function headerValueBytes(r: Rng): Buffer {
  return message(r, [() => len(1, str(r, NAMES)), () => len(2, str(r, VALUES)), () => len(3, Buffer.from(str(r, VALUES), 'latin1'))]);
}
function httpBytes(r: Rng): Buffer {
  const headers = Array.from({ length: Math.floor(r() * 6) }, () => () => {
    const e = message(r, [() => len(1, str(r, NAMES)), () => len(2, str(r, VALUES))]);
    return len(3, e);
  });
  return message(r, [
    () => len(1, '1352'),
    () => len(2, str(r, ['GET', 'POST', ''])),
    ...headers,
    () => len(4, str(r, ['/v1/chat/completions', '/v1/models?x=1', ''])),
    () => len(5, 'api.ryvion.ai'),
    () => Buffer.concat([tag(9, 0), paddedVarint(r, 42)]),
    () => len(11, str(r, ['{"model":"m"}', ''])),
    () => len(12, Buffer.from(str(r, ['{"a":1}', '']))),
    () => len(13, message(r, Array.from({ length: Math.floor(r() * 4) }, () => () => len(1, headerValueBytes(r))))),
  ]);
}
function checkRequestBytes(r: Rng): Buffer {
  const attributes = message(r, [
    () => len(1, peerBytes(r)),
    () => len(2, peerBytes(r)),
    () => len(4, message(r, [() => len(1, 'time'), () => len(2, httpBytes(r))])),
    () => entry(10, 'tenant', 'acme'),
  ]);
  return message(r, [() => len(1, attributes)]);
}

describe('messages built field by field', () => {
  it('padded varints, unknown fields, field 0, pipes, repeats and any order: anything accepted is read as proto-loader reads it', () => {
    let accepted = 0;
    let givenUp = 0;
    fc.assert(
      fc.property(fc.integer(), (seed) => {
        const bytes = checkRequestBytes(rng(seed));
        const got = fast(bytes);
        if (got === undefined) {
          givenUp++;
          return;
        }
        accepted++;
        expect(reference(bytes)).toEqual(got);
      }),
      { numRuns: 4000 },
    );
    expect(accepted).toBeGreaterThan(400);
    expect(givenUp).toBeGreaterThan(100);
  });

  // Found in review: protobufjs reads a 32-bit varint field as 5 bytes, or as 10 when the fifth
  // continues, whatever the bytes after it say.
  it.each([
    ['a 6-byte protocol before the address', '0a150a130a110a0f120263640880808080800012026162'],
    ['a 6-byte port_value before the address', '0a110a0f0a0d0a0b1880808080800012026162'],
    ['a 6-byte pipe mode', '0a0d0a0b0a09120710818080808000'],
  ])('%s: read as proto-loader reads it, or given up where proto-loader refuses it', (_name, hex) => {
    const bytes = Buffer.from(hex, 'hex');
    const ref = reference(bytes);
    if (ref === 'rejected') expect(fast(bytes)).toBeUndefined();
    else expect(fast(bytes)).toEqual(ref);
  });
});

describe('what the fast decoder gives up on goes to proto-loader', () => {
  const base = Buffer.concat([len(2, 'GET'), len(4, '/v1/models'), entry(3, 'x-api-key', KEY)]);
  const cases: Array<[string, Buffer]> = [
    // protobufjs reads a known field as its declared type whatever the wire type says.
    ['a known field with another wire type (size as bytes)', wrapHttp(Buffer.concat([base, len(9, 'xx')]))],
    // protobufjs cuts a string at the end of its message.
    ['a string running past its message', wrapHttp(Buffer.concat([base, tag(4, 2), varint(50), Buffer.from('/v1')]))],
    // protobufjs skips groups.
    ['a group in an unknown field', wrapHttp(Buffer.concat([base, tag(99, 3), tag(1, 0), varint(5), tag(99, 4)]))],
  ];

  it.each(cases)('%s: proto-loader reads it', (_name, bytes) => {
    expect(decodeCheckView(bytes)).toBeUndefined();
    const deserialize = withFastCheckRequest(authorizationService()).Check!.requestDeserialize;
    const ref = reference(bytes);
    expect(ref).not.toBe('rejected');
    expect(attributesOf(deserialize(bytes) as never)).toEqual(ref);
  });

  it('a group beside a valid request is read as proto-loader reads it: the key is found', () => {
    const bytes = wrapHttp(Buffer.concat([base, tag(99, 3), tag(1, 0), varint(5), tag(99, 4)]));
    const deserialize = withFastCheckRequest(authorizationService()).Check!.requestDeserialize;
    expect(attributesOf(deserialize(bytes) as never)).toMatchObject({ method: 'GET', path: '/v1/models', apiKey: [KEY] });
  });

  it(`more than ${MAX_READ_HEADER_ENTRIES} headers under read names (case variants, which no proxy sends): given up, read by proto-loader, told as unsupported`, () => {
    const variants = Array.from({ length: MAX_READ_HEADER_ENTRIES + 1 }, (_, i) =>
      [...'x-envoy-auth-partial-body'].map((c, j) => ((i >> (j % 20)) & 1 ? c.toUpperCase() : c)).join(''));
    expect(new Set(variants).size).toBe(variants.length);
    const atLimit = wrapHttp(Buffer.concat([len(2, 'GET'), ...variants.slice(0, MAX_READ_HEADER_ENTRIES).map((v) => entry(3, v, 'true'))]));
    expect(fast(atLimit)).toEqual(reference(atLimit));
    const over = wrapHttp(Buffer.concat([len(2, 'GET'), entry(3, 'x-api-key', KEY), ...variants.map((v) => entry(3, v, 'true'))]));
    expect(decodeCheckView(over)).toBeUndefined();
    const told: string[] = [];
    const deserialize = withFastCheckRequest(authorizationService(), (reason) => told.push(reason)).Check!.requestDeserialize;
    expect(attributesOf(deserialize(over) as never)).toMatchObject({ apiKey: [KEY], bodyTruncated: true });
    expect(told).toEqual(['unsupported']);
  });

  it("a fault of the decoder itself (here: bytes without Buffer's methods) is told as a fault, and proto-loader reads the request", () => {
    const bytes = wrapHttp(Buffer.concat([len(2, 'GET'), entry(3, 'x-api-key', KEY)]));
    const told: Array<[string, unknown]> = [];
    const deserialize = withFastCheckRequest(authorizationService(), (reason, fault) => told.push([reason, fault])).Check!.requestDeserialize;
    expect(attributesOf(deserialize(new Uint8Array(bytes) as Buffer) as never)).toMatchObject({ method: 'GET', apiKey: [KEY] });
    expect(told).toHaveLength(1);
    expect(told[0]![0]).toBe('fault');
    expect(told[0]![1]).toBeInstanceOf(TypeError);
    told.length = 0;
    deserialize(bytes);
    expect(told).toEqual([]);
  });

  it('bytes no decoder reads fail the call as before (the deserializer throws: INTERNAL)', () => {
    const deserialize = withFastCheckRequest(authorizationService()).Check!.requestDeserialize;
    expect(() => deserialize(Buffer.from([0x0a, 0x05, 0x01]))).toThrow();
  });
});
