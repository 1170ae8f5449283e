import { describe, expect, it } from 'vitest';
import { extractCredential } from '../../src/check/credential.js';
import { toAttributes } from '../../src/transport/grpc/check.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';

const K1 = 'key-one';
const K2 = 'key-two';
const extract = (headers: Record<string, string | string[]>, rawHeaders = false) =>
  extractCredential(toAttributes(envoyCheckRequest({ headers, rawHeaders })));

describe.each([
  ['headers (comma-joined repeats)', false],
  ['header_map with raw_value (encode_raw_headers)', true],
])('credential extraction from %s', (_name, raw) => {
  it.each([
    ['Bearer token', { authorization: `Bearer ${K1}` }, { kind: 'key', key: K1 }],
    ['bearer scheme in lower case', { authorization: `bearer ${K1}` }, { kind: 'key', key: K1 }],
    ['BEARER scheme in upper case with extra spaces', { authorization: `  BEARER   ${K1}  ` }, { kind: 'key', key: K1 }],
    ['X-API-Key', { 'x-api-key': K1 }, { kind: 'key', key: K1 }],
    ['X-API-Key with surrounding whitespace', { 'x-api-key': `  ${K1} ` }, { kind: 'key', key: K1 }],
    ['both headers with the same key', { authorization: `Bearer ${K1}`, 'x-api-key': K1 }, { kind: 'key', key: K1 }],
    ['both headers with different keys is invalid', { authorization: `Bearer ${K1}`, 'x-api-key': K2 }, { kind: 'invalid', problem: 'conflicting_headers' }],
    ['no credential headers is missing', {}, { kind: 'missing' }],
    ['Basic alone counts as missing', { authorization: 'Basic dXNlcjpwYXNz' }, { kind: 'missing' }],
    ['Basic plus X-API-Key uses the X-API-Key', { authorization: 'Basic dXNlcjpwYXNz', 'x-api-key': K1 }, { kind: 'key', key: K1 }],
    ['Bearer with no token is missing', { authorization: 'Bearer' }, { kind: 'missing' }],
    ['empty X-API-Key is missing', { 'x-api-key': '  ' }, { kind: 'missing' }],
    ['Bearer token with inner whitespace is invalid', { authorization: `Bearer ${K1} ${K2}` }, { kind: 'invalid', problem: 'malformed_bearer' }],
    ['Authorization sent twice with different values is invalid', { authorization: [`Bearer ${K1}`, `Bearer ${K2}`] }, { kind: 'invalid', problem: 'repeated_header' }],
    ['Authorization sent twice with the same value is invalid', { authorization: [`Bearer ${K1}`, `Bearer ${K1}`] }, { kind: 'invalid', problem: 'repeated_header' }],
    ['X-API-Key sent twice is invalid', { 'x-api-key': [K1, K1] }, { kind: 'invalid', problem: 'repeated_header' }],
  ])('%s', (_case, headers, expected) => {
    expect(extract(headers, raw)).toEqual(expected);
  });
});

describe('header names', () => {
  it('are matched case-insensitively in header_map', () => {
    const req = envoyCheckRequest({ rawHeaders: true });
    req.attributes!.request!.http!.header_map!.headers!.push({ key: 'X-Api-Key', raw_value: Buffer.from(K1) });
    expect(extractCredential(toAttributes(req))).toEqual({ kind: 'key', key: K1 });
  });
});

describe('attributes from a CheckRequest', () => {
  it('keep the query string in the path and take the request id from x-request-id, not the stream id', () => {
    const attrs = toAttributes(envoyCheckRequest({ method: 'GET', path: '/v1/models?limit=2', headers: { 'x-request-id': 'req-123' } }));
    expect(attrs).toMatchObject({ method: 'GET', path: '/v1/models?limit=2', requestId: 'req-123', sourceAddress: '203.0.113.7' });
  });

  it('read an empty or garbage CheckRequest as a request with no credentials', () => {
    expect(toAttributes({})).toMatchObject({ method: '', path: '/', authorization: [], apiKey: [], requestId: undefined });
    expect(extractCredential(toAttributes({ attributes: { request: { http: { headers: {} } } } }))).toEqual({ kind: 'missing' });
  });
});
