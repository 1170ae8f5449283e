// envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs: Envoy's gRPC access log, read for the
// token usage the upstream reported after each inference request, and handed to the reconciler.
//
// Best effort by nature: Envoy buffers entries and drops them when a stream is down or backed up,
// and nothing here can ask for one again. A reservation whose entry never arrives is not lost
// money: it expires into a charge of the reserved amount, and that is metered by the reconciler.
import { createHash, timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../../observability/logger.js';
import type { AccessLogIgnoredReason, Metrics } from '../../observability/metrics.js';
import { AccessLogType, accessLogService, type HttpAccessLogEntry, type ProtoStruct, type StreamAccessLogsMessage } from './proto.js';

/** The usage of one reserved request: actual tokens, to replace the reservation. */
export type UsageReport = { reservationId: string; inputTokens: number; outputTokens: number };

/** The reconciler, as this receiver sees it: takes a batch, idempotent per reservation id. */
export interface UsageSink {
  report(items: readonly UsageReport[], source: 'access_log'): Promise<unknown>;
}

/** Initial metadata of a stream: the shared secret (ACCESS_LOG_SECRET), set in Envoy's grpc_service.initial_metadata. */
export const ACCESS_LOG_SECRET_HEADER = 'x-ryvion-access-log-secret';
/** ext_authz writes the gate's dynamic metadata under this filter name. */
export const EXT_AUTHZ_METADATA_NAMESPACE = 'envoy.filters.http.ext_authz';
export const RESERVATION_ID_FIELD = 'reservation_id';
/** Set by the upstream on its response headers, or trailers for streamed responses. */
export const USAGE_INPUT_TOKENS_HEADER = 'x-ryvion-usage-input-tokens';
export const USAGE_OUTPUT_TOKENS_HEADER = 'x-ryvion-usage-output-tokens';

/** Longer reservation ids are not ours (the reconciler checks the signature of the rest). */
const MAX_RESERVATION_ID_LENGTH = 512;
/** A whole number of tokens; 12 digits is far beyond any request. */
const TOKENS = /^\d{1,12}$/;

/**
 * What one entry gives. Reasons, in the order they are checked:
 * - `no_reservation`: no `reservation_id` in ext_authz's metadata (a route without token limits, a denial);
 * - `malformed_reservation`: a `reservation_id` that is not a non-empty string of at most 512 characters;
 * - `not_final`: a start-of-request or periodic entry (only the final one has the whole response);
 * - `no_usage`: neither usage header in the response headers or trailers (the reservation will expire into a charge);
 * - `malformed_usage`: a usage value that is not a whole number of tokens, or only one of the two.
 */
export type EntryUsage = { ok: true; report: UsageReport } | { ok: false; reason: Exclude<AccessLogIgnoredReason, 'sink_error'> };

export function usageOf(entry: HttpAccessLogEntry): EntryUsage {
  const common = entry.common_properties;
  const reservation = reservationIdOf(common?.metadata?.filter_metadata?.[EXT_AUTHZ_METADATA_NAMESPACE]);
  if (reservation === undefined) return { ok: false, reason: 'no_reservation' };
  if (reservation === null) return { ok: false, reason: 'malformed_reservation' };
  const type = common?.access_log_type ?? AccessLogType.NotSet;
  if (common?.intermediate_log_entry === true || (type !== AccessLogType.NotSet && type !== AccessLogType.DownstreamEnd)) {
    return { ok: false, reason: 'not_final' };
  }
  const response = entry.response;
  const input = headerOrTrailer(response?.response_headers, response?.response_trailers, USAGE_INPUT_TOKENS_HEADER);
  const output = headerOrTrailer(response?.response_headers, response?.response_trailers, USAGE_OUTPUT_TOKENS_HEADER);
  if (input === undefined && output === undefined) return { ok: false, reason: 'no_usage' };
  const inputTokens = tokens(input);
  const outputTokens = tokens(output);
  if (inputTokens === undefined || outputTokens === undefined) return { ok: false, reason: 'malformed_usage' };
  return { ok: true, report: { reservationId: reservation, inputTokens, outputTokens } };
}

/** undefined: absent; null: present but not a usable id. */
function reservationIdOf(metadata: ProtoStruct | undefined): string | null | undefined {
  const value = metadata?.fields?.[RESERVATION_ID_FIELD];
  if (value === undefined) return undefined;
  const id = value.stringValue;
  return typeof id === 'string' && id.length > 0 && id.length <= MAX_RESERVATION_ID_LENGTH ? id : null;
}

/** The response header, else the trailer (streamed responses know their usage only at the end). */
function headerOrTrailer(headers: Record<string, string> | undefined, trailers: Record<string, string> | undefined, name: string): string | undefined {
  return valueOf(headers, name) ?? valueOf(trailers, name);
}

function valueOf(map: Record<string, string> | undefined, name: string): string | undefined {
  if (!map) return undefined;
  // Envoy logs the names as configured, lower-case; any other spelling is still the same header.
  const key = name in map ? name : Object.keys(map).find((k) => k.toLowerCase() === name);
  const value = key === undefined ? undefined : map[key];
  return value === undefined || value === '' ? undefined : value;
}

function tokens(value: string | undefined): number | undefined {
  const v = value?.trim();
  return v !== undefined && TOKENS.test(v) ? Number(v) : undefined;
}

function digest(value: string | Buffer): Buffer {
  return createHash('sha256').update(value).digest();
}

export interface AccessLogReceiverOptions {
  /** ACCESS_LOG_SECRET: a stream without it in its initial metadata is refused. */
  secret: string;
  /** ACCESS_LOG_SECRET_PREVIOUS: also accepted, during a rotation. */
  previousSecret?: string | undefined;
  /** The reconciler; without one, authenticated streams are refused with FAILED_PRECONDITION. */
  sink: UsageSink | undefined;
  metrics: Metrics;
  logger: Logger;
}

type StreamCall = grpc.ServerReadableStream<StreamAccessLogsMessage, Record<string, never>>;

/** Serves StreamAccessLogs on the gRPC server it is added to. */
export class AccessLogReceiver {
  private readonly secretDigests: Buffer[];
  /** Open streams, each with the function that ends it with OK. */
  private readonly open = new Set<() => void>();

  constructor(private readonly opts: AccessLogReceiverOptions) {
    this.secretDigests = [opts.secret, opts.previousSecret].filter((s): s is string => s !== undefined).map(digest);
  }

  addTo(server: grpc.Server): void {
    server.addService(accessLogService(), { StreamAccessLogs: this.stream });
  }

  /** Streams currently open (tests, shutdown). */
  get openStreams(): number {
    return this.open.size;
  }

  /**
   * Ends every open stream with OK, so a drain is not held up by streams that never end on their
   * own; Envoy reconnects to another replica. Entries still in flight on them are lost (best effort).
   */
  closeStreams(): void {
    for (const end of [...this.open]) end();
  }

  private authenticated(metadata: grpc.Metadata): boolean {
    const values = metadata.get(ACCESS_LOG_SECRET_HEADER);
    if (values.length !== 1) return false;
    // Digests of equal length: the comparison takes the same time whatever was sent. Every
    // accepted secret is compared, so the time does not tell which one matched.
    const sent = digest(values[0]!);
    return this.secretDigests.map((d) => timingSafeEqual(sent, d)).includes(true);
  }

  private readonly stream = (call: StreamCall, callback: grpc.sendUnaryData<Record<string, never>>): void => {
    const { metrics, logger, sink } = this.opts;
    if (!this.authenticated(call.metadata)) {
      metrics.accessLogStreams.labels('unauthenticated').inc();
      logger.warn({ peer: call.getPeer() }, `access log stream refused: missing or wrong ${ACCESS_LOG_SECRET_HEADER}`);
      callback(serviceError(grpc.status.UNAUTHENTICATED, `access log stream refused: missing or wrong ${ACCESS_LOG_SECRET_HEADER}`));
      return;
    }
    if (!sink) {
      metrics.accessLogStreams.labels('not_configured').inc();
      callback(serviceError(grpc.status.FAILED_PRECONDITION, 'access log stream refused: usage reconciliation is not configured on this replica'));
      return;
    }
    metrics.accessLogStreams.labels('accepted').inc();
    let done = false;
    const end = (err: grpc.ServiceError | null): void => {
      if (done) return;
      done = true;
      this.open.delete(endOk);
      callback(err, err ? undefined : {});
    };
    const endOk = (): void => {
      end(null);
      call.destroy();
    };
    this.open.add(endOk);
    // Envoy reset the stream: stop reading it too, so nothing waits on it for ever.
    call.on('cancelled', endOk);
    void this.consume(call, sink, () => done).then(
      () => end(null),
      (err: unknown) => {
        // A message that does not decode, a reset stream: this stream ends, the process goes on.
        logger.warn({ problem: (err as Error)?.message ?? String(err) }, 'access log stream ended with an error');
        end(serviceError(grpc.status.INTERNAL, 'access log stream failed'));
      },
    );
  };

  /** Reads messages one at a time: the next is read only once the previous batch is with the reconciler. */
  private async consume(call: StreamCall, sink: UsageSink, ended: () => boolean): Promise<void> {
    const { metrics, logger } = this.opts;
    for await (const message of call as AsyncIterable<StreamAccessLogsMessage>) {
      if (ended()) return;
      if (message.identifier) logger.debug({ node: message.identifier.node?.id, log_name: message.identifier.log_name }, 'access log stream opened');
      const entries = message.http_logs?.log_entry ?? [];
      metrics.accessLogEntriesReceived.inc(entries.length);
      const reports: UsageReport[] = [];
      for (const entry of entries) {
        const usage = usageOf(entry ?? {});
        if (usage.ok) reports.push(usage.report);
        else metrics.accessLogEntriesIgnored.labels(usage.reason).inc();
      }
      if (reports.length === 0) continue;
      try {
        await sink.report(reports, 'access_log');
        metrics.accessLogEntriesUsed.inc(reports.length);
      } catch (err) {
        metrics.accessLogEntriesIgnored.labels('sink_error').inc(reports.length);
        logger.error({ problem: (err as Error)?.message ?? String(err), entries: reports.length }, 'usage from the access log not recorded; those reservations will expire into charges');
      }
    }
  }
}

function serviceError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}
