// Wire compatibility between our hand-written ext_authz protos (proto/) and
// Envoy's own definitions (shipped with @grpc/grpc-js-xds). Every message is
// encoded with one side's serializer and decoded with the other's, in both
// directions, through the same Check method serializers grpc-js uses.
import { createRequire } from 'node:module';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as protoLoader from '@grpc/proto-loader';
import { envoyEntry, envoyMessage, STREAM_ACCESS_LOGS_PATH, upstreamStreamMethod } from '../helpers/access-log.js';
import {
  AccessLogType,
  accessLogService,
  AUTHORIZATION_CHECK_PATH,
  HeaderAppendAction,
  LOADER_OPTIONS,
  authorizationService,
  loadAuthorizationDefinition,
  type CheckRequest,
  type CheckResponse,
  type StreamAccessLogsMessage,
} from '../../src/transport/grpc/proto.js';

const SERVICE = 'envoy.service.auth.v3.Authorization';

const XDS_DEPS = path.join(
  path.dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')),
  'deps',
);

function loadUpstreamDefinition(): protoLoader.PackageDefinition {
  return protoLoader.loadSync(path.join('envoy', 'service', 'auth', 'v3', 'external_auth.proto'), {
    ...LOADER_OPTIONS,
    includeDirs: ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(XDS_DEPS, d)),
  });
}

function isService(d: protoLoader.AnyDefinition | undefined): d is protoLoader.ServiceDefinition {
  return d !== undefined && !('format' in d && typeof d.format === 'string');
}

function checkMethod(def: protoLoader.PackageDefinition): protoLoader.MethodDefinition<object, object> {
  const svc = def[SERVICE];
  if (!isService(svc)) throw new Error(`${SERVICE} is not a service in this definition`);
  const check = svc['Check'];
  if (!check) throw new Error(`${SERVICE}.Check missing`);
  return check;
}

interface Side {
  name: string;
  check: protoLoader.MethodDefinition<object, object>;
}

const ours: Side = { name: 'our protos', check: checkMethod(loadAuthorizationDefinition()) };
const envoy: Side = { name: "Envoy's protos", check: checkMethod(loadUpstreamDefinition()) };

/** Both directions: encode with `from`, decode with `to`. */
const DIRECTIONS: ReadonlyArray<{ from: Side; to: Side }> = [
  { from: envoy, to: ours },
  { from: ours, to: envoy },
];

function requestAcross(from: Side, to: Side, req: object): CheckRequest {
  return to.check.requestDeserialize(from.check.requestSerialize(req)) as CheckRequest;
}

function responseAcross(from: Side, to: Side, res: object): DecodedCheckResponse {
  return to.check.responseDeserialize(from.check.responseSerialize(res)) as DecodedCheckResponse;
}

// ---------------------------------------------------------------------------
// Fixtures

// Obviously fake: not the shape of a real key.
const FAKE_BEARER = 'Bearer ryv_live_xxx-fake-placeholder';

const ENVOY_STREAM_ID = '5127398451782939104';

const envoyStyleRequest: CheckRequest & { attributes: { request: { http: { size: string } } } } = {
  attributes: {
    source: { address: { socket_address: { address: '10.0.0.7', port_value: 51234 } } },
    destination: { address: { socket_address: { address: '10.0.0.12', port_value: 8443 } } },
    request: {
      http: {
        id: ENVOY_STREAM_ID,
        method: 'POST',
        headers: {
          ':authority': 'api.ryvion.test',
          ':path': '/v1/chat/completions?stream=true',
          ':method': 'POST',
          ':scheme': 'https',
          'x-request-id': '3f1c2a9e-6d1b-4c7a-9f0e-2b8d5a4c1e77',
          authorization: FAKE_BEARER,
          'x-forwarded-for': '203.0.113.9,198.51.100.4',
          'content-type': 'application/json',
          'content-length': '42',
        },
        path: '/v1/chat/completions?stream=true',
        host: 'api.ryvion.test',
        scheme: 'https',
        protocol: 'HTTP/1.1',
        size: '42',
      },
    },
    context_extensions: { tenant: 'acme', route: 'chat-completions' },
  },
};

/** What a proto-loader decoder returns for envoyStyleRequest: the same, plus oneof names. */
const envoyStyleRequestDecoded = {
  attributes: {
    source: {
      address: {
        address: 'socket_address',
        socket_address: { address: '10.0.0.7', port_value: 51234, port_specifier: 'port_value' },
      },
    },
    destination: {
      address: {
        address: 'socket_address',
        socket_address: { address: '10.0.0.12', port_value: 8443, port_specifier: 'port_value' },
      },
    },
    request: { http: envoyStyleRequest.attributes.request.http },
    context_extensions: { tenant: 'acme', route: 'chat-completions' },
  },
};

// encode_raw_headers: values only as bytes, repeated headers as separate entries.
const obsTextValue = Buffer.from([0x74, 0x65, 0xff, 0x80, 0x73, 0x74]); // "te\xff\x80st": not UTF-8
const rawHeaderEntries = [
  { key: ':authority', raw_value: Buffer.from('api.ryvion.test') },
  { key: ':path', raw_value: Buffer.from('/v1/embeddings') },
  { key: ':method', raw_value: Buffer.from('POST') },
  { key: 'authorization', raw_value: Buffer.from(FAKE_BEARER) },
  { key: 'x-forwarded-for', raw_value: Buffer.from('203.0.113.9') },
  { key: 'x-custom', raw_value: obsTextValue },
  { key: 'x-forwarded-for', raw_value: Buffer.from('198.51.100.4') },
];
const rawHeadersRequest: CheckRequest = {
  attributes: {
    request: {
      http: {
        id: '17',
        method: 'POST',
        header_map: { headers: rawHeaderEntries },
        path: '/v1/embeddings',
        host: 'api.ryvion.test',
        scheme: 'https',
        protocol: 'HTTP/2',
      },
    },
  },
};

// google.protobuf.Struct/Value come from protobufjs's bundled well-known types,
// whose field names are camelCase no matter what keepCase says: a Value must be
// written { stringValue }, and `string_value` is silently dropped (see the test
// below). The field numbers on the wire are Envoy's either way.
interface WireValue {
  stringValue?: string;
  numberValue?: number;
  boolValue?: boolean;
}
interface WireStruct {
  fields: Record<string, WireValue>;
}
type WireCheckResponse = Omit<CheckResponse, 'dynamic_metadata'> & { dynamic_metadata?: WireStruct };
type DecodedCheckResponse = Omit<CheckResponse, 'dynamic_metadata'> & {
  dynamic_metadata?: { fields: Record<string, WireValue & { kind?: string }> };
};

const okResponse: WireCheckResponse = {
  status: { code: 0 },
  ok_response: {
    headers: [
      {
        header: { key: 'x-ryvion-account-id', value: 'acct_test_0001' },
        append: { value: false },
        append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
      },
      {
        header: { key: 'x-ryvion-key-id', value: 'key_test_0001' },
        append: { value: false },
        append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
      },
    ],
    headers_to_remove: ['authorization', 'x-api-key'],
    response_headers_to_add: [
      {
        header: { key: 'x-ratelimit-limit-requests', value: '600' },
        append: { value: false },
        append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
      },
      {
        header: { key: 'x-ratelimit-remaining-requests', value: '599' },
        append: { value: false },
        append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
      },
      {
        header: { key: 'x-ratelimit-reset-requests', value: '100ms' },
        append: { value: false },
        append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
      },
    ],
  },
  dynamic_metadata: {
    fields: {
      account_id: { stringValue: 'acct_test_0001' },
      key_id: { stringValue: 'key_test_0001' },
      scope: { stringValue: 'project:proj_test_0001' },
      permission: { stringValue: 'write' },
    },
  },
};

const okResponseDecoded = {
  status: { code: 0 },
  http_response: 'ok_response',
  ok_response: okResponse.ok_response,
  dynamic_metadata: {
    fields: {
      account_id: { stringValue: 'acct_test_0001', kind: 'stringValue' },
      key_id: { stringValue: 'key_test_0001', kind: 'stringValue' },
      scope: { stringValue: 'project:proj_test_0001', kind: 'stringValue' },
      permission: { stringValue: 'write', kind: 'stringValue' },
    },
  },
};

function openAiError(message: string, type: string, code: string): string {
  return JSON.stringify({ error: { message, type, param: null, code } });
}

function header(key: string, value: string): { header: { key: string; value: string }; append: { value: boolean }; append_action: number } {
  return { header: { key, value }, append: { value: false }, append_action: HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD };
}

const deniedResponses: ReadonlyArray<{ label: string; response: WireCheckResponse }> = [
  {
    label: 'a 401 denial (UNAUTHENTICATED)',
    response: {
      status: { code: 16, message: 'invalid API key' },
      denied_response: {
        status: { code: 401 },
        headers: [
          header('www-authenticate', 'Bearer realm="ryvion", error="invalid_token"'),
          header('content-type', 'application/json'),
        ],
        body: openAiError('Incorrect API key provided.', 'invalid_request_error', 'invalid_api_key'),
      },
    },
  },
  {
    label: 'a 429 denial (RESOURCE_EXHAUSTED)',
    response: {
      status: { code: 8, message: 'rate limit exceeded' },
      denied_response: {
        status: { code: 429 },
        headers: [
          header('retry-after', '2'),
          header('x-ratelimit-limit-requests', '600'),
          header('x-ratelimit-remaining-requests', '0'),
          header('content-type', 'application/json'),
        ],
        body: openAiError('Rate limit reached for requests.', 'requests', 'rate_limit_exceeded'),
      },
    },
  },
  {
    label: 'a 503 denial (UNAVAILABLE)',
    response: {
      status: { code: 14, message: 'key store unavailable' },
      denied_response: {
        status: { code: 503 },
        headers: [header('retry-after', '1'), header('content-type', 'application/json')],
        body: openAiError('The server is temporarily unavailable.', 'server_error', 'service_unavailable'),
      },
    },
  },
];

// ---------------------------------------------------------------------------

describe('ext_authz wire compatibility with Envoy', () => {
  it('our Check method path is /envoy.service.auth.v3.Authorization/Check, the same as Envoy\'s', () => {
    const ourService = authorizationService();
    const ourCheck = ourService['Check'];
    expect(ourCheck?.path).toBe('/envoy.service.auth.v3.Authorization/Check');
    expect(ourCheck?.path).toBe(AUTHORIZATION_CHECK_PATH);
    expect(ours.check.path).toBe(envoy.check.path);
    expect(envoy.check.path).toBe('/envoy.service.auth.v3.Authorization/Check');
    expect(ours.check.requestStream).toBe(false);
    expect(ours.check.responseStream).toBe(false);
    expect(envoy.check.requestStream).toBe(false);
    expect(envoy.check.responseStream).toBe(false);
  });

  for (const { from, to } of DIRECTIONS) {
    describe(`encoded by ${from.name}, decoded by ${to.name}`, () => {
      it(`a CheckRequest with headers encoded by ${from.name} decodes with ${to.name}`, () => {
        const got = requestAcross(from, to, envoyStyleRequest);
        expect(got).toEqual(envoyStyleRequestDecoded);

        const http = got.attributes?.request?.http;
        expect(got.attributes?.source?.address?.socket_address).toMatchObject({ address: '10.0.0.7', port_value: 51234 });
        expect(got.attributes?.destination?.address?.socket_address).toMatchObject({ address: '10.0.0.12', port_value: 8443 });
        expect(http?.id).toBe(ENVOY_STREAM_ID);
        expect(http?.method).toBe('POST');
        expect(http?.headers?.[':authority']).toBe('api.ryvion.test');
        expect(http?.headers?.[':path']).toBe('/v1/chat/completions?stream=true');
        expect(http?.headers?.['authorization']).toBe(FAKE_BEARER);
        expect(http?.headers?.['x-forwarded-for']).toBe('203.0.113.9,198.51.100.4');
        expect(http?.path).toBe('/v1/chat/completions?stream=true');
        expect(http?.protocol).toBe('HTTP/1.1');
        expect(http).toHaveProperty('size', '42'); // int64 as a string (longs: String)
        expect(http).not.toHaveProperty('header_map');
        expect(got.attributes?.context_extensions).toEqual({ tenant: 'acme', route: 'chat-completions' });
      });

      it(`a CheckRequest with raw header_map bytes encoded by ${from.name} keeps bytes, order and duplicates in ${to.name}`, () => {
        const got = requestAcross(from, to, rawHeadersRequest);
        const http = got.attributes?.request?.http;
        expect(http).not.toHaveProperty('headers');

        const entries = http?.header_map?.headers ?? [];
        expect(entries.map((h) => h.key)).toEqual(rawHeaderEntries.map((h) => h.key));
        entries.forEach((entry, i) => {
          expect(entry).not.toHaveProperty('value');
          expect(entry.raw_value).toBeInstanceOf(Uint8Array);
          expect(Buffer.from(entry.raw_value ?? new Uint8Array())).toEqual(rawHeaderEntries[i]?.raw_value);
        });
        const xff = entries.filter((h) => h.key === 'x-forwarded-for').map((h) => Buffer.from(h.raw_value ?? []).toString());
        expect(xff).toEqual(['203.0.113.9', '198.51.100.4']);
        expect(http).toMatchObject({ id: '17', method: 'POST', path: '/v1/embeddings', host: 'api.ryvion.test', protocol: 'HTTP/2' });
      });

      it(`an OK CheckResponse encoded by ${from.name} arrives in ${to.name} with append=false present and append_action OVERWRITE_IF_EXISTS_OR_ADD`, () => {
        const got = responseAcross(from, to, okResponse);
        expect(got).toEqual(okResponseDecoded);

        const all = [...(got.ok_response?.headers ?? []), ...(got.ok_response?.response_headers_to_add ?? [])];
        expect(all).toHaveLength(5);
        for (const opt of all) {
          // A BoolValue that is present and false, not an absent wrapper.
          expect(opt).toHaveProperty('append');
          expect(opt.append).toEqual({ value: false });
          expect(opt.append_action).toBe(2);
        }
        expect(got.ok_response?.headers_to_remove).toEqual(['authorization', 'x-api-key']);
        expect(got.ok_response?.response_headers_to_add.map((h) => h.header.key)).toEqual([
          'x-ratelimit-limit-requests',
          'x-ratelimit-remaining-requests',
          'x-ratelimit-reset-requests',
        ]);
        expect(got.dynamic_metadata?.fields['account_id']?.stringValue).toBe('acct_test_0001');
        expect(got.dynamic_metadata?.fields['key_id']?.stringValue).toBe('key_test_0001');
        expect(got.dynamic_metadata?.fields['scope']?.stringValue).toBe('project:proj_test_0001');
        expect(got.dynamic_metadata?.fields['permission']?.stringValue).toBe('write');
        expect(got).not.toHaveProperty('denied_response');
      });

      for (const { label, response } of deniedResponses) {
        it(`${label} encoded by ${from.name} decodes with ${to.name}`, () => {
          const got = responseAcross(from, to, response);
          expect(got).toEqual({ ...response, http_response: 'denied_response' });
          expect(got.status).toEqual(response.status);
          expect(got.denied_response?.status.code).toBe(response.denied_response?.status.code);
          expect(got.denied_response?.headers).toEqual(response.denied_response?.headers);
          expect(JSON.parse(got.denied_response?.body ?? '')).toEqual(JSON.parse(response.denied_response?.body ?? ''));
          expect(got).not.toHaveProperty('ok_response');
        });
      }

      it(`an HTTP status outside our StatusCode subset (402) encoded by ${from.name} still arrives as its number in ${to.name}`, () => {
        const got = responseAcross(from, to, {
          status: { code: 7 },
          denied_response: { status: { code: 402 }, headers: [], body: '' },
        });
        expect(got.denied_response?.status).toEqual({ code: 402 });
      });
    });
  }

  it('a Struct Value spelled snake_case (string_value) is dropped: dynamic_metadata must use stringValue', () => {
    // Pins the protobufjs/proto-loader behaviour the fixtures above rely on. If
    // this starts failing, keepCase now reaches well-known types and the
    // camelCase spelling used here (and in proto.ts's StructValue) must change.
    const snake = { status: { code: 0 }, dynamic_metadata: { fields: { account_id: { string_value: 'acct_test_0001' } } } };
    const camel = { status: { code: 0 }, dynamic_metadata: { fields: { account_id: { stringValue: 'acct_test_0001' } } } };
    expect(responseAcross(ours, envoy, snake).dynamic_metadata).toEqual({ fields: { account_id: {} } });
    expect(responseAcross(ours, envoy, camel).dynamic_metadata?.fields['account_id']?.stringValue).toBe('acct_test_0001');
  });

  describe("Envoy fields our subset leaves out", () => {
    it('a CheckRequest with time, metadata_context, tls_session and other extras decodes with ours, extras skipped', () => {
      const upstreamOnly = {
        attributes: {
          source: {
            address: {
              socket_address: { address: '10.0.0.7', port_value: 51234, resolver_name: 'envoy.resolvers.x', ipv4_compat: true },
            },
            principal: 'spiffe://cluster.local/ns/apps/sa/client',
            certificate: '-----BEGIN CERTIFICATE-----\nnot-a-cert\n-----END CERTIFICATE-----\n',
          },
          destination: {
            address: { envoy_internal_address: { server_listener_name: 'internal-listener' } },
          },
          request: {
            time: { seconds: '1767225600', nanos: 123000000 },
            http: {
              ...envoyStyleRequest.attributes.request.http,
              body: '{"model":"x"}',
            },
          },
          context_extensions: { tenant: 'acme' },
          metadata_context: {
            filter_metadata: {
              'envoy.filters.http.jwt_authn': { fields: { sub: { stringValue: 'user-1' } } },
            },
          },
          route_metadata_context: {
            filter_metadata: { 'ryvion.route': { fields: { tier: { stringValue: 'gold' } } } },
          },
          tls_session: { sni: 'api.ryvion.test' },
        },
      };

      const bytes = envoy.check.requestSerialize(upstreamOnly);
      // The extras really are on the wire (Envoy's decoder reads them back).
      expect(envoy.check.requestDeserialize(bytes)).toMatchObject({
        attributes: {
          source: { certificate: upstreamOnly.attributes.source.certificate },
          destination: { address: { envoy_internal_address: { server_listener_name: 'internal-listener' } } },
          request: { time: { seconds: '1767225600', nanos: 123000000 } },
          metadata_context: { filter_metadata: { 'envoy.filters.http.jwt_authn': { fields: { sub: { stringValue: 'user-1' } } } } },
          route_metadata_context: { filter_metadata: { 'ryvion.route': { fields: { tier: { stringValue: 'gold' } } } } },
          tls_session: { sni: 'api.ryvion.test' },
        },
      });
      let got: CheckRequest | undefined;
      expect(() => {
        got = ours.check.requestDeserialize(bytes) as CheckRequest;
      }).not.toThrow();

      expect(got).toEqual({
        attributes: {
          source: {
            address: {
              address: 'socket_address',
              socket_address: { address: '10.0.0.7', port_value: 51234, port_specifier: 'port_value' },
            },
            principal: 'spiffe://cluster.local/ns/apps/sa/client',
          },
          // envoy_internal_address is unknown to us: the Address decodes empty.
          destination: { address: {} },
          request: { http: { ...envoyStyleRequest.attributes.request.http, body: '{"model":"x"}' } },
          context_extensions: { tenant: 'acme' },
        },
      });
      expect(got?.attributes?.request?.http?.headers?.['authorization']).toBe(FAKE_BEARER);
    });

    it('an OK CheckResponse with query_parameters_to_set and other extras decodes with ours, extras skipped', () => {
      const upstreamOnly = {
        status: { code: 0 },
        ok_response: {
          headers: [header('x-ryvion-account-id', 'acct_test_0001')],
          headers_to_remove: ['authorization'],
          dynamic_metadata: { fields: { legacy: { boolValue: true } } }, // deprecated field 3
          response_headers_to_add: [header('x-ratelimit-limit-requests', '600')],
          query_parameters_to_set: [{ key: 'ryvion_account', value: 'acct_test_0001' }],
          query_parameters_to_remove: ['api_key'],
        },
        dynamic_metadata: { fields: { account_id: { stringValue: 'acct_test_0001' } } },
      };

      const bytes = envoy.check.responseSerialize(upstreamOnly);
      expect(envoy.check.responseDeserialize(bytes)).toMatchObject({
        ok_response: {
          dynamic_metadata: { fields: { legacy: { boolValue: true } } },
          query_parameters_to_set: [{ key: 'ryvion_account', value: 'acct_test_0001' }],
          query_parameters_to_remove: ['api_key'],
        },
      });
      let got: DecodedCheckResponse | undefined;
      expect(() => {
        got = ours.check.responseDeserialize(bytes) as DecodedCheckResponse;
      }).not.toThrow();

      expect(got).toEqual({
        status: { code: 0 },
        http_response: 'ok_response',
        ok_response: {
          headers: [header('x-ryvion-account-id', 'acct_test_0001')],
          headers_to_remove: ['authorization'],
          response_headers_to_add: [header('x-ratelimit-limit-requests', '600')],
        },
        dynamic_metadata: { fields: { account_id: { stringValue: 'acct_test_0001', kind: 'stringValue' } } },
      });
    });
  });
});

// ---------------------------------------------------------------------------
// The gRPC access log (envoy.service.accesslog.v3): Envoy encodes, we decode.

describe('access log wire compatibility with Envoy', () => {
  const ourStream = accessLogService()['StreamAccessLogs']!;
  const usageHeaders = { 'x-ryvion-usage-input-tokens': '120', 'x-ryvion-usage-output-tokens': '48' };

  it("our StreamAccessLogs path is Envoy's, client-streaming", () => {
    expect(ourStream.path).toBe(STREAM_ACCESS_LOGS_PATH);
    expect(upstreamStreamMethod.path).toBe(STREAM_ACCESS_LOGS_PATH);
    expect([ourStream.requestStream, ourStream.responseStream]).toEqual([true, false]);
  });

  it('a StreamAccessLogsMessage encoded by Envoy\'s protos, with every field Envoy fills, decodes with ours: identifier, ext_authz metadata, usage headers and trailers, entry type; extras skipped', () => {
    const message = envoyMessage(
      [
        envoyEntry({ reservationId: 'rsv_wire', headers: { ...usageHeaders, 'content-type': 'application/json' }, trailers: { 'grpc-status': '0' } }),
        envoyEntry({ reservationId: 'rsv_periodic', type: 'DownstreamPeriodic', intermediate: true }),
      ],
      true,
    );
    const bytes = upstreamStreamMethod.requestSerialize(message);
    // The fixture's extras are real Envoy fields: Envoy's own decoder keeps them.
    expect(upstreamStreamMethod.requestDeserialize(bytes)).toMatchObject({
      http_logs: {
        log_entry: [
          {
            common_properties: { start_time: { seconds: '1764637200' }, upstream_cluster: 'ryvion_api', downstream_remote_address: { socket_address: { port_value: 50122 } } },
            request: { path: '/v1/chat/completions', request_method: 3 /* POST */ },
            response: { response_code: { value: 200 }, response_code_details: 'via_upstream' },
          },
          {},
        ],
      },
    });
    const decoded = ourStream.requestDeserialize(bytes) as StreamAccessLogsMessage;
    expect(decoded.identifier).toEqual({ node: { id: 'envoy-0', cluster: 'ryvion-edge' }, log_name: 'ryvion_usage' });
    const [first, second] = decoded.http_logs!.log_entry!;
    expect(first!.common_properties!.metadata!.filter_metadata!['envoy.filters.http.ext_authz']!.fields['reservation_id']).toMatchObject({ stringValue: 'rsv_wire' });
    expect(first!.common_properties!.access_log_type).toBe(AccessLogType.DownstreamEnd);
    expect(first!.common_properties!.route_name).toBe('ryvion_inference');
    expect(first!.response).toEqual({ response_headers: { ...usageHeaders, 'content-type': 'application/json' }, response_trailers: { 'grpc-status': '0' } });
    expect(Object.keys(first!).sort()).toEqual(['common_properties', 'response']);
    expect(second!.common_properties).toMatchObject({ access_log_type: 5, intermediate_log_entry: true });
  });

  it('a message encoded by our protos decodes with Envoy\'s the same way', () => {
    const ours = {
      identifier: { node: { id: 'envoy-1' }, log_name: 'ryvion_usage' },
      http_logs: {
        log_entry: [
          {
            common_properties: {
              metadata: { filter_metadata: { 'envoy.filters.http.ext_authz': { fields: { reservation_id: { stringValue: 'rsv_back' } } } } },
              access_log_type: AccessLogType.DownstreamEnd,
            },
            response: { response_trailers: usageHeaders },
          },
        ],
      },
    };
    expect(upstreamStreamMethod.requestDeserialize(ourStream.requestSerialize(ours))).toMatchObject(ours);
  });

  it('a tcp_logs message (field 3, not in our subset) decodes with ours as a message without HTTP entries', () => {
    const bytes = upstreamStreamMethod.requestSerialize({ tcp_logs: { log_entry: [{ common_properties: { route_name: 'tcp' } }] } });
    expect(ourStream.requestDeserialize(bytes)).toEqual({});
  });
});
