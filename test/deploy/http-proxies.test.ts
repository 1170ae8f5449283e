// The HTTP-mode proxy configurations that no binary here can run: deploy/envoy/http-ext-authz.yaml
// (checked field by field against Envoy's protos) and deploy/traefik/dynamic.yaml (Traefik is not
// in Debian: parsed and checked against the options Traefik documents). Each must send what the
// /authz endpoint reads, pass back every header its answers carry, fail closed, and serve
// /api/v1/auth/ without authorization while stripping the identity headers there.
// deploy/nginx (nginx.local.conf with ryvion-http.conf) runs for real in test/e2e/nginx.test.ts.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import type { Deny } from '../../src/check/decision.js';
import { metaHeader } from '../../src/check/metadata-forward.js';
import { denialResponse } from '../../src/check/outcomes.js';
import { DEFAULT_POLICY_PATH, loadPolicyFile } from '../../src/policy/policy.js';
import type { LimitState } from '../../src/ratelimit/gcra.js';
import { rateLimitHeaders } from '../../src/ratelimit/headers.js';
import { CREDENTIAL_HEADERS, IDENTITY_HEADERS } from '../../src/check/outcomes.js';
import { AUTHZ_PREFIX } from '../../src/transport/http/authz.js';
import { checkEnvoyConfig } from './envoy-proto.js';
import { ROOT } from './helm.js';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Loose = any;
/* eslint-enable @typescript-eslint/no-explicit-any */

const IDENTITY = Object.values(IDENTITY_HEADERS).sort();
/** The x-ryvion-meta-* headers of the shipped policy's forward_metadata. */
const SHIPPED_META = loadPolicyFile(DEFAULT_POLICY_PATH).forwardMetadata.map(metaHeader);
const read = (...parts: string[]): Loose => parse(readFileSync(join(ROOT, ...parts), 'utf8'));

/** Every header name an allowed answer puts on the client's response. */
function successClientHeaders(): string[] {
  const state: LimitState = { limit: { name: 'account', requests: 60, windowMs: 60_000, burst: 10 }, remaining: 9, resetMs: 1000 };
  return rateLimitHeaders([state]).map(([name]) => name);
}

/** Every header name a denial carries, from the outcome table itself (so a new header fails here). */
function denialHeaders(): string[] {
  const identity = { accountId: 'acct_x', keyId: 'key_x', scope: 'read-only', plan: 'free', expiresAt: null, keyRpm: null };
  const state: LimitState = { limit: { name: 'account', requests: 60, windowMs: 60_000, burst: 10 }, remaining: 0, resetMs: 1000 };
  const denials: Deny[] = [
    { allow: false, reason: 'missing_api_key' },
    { allow: false, reason: 'invalid_api_key', detail: 'unknown' },
    { allow: false, reason: 'insufficient_scope', identity, permission: 'inference' },
    { allow: false, reason: 'route_not_allowed', identity },
    { allow: false, reason: 'invalid_path', identity, detail: 'x' },
    { allow: false, reason: 'rate_limit_exceeded', identity, retryAfterMs: 1500, detail: 'account', states: [state] },
    { allow: false, reason: 'auth_unavailable', detail: 'postgres_down' },
  ];
  return [...new Set(denials.flatMap((d) => denialResponse(d).headers.map(([name]) => name)))];
}

/** Envoy's ListStringMatcher on a lower-case header name. */
function matches(list: Loose, name: string): boolean {
  return (list?.patterns ?? []).some((p: Loose) => {
    const v = p.ignore_case ? name.toLowerCase() : name;
    if (p.exact !== undefined) return v === p.exact;
    if (p.prefix !== undefined) return v.startsWith(p.prefix);
    if (p.suffix !== undefined) return v.endsWith(p.suffix);
    if (p.contains !== undefined) return v.includes(p.contains);
    if (p.safe_regex !== undefined) return new RegExp(`^(?:${p.safe_regex.regex})$`).test(v);
    return false;
  });
}

function seconds(duration: unknown): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)$/.exec(String(duration));
  if (!m) throw new Error(`not a duration: ${JSON.stringify(duration)}`);
  return Number(m[1]) * (m[2] === 'ms' ? 0.001 : 1);
}

describe('deploy/envoy/http-ext-authz.yaml', () => {
  const bootstrap = read('deploy', 'envoy', 'http-ext-authz.yaml');
  const hcm = bootstrap.static_resources.listeners[0].filter_chains[0].filters.find((f: Loose) => f.name === 'envoy.filters.network.http_connection_manager').typed_config;
  const extAuthz = hcm.http_filters.find((f: Loose) => f.name === 'envoy.filters.http.ext_authz');
  const cfg = extAuthz.typed_config;
  const svc = cfg.http_service;
  const clusters: Loose[] = bootstrap.static_resources.clusters;
  const cluster = (name: string): Loose => clusters.find((c) => c.name === name);
  const addressOf = (c: Loose): Loose => c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
  const routes: Loose[] = hcm.route_config.virtual_hosts[0].routes;

  it("is a valid bootstrap by Envoy's own protos (field names, enums, types, no deprecated fields)", () => {
    expect(checkEnvoyConfig(bootstrap)).toEqual([]);
  });

  it('calls /authz on the same HTTP port as the gRPC example\'s key API cluster, fail-closed, 0.25 s, 503 on error', () => {
    expect(cfg.grpc_service).toBeUndefined();
    expect(svc.path_prefix).toBe(AUTHZ_PREFIX);
    expect(seconds(svc.server_uri.timeout)).toBe(0.25);
    expect(cfg.failure_mode_allow).toBe(false);
    expect(cfg.status_on_error).toEqual({ code: 'ServiceUnavailable' });
    expect(cfg.with_request_body).toBeUndefined();
    const grpcExample = read('deploy', 'envoy', 'envoy.yaml');
    const keyApi = grpcExample.static_resources.clusters.find((c: Loose) => c.name === 'ryvion_authz_http');
    const target = cluster(svc.server_uri.cluster);
    expect(addressOf(target)).toEqual(addressOf(keyApi));
    const { hostname, port } = new URL(svc.server_uri.uri);
    expect({ address: hostname, port_value: Number(port) }).toEqual(addressOf(target));
    expect(hcm.http_filters.at(-1).name).toBe('envoy.filters.http.router');
  });

  it('sends the credential headers (and x-request-id, x-forwarded-for) and nothing describing the request twice', () => {
    for (const h of [...CREDENTIAL_HEADERS, 'x-request-id', 'x-forwarded-for']) expect(matches(cfg.allowed_headers, h), h).toBe(true);
    for (const h of ['x-original-uri', 'x-original-method', 'x-forwarded-uri', 'x-forwarded-method', 'cookie']) expect(matches(cfg.allowed_headers, h), h).toBe(false);
    expect(svc.authorization_request?.allowed_headers).toBeUndefined();
  });

  it('passes back every header our answers carry: identity upstream, denial and rate-limit headers to the client', () => {
    const response = svc.authorization_response;
    for (const h of IDENTITY) expect(matches(response.allowed_upstream_headers, h), h).toBe(true);
    expect(response.allowed_upstream_headers_to_append).toBeUndefined();
    for (const h of CREDENTIAL_HEADERS) expect(matches(response.allowed_upstream_headers, h), h).toBe(false);
    for (const h of denialHeaders()) expect(matches(response.allowed_client_headers, h), h).toBe(true);
    for (const h of successClientHeaders()) expect(matches(response.allowed_client_headers_on_success, h), h).toBe(true);
    for (const h of IDENTITY) expect(matches(response.allowed_client_headers_on_success, h), h).toBe(false);
  });

  it('normalises paths and reports the request id to the client', () => {
    expect(hcm).toMatchObject({ normalize_path: true, merge_slashes: true, path_with_escaped_slashes_action: 'REJECT_REQUEST', use_remote_address: true, always_set_request_id_in_response: true });
    expect(hcm.common_http_protocol_options.headers_with_underscores_action).toBe('REJECT_REQUEST');
  });

  it('sends /api/v1/auth/ and /api/v1/secret-scanning/ to the HTTP port without ext_authz and strips x-ryvion-* there; ext_authz everywhere else', () => {
    for (const [i, prefix] of ['/api/v1/auth/', '/api/v1/secret-scanning/'].entries()) {
      const auth = routes.find((r) => r.match.prefix === prefix);
      expect(routes.indexOf(auth), prefix).toBe(i);
      expect(auth.typed_per_filter_config[extAuthz.name]).toEqual({ '@type': 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute', disabled: true });
      expect([...auth.request_headers_to_remove].sort()).toEqual(IDENTITY);
      expect(auth.route.cluster).toBe(svc.server_uri.cluster);
    }
    for (const r of routes.slice(2)) {
      expect(r.typed_per_filter_config?.[extAuthz.name]).toBeUndefined();
      expect(r.request_headers_to_remove).toBeUndefined();
      expect(cluster(r.route.cluster)).toBeDefined();
    }
  });
});

describe('deploy/traefik/dynamic.yaml (parse-checked: no Traefik binary here)', () => {
  const config = read('deploy', 'traefik', 'dynamic.yaml');
  const { routers, middlewares, services } = config.http;
  // The options Traefik documents for what the file uses (v2.10 - v3).
  const KNOWN = {
    root: ['http'],
    http: ['routers', 'middlewares', 'services'],
    router: ['rule', 'ruleSyntax', 'priority', 'service', 'middlewares', 'entryPoints', 'tls', 'observability'],
    forwardAuth: ['address', 'tls', 'trustForwardHeader', 'authResponseHeaders', 'authResponseHeadersRegex', 'authRequestHeaders', 'addAuthCookiesToResponse', 'forwardBody', 'maxBodySize', 'headerField', 'preserveLocationHeader', 'preserveRequestMethod'],
    headers: ['customRequestHeaders', 'customResponseHeaders'],
    loadBalancer: ['servers', 'passHostHeader', 'healthCheck', 'sticky', 'responseForwarding', 'serversTransport'],
  };
  const onlyKnown = (value: Loose, known: string[], where: string): void => {
    for (const k of Object.keys(value)) expect(known, `${where}: unknown option "${k}"`).toContain(k);
  };
  const lower = (names: string[]): string[] => names.map((n) => n.toLowerCase()).sort();
  const byPrefix = (prefix: string): Loose => Object.values(routers).find((r: Loose) => r.rule === `PathPrefix(\`${prefix}\`)`);

  it('uses only options Traefik knows, and every reference resolves', () => {
    onlyKnown(config, KNOWN.root, '$');
    onlyKnown(config.http, KNOWN.http, 'http');
    for (const [name, r] of Object.entries<Loose>(routers)) {
      onlyKnown(r, KNOWN.router, `router ${name}`);
      expect(r.rule).toMatch(/^PathPrefix\(`\/[^`]*`\)$/);
      expect(services[r.service], `router ${name}: service ${r.service}`).toBeDefined();
      for (const m of r.middlewares ?? []) expect(middlewares[m], `router ${name}: middleware ${m}`).toBeDefined();
    }
    for (const [name, m] of Object.entries<Loose>(middlewares)) {
      expect(Object.keys(m), `middleware ${name}: one kind`).toHaveLength(1);
      if (m.forwardAuth) onlyKnown(m.forwardAuth, KNOWN.forwardAuth, `middleware ${name}`);
      else if (m.headers) onlyKnown(m.headers, KNOWN.headers, `middleware ${name}`);
      else throw new Error(`middleware ${name}: unexpected kind ${Object.keys(m)[0]}`);
    }
    for (const [name, s] of Object.entries<Loose>(services)) {
      onlyKnown(s.loadBalancer, KNOWN.loadBalancer, `service ${name}`);
      for (const server of s.loadBalancer.servers) expect(() => new URL(server.url)).not.toThrow();
    }
  });

  it('the API router: forwardAuth to /authz on the service\'s address, credentials in, identity back, then credentials removed', () => {
    const api = byPrefix('/');
    const [auth, strip] = api.middlewares.map((m: string) => middlewares[m]);
    const fa = auth.forwardAuth;
    const address = new URL(fa.address);
    expect(address.pathname).toBe(AUTHZ_PREFIX);
    expect(Object.values<Loose>(services).some((s) => s.loadBalancer.servers.some((srv: Loose) => new URL(srv.url).host === address.host))).toBe(true);
    // Traefik itself must describe the request: a trusted X-Forwarded-Uri could come from the client.
    expect(fa.trustForwardHeader).toBe(false);
    expect(lower(fa.authRequestHeaders)).toEqual(expect.arrayContaining([...CREDENTIAL_HEADERS]));
    for (const h of lower(fa.authRequestHeaders)) expect(h).not.toMatch(/^x-original-|^x-forwarded-/);
    expect(lower(fa.authResponseHeaders)).toEqual(IDENTITY);
    // Forwarded key metadata: every x-ryvion-meta-* (Traefik matches canonical names), nothing else.
    const meta = new RegExp(String(fa.authResponseHeadersRegex).replace(/^\(\?i\)/, ''), String(fa.authResponseHeadersRegex).startsWith('(?i)') ? 'i' : '');
    for (const h of [metaHeader('team'), metaHeader('cost_center'), 'X-Ryvion-Meta-Cost-Center']) expect(meta.test(h), h).toBe(true);
    for (const h of [...IDENTITY, ...CREDENTIAL_HEADERS, 'X-Ryvion-Scope', 'x-ryvion-status', 'x-ryvion-error-body', 'content-type', 'x-my-x-ryvion-meta-a']) expect(meta.test(h), h).toBe(false);
    expect(fa.forwardBody ?? false).toBe(false);
    expect(lower(Object.keys(strip.headers.customRequestHeaders))).toEqual([...CREDENTIAL_HEADERS].sort());
    expect(Object.values(strip.headers.customRequestHeaders)).toEqual(['', '']);
  });

  it.each(['/api/v1/auth/', '/api/v1/secret-scanning/'])('%s goes to ryvion-authz without forwardAuth, with client-sent x-ryvion-* removed, and wins over /', (prefix) => {
    const auth = byPrefix(prefix);
    const api = byPrefix('/');
    expect(auth.priority).toBeGreaterThan(api.priority);
    expect(auth.middlewares.some((m: string) => middlewares[m].forwardAuth)).toBe(false);
    const strip = auth.middlewares.map((m: string) => middlewares[m]).find((m: Loose) => m.headers);
    // The shipped policy's forwarded metadata fields too (the headers middleware removes by name only).
    expect(lower(Object.keys(strip.headers.customRequestHeaders))).toEqual([...IDENTITY, ...SHIPPED_META].sort());
    expect(new Set(Object.values(strip.headers.customRequestHeaders))).toEqual(new Set(['']));
    const forwardAuth = Object.values<Loose>(middlewares).find((m) => m.forwardAuth).forwardAuth;
    const authService = services[auth.service].loadBalancer.servers[0].url;
    expect(new URL(authService).host).toBe(new URL(forwardAuth.address).host);
  });
});
