// Loads the ext_authz wire definitions in proto/ and names the message shapes we use.
import path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import * as grpc from '@grpc/grpc-js';
import { packagePath } from '../../paths.js';

export const PROTO_DIR = packagePath('proto');

// keepCase: field names stay as written in the .proto files (snake_case), so
// the objects below read like Envoy's documentation.
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: Number,
  defaults: false,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

export function loadAuthorizationDefinition(): protoLoader.PackageDefinition {
  return protoLoader.loadSync(path.join('envoy', 'service', 'auth', 'v3', 'external_auth.proto'), LOADER_OPTIONS);
}

export function authorizationService(def: protoLoader.PackageDefinition = loadAuthorizationDefinition()): grpc.ServiceDefinition {
  const svc = def['envoy.service.auth.v3.Authorization'];
  if (!svc || !('Check' in svc)) throw new Error('envoy.service.auth.v3.Authorization missing from proto/');
  return svc as grpc.ServiceDefinition;
}

export const AUTHORIZATION_CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';

export interface HeaderValue {
  key: string;
  value?: string;
  raw_value?: Buffer | Uint8Array;
}

/** envoy.config.core.v3.HeaderValueOption.HeaderAppendAction */
export const HeaderAppendAction = {
  APPEND_IF_EXISTS_OR_ADD: 0,
  ADD_IF_ABSENT: 1,
  OVERWRITE_IF_EXISTS_OR_ADD: 2,
  OVERWRITE_IF_EXISTS: 3,
} as const;

export interface HeaderValueOption {
  header: HeaderValue;
  append?: { value: boolean };
  append_action?: number;
}

export interface SocketAddress {
  address?: string;
  port_value?: number;
}

export interface CheckRequest {
  attributes?: {
    source?: { address?: { socket_address?: SocketAddress } };
    destination?: { address?: { socket_address?: SocketAddress } };
    request?: {
      http?: {
        id?: string;
        method?: string;
        headers?: Record<string, string>;
        header_map?: { headers?: HeaderValue[] };
        path?: string;
        host?: string;
        scheme?: string;
        protocol?: string;
        /** with_request_body: the body as UTF-8 text, or (pack_as_bytes) as bytes. */
        body?: string;
        raw_body?: Buffer | Uint8Array;
      };
    };
    context_extensions?: Record<string, string>;
  };
}

/**
 * google.protobuf.Struct as proto-loader represents it. The well-known types
 * come from protobufjs's own copies, which keep camelCase field names whatever
 * `keepCase` says: snake_case keys here would be dropped silently.
 */
export interface StructValue {
  nullValue?: number;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: ProtoStruct;
  listValue?: { values: StructValue[] };
}
export interface ProtoStruct {
  fields: Record<string, StructValue>;
}

export interface CheckResponse {
  status: { code: number; message?: string };
  denied_response?: {
    status: { code: number };
    headers: HeaderValueOption[];
    body: string;
  };
  ok_response?: {
    headers: HeaderValueOption[];
    headers_to_remove: string[];
    response_headers_to_add: HeaderValueOption[];
  };
  dynamic_metadata?: ProtoStruct;
}

export function loadAccessLogDefinition(): protoLoader.PackageDefinition {
  return protoLoader.loadSync(path.join('envoy', 'service', 'accesslog', 'v3', 'als.proto'), LOADER_OPTIONS);
}

export const ACCESS_LOG_SERVICE_NAME = 'envoy.service.accesslog.v3.AccessLogService';

export function accessLogService(def: protoLoader.PackageDefinition = loadAccessLogDefinition()): grpc.ServiceDefinition {
  const svc = def[ACCESS_LOG_SERVICE_NAME];
  if (!svc || !('StreamAccessLogs' in svc)) throw new Error(`${ACCESS_LOG_SERVICE_NAME} missing from proto/`);
  return svc as grpc.ServiceDefinition;
}

/** envoy.data.accesslog.v3.AccessLogType (enums: Number). */
export const AccessLogType = { NotSet: 0, DownstreamEnd: 6 } as const;

/** envoy.data.accesslog.v3.HTTPAccessLogEntry, the fields the gate reads; decoded, so anything may be absent. */
export interface HttpAccessLogEntry {
  common_properties?: {
    metadata?: { filter_metadata?: Record<string, ProtoStruct> };
    route_name?: string;
    intermediate_log_entry?: boolean;
    access_log_type?: number;
  };
  response?: {
    response_headers?: Record<string, string>;
    response_trailers?: Record<string, string>;
  };
}

/** envoy.service.accesslog.v3.StreamAccessLogsMessage */
export interface StreamAccessLogsMessage {
  identifier?: { node?: { id?: string; cluster?: string }; log_name?: string };
  http_logs?: { log_entry?: HttpAccessLogEntry[] };
}
