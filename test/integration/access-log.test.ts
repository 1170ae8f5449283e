// Envoy's gRPC access log into the gate (issue 19, 3a): a real grpc-js client stream, whose messages
// are encoded with Envoy's own protos, against the real gRPC server. No Envoy binary exists here, so
// Envoy itself is not in this test: the client plays its http_grpc access logger.
import { afterEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import type { CheckPipeline } from '../../src/check/pipeline.js';
import { DecisionRecorder } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { AccessLogReceiver, type UsageSink } from '../../src/transport/grpc/access-log.js';
import { GrpcCheckServer } from '../../src/transport/grpc/server.js';
import { RecordingUsageSink, envoyEntry, envoyMessage, sendAccessLogs } from '../helpers/access-log.js';
import type { RunningService } from '../../src/service.js';
import { CheckClient, metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';

const SECRET = 'test-only-7f3a9c1e5b2d4f6a8c0e2b4d6f8a1c3e';
const AUTH = { 'x-ryvion-access-log-secret': SECRET };
const USAGE = { in: 'x-ryvion-usage-input-tokens', out: 'x-ryvion-usage-output-tokens' };

/** Every log line of the servers these tests start, at debug level. */
const logLines: string[] = [];
const captured = (): ReturnType<typeof createLogger> => createLogger('debug', { write: (line: string) => void logLines.push(line) });

let server: GrpcCheckServer | undefined;
let receiver: AccessLogReceiver | undefined;

afterEach(async () => {
  await server?.shutdown(2000);
  server = undefined;
  receiver = undefined;
  logLines.splice(0);
});

async function start(sink: UsageSink | undefined, metrics = new Metrics({ defaultMetrics: false }), withReceiver = true, previousSecret?: string): Promise<number> {
  receiver = withReceiver ? new AccessLogReceiver({ secret: SECRET, previousSecret, sink, metrics, logger: captured() }) : undefined;
  const decide = async () => ({ allow: false as const, reason: 'missing_api_key' as const });
  server = new GrpcCheckServer({ decide } as unknown as CheckPipeline, new DecisionRecorder(createLogger('silent'), metrics), {
    stripCredentialHeaders: true,
    unavailableMode: 'deny',
    accessLog: receiver,
  });
  server.setServing(true);
  return server.listen('127.0.0.1', 0);
}

async function counter(metrics: Metrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = metrics.registry.getSingleMetric(name);
  if (!m) throw new Error(`no metric ${name}`);
  const { values } = await m.get();
  return values.filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((a, v) => a + v.value, 0);
}

describe('StreamAccessLogs: usage from Envoy access-log entries', () => {
  it('reports the usage in response headers, with the reservation id from ext_authz metadata, as one batch per message', async () => {
    const sink = new RecordingUsageSink();
    const metrics = new Metrics({ defaultMetrics: false });
    const port = await start(sink, metrics);
    const result = await sendAccessLogs(port, AUTH, [
      envoyMessage(
        [
          envoyEntry({ reservationId: 'rsv_one', headers: { [USAGE.in]: '120', [USAGE.out]: '48', 'content-type': 'application/json' } }),
          envoyEntry({ reservationId: 'rsv_two', headers: { [USAGE.in]: '7', [USAGE.out]: '0' } }),
        ],
        true,
      ),
    ]);
    expect(result.error).toBeNull();
    expect(sink.batches).toEqual([
      {
        source: 'access_log',
        items: [
          { reservationId: 'rsv_one', inputTokens: 120, outputTokens: 48 },
          { reservationId: 'rsv_two', inputTokens: 7, outputTokens: 0 },
        ],
      },
    ]);
    expect(await counter(metrics, 'ryvion_authz_access_log_entries_received_total')).toBe(2);
    expect(await counter(metrics, 'ryvion_authz_access_log_entries_used_total')).toBe(2);
    expect(await counter(metrics, 'ryvion_authz_access_log_streams_total', { result: 'accepted' })).toBe(1);
  });

  it('reports the usage of a streamed response from its trailers, and prefers a header when both carry it', async () => {
    const sink = new RecordingUsageSink();
    const port = await start(sink);
    const result = await sendAccessLogs(port, AUTH, [
      envoyMessage([envoyEntry({ reservationId: 'rsv_stream', headers: { 'content-type': 'text/event-stream' }, trailers: { [USAGE.in]: '900', [USAGE.out]: '2100' } })], true),
      envoyMessage([envoyEntry({ reservationId: 'rsv_both', headers: { [USAGE.in]: '5', [USAGE.out]: '6' }, trailers: { [USAGE.in]: '50', [USAGE.out]: '60' } })]),
    ]);
    expect(result.error).toBeNull();
    expect(sink.reports).toEqual([
      { reservationId: 'rsv_stream', inputTokens: 900, outputTokens: 2100 },
      { reservationId: 'rsv_both', inputTokens: 5, outputTokens: 6 },
    ]);
    expect(sink.batches).toHaveLength(2);
  });

  it('ignores, and counts by reason, entries without a reservation, not final, without usage or with malformed numbers', async () => {
    const sink = new RecordingUsageSink();
    const metrics = new Metrics({ defaultMetrics: false });
    const port = await start(sink, metrics);
    const result = await sendAccessLogs(port, AUTH, [
      envoyMessage(
        [
          // A non-inference route: ext_authz metadata without reservation_id.
          envoyEntry({ headers: { [USAGE.in]: '10', [USAGE.out]: '10' } }),
          envoyEntry({ reservationId: 42, headers: { [USAGE.in]: '10', [USAGE.out]: '10' } }),
          envoyEntry({ reservationId: 'rsv_periodic', type: 'DownstreamPeriodic', headers: { [USAGE.in]: '1', [USAGE.out]: '1' } }),
          envoyEntry({ reservationId: 'rsv_old_envoy', type: 'NotSet', intermediate: true, headers: { [USAGE.in]: '1', [USAGE.out]: '1' } }),
          envoyEntry({ reservationId: 'rsv_upstream_error', headers: { 'content-type': 'application/json' } }),
          envoyEntry({ reservationId: 'rsv_negative', headers: { [USAGE.in]: '-5', [USAGE.out]: '10' } }),
          envoyEntry({ reservationId: 'rsv_fraction', trailers: { [USAGE.in]: '1.5', [USAGE.out]: '10' } }),
          envoyEntry({ reservationId: 'rsv_half', headers: { [USAGE.in]: '10' } }),
          envoyEntry({ reservationId: 'rsv_huge', headers: { [USAGE.in]: '1'.repeat(40), [USAGE.out]: '1' } }),
          envoyEntry({ reservationId: 'rsv_ok', type: 'NotSet', headers: { [USAGE.in]: ' 3 ', [USAGE.out]: '4' } }),
        ],
        true,
      ),
    ]);
    expect(result.error).toBeNull();
    expect(sink.reports).toEqual([{ reservationId: 'rsv_ok', inputTokens: 3, outputTokens: 4 }]);
    const ignored = async (reason: string): Promise<number> => counter(metrics, 'ryvion_authz_access_log_entries_ignored_total', { reason });
    expect(await ignored('no_reservation')).toBe(1);
    expect(await ignored('malformed_reservation')).toBe(1);
    expect(await ignored('not_final')).toBe(2);
    expect(await ignored('no_usage')).toBe(1);
    expect(await ignored('malformed_usage')).toBe(4);
    expect(await counter(metrics, 'ryvion_authz_access_log_entries_received_total')).toBe(10);
    expect(await counter(metrics, 'ryvion_authz_access_log_entries_used_total')).toBe(1);
  });

  it('keeps the stream when the reconciler fails a batch, counting those entries as sink_error', async () => {
    const sink = new RecordingUsageSink();
    const metrics = new Metrics({ defaultMetrics: false });
    const port = await start(sink, metrics);
    sink.failing = true;
    const failed = await sendAccessLogs(port, AUTH, [envoyMessage([envoyEntry({ reservationId: 'rsv_lost', headers: { [USAGE.in]: '1', [USAGE.out]: '2' } })], true)]);
    expect(failed.error).toBeNull();
    expect(await counter(metrics, 'ryvion_authz_access_log_entries_ignored_total', { reason: 'sink_error' })).toBe(1);
    sink.failing = false;
    await sendAccessLogs(port, AUTH, [envoyMessage([envoyEntry({ reservationId: 'rsv_next', headers: { [USAGE.in]: '1', [USAGE.out]: '2' } })], true)]);
    expect(sink.reports.map((r) => r.reservationId)).toEqual(['rsv_next']);
  });
});

describe('StreamAccessLogs: authentication', () => {
  const entry = envoyMessage([envoyEntry({ reservationId: 'rsv_forged', headers: { [USAGE.in]: '1', [USAGE.out]: '1' } })], true);

  for (const [label, metadata] of [
    ['no secret', {}],
    ['a wrong secret', { 'x-ryvion-access-log-secret': 'b'.repeat(SECRET.length) }],
    ['a prefix of the secret', { 'x-ryvion-access-log-secret': SECRET.slice(0, -1) }],
    ['the secret in another header', { authorization: `Bearer ${SECRET}` }],
  ] as const) {
    it(`refuses a stream with ${label} (UNAUTHENTICATED) and reports nothing`, async () => {
      const sink = new RecordingUsageSink();
      const metrics = new Metrics({ defaultMetrics: false });
      const port = await start(sink, metrics);
      const { error } = await sendAccessLogs(port, metadata, [entry]);
      expect(error?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(error?.details).not.toContain(SECRET);
      expect(sink.batches).toEqual([]);
      expect(await counter(metrics, 'ryvion_authz_access_log_streams_total', { result: 'unauthenticated' })).toBe(1);
      expect(await counter(metrics, 'ryvion_authz_access_log_entries_received_total')).toBe(0);
      expect(logLines.join('')).toContain('access log stream refused');
      expect(logLines.join('')).not.toContain('7f3a9c1e5b2d4f6a');
    });
  }

  it('refuses an authenticated stream with FAILED_PRECONDITION when no reconciler is configured', async () => {
    const port = await start(undefined);
    const { error } = await sendAccessLogs(port, AUTH, [entry]);
    expect(error?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error?.details).toMatch(/usage reconciliation is not configured/);
  });

  it('answers UNIMPLEMENTED when the access log is not configured (no ACCESS_LOG_SECRET), and Check still works', async () => {
    const port = await start(new RecordingUsageSink(), undefined, false);
    const { error } = await sendAccessLogs(port, AUTH, [entry]);
    expect(error?.code).toBe(grpc.status.UNIMPLEMENTED);
    const client = new CheckClient(port);
    try {
      expect((await client.check(envoyCheckRequest({}))).status.code).not.toBe(0);
    } finally {
      client.close();
    }
  });
});

describe('StreamAccessLogs: hostile input and shutdown', () => {
  it('a message that does not decode ends that stream with an error; the server goes on serving streams and Check', async () => {
    const sink = new RecordingUsageSink();
    const port = await start(sink);
    // Field 2 (http_logs), length-delimited, claiming 127 bytes that never come.
    const garbage = Buffer.from([0x12, 0x7f, 0x0a, 0x01]);
    const broken = await sendAccessLogs(port, AUTH, [garbage], true);
    expect(broken.error?.code).toBeDefined();
    expect(broken.error?.code).not.toBe(grpc.status.OK);
    const after = await sendAccessLogs(port, AUTH, [envoyMessage([envoyEntry({ reservationId: 'rsv_after', headers: { [USAGE.in]: '1', [USAGE.out]: '1' } })], true)]);
    expect(after.error).toBeNull();
    expect(sink.reports.map((r) => r.reservationId)).toEqual(['rsv_after']);
    const client = new CheckClient(port);
    try {
      await client.check(envoyCheckRequest({}));
    } finally {
      client.close();
    }
  });

  it('ends open streams with OK on shutdown, within the drain deadline rather than at it', async () => {
    const sink = new RecordingUsageSink();
    const port = await start(sink);
    // A stream like Envoy's: opened, written to, never half-closed.
    const client = new (grpc.makeGenericClientConstructor({}, 'x'))(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const md = new grpc.Metadata();
    md.set('x-ryvion-access-log-secret', SECRET);
    const { upstreamStreamMethod, STREAM_ACCESS_LOGS_PATH } = await import('../helpers/access-log.js');
    const ended = new Promise<grpc.ServiceError | null>((resolve) => {
      const call = client.makeClientStreamRequest<object, object>(
        STREAM_ACCESS_LOGS_PATH,
        (m) => upstreamStreamMethod.requestSerialize(m),
        (b) => upstreamStreamMethod.responseDeserialize(b),
        md,
        {},
        (err) => resolve(err),
      );
      call.write(envoyMessage([envoyEntry({ reservationId: 'rsv_open', headers: { [USAGE.in]: '2', [USAGE.out]: '3' } })], true));
    });
    const deadline = Date.now() + 20_000;
    while (sink.reports.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(receiver!.openStreams).toBe(1);
    const started = Date.now();
    await server!.shutdown(15_000);
    server = undefined;
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await ended).toBeNull();
    client.close();
    expect(sink.reports).toEqual([{ reservationId: 'rsv_open', inputTokens: 2, outputTokens: 3 }]);
  });
});

describe('StreamAccessLogs in the running service (composition root)', () => {
  let db: Awaited<ReturnType<typeof freshDatabase>> | undefined;
  const services: RunningService[] = [];
  afterEach(async () => {
    for (const s of services.splice(0)) await s.stop();
    await db?.drop();
    db = undefined;
  });

  async function startWith(env: Record<string, string>, usageSink?: UsageSink): Promise<RunningService> {
    db ??= await freshDatabase();
    const service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper(), ...env }, { usageSink });
    services.push(service);
    return service;
  }

  it('serves StreamAccessLogs on GRPC_PORT with ACCESS_LOG_SECRET and hands usage to the usageSink it was given', async () => {
    const sink = new RecordingUsageSink();
    const service = await startWith({ ACCESS_LOG_SECRET: SECRET }, sink);
    const { error } = await sendAccessLogs(service.grpcPort, AUTH, [envoyMessage([envoyEntry({ reservationId: 'rsv_root', headers: { [USAGE.in]: '11', [USAGE.out]: '22' } })], true)]);
    expect(error).toBeNull();
    expect(sink.reports).toEqual([{ reservationId: 'rsv_root', inputTokens: 11, outputTokens: 22 }]);
    expect(await metricValue(service, 'ryvion_authz_access_log_entries_used_total')).toBe(1);
    const refused = await sendAccessLogs(service.grpcPort, { 'x-ryvion-access-log-secret': 'wrong'.repeat(8) }, []);
    expect(refused.error?.code).toBe(grpc.status.UNAUTHENTICATED);
  });

  it('does not serve StreamAccessLogs without ACCESS_LOG_SECRET (UNIMPLEMENTED), even with a usageSink', async () => {
    const sink = new RecordingUsageSink();
    const service = await startWith({}, sink);
    const { error } = await sendAccessLogs(service.grpcPort, AUTH, [envoyMessage([envoyEntry({ reservationId: 'rsv_x', headers: { [USAGE.in]: '1', [USAGE.out]: '1' } })], true)]);
    expect(error?.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(sink.batches).toEqual([]);
  });
});

describe('StreamAccessLogs: rotating the secret', () => {
  it('accepts the previous secret beside the current one, and nothing else', async () => {
    const previous = 'test-only-previous-0d1e2f3a4b5c6d7e8f9a0b1c2d';
    const sink = new RecordingUsageSink();
    const port = await start(sink, undefined, true, previous);
    const message = (id: string): object => envoyMessage([envoyEntry({ reservationId: id, headers: { [USAGE.in]: '1', [USAGE.out]: '1' } })], true);
    expect((await sendAccessLogs(port, AUTH, [message('rsv_new')])).error).toBeNull();
    expect((await sendAccessLogs(port, { 'x-ryvion-access-log-secret': previous }, [message('rsv_old')])).error).toBeNull();
    expect((await sendAccessLogs(port, { 'x-ryvion-access-log-secret': `${previous}x` }, [message('rsv_forged')])).error?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(sink.reports.map((r) => r.reservationId)).toEqual(['rsv_new', 'rsv_old']);
  });
});

describe('StreamAccessLogs: a stream Envoy resets', () => {
  it('is forgotten once cancelled, after the entries read before it', async () => {
    const sink = new RecordingUsageSink();
    const port = await start(sink);
    const { upstreamStreamMethod, STREAM_ACCESS_LOGS_PATH } = await import('../helpers/access-log.js');
    const client = new (grpc.makeGenericClientConstructor({}, 'x'))(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const md = new grpc.Metadata();
    md.set('x-ryvion-access-log-secret', SECRET);
    const call = client.makeClientStreamRequest<object, object>(STREAM_ACCESS_LOGS_PATH, (m) => upstreamStreamMethod.requestSerialize(m), (b) => upstreamStreamMethod.responseDeserialize(b), md, {}, () => undefined);
    call.write(envoyMessage([envoyEntry({ reservationId: 'rsv_before_reset', headers: { [USAGE.in]: '1', [USAGE.out]: '1' } })], true));
    const deadline = Date.now() + 20_000;
    while (sink.reports.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(receiver!.openStreams).toBe(1);
    call.cancel();
    while (receiver!.openStreams > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(receiver!.openStreams).toBe(0);
    expect(sink.reports.map((r) => r.reservationId)).toEqual(['rsv_before_reset']);
    client.close();
  });
});
