// Starts the real service in-process on free ports, and talks to it over real gRPC.
import * as grpc from '@grpc/grpc-js';
import { loadConfig, type Config } from '../../src/config.js';
import { createLogger, type Logger } from '../../src/observability/logger.js';
import { startService } from '../../src/service.js';
import { authorizationService, type CheckRequest, type CheckResponse } from '../../src/transport/grpc/proto.js';
import type { Clock } from '../../src/time/clock.js';
import type { RunningService } from '../../src/service.js';
import type { UsageSink } from '../../src/transport/grpc/access-log.js';

export function testConfig(env: Record<string, string>): Config {
  // Rate limits are off unless a test turns them on: the default plan would throttle tests about other things.
  // No readiness delay on stop: nothing routes by these services' health.
  const config = loadConfig(
    { LOG_LEVEL: 'silent', BIND_ADDRESS: '127.0.0.1', RATE_LIMIT_ENABLED: 'false', SHUTDOWN_READINESS_DELAY_MS: '0', ...env },
    ['DATABASE_URL', 'KEY_PEPPER'],
  );
  return { ...config, GRPC_PORT: 0, HTTP_PORT: 0, OPS_PORT: 0, ...(config.USAGE_PORT !== undefined ? { USAGE_PORT: 0 } : {}) };
}

export async function startTestService(
  env: Record<string, string>,
  opts: { clock?: Clock; logger?: Logger; defaultMetrics?: boolean; postgresProbeIntervalMs?: number; liveReplicasIntervalMs?: number; usageSink?: UsageSink } = {},
): Promise<RunningService> {
  return startService(testConfig(env), opts.logger ?? createLogger(env.LOG_LEVEL ?? 'silent'), {
    defaultMetrics: opts.defaultMetrics ?? false,
    clock: opts.clock,
    postgresProbeIntervalMs: opts.postgresProbeIntervalMs,
    liveReplicasIntervalMs: opts.liveReplicasIntervalMs,
    usageSink: opts.usageSink,
  });
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

/** Current value of a counter or gauge series of a running service. */
export async function metricValue(service: RunningService, name: string, labels: Record<string, string> = {}): Promise<number> {
  // Histogram series (_count, _sum, _bucket) live under the histogram's own name.
  const base = name.replace(/_(count|sum|bucket)$/, '');
  const metric = service.metrics.registry.getSingleMetric(name) ?? service.metrics.registry.getSingleMetric(base);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  return values
    .filter((v) => (v as { metricName?: string }).metricName === undefined || (v as { metricName?: string }).metricName === name)
    .filter((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}

/** Revokes a key as the operator would (the CLI's actor), through the service's key-management path. */
export function revokeKey(service: RunningService, keyId: string): ReturnType<RunningService['keys']['revoke']> {
  return service.keys.revoke(keyId, undefined, { keyId: null, via: 'cli' });
}
