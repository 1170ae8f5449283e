// Envoy's side of the gRPC access log, for tests: a StreamAccessLogs client whose messages are
// encoded with Envoy's own protos (shipped with @grpc/grpc-js-xds), not ours, and an in-memory
// reconciler that records what it is given.
import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS } from '../../src/transport/grpc/proto.js';
import type { UsageReport, UsageSink } from '../../src/transport/grpc/access-log.js';

const XDS_DEPS = path.join(path.dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps');

/** Envoy's own definitions (envoy-api and what it imports). */
export function loadUpstreamProto(file: string): protoLoader.PackageDefinition {
  return protoLoader.loadSync(file, {
    ...LOADER_OPTIONS,
    includeDirs: ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(XDS_DEPS, d)),
  });
}

export const STREAM_ACCESS_LOGS_PATH = '/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs';

const upstream = loadUpstreamProto(path.join('envoy', 'service', 'accesslog', 'v3', 'als.proto'));
const upstreamService = upstream['envoy.service.accesslog.v3.AccessLogService'] as grpc.ServiceDefinition;
const UpstreamClient = grpc.makeGenericClientConstructor(upstreamService, 'AccessLogService');

/** The upstream StreamAccessLogs method: its serializers are Envoy's encoding. */
export const upstreamStreamMethod = upstreamService['StreamAccessLogs'] as grpc.MethodDefinition<object, object>;

export interface StreamResult {
  error: grpc.ServiceError | null;
}

/**
 * Opens a stream with `metadata`, writes each message (objects in Envoy's proto shape, or raw bytes
 * when `raw`), half-closes it and resolves with how the server ended it.
 */
export function sendAccessLogs(port: number, metadata: Record<string, string>, messages: ReadonlyArray<object | Buffer>, raw = false): Promise<StreamResult> {
  const client = new UpstreamClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  return new Promise<StreamResult>((resolve) => {
    const done = (error: grpc.ServiceError | null): void => {
      client.close();
      resolve({ error });
    };
    const serialize = raw ? (b: Buffer): Buffer => b : (m: object): Buffer => upstreamStreamMethod.requestSerialize(m);
    const call = client.makeClientStreamRequest<object | Buffer, object>(
      STREAM_ACCESS_LOGS_PATH,
      serialize as (m: object | Buffer) => Buffer,
      (b: Buffer) => upstreamStreamMethod.responseDeserialize(b),
      md,
      { deadline: new Date(Date.now() + 20_000) },
      (err) => done(err),
    );
    call.on('error', () => undefined);
    for (const m of messages) call.write(m);
    call.end();
  });
}

/** In-memory twin of the reconciler: records each batch; `failing` makes it reject. */
export class RecordingUsageSink implements UsageSink {
  readonly batches: Array<{ items: UsageReport[]; source: string }> = [];
  failing = false;

  report(items: readonly UsageReport[], source: 'access_log'): Promise<unknown> {
    if (this.failing) return Promise.reject(new Error('reconciler unavailable'));
    this.batches.push({ items: [...items], source });
    return Promise.resolve();
  }

  get reports(): UsageReport[] {
    return this.batches.flatMap((b) => b.items);
  }
}

type Map = Record<string, string>;

/**
 * An HTTPAccessLogEntry as Envoy's http_grpc logger fills it for a request to an inference route,
 * with the extra fields Envoy sends that our subset leaves out.
 */
export function envoyEntry(opts: { reservationId?: string | number; headers?: Map; trailers?: Map; type?: string; intermediate?: boolean }): object {
  const extAuthz: Record<string, object> = {
    account_id: { stringValue: 'acct_01' },
    key_id: { stringValue: 'key_01' },
  };
  if (typeof opts.reservationId === 'string') extAuthz['reservation_id'] = { stringValue: opts.reservationId };
  if (typeof opts.reservationId === 'number') extAuthz['reservation_id'] = { numberValue: opts.reservationId };
  return {
    common_properties: {
      sample_rate: 1,
      downstream_remote_address: { socket_address: { address: '203.0.113.9', port_value: 50122 } },
      start_time: { seconds: '1764637200', nanos: 120000000 },
      time_to_last_downstream_tx_byte: { seconds: '3', nanos: 0 },
      upstream_cluster: 'ryvion_api',
      route_name: 'ryvion_inference',
      metadata: {
        filter_metadata: {
          'envoy.filters.http.ext_authz': { fields: extAuthz },
          'envoy.filters.http.rbac': { fields: { shadow_engine_result: { stringValue: 'allowed' } } },
        },
      },
      stream_id: 'c0ffee00-0000-4000-8000-000000000001',
      ...(opts.intermediate ? { intermediate_log_entry: true } : {}),
      access_log_type: opts.type ?? 'DownstreamEnd',
    },
    protocol_version: 'HTTP11',
    request: {
      request_method: 'POST',
      scheme: 'https',
      authority: 'api.ryvion.test',
      path: '/v1/chat/completions',
      request_headers_bytes: '420',
      request_body_bytes: '180',
    },
    response: {
      response_code: { value: 200 },
      response_headers_bytes: '210',
      response_body_bytes: '5120',
      response_headers: opts.headers ?? {},
      response_trailers: opts.trailers ?? {},
      response_code_details: 'via_upstream',
    },
  };
}

/** A StreamAccessLogsMessage; the first of a stream carries the identifier, as Envoy sends it. */
export function envoyMessage(entries: object[], first = false): object {
  return {
    ...(first ? { identifier: { node: { id: 'envoy-0', cluster: 'ryvion-edge', user_agent_name: 'envoy' }, log_name: 'ryvion_usage' } } : {}),
    http_logs: { log_entry: entries },
  };
}
