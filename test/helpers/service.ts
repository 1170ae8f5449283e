// Starts the real service in-process on free ports, and talks to it over real gRPC.
import * as grpc from '@grpc/grpc-js';
import { loadConfig, type Config } from '../../src/config.js';
import { createLogger } from '../../src/observability/logger.js';
import { startService, type RunningService } from '../../src/service.js';
import { authorizationService, type CheckRequest, type CheckResponse } from '../../src/transport/grpc/proto.js';
import type { Clock } from '../../src/check/pipeline.js';

export function testConfig(env: Record<string, string>): Config {
  const config = loadConfig({ LOG_LEVEL: 'silent', BIND_ADDRESS: '127.0.0.1', ...env }, ['DATABASE_URL', 'KEY_PEPPER']);
  return { ...config, GRPC_PORT: 0, HTTP_PORT: 0, OPS_PORT: 0 };
}

export async function startTestService(env: Record<string, string>, opts: { clock?: Clock } = {}): Promise<RunningService> {
  return startService(testConfig(env), createLogger(env.LOG_LEVEL ?? 'silent'), { defaultMetrics: false, clock: opts.clock });
}

const Client = grpc.makeGenericClientConstructor(authorizationService(), 'Authorization');
type CheckFn = (r: CheckRequest, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: CheckResponse) => void) => void;

export class CheckClient {
  private readonly client: grpc.Client;
  constructor(port: number) {
    this.client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  }
  check(request: CheckRequest, timeoutMs = 5000): Promise<CheckResponse> {
    return new Promise((resolve, reject) => {
      (this.client as unknown as { Check: CheckFn }).Check(request, { deadline: new Date(Date.now() + timeoutMs) }, (err, res) =>
        err || !res ? reject(err ?? new Error('empty response')) : resolve(res),
      );
    });
  }
  close(): void {
    this.client.close();
  }
}

/** Header list of a CheckResponse section as a lower-case record. */
export function headersOf(list: CheckResponse['ok_response'] extends infer O ? (O extends { headers: infer H } ? H : never) : never): Record<string, string> {
  const out: Record<string, string> = {};
  for (const h of list) out[h.header.key.toLowerCase()] = h.header.value ?? '';
  return out;
}
