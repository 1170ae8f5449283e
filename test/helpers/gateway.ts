// A stand-in for Envoy in tests: an HTTP server that asks the Check service about each
// request, then either answers with the denial or passes the request to a fake upstream.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { CheckClient } from './service.js';
import { headersOf } from './service.js';
import type { CheckRequest } from '../../src/transport/grpc/proto.js';

export interface UpstreamSeen {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
}

export class TestGateway {
  readonly seen: UpstreamSeen[] = [];
  /** Every request the gateway received, allowed or denied (what a client's retries add up to). */
  calls = 0;
  private server: http.Server | undefined;
  port = 0;

  constructor(private readonly client: CheckClient) {}

  async start(): Promise<string> {
    this.server = http.createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.calls++;
    // The body goes to the check as Envoy's with_request_body + pack_as_bytes sends it (raw_body).
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const headers: Record<string, string> = { ':method': req.method ?? 'GET', ':path': req.url ?? '/', ':authority': req.headers.host ?? '' };
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i]!.toLowerCase();
      const value = req.rawHeaders[i + 1]!;
      headers[name] = name in headers ? `${headers[name]},${value}` : value;
    }
    const check: CheckRequest = {
      attributes: {
        source: { address: { socket_address: { address: '127.0.0.1', port_value: 40000 } } },
        request: { http: { method: req.method ?? 'GET', path: req.url ?? '/', host: req.headers.host ?? '', headers, ...(body.length > 0 ? { raw_body: body } : {}) } },
      },
    };
    const decision = await this.client.check(check);
    if (decision.denied_response) {
      const d = decision.denied_response;
      res.writeHead(d.status.code, headersOf(d.headers)).end(d.body);
      return;
    }
    const ok = decision.ok_response!;
    const upstreamHeaders: http.IncomingHttpHeaders = { ...req.headers };
    for (const name of ok.headers_to_remove) delete upstreamHeaders[name];
    Object.assign(upstreamHeaders, headersOf(ok.headers));
    this.seen.push({ method: req.method ?? 'GET', path: req.url ?? '/', headers: upstreamHeaders });
    res.writeHead(200, { 'content-type': 'application/json', ...headersOf(ok.response_headers_to_add) }).end(
      JSON.stringify({
        id: 'chatcmpl-test',
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: 'ryvion-test',
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
      }),
    );
  }
}
