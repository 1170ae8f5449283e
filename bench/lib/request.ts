// Envoy-shaped CheckRequests, their gRPC frames, and just enough protobuf reading to classify answers.
import { loadAuthorizationDefinition, type CheckRequest, type CheckResponse } from '../../src/transport/grpc/proto.js';

interface MethodDef {
  requestSerialize(value: CheckRequest): Buffer;
  responseDeserialize(bytes: Buffer): CheckResponse;
}

let method: MethodDef | undefined;
function checkMethod(): MethodDef {
  if (!method) {
    const svc = loadAuthorizationDefinition()['envoy.service.auth.v3.Authorization'] as unknown as { Check: MethodDef };
    method = svc.Check;
  }
  return method;
}

export interface BenchRequestInit {
  key: string;
  /** Client address as Envoy reports it (per-source limits key on it). */
  source?: string;
  requestId?: string;
  method?: string;
  path?: string;
  /** The request body, as Envoy's `with_request_body` + `pack_as_bytes` sends it (`raw_body`). */
  body?: Buffer;
}

/**
 * A chat-completions body as an OpenAI SDK sends it: a system prompt, a short conversation and a
 * question, `max_tokens` and `temperature`: 1 391 bytes, 306 prompt tokens by the gate's
 * characters/4 estimate.
 */
export function chatCompletionBody(model: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      model,
      messages: [
        {
          role: 'system',
          content:
            'You are a support assistant for a hosted inference platform. Answer briefly and precisely, cite the relevant documentation page when you can, ' +
            'and never invent configuration options that do not exist. If a question is about billing, tell the user where to find their invoices ' +
            'and usage, and do not quote prices from memory. Format code and shell commands as fenced code blocks.',
        },
        { role: 'user', content: 'My requests to /v1/chat/completions started failing with 429 this morning. I have not changed anything in my client.' },
        {
          role: 'assistant',
          content:
            'A 429 means a limit was reached. The error body says which one: rate_limit_exceeded is a per-minute limit on requests or tokens and clears ' +
            'by itself (the retry-after-ms header says when), insufficient_quota means the spend budget of your key or account is used up for the period. ' +
            'Which code do you see in the error?',
        },
        {
          role: 'user',
          content:
            'It says rate_limit_exceeded and the x-ratelimit-remaining-tokens header is 0. We send about forty requests a minute with long prompts, ' +
            'mostly summaries of support tickets of a few thousand words each. How do I find out what my tokens-per-minute limit is, and can I ask for ' +
            'a higher one for this key only, without changing the other keys of the account?',
        },
      ],
      max_tokens: 512,
      temperature: 0.2,
      stream: false,
      user: 'user-2c3d4b5a',
    }),
  );
}

/** What Envoy sends for `POST /v1/chat/completions` from an OpenAI SDK, with the key as a Bearer token. */
export function checkRequest(init: BenchRequestInit): CheckRequest {
  const m = init.method ?? 'POST';
  const p = init.path ?? '/v1/chat/completions';
  return {
    attributes: {
      source: { address: { socket_address: { address: init.source ?? '203.0.113.7', port_value: 52344 } } },
      destination: { address: { socket_address: { address: '10.0.0.12', port_value: 8000 } } },
      request: {
        http: {
          id: '13526931385948290512',
          method: m,
          path: p,
          host: 'api.ryvion.ai',
          scheme: 'https',
          protocol: 'HTTP/2',
          headers: {
            ':authority': 'api.ryvion.ai',
            ':path': p,
            ':method': m,
            ':scheme': 'https',
            'user-agent': 'OpenAI/Python 1.54.0',
            'content-type': 'application/json',
            'x-forwarded-proto': 'https',
            'x-request-id': init.requestId ?? '5f1b6c1e-8f0a-4d7e-9a5e-2c3d4b5a6f70',
            authorization: `Bearer ${init.key}`,
            ...(init.body ? { 'content-length': String(init.body.length) } : {}),
          },
          ...(init.body ? { raw_body: init.body } : {}),
        },
      },
    },
  };
}

export function encodeCheckRequest(req: CheckRequest): Buffer {
  return checkMethod().requestSerialize(req);
}

export function decodeCheckResponse(bytes: Buffer): CheckResponse {
  return checkMethod().responseDeserialize(bytes);
}

/** A gRPC length-prefixed message: flag byte 0 (uncompressed), 4-byte big-endian length, the message. */
export function grpcFrame(message: Buffer): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  return frame;
}

function varint(buf: Buffer, pos: number): [number, number] {
  let v = 0;
  let mul = 1;
  for (;;) {
    const b = buf[pos++]!;
    v += (b & 0x7f) * mul;
    if (b < 0x80) return [v, pos];
    mul *= 128;
  }
}

/**
 * CheckResponse.status.code without decoding the whole message (the load workers
 * classify every answer): field 1 (google.rpc.Status), its field 1 (int32 code).
 * 0 when absent, as proto3 leaves a default out.
 */
export function responseCode(msg: Buffer): number {
  let pos = 0;
  while (pos < msg.length) {
    let tag: number;
    [tag, pos] = varint(msg, pos);
    const field = tag >>> 3;
    const wire = tag & 7;
    if (wire === 0) {
      [, pos] = varint(msg, pos);
    } else if (wire === 2) {
      let len: number;
      [len, pos] = varint(msg, pos);
      if (field === 1) {
        const end = pos + len;
        while (pos < end) {
          let t: number;
          [t, pos] = varint(msg, pos);
          if (t >>> 3 === 1 && (t & 7) === 0) return varint(msg, pos)[0];
          if ((t & 7) === 0) [, pos] = varint(msg, pos);
          else if ((t & 7) === 2) {
            let l: number;
            [l, pos] = varint(msg, pos);
            pos += l;
          } else return -1;
        }
        return 0;
      }
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else return -1;
  }
  return 0;
}
