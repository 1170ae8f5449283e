// The shipped proxy configurations (deploy/envoy, deploy/istio, deploy/envoy-gateway) against the
// chart they call: the Service name and ports come from rendering the chart as release
// "ryvion-authz" in namespace "ryvion", not from constants. Each file must set the timeout
// (at most 1 s), fail closed, send /api/v1/auth/ to the HTTP port without ext_authz, and strip the
// identity headers there. The Envoy bootstrap is also checked field by field against Envoy's protos.
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { metaHeader } from '../../src/check/metadata-forward.js';
import { CREDENTIAL_HEADERS, IDENTITY_HEADERS } from '../../src/check/outcomes.js';
import { DEFAULT_POLICY_PATH } from '../../src/policy/policy.js';
import {
  ACCESS_LOG_SECRET_HEADER,
  EXT_AUTHZ_METADATA_NAMESPACE,
  RESERVATION_ID_FIELD,
  USAGE_INPUT_TOKENS_HEADER,
  USAGE_OUTPUT_TOKENS_HEADER,
} from '../../src/transport/grpc/access-log.js';
import { GRPC_MAX_RECEIVE_MESSAGE_BYTES } from '../../src/transport/grpc/server.js';
import { checkEnvoyConfig } from './envoy-proto.js';
import { ROOT, findObject, renderChart } from './helm.js';
import { renderProxyExamples } from './proxy-examples.js';

const IDENTITY = Object.values(IDENTITY_HEADERS).sort();

interface ChartService {
  name: string;
  namespace: string;
  fqdn: string;
  /** The headless Service: one address per ready pod. */
  headlessFqdn: string;
  grpcPort: number;
  httpPort: number;
}

let svc: ChartService;

beforeAll(async () => {
  const objects = await renderChart({ release: 'ryvion-authz', namespace: 'ryvion' });
  const service = findObject(objects, 'Service', 'ryvion-authz');
  const headless = objects.find((o) => o.kind === 'Service' && (o.spec as { clusterIP?: string }).clusterIP === 'None')!;
  const ports = (service.spec as { ports: Array<{ name: string; port: number }> }).ports;
  const namespace = service.metadata.namespace!;
  svc = {
    name: service.metadata.name,
    namespace,
    fqdn: `${service.metadata.name}.${namespace}.svc.cluster.local`,
    headlessFqdn: `${headless.metadata.name}.${namespace}.svc.cluster.local`,
    grpcPort: ports.find((p) => p.name === 'grpc')!.port,
    httpPort: ports.find((p) => p.name === 'http')!.port,
  };
});

/** "0.25s", "250ms", "1m" -> seconds. */
function seconds(duration: unknown): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(String(duration));
  if (!m) throw new Error(`not a duration: ${JSON.stringify(duration)}`);
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60 }[m[2] as 'ms' | 's' | 'm'];
}

function readDocuments(relative: string): Array<Record<string, unknown>> {
  const docs = parseAllDocuments(readFileSync(join(ROOT, relative), 'utf8'));
  for (const d of docs) if (d.errors.length > 0) throw new Error(`${relative}: ${d.errors[0]!.message}`);
  return docs.map((d) => d.toJS() as Record<string, unknown>).filter(Boolean);
}

function readDirDocuments(dir: string): Array<Record<string, unknown>> {
  return readdirSync(join(ROOT, dir))
    .filter((f) => /\.ya?ml$/.test(f))
    .flatMap((f) => readDocuments(join(dir, f)));
}

// Loose typings of the parts of the configurations the tests read.
/* eslint-disable @typescript-eslint/no-explicit-any */
type Loose = any;
/* eslint-enable @typescript-eslint/no-explicit-any */

describe('deploy/envoy/envoy.yaml', () => {
  const bootstrap = parse(readFileSync(join(ROOT, 'deploy', 'envoy', 'envoy.yaml'), 'utf8')) as Loose;
  const hcmFilter = bootstrap.static_resources.listeners[0].filter_chains[0].filters.find(
    (f: Loose) => f.name === 'envoy.filters.network.http_connection_manager',
  );
  const hcm = hcmFilter.typed_config;
  const extAuthz = hcm.http_filters.find((f: Loose) => f.name === 'envoy.filters.http.ext_authz');
  const clusters: Loose[] = bootstrap.static_resources.clusters;
  const cluster = (name: string) => clusters.find((c) => c.name === name);
  const addressOf = (c: Loose) => c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;
  const routes: Loose[] = hcm.route_config.virtual_hosts[0].routes;

  it("is a valid bootstrap by Envoy's own protos (field names, enums, types, no deprecated fields)", () => {
    expect(checkEnvoyConfig(bootstrap)).toEqual([]);
  });

  it('calls the chart headless Service over HTTP/2 on the gRPC port, fail-closed, with a short timeout and 503 on error', () => {
    const cfg = extAuthz.typed_config;
    expect(cfg['@type']).toBe('type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz');
    expect(cfg.transport_api_version).toBe('V3');
    expect(seconds(cfg.grpc_service.timeout)).toBeLessThanOrEqual(1);
    expect(cfg.failure_mode_allow).toBe(false);
    expect(cfg.status_on_error).toEqual({ code: 'ServiceUnavailable' });
    expect(cfg.include_peer_certificate ?? false).toBe(false);
    // Only what the gate reads; the credential headers must be among them.
    const allowed = cfg.allowed_headers.patterns.map((p: Loose) => p.exact);
    for (const h of CREDENTIAL_HEADERS) expect(allowed).toContain(h);
    expect(allowed).toContain('x-request-id');
    // The ext_authz filter runs before the router.
    expect(hcm.http_filters.at(-1).name).toBe('envoy.filters.http.router');

    const authz = cluster(cfg.grpc_service.envoy_grpc.cluster_name);
    // Per-request balancing: STRICT_DNS over the headless Service makes one endpoint per pod.
    expect(authz.type).toBe('STRICT_DNS');
    expect(addressOf(authz)).toEqual({ address: svc.headlessFqdn, port_value: svc.grpcPort });
    expect(seconds(authz.dns_refresh_rate)).toBeLessThanOrEqual(10);
    const http = authz.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'];
    expect(http.explicit_http_config.http2_protocol_options.connection_keepalive).toEqual({ interval: '30s', timeout: '5s' });
  });

  it('tells ext_authz the real client address (IP allow-lists): the peer, or the chart\'s trusted hops of x-forwarded-for', () => {
    expect(hcm.use_remote_address).toBe(true);
    expect(hcm.xff_num_trusted_hops).toBe(0);
  });

  it('normalises paths before routing and ext_authz', () => {
    expect(hcm.normalize_path).toBe(true);
    expect(hcm.merge_slashes).toBe(true);
    expect(hcm.path_with_escaped_slashes_action).toBe('REJECT_REQUEST');
    expect(hcm.common_http_protocol_options.headers_with_underscores_action).toBe('REJECT_REQUEST');
  });

  it.each(['/api/v1/auth/', '/api/v1/secret-scanning/'])('sends %s to the HTTP port without ext_authz and strips x-ryvion-* there', (prefix) => {
    const auth = routes.find((r) => r.match.prefix === prefix);
    expect(auth, `a ${prefix} route`).toBeDefined();
    expect(routes.indexOf(auth)).toBeLessThan(routes.findIndex((r) => r.match.prefix === '/'));
    const perRoute = auth.typed_per_filter_config[extAuthz.name];
    expect(perRoute['@type']).toBe('type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute');
    expect(perRoute.disabled).toBe(true);
    expect([...auth.request_headers_to_remove].sort()).toEqual(IDENTITY);
    expect(addressOf(cluster(auth.route.cluster))).toEqual({ address: svc.fqdn, port_value: svc.httpPort });
  });

  it('keeps ext_authz on every other route (and never strips the identity the gate sets)', () => {
    for (const r of routes.filter((r) => r.match.prefix !== '/api/v1/auth/' && r.match.prefix !== '/api/v1/secret-scanning/')) {
      const perRoute = r.typed_per_filter_config?.[extAuthz.name];
      expect(perRoute?.disabled).toBeUndefined();
      expect(perRoute?.check_settings?.context_extensions).toBeUndefined();
      expect(r.request_headers_to_remove ?? []).not.toEqual(expect.arrayContaining(IDENTITY.slice(0, 1)));
      expect(cluster(r.route.cluster)).toBeDefined();
    }
    expect(hcm.route_config.request_headers_to_remove).toBeUndefined();
  });
});

describe('deploy/envoy/envoy.yaml: token limits (issue 19)', () => {
  const bootstrap = parse(readFileSync(join(ROOT, 'deploy', 'envoy', 'envoy.yaml'), 'utf8')) as Loose;
  const hcm = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
  const cfg = hcm.http_filters.find((f: Loose) => f.name === 'envoy.filters.http.ext_authz').typed_config;
  const routes: Loose[] = hcm.route_config.virtual_hosts[0].routes;
  const clusters: Loose[] = bootstrap.static_resources.clusters;

  /** The first route that takes `path`, as Envoy matches them: prefix, or a full match of safe_regex. */
  const routeFor = (path: string): Loose =>
    routes.find((r) => (r.match.prefix !== undefined ? path.startsWith(r.match.prefix) : new RegExp(`^(?:${r.match.safe_regex.regex})$`).test(path)));
  const bufferingOff = (r: Loose): boolean => r.typed_per_filter_config?.['envoy.filters.http.ext_authz']?.check_settings?.disable_request_body_buffering === true;

  it("sends the body as bytes (raw_body), cut short rather than refused, with x-envoy-auth-partial-body let through", () => {
    expect(cfg.with_request_body).toMatchObject({ allow_partial_message: true, pack_as_bytes: true });
    expect(cfg.allowed_headers.patterns.map((p: Loose) => p.exact)).toContain('x-envoy-auth-partial-body');
  });

  it("keeps max_request_bytes under the gate's gRPC message cap, with room for the largest headers Envoy accepts (the path twice)", () => {
    const headerBytes = (hcm.max_request_headers_kb ?? 60) * 1024;
    expect(cfg.with_request_body.max_request_bytes).toBeGreaterThanOrEqual(64 * 1024);
    expect(cfg.with_request_body.max_request_bytes + 2 * headerBytes + 16 * 1024).toBeLessThanOrEqual(GRPC_MAX_RECEIVE_MESSAGE_BYTES);
  });

  it('turns body buffering off on every upload route of the shipped policy (kb.upload), and only there', () => {
    const policy = parse(readFileSync(join(ROOT, 'policy', 'default.yaml'), 'utf8')) as { rules: Array<{ paths: string[]; permission?: string }> };
    const uploads = policy.rules.filter((r) => r.permission === 'kb.upload').flatMap((r) => r.paths);
    expect(uploads.length).toBeGreaterThan(0);
    for (const pattern of uploads) {
      const path = pattern.replaceAll('**', 'a/b').replaceAll('*', 'kb_0123');
      const route = routeFor(path);
      expect(bufferingOff(route), `${path} (${pattern})`).toBe(true);
      expect(route.typed_per_filter_config['envoy.filters.http.ext_authz'].disabled).toBeUndefined();
    }
    for (const path of ['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses', '/v1/knowledge-bases/kb_1', '/v1/knowledge-bases/kb_1/documents/extra']) {
      expect(bufferingOff(routeFor(path)), path).toBe(false);
    }
  });

  it("logs the usage headers and trailers of reserved requests to the gate's gRPC port, with the access-log secret", () => {
    const loggers = hcm.access_log.filter((l: Loose) => l.name === 'envoy.access_loggers.http_grpc');
    expect(loggers).toHaveLength(1);
    const [log] = loggers;
    expect(log.typed_config['@type']).toBe('type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig');
    const usage = [USAGE_INPUT_TOKENS_HEADER, USAGE_OUTPUT_TOKENS_HEADER];
    expect(log.typed_config.additional_response_headers_to_log).toEqual(usage);
    expect(log.typed_config.additional_response_trailers_to_log).toEqual(usage);
    const common = log.typed_config.common_config;
    expect(common.transport_api_version).toBe('V3');
    // The gate's gRPC cluster, the one ext_authz calls: the chart's headless Service on the gRPC port.
    expect(common.grpc_service.envoy_grpc.cluster_name).toBe(cfg.grpc_service.envoy_grpc.cluster_name);
    const authz = clusters.find((c) => c.name === common.grpc_service.envoy_grpc.cluster_name);
    expect(authz.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toEqual({ address: svc.headlessFqdn, port_value: svc.grpcPort });
    expect(common.grpc_service.initial_metadata).toEqual([{ key: ACCESS_LOG_SECRET_HEADER, value: '${RYVION_ACCESS_LOG_SECRET}' }]);
  });

  it('sends only entries whose ext_authz metadata holds a reservation id', () => {
    const log = hcm.access_log.find((l: Loose) => l.name === 'envoy.access_loggers.http_grpc');
    expect(log.filter).toEqual({
      metadata_filter: {
        matcher: { filter: EXT_AUTHZ_METADATA_NAMESPACE, path: [{ key: RESERVATION_ID_FIELD }], value: { present_match: true } },
        match_if_key_not_found: false,
      },
    });
  });
});

describe('deploy/istio', () => {
  const docs = readDirDocuments(join('deploy', 'istio')) as Loose[];
  const byKind = (kind: string) => docs.filter((d) => d.kind === kind);

  it('registers the chart Service as an envoyExtAuthzGrpc provider: short timeout, fail closed, 503', () => {
    const operator = byKind('IstioOperator')[0];
    expect(operator).toBeDefined();
    const providers: Loose[] = operator.spec.meshConfig.extensionProviders;
    const provider = providers.find((p) => p.envoyExtAuthzGrpc);
    expect(provider.envoyExtAuthzGrpc.service).toBe(svc.fqdn);
    expect(provider.envoyExtAuthzGrpc.port).toBe(svc.grpcPort);
    expect(seconds(provider.envoyExtAuthzGrpc.timeout)).toBeLessThanOrEqual(1);
    expect(provider.envoyExtAuthzGrpc.failOpen).toBe(false);
    expect(provider.envoyExtAuthzGrpc.statusOnError).toBe('503');
    expect(['MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES']).toContain(operator.spec.meshConfig.pathNormalization.normalization);
    // The client address the gateway reports (IP allow-lists): the chart's trusted hops.
    expect(operator.spec.meshConfig.defaultConfig.gatewayTopology.numTrustedProxies).toBe(0);
    // The normalisation applies to every workload of the mesh: the file says so where it is set.
    expect(readFileSync(join(ROOT, 'deploy', 'istio', 'mesh-config.yaml'), 'utf8')).toMatch(/MESH-WIDE/);

    const policy = byKind('AuthorizationPolicy').find((p) => p.spec.action === 'CUSTOM');
    expect(policy.spec.provider.name).toBe(provider.name);
    expect(policy.spec.selector.matchLabels).toBeDefined();
    const notPaths = policy.spec.rules.flatMap((r: Loose) => r.to.flatMap((t: Loose) => t.operation.notPaths ?? []));
    expect(notPaths).toContain('/api/v1/auth/*');
    expect(notPaths).toContain('/api/v1/secret-scanning/*');
  });

  it('routes /api/v1/auth/ and /api/v1/secret-scanning/ to the HTTP port and strips x-ryvion-* there', () => {
    const vs = byKind('VirtualService')[0];
    const http: Loose[] = vs.spec.http;
    const auth = http.find((r) => r.match?.some((m: Loose) => m.uri?.prefix === '/api/v1/auth/'));
    expect(auth).toBeDefined();
    expect(http.indexOf(auth)).toBe(0);
    expect(auth.match.map((m: Loose) => m.uri?.prefix)).toContain('/api/v1/secret-scanning/');
    expect([...auth.headers.request.remove].sort()).toEqual(IDENTITY);
    expect(auth.route[0].destination).toEqual({ host: svc.fqdn, port: { number: svc.httpPort } });
    for (const r of http.filter((r) => r !== auth)) expect(r.route[0].destination.host).not.toBe(svc.fqdn);
  });

  it('sends the body to the gate as bytes, cut short rather than refused, under the gRPC message cap (mesh-wide: no per-route setting)', () => {
    const provider = byKind('IstioOperator')[0].spec.meshConfig.extensionProviders.find((p: Loose) => p.envoyExtAuthzGrpc);
    const body = provider.envoyExtAuthzGrpc.includeRequestBodyInCheck;
    expect(body).toMatchObject({ allowPartialMessage: true, packAsBytes: true });
    expect(body.maxRequestBytes + 2 * 60 * 1024 + 16 * 1024).toBeLessThanOrEqual(GRPC_MAX_RECEIVE_MESSAGE_BYTES);
    // What Istio cannot express is said where the setting is.
    expect(readFileSync(join(ROOT, 'deploy', 'istio', 'mesh-config.yaml'), 'utf8')).toMatch(/Istio cannot turn body\n?#?\s*buffering off per route/);
  });

  it('logs the usage headers and trailers of reserved requests to the gate over gRPC (envoyHttpAls + Telemetry), and says the secret needs a patch', () => {
    const providers: Loose[] = byKind('IstioOperator')[0].spec.meshConfig.extensionProviders;
    const als = providers.find((p) => p.envoyHttpAls);
    const usage = [USAGE_INPUT_TOKENS_HEADER, USAGE_OUTPUT_TOKENS_HEADER];
    expect(als.envoyHttpAls).toMatchObject({ service: svc.fqdn, port: svc.grpcPort, additionalResponseHeadersToLog: usage, additionalResponseTrailersToLog: usage });
    const telemetry = byKind('Telemetry')[0];
    expect(telemetry.apiVersion).toBe('telemetry.istio.io/v1');
    const policy = byKind('AuthorizationPolicy').find((p) => p.spec.action === 'CUSTOM');
    // The same workload as the Check, so the ext_authz metadata is there.
    expect(telemetry.spec.selector).toEqual(policy.spec.selector);
    expect(telemetry.spec.accessLogging).toEqual([
      { providers: [{ name: als.name }], filter: { expression: `'${RESERVATION_ID_FIELD}' in metadata.filter_metadata['${EXT_AUTHZ_METADATA_NAMESPACE}']` } },
    ]);
    expect(readFileSync(join(ROOT, 'deploy', 'istio', 'mesh-config.yaml'), 'utf8')).toMatch(/Istio cannot set the stream's initial metadata/);
  });
});

describe('deploy/envoy-gateway', () => {
  const docs = readDirDocuments(join('deploy', 'envoy-gateway')) as Loose[];
  const routes = docs.filter((d) => d.kind === 'HTTPRoute');
  const policies = docs.filter((d) => d.kind === 'SecurityPolicy');

  it('has well-formed Gateway API and Envoy Gateway objects', () => {
    for (const d of docs) {
      expect(d.apiVersion).toMatch(/^(gateway\.networking\.k8s\.io\/v1|gateway\.envoyproxy\.io\/v1alpha1)$/);
      expect(d.metadata.name).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
      expect(d.metadata.namespace).toBe(svc.namespace);
      expect(d.spec).toBeDefined();
    }
    for (const p of policies) {
      expect(p.spec.targetRefs.length).toBeGreaterThan(0);
      for (const t of p.spec.targetRefs) expect(t).toMatchObject({ group: 'gateway.networking.k8s.io', kind: expect.stringMatching(/^(HTTPRoute|Gateway)$/) });
    }
  });

  it('attaches a SecurityPolicy to the API route: the chart Service on 9191, fail closed, short timeout, 503 when unreachable', () => {
    // The API route's, and the upload route's (the same Check without the body).
    expect(policies.map((p) => p.metadata.name)).toEqual(['ryvion-api-ext-authz', 'ryvion-api-uploads-ext-authz']);
    for (const policy of policies) {
      const ext = policy.spec.extAuth;
      expect(ext.grpc.backendRefs).toEqual([{ name: svc.name, namespace: svc.namespace, port: svc.grpcPort }]);
      expect(ext.failOpen).toBe(false);
      expect(ext.statusOnError).toBe(503);
      expect(seconds(ext.timeout)).toBeLessThanOrEqual(1);
      for (const h of CREDENTIAL_HEADERS) expect(ext.headersToExtAuth).toContain(h);
    }
    const target = policies[0].spec.targetRefs[0];
    expect(target.kind).toBe('HTTPRoute');
    const apiRoute = routes.find((r) => r.metadata.name === target.name);
    expect(apiRoute.spec.rules[0].matches[0].path).toEqual({ type: 'PathPrefix', value: '/' });
  });

  it('serves /api/v1/auth/ and /api/v1/secret-scanning/ from a route without the policy that strips x-ryvion-*', () => {
    const targeted = new Set(policies.flatMap((p) => p.spec.targetRefs.map((t: Loose) => t.name)));
    const auth = routes.find((r) => r.spec.rules.some((rule: Loose) => rule.matches.some((m: Loose) => m.path.value.startsWith('/api/v1/auth'))));
    expect(auth).toBeDefined();
    expect(targeted.has(auth.metadata.name)).toBe(false);
    expect(auth.spec.rules[0].matches.map((m: Loose) => m.path.value)).toContain('/api/v1/secret-scanning/');
    // No policy on the Gateway either, which would cover this route too.
    for (const p of policies) for (const t of p.spec.targetRefs) expect(t.kind).not.toBe('Gateway');
    const rule = auth.spec.rules[0];
    const modifier = rule.filters.find((f: Loose) => f.type === 'RequestHeaderModifier');
    expect([...modifier.requestHeaderModifier.remove].sort()).toEqual(IDENTITY);
    expect(rule.backendRefs).toEqual([{ name: svc.name, port: svc.httpPort }]);
  });

  it('rejects encoded slashes and underscore header names at the Gateway', () => {
    const ctp = docs.find((d) => d.kind === 'ClientTrafficPolicy');
    expect(ctp.spec.clientIPDetection.xForwardedFor.numTrustedHops).toBe(0);
    expect(ctp.spec.path.escapedSlashesAction).toBe('RejectRequest');
    expect(ctp.spec.path.disableMergeSlashes).toBe(false);
    expect(ctp.spec.headers.withUnderscoresAction).toBe('RejectRequest');
  });
});

describe('deploy/envoy-gateway: token limits (issue 19)', () => {
  const docs = readDirDocuments(join('deploy', 'envoy-gateway')) as Loose[];
  const policy = (name: string): Loose => docs.find((d) => d.kind === 'SecurityPolicy' && d.metadata.name === name);
  const route = (name: string): Loose => docs.find((d) => d.kind === 'HTTPRoute' && d.metadata.name === name);
  const text = readFileSync(join(ROOT, 'deploy', 'envoy-gateway', 'ryvion-api.yaml'), 'utf8');

  it("sends the API route's body to the gate under the gRPC message cap, with x-envoy-auth-partial-body let through", () => {
    const ext = policy('ryvion-api-ext-authz').spec.extAuth;
    expect(ext.bodyToExtAuth.maxRequestBytes + 2 * 60 * 1024 + 16 * 1024).toBeLessThanOrEqual(GRPC_MAX_RECEIVE_MESSAGE_BYTES);
    expect(ext.headersToExtAuth).toContain('x-envoy-auth-partial-body');
  });

  it('patches allow_partial_message and pack_as_bytes, which the SecurityPolicy API lacks, onto that policy\'s filter', () => {
    const patch = docs.find((d) => d.kind === 'EnvoyPatchPolicy' && d.metadata.name === 'ryvion-api-ext-authz-request-body');
    expect(patch.spec.targetRef).toEqual({ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: route('ryvion-api').spec.parentRefs[0].name });
    const ops = patch.spec.jsonPatches.map((p: Loose) => p.operation);
    for (const op of ops) expect(op.jsonPath).toContain(`'envoy.filters.http.ext_authz/securitypolicy/${svc.namespace}/ryvion-api-ext-authz')].typed_config.with_request_body`);
    const settings = Object.fromEntries(ops.map((op: Loose) => [op.path, op.value]));
    expect(settings).toEqual({ allow_partial_message: true, pack_as_bytes: true });
    expect(checkEnvoyConfig({ with_request_body: { max_request_bytes: 1, ...settings } }, 'envoy.extensions.filters.http.ext_authz.v3.ExtAuthz')).toEqual([]);
    expect(text).toMatch(/Envoy Gateway sets neither allow_partial_message/);
  });

  it('checks every upload path of the shipped policy (kb.upload) on a route whose policy sends no body', () => {
    const uploads = route('ryvion-api-uploads');
    expect(policy('ryvion-api-uploads-ext-authz').spec.targetRefs[0].name).toBe('ryvion-api-uploads');
    expect(policy('ryvion-api-uploads-ext-authz').spec.extAuth.bodyToExtAuth).toBeUndefined();
    const [match] = uploads.spec.rules[0].matches;
    expect(match.path.type).toBe('RegularExpression');
    const regex = new RegExp(`^(?:${match.path.value})$`);
    const rules = (parse(readFileSync(join(ROOT, 'policy', 'default.yaml'), 'utf8')) as { rules: Array<{ paths: string[]; permission?: string }> }).rules;
    for (const pattern of rules.filter((r) => r.permission === 'kb.upload').flatMap((r) => r.paths)) expect(regex.test(pattern.replaceAll('*', 'kb_0123'))).toBe(true);
    for (const path of ['/v1/chat/completions', '/v1/knowledge-bases/kb_1']) expect(regex.test(path)).toBe(false);
    expect(uploads.spec.rules[0].backendRefs).toEqual(route('ryvion-api').spec.rules[0].backendRefs);
  });

  it('logs the usage headers and trailers of reserved requests to the gate over gRPC (EnvoyProxy ALS), keeping the default log, and says the secret needs a patch', () => {
    const proxy = docs.find((d) => d.kind === 'EnvoyProxy');
    const settings: Loose[] = proxy.spec.telemetry.accessLog.settings;
    expect(settings[0].sinks).toEqual([{ type: 'File', file: { path: '/dev/stdout' } }]);
    const usageLog = settings.find((s) => s.sinks.some((k: Loose) => k.type === 'ALS'));
    expect(usageLog.matches).toEqual([`'${RESERVATION_ID_FIELD}' in metadata.filter_metadata['${EXT_AUTHZ_METADATA_NAMESPACE}']`]);
    const usage = [USAGE_INPUT_TOKENS_HEADER, USAGE_OUTPUT_TOKENS_HEADER];
    expect(usageLog.sinks[0].als).toMatchObject({
      type: 'HTTP',
      backendRefs: [{ name: svc.name, namespace: svc.namespace, port: svc.grpcPort }],
      http: { responseHeaders: usage, responseTrailers: usage },
    });
    expect(text).toMatch(/Envoy Gateway cannot set the stream's initial metadata/);
  });
});

describe('deploy/envoy-gateway: the EnvoyPatchPolicy fallback for Envoy Gateway v1.6 and v1.7', () => {
  const docs = readDirDocuments(join('deploy', 'envoy-gateway')) as Loose[];
  const patch = docs.find((d) => d.kind === 'EnvoyPatchPolicy' && d.metadata.name === 'ryvion-api-ext-authz-status-on-error');
  const policy = docs.find((d) => d.kind === 'SecurityPolicy');
  const apiRoute = docs.find((d) => d.kind === 'HTTPRoute' && d.metadata.name === policy.spec.targetRefs[0].name);
  const text = readFileSync(join(ROOT, 'deploy', 'envoy-gateway', 'status-on-error-patch.yaml'), 'utf8');

  it("patches status_on_error 503 onto the filter generated from the SecurityPolicy, on the API route's Gateway", () => {
    expect(patch.apiVersion).toBe('gateway.envoyproxy.io/v1alpha1');
    expect(patch.metadata.namespace).toBe(policy.metadata.namespace);
    expect(patch.spec.targetRef).toEqual({ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: apiRoute.spec.parentRefs[0].name });
    expect(patch.spec.type).toBe('JSONPatch');
    // One operation per SecurityPolicy, each on its own generated filter.
    expect(patch.spec.jsonPatches.map((q: Loose) => /securitypolicy\/[^/]+\/([^']+)'/.exec(q.operation.jsonPath)?.[1])).toEqual(
      docs.filter((d) => d.kind === 'SecurityPolicy').map((d) => d.metadata.name),
    );
    const [p] = patch.spec.jsonPatches;
    expect(p.type).toBe('type.googleapis.com/envoy.config.listener.v3.Listener');
    // Envoy Gateway's listener name (before XDSNameSchemeV2): <namespace>/<gateway>/<listener section>.
    expect(p.name).toMatch(new RegExp(`^${policy.metadata.namespace}/${apiRoute.spec.parentRefs[0].name}/[a-z0-9-]+$`));
    // The filter name Envoy Gateway gives a SecurityPolicy's ext_authz.
    expect(p.operation.jsonPath).toContain(`'envoy.filters.http.ext_authz/securitypolicy/${policy.metadata.namespace}/${policy.metadata.name}'`);
    expect(p.operation).toMatchObject({ op: 'add', path: 'status_on_error', value: { code: 'ServiceUnavailable' } });
    // The value is a valid ext_authz status_on_error by Envoy's protos.
    expect(checkEnvoyConfig({ status_on_error: p.operation.value }, 'envoy.extensions.filters.http.ext_authz.v3.ExtAuthz')).toEqual([]);
  });

  it('says which versions need it, that it needs enableEnvoyPatchPolicy, and that it depends on generated names', () => {
    expect(text).toMatch(/v1\.6 and v1\.7/);
    expect(text).toMatch(/enableEnvoyPatchPolicy: true/);
    expect(text).toMatch(/depends on names Envoy Gateway generates/);
    expect(readFileSync(join(ROOT, 'deploy', 'envoy-gateway', 'ryvion-api.yaml'), 'utf8')).toMatch(/Envoy Gateway v1\.8 and later/);
  });
});

describe('deploy/: rendered from the chart', () => {
  it('every proxy file equals what the chart renders for release ryvion-authz in namespace ryvion (npm run deploy:render)', async () => {
    const files = await renderProxyExamples('ryvion-authz', 'ryvion');
    expect(Object.keys(files).sort()).toEqual([
      'envoy-gateway/request-body-patch.yaml', 'envoy-gateway/ryvion-api.yaml', 'envoy-gateway/status-on-error-patch.yaml', 'envoy/envoy.yaml', 'envoy/http-ext-authz.yaml', 'istio/mesh-config.yaml', 'istio/ryvion-api.yaml',
    ]);
    for (const [path, text] of Object.entries(files)) expect(readFileSync(join(ROOT, 'deploy', path), 'utf8'), path).toBe(text);
  });

  it("another release and namespace get their own names everywhere, and the Envoy bootstrap stays valid", async () => {
    const files = await renderProxyExamples('edge', 'gateway-system');
    for (const [path, text] of Object.entries(files)) {
      expect(text, path).not.toMatch(/ryvion-authz\.ryvion\.svc|namespace: ryvion\b|name: ryvion-authz\n/);
    }
    const envoy = parse(files['envoy/envoy.yaml']!) as Loose;
    expect(checkEnvoyConfig(envoy)).toEqual([]);
    const grpc = envoy.static_resources.clusters.find((c: Loose) => c.name === 'ryvion_authz');
    expect(grpc.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address).toBe('edge-ryvion-authz-headless.gateway-system.svc.cluster.local');
    const eg = parseAllDocuments(files['envoy-gateway/ryvion-api.yaml']!).map((d) => d.toJS() as Loose);
    expect(eg.find((d) => d.kind === 'SecurityPolicy').spec.extAuth.grpc.backendRefs).toEqual([{ name: 'edge-ryvion-authz', namespace: 'gateway-system', port: 9191 }]);
    const mesh = parse(files['istio/mesh-config.yaml']!) as Loose;
    expect(mesh.spec.meshConfig.extensionProviders[0].envoyExtAuthzGrpc.service).toBe('edge-ryvion-authz.gateway-system.svc.cluster.local');
  });

  it("the policy's forward_metadata headers are stripped with the identity headers where ext_authz does not run (Envoy gRPC and HTTP, Istio, Envoy Gateway)", async () => {
    const policyFile = join(mkdtempSync(join(tmpdir(), 'ryv-policy-')), 'policy.yaml');
    writeFileSync(policyFile, `${readFileSync(DEFAULT_POLICY_PATH, 'utf8')}\nforward_metadata: [team, cost_center]\n`);
    const [fromPolicy, fromValue] = await Promise.all([
      // The chart's own policy content, plus a field listed by value (team twice: stripped once).
      renderProxyExamples('ryvion-authz', 'ryvion', ['--set-file', `policy.content=${policyFile}`, '--set', 'proxyExamples.forwardMetadata={tier,team}']),
      // A policy the chart does not see: only what the value lists.
      renderProxyExamples('ryvion-authz', 'ryvion', ['--set', 'policy.existingConfigMap=site-policy', '--set', 'proxyExamples.forwardMetadata={region}']),
    ]);
    const cases: Array<[Record<string, string>, string[]]> = [
      [fromPolicy, ['team', 'cost_center', 'tier'].map(metaHeader)],
      [fromValue, [metaHeader('region')]],
    ];
    expect(cases[0]![1]).toEqual(['x-ryvion-meta-team', 'x-ryvion-meta-cost-center', 'x-ryvion-meta-tier']);
    for (const [files, meta] of cases) {
      const stripped = [...IDENTITY, ...meta].sort();
      for (const path of ['envoy/envoy.yaml', 'envoy/http-ext-authz.yaml']) {
        const envoy = parse(files[path]!) as Loose;
        expect(checkEnvoyConfig(envoy), path).toEqual([]);
        const routes: Loose[] = envoy.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes;
        for (const prefix of ['/api/v1/auth/', '/api/v1/secret-scanning/']) {
          expect([...routes.find((r) => r.match.prefix === prefix).request_headers_to_remove].sort(), `${path} ${prefix}`).toEqual(stripped);
        }
        // Where ext_authz runs, the gate itself sets or removes them.
        for (const r of routes.filter((r) => !(r.match.prefix ?? '').startsWith('/api/v1/'))) expect(r.request_headers_to_remove, path).toBeUndefined();
      }
      const vs = parseAllDocuments(files['istio/ryvion-api.yaml']!).map((d) => d.toJS() as Loose).find((d) => d.kind === 'VirtualService');
      expect([...vs.spec.http[0].headers.request.remove].sort()).toEqual(stripped);
      const route = parseAllDocuments(files['envoy-gateway/ryvion-api.yaml']!).map((d) => d.toJS() as Loose).find((d) => d.kind === 'HTTPRoute' && d.metadata.name === 'ryvion-authz-api');
      expect([...route.spec.rules[0].filters[0].requestHeaderModifier.remove].sort()).toEqual(stripped);
    }
  });

  it('proxyExamples.trustedHops reaches the client-address setting of Envoy (gRPC and HTTP), Istio and Envoy Gateway', async () => {
    const files = await renderProxyExamples('ryvion-authz', 'ryvion', ['--set', 'proxyExamples.trustedHops=1']);
    for (const path of ['envoy/envoy.yaml', 'envoy/http-ext-authz.yaml']) {
      const envoy = parse(files[path]!) as Loose;
      const hcm = envoy.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
      expect(hcm, path).toMatchObject({ use_remote_address: true, xff_num_trusted_hops: 1 });
    }
    const mesh = parse(files['istio/mesh-config.yaml']!) as Loose;
    expect(mesh.spec.meshConfig.defaultConfig.gatewayTopology.numTrustedProxies).toBe(1);
    const eg = parseAllDocuments(files['envoy-gateway/ryvion-api.yaml']!).map((d) => d.toJS() as Loose);
    expect(eg.find((d) => d.kind === 'ClientTrafficPolicy').spec.clientIPDetection.xForwardedFor.numTrustedHops).toBe(1);
  });
});
