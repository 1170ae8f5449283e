import { describe, expect, it } from 'vitest';
import type { Deny, Identity } from '../../src/check/decision.js';
import { denialResponse } from '../../src/check/outcomes.js';

const identity: Identity = { accountId: 'acct_x', keyId: 'key_x', scope: 'read-only', plan: 'free', expiresAt: null, keyRpm: null };

describe('outcome table', () => {
  it.each<[string, Deny, number, number, string, string]>([
    ['no key', { allow: false, reason: 'missing_api_key' }, 401, 16, 'invalid_request_error', 'missing_api_key'],
    ['unknown key', { allow: false, reason: 'invalid_api_key', detail: 'unknown' }, 401, 16, 'invalid_request_error', 'invalid_api_key'],
    ['insufficient scope', { allow: false, reason: 'insufficient_scope', identity, permission: 'inference' }, 403, 7, 'permission_error', 'insufficient_scope'],
    ['no matching route', { allow: false, reason: 'route_not_allowed', identity }, 403, 7, 'permission_error', 'route_not_allowed'],
    ['unsafe path', { allow: false, reason: 'invalid_path', identity, detail: 'encoded slash' }, 400, 3, 'invalid_request_error', 'invalid_path'],
    ['rate limited', { allow: false, reason: 'rate_limit_exceeded', identity, retryAfterMs: 1500, detail: 'key' }, 429, 8, 'rate_limit_error', 'rate_limit_exceeded'],
    ['stores down', { allow: false, reason: 'auth_unavailable', detail: 'postgres_timeout' }, 503, 14, 'server_error', 'auth_unavailable'],
  ])('%s -> HTTP %i, gRPC %i, OpenAI error type %s, code %s', (_n, deny, http, grpc, type, code) => {
    const r = denialResponse(deny);
    expect(r.httpStatus).toBe(http);
    expect(r.grpcCode).toBe(grpc);
    expect(JSON.parse(r.body)).toEqual({ error: { message: expect.any(String), type, param: null, code } });
    expect(r.headers).toContainEqual(['content-type', 'application/json']);
  });

  it('gives one message for every invalid key, whatever the detail (no enumeration)', () => {
    const details = ['unknown', 'revoked', 'expired', 'malformed', 'bad_checksum', 'conflicting_headers', 'repeated_header'] as const;
    const bodies = new Set(details.map((detail) => denialResponse({ allow: false, reason: 'invalid_api_key', detail }).body));
    expect(bodies.size).toBe(1);
  });

  it('challenges with Bearer realm on 401s, naming invalid_token only for a bad key', () => {
    expect(denialResponse({ allow: false, reason: 'missing_api_key' }).headers).toContainEqual(['www-authenticate', 'Bearer realm="ryvion"']);
    expect(denialResponse({ allow: false, reason: 'invalid_api_key', detail: 'unknown' }).headers).toContainEqual([
      'www-authenticate',
      'Bearer realm="ryvion", error="invalid_token"',
    ]);
  });

  it('names the scope and the missing permission on a 403', () => {
    const r = denialResponse({ allow: false, reason: 'insufficient_scope', identity, permission: 'inference' });
    expect(r.headers).toContainEqual(['www-authenticate', 'Bearer realm="ryvion", error="insufficient_scope", scope="inference"']);
    expect(JSON.parse(r.body).error.message).toMatch(/"read-only".*"inference"/);
  });

  it('tells a client to retry a 503 after a second', () => {
    expect(denialResponse({ allow: false, reason: 'auth_unavailable', detail: 'x' }).headers).toContainEqual(['retry-after', '1']);
  });

  it('rounds retry-after up to whole seconds and gives retry-after-ms exactly on a 429', () => {
    const r = denialResponse({ allow: false, reason: 'rate_limit_exceeded', identity, retryAfterMs: 1200, detail: 'key' });
    expect(r.headers).toContainEqual(['retry-after', '2']);
    expect(r.headers).toContainEqual(['retry-after-ms', '1200']);
  });

  it('advertises the MCP protected-resource metadata only on MCP paths and only when configured', () => {
    const url = 'https://api.ryvion.ai/.well-known/oauth-protected-resource';
    const challenge = (path: string, configured: boolean) =>
      denialResponse({ allow: false, reason: 'missing_api_key' }, { path, mcpResourceMetadataUrl: configured ? url : undefined }).headers.find(
        ([k]) => k === 'www-authenticate',
      )?.[1];
    expect(challenge('/mcp', true)).toBe(`Bearer realm="ryvion", resource_metadata="${url}"`);
    expect(challenge('/mcp/tools', true)).toContain('resource_metadata=');
    expect(challenge('/mcp', false)).toBe('Bearer realm="ryvion"');
    expect(challenge('/v1/models', true)).toBe('Bearer realm="ryvion"');
    expect(challenge('/mcpx', true)).toBe('Bearer realm="ryvion"');
  });
});
