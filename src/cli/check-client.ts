// A one-shot Check client: how a new user tries the gate without Envoy.
import * as grpc from '@grpc/grpc-js';
import { authorizationService, type CheckRequest, type CheckResponse, type HeaderValueOption } from '../transport/grpc/proto.js';

export interface CheckCall {
  target: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  timeoutMs: number;
}

export interface CheckOutcome {
  allowed: boolean;
  grpc_code: number;
  http_status: number;
  headers: Record<string, string>;
  headers_to_remove: string[];
  response_headers: Record<string, string>;
  dynamic_metadata: Record<string, unknown>;
  body?: unknown;
}

/** Builds a CheckRequest the way Envoy does: lower-case names, pseudo-headers, query inside `path`. */
export function envoyLikeRequest(method: string, path: string, headers: Record<string, string>, authority = 'localhost'): CheckRequest {
  const lower: Record<string, string> = { ':authority': authority, ':method': method, ':path': path, ':scheme': 'http' };
  for (const [k, v] of Object.entries(headers)) lower[k.toLowerCase()] = v;
  return {
    attributes: {
      source: { address: { socket_address: { address: '127.0.0.1', port_value: 50000 } } },
      request: { http: { id: '1', method, path, host: authority, scheme: 'http', protocol: 'HTTP/1.1', headers: lower } },
    },
  };
}

const Client = grpc.makeGenericClientConstructor(authorizationService(), 'Authorization');

export function sendCheck(call: CheckCall): Promise<CheckOutcome> {
  const client = new Client(call.target, grpc.credentials.createInsecure());
  const request = envoyLikeRequest(call.method, call.path, call.headers);
  return new Promise<CheckOutcome>((resolve, reject) => {
    const deadline = new Date(Date.now() + call.timeoutMs);
    (client as unknown as { Check: (r: CheckRequest, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: CheckResponse) => void) => void }).Check(
      request,
      { deadline },
      (err, res) => {
        client.close();
        if (err || !res) reject(err ?? new Error('empty response'));
        else resolve(summarise(res));
      },
    );
  });
}

function headerRecord(list: readonly HeaderValueOption[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const h of list ?? []) out[h.header.key] = h.header.value ?? '';
  return out;
}

export function summarise(res: CheckResponse): CheckOutcome {
  const metadata: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(res.dynamic_metadata?.fields ?? {})) metadata[k] = v.stringValue ?? v.numberValue ?? v.boolValue ?? null;
  // proto3 leaves zero values off the wire, so an OK status may decode as absent.
  const code = res.status?.code ?? 0;
  if (res.ok_response || code === 0) {
    return {
      allowed: true,
      grpc_code: code,
      http_status: 200,
      headers: headerRecord(res.ok_response?.headers),
      headers_to_remove: res.ok_response?.headers_to_remove ?? [],
      response_headers: headerRecord(res.ok_response?.response_headers_to_add),
      dynamic_metadata: metadata,
    };
  }
  const denied = res.denied_response;
  let body: unknown = denied?.body;
  try {
    body = JSON.parse(denied?.body ?? '');
  } catch {
    // Not JSON: show it as it came.
  }
  return {
    allowed: false,
    grpc_code: code,
    http_status: denied?.status?.code ?? 403,
    headers: headerRecord(denied?.headers),
    headers_to_remove: [],
    response_headers: {},
    dynamic_metadata: metadata,
    body,
  };
}
