// One gRPC call with the exact bytes h2load will send, read in full: HTTP status, grpc-status
// trailer and the decoded CheckResponse. h2load itself only sees the HTTP status.
import http2 from 'node:http2';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { decodeCheckResponse } from './request.js';

export interface OneCall {
  httpStatus: number;
  grpcStatus: number;
  grpcMessage?: string;
  response?: CheckResponse;
}

export function callOnce(port: number, frame: Buffer, timeoutMs = 5000): Promise<OneCall> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const fail = (err: Error): void => {
      session.destroy();
      reject(err);
    };
    session.once('error', fail);
    const req = session.request({
      ':method': 'POST',
      ':path': '/envoy.service.auth.v3.Authorization/Check',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    req.setTimeout(timeoutMs, () => fail(new Error('verification call timed out')));
    let httpStatus = 0;
    let grpcStatus: number | undefined;
    let grpcMessage: string | undefined;
    const chunks: Buffer[] = [];
    req.on('response', (headers) => {
      httpStatus = Number(headers[':status']);
      // A trailers-only answer (an RPC error) carries grpc-status in the headers.
      if (headers['grpc-status'] !== undefined) grpcStatus = Number(headers['grpc-status']);
      if (headers['grpc-message'] !== undefined) grpcMessage = decodeURIComponent(String(headers['grpc-message']));
    });
    req.on('trailers', (trailers) => {
      if (trailers['grpc-status'] !== undefined) grpcStatus = Number(trailers['grpc-status']);
      if (trailers['grpc-message'] !== undefined) grpcMessage = decodeURIComponent(String(trailers['grpc-message']));
    });
    req.on('data', (d: Buffer) => chunks.push(d));
    req.once('error', fail);
    req.on('end', () => {
      session.close();
      const body = Buffer.concat(chunks);
      const out: OneCall = { httpStatus, grpcStatus: grpcStatus ?? -1 };
      if (grpcMessage !== undefined) out.grpcMessage = grpcMessage;
      if (body.length >= 5) out.response = decodeCheckResponse(body.subarray(5, 5 + body.readUInt32BE(1)));
      resolve(out);
    });
    req.end(frame);
  });
}

/** The decision a CheckResponse carries, in the bench's terms. */
export function describe(r: CheckResponse | undefined): { code: number; httpStatus: number; errorCode?: string } {
  if (!r) return { code: -1, httpStatus: 0 };
  const code = r.status?.code ?? 0;
  if (code === 0) return { code, httpStatus: 200 };
  const httpStatus = r.denied_response?.status?.code ?? 0;
  let errorCode: string | undefined;
  try {
    errorCode = (JSON.parse(r.denied_response?.body ?? '{}') as { error?: { code?: string } }).error?.code;
  } catch {
    errorCode = undefined;
  }
  return errorCode === undefined ? { code, httpStatus } : { code, httpStatus, errorCode };
}
