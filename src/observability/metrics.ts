// Prometheus metrics: one registry, bounded labels only (no key ids, no raw paths).
import client from 'prom-client';

export type Transport = 'grpc' | 'http';
export const TRANSPORTS: readonly Transport[] = ['grpc', 'http'];

export type ManagementOperation = 'create' | 'list' | 'revoke' | 'roll' | 'me' | 'secret_scanning' | 'other';
export const MANAGEMENT_OPERATIONS: readonly ManagementOperation[] = ['create', 'list', 'revoke', 'roll', 'me', 'secret_scanning', 'other'];

// Route templates of the key management API (SPEC 6), so the label never carries a raw path or key id.
const MANAGEMENT_ROUTES: Readonly<Record<string, ManagementOperation>> = {
  'POST /api/v1/auth/api-keys': 'create',
  'GET /api/v1/auth/api-keys': 'list',
  'DELETE /api/v1/auth/api-keys/:id': 'revoke',
  'POST /api/v1/auth/api-keys/:id/roll': 'roll',
  'POST /api/v1/secret-scanning/github': 'secret_scanning',
  'GET /api/v1/auth/me': 'me',
};

/** The operation label of a management call, from its method and matched route template (undefined: no route). */
export function managementOperation(method: string, route: string | undefined): ManagementOperation {
  return (route !== undefined && MANAGEMENT_ROUTES[`${method.toUpperCase()} ${route}`]) || 'other';
}

export type AccessLogStreamResult = 'accepted' | 'unauthenticated' | 'not_configured';
export const ACCESS_LOG_STREAM_RESULTS: readonly AccessLogStreamResult[] = ['accepted', 'unauthenticated', 'not_configured'];

/** Why an access-log entry gave no usage report (transport/grpc/access-log.ts says when each happens). */
export type AccessLogIgnoredReason = 'no_reservation' | 'malformed_reservation' | 'not_final' | 'no_usage' | 'malformed_usage' | 'sink_error';
export const ACCESS_LOG_IGNORED_REASONS: readonly AccessLogIgnoredReason[] = ['no_reservation', 'malformed_reservation', 'not_final', 'no_usage', 'malformed_usage', 'sink_error'];

export function statusClass(status: number): '2xx' | '4xx' | '5xx' {
  return status >= 500 ? '5xx' : status >= 400 ? '4xx' : '2xx';
}

export class Metrics {
  readonly registry = new client.Registry();

  readonly decisions = new client.Counter({
    name: 'ryvion_authz_decisions_total',
    help: 'Authorization decisions by transport, outcome (allow|deny) and reason.',
    labelNames: ['transport', 'outcome', 'reason'] as const,
    registers: [this.registry],
  });

  // LLM limits (issue 19).
  readonly tokensReserved = new client.Counter({
    name: 'ryvion_authz_tokens_reserved_total',
    help: 'Tokens reserved at the gate (prompt estimate plus maximum output) for allowed inference requests.',
    registers: [this.registry],
  });

  readonly tokensReconciled = new client.Counter({
    name: 'ryvion_authz_tokens_reconciled_total',
    help: 'Tokens actually used, as reported after the response, by source (access_log|usage_endpoint).',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });

  readonly tokensExpired = new client.Counter({
    name: 'ryvion_authz_tokens_expired_total',
    help: 'Tokens of reservations never reconciled, charged at the reserved amount when they expired.',
    registers: [this.registry],
  });

  readonly reservations = new client.Counter({
    name: 'ryvion_authz_reservations_total',
    help: 'Reservations by what became of them: reserved, reconciled, late (unknown to Redis, charged from the id), expired, unscheduled; and usage reports refused (report_replayed|report_forged|report_expired|report_invalid).',
    labelNames: ['event'] as const,
    registers: [this.registry],
  });

  readonly reconciliationLag = new client.Histogram({
    name: 'ryvion_authz_reconciliation_lag_seconds',
    help: 'From a reservation to its usage report.',
    labelNames: ['source'] as const,
    buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600],
    registers: [this.registry],
  });

  readonly budgetRemaining = new client.Histogram({
    name: 'ryvion_authz_budget_remaining_ratio',
    help: 'Share of the spend budget left after each reservation (bucketed; per subject kind).',
    labelNames: ['subject'] as const,
    buckets: [0, 0.05, 0.1, 0.25, 0.5, 0.75, 1],
    registers: [this.registry],
  });

  readonly ledgerPending = new client.Gauge({
    name: 'ryvion_authz_spend_ledger_pending',
    help: 'Settlements waiting for the next ledger batch (Postgres).',
    registers: [this.registry],
  });

  readonly decisionDuration = new client.Histogram({
    name: 'ryvion_authz_decision_duration_seconds',
    help: 'Time from receiving a check to answering it.',
    labelNames: ['transport'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5],
    registers: [this.registry],
  });

  readonly internalErrors = new client.Counter({
    name: 'ryvion_authz_internal_errors_total',
    help: 'Unexpected errors caught at a transport boundary (answered with a 503 denial).',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });

  readonly grpcRequestDecoderFallbacks = new client.Counter({
    name: 'ryvion_authz_grpc_request_decoder_fallbacks_total',
    help: "CheckRequests read by proto-loader's decoder because the service's own gave up: unsupported (a message outside its shape) or fault (a bug of its own).",
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly cacheRequests = new client.Counter({
    name: 'ryvion_authz_key_cache_requests_total',
    help: 'Key look-ups per tier (memory|redis|postgres) and result (hit|miss|bypass|coalesced|error|overload).',
    labelNames: ['tier', 'result'] as const,
    registers: [this.registry],
  });

  readonly storeErrors = new client.Counter({
    name: 'ryvion_authz_store_errors_total',
    help: 'Store failures by store (postgres|redis) and kind (timeout|connection|overload|query).',
    labelNames: ['store', 'kind'] as const,
    registers: [this.registry],
  });

  readonly storeUp = new client.Gauge({
    name: 'ryvion_authz_store_up',
    help: '1 when the store answered its last probe or call, else 0.',
    labelNames: ['store'] as const,
    registers: [this.registry],
  });

  readonly leaseHeld = new client.Gauge({
    name: 'ryvion_authz_invalidation_lease_held',
    help: '1 while this replica holds its invalidation lease and may answer from memory.',
    registers: [this.registry],
  });

  readonly invalidationChannelUp = new client.Gauge({
    name: 'ryvion_authz_invalidation_channel_up',
    help: '1 while the invalidation channel (postgres|redis) delivers this replica its own pings.',
    labelNames: ['channel'] as const,
    registers: [this.registry],
  });

  readonly invalidationsReceived = new client.Counter({
    name: 'ryvion_authz_invalidations_received_total',
    help: 'Revocation messages received, by channel (the same revocation arrives on each).',
    labelNames: ['channel'] as const,
    registers: [this.registry],
  });

  readonly revocationDuration = new client.Histogram({
    name: 'ryvion_authz_revocation_propagation_seconds',
    help: 'From the revocation commit until every live replica acknowledged it or its lease ran out.',
    labelNames: ['result'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  readonly degraded = new client.Gauge({
    name: 'ryvion_authz_degraded',
    help: '1 while a component runs degraded (redis: deciding from Postgres and memory; postgres: only cached keys; memory: lease lapsed; invalidation: Postgres NOTIFY not delivered to LISTEN).',
    labelNames: ['component'] as const,
    registers: [this.registry],
  });

  readonly rateLimitDecisions = new client.Counter({
    name: 'ryvion_authz_ratelimit_decisions_total',
    help: 'Rate-limit decisions by outcome (allowed|limited) and where they were made (shared: Redis; local: this replica while Redis is down, or without Redis; memory: already known to be over).',
    labelNames: ['outcome', 'mode'] as const,
    registers: [this.registry],
  });

  readonly rateLimitRedisCalls = new client.Counter({
    name: 'ryvion_authz_ratelimit_redis_calls_total',
    help: 'Rate-limit script calls sent to Redis: one per batch of concurrent checks of the same subjects (fewer than shared decisions under load).',
    registers: [this.registry],
  });

  readonly policyReloads = new client.Counter({
    name: 'ryvion_authz_policy_reloads_total',
    help: 'Policy file reloads by result (success|failure); a failure keeps the last good policy.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly managementRequests = new client.Counter({
    name: 'ryvion_authz_management_requests_total',
    help: 'Key management API calls by operation (create|list|revoke|me|other) and status class (2xx|4xx|5xx).',
    labelNames: ['operation', 'status_class'] as const,
    registers: [this.registry],
  });

  readonly ready = new client.Gauge({
    name: 'ryvion_authz_ready',
    help: '1 while /readyz and grpc.health.v1 report ready (policy loaded, servers listening, not shutting down), else 0.',
    registers: [this.registry],
  });

  readonly policyLastReload = new client.Gauge({
    name: 'ryvion_authz_policy_last_reload_success_timestamp_seconds',
    help: 'When the policy in force was loaded.',
    registers: [this.registry],
  });

  readonly rateLimitLocalShare = new client.Gauge({
    name: 'ryvion_authz_ratelimit_local_share',
    help: 'Share of each limit this replica admits on its own while Redis is not asked: RATE_LIMIT_LOCAL_SHARE, else 1 / live replicas.',
    registers: [this.registry],
  });

  // The Postgres pool, read at scrape time: saturation means look-ups, lease renewals and the API wait for a connection.
  private pool: { max: number; stats: () => { total: number; idle: number; waiting: number } } | undefined;

  readonly postgresPoolMax = new client.Gauge({
    name: 'ryvion_authz_postgres_pool_max',
    help: 'Connections the Postgres pool may open (DATABASE_POOL_MAX).',
    registers: [this.registry],
    collect: () => {
      if (this.pool) this.postgresPoolMax.set(this.pool.max);
    },
  });

  readonly postgresPoolInUse = new client.Gauge({
    name: 'ryvion_authz_postgres_pool_in_use',
    help: 'Postgres pool connections checked out by a query right now.',
    registers: [this.registry],
    collect: () => {
      if (this.pool) {
        const s = this.pool.stats();
        this.postgresPoolInUse.set(s.total - s.idle);
      }
    },
  });

  readonly postgresPoolWaiting = new client.Gauge({
    name: 'ryvion_authz_postgres_pool_waiting',
    help: 'Queries waiting for a free Postgres pool connection right now (above 0: the pool is saturated).',
    registers: [this.registry],
    collect: () => {
      if (this.pool) this.postgresPoolWaiting.set(this.pool.stats().waiting);
    },
  });

  /** Exports the pool's state on every scrape. */
  observePostgresPool(max: number, stats: () => { total: number; idle: number; waiting: number }): void {
    this.pool = { max, stats };
  }

  /** Counts one answered management call; `route` is the matched route template (Fastify's routeOptions.url). */
  readonly secretScanningTokens = new client.Counter({
    name: 'ryvion_authz_secret_scanning_tokens_total',
    help: 'Tokens reported by GitHub secret scanning, by label: true_positive (ours; revoked now or before) or false_positive',
    labelNames: ['label'] as const,
    registers: [this.registry],
  });

  readonly leakNotifications = new client.Counter({
    name: 'ryvion_authz_leak_notifications_total',
    help: 'Owner-notification webhook deliveries about leaked keys, by result (delivered, failed)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly accessLogStreams = new client.Counter({
    name: 'ryvion_authz_access_log_streams_total',
    help: 'Envoy access-log streams (StreamAccessLogs) by result: accepted, unauthenticated (no or wrong secret, refused), not_configured (no reconciler, refused).',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly accessLogEntriesReceived = new client.Counter({
    name: 'ryvion_authz_access_log_entries_received_total',
    help: 'HTTP access-log entries received from Envoy on accepted streams.',
    registers: [this.registry],
  });

  readonly accessLogEntriesUsed = new client.Counter({
    name: 'ryvion_authz_access_log_entries_used_total',
    help: 'Access-log entries whose reservation id and token usage were handed to the reconciler.',
    registers: [this.registry],
  });

  readonly accessLogEntriesIgnored = new client.Counter({
    name: 'ryvion_authz_access_log_entries_ignored_total',
    help: 'Access-log entries that gave no usage report, by reason (no_reservation, malformed_reservation, not_final, no_usage, malformed_usage, sink_error).',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  recordManagementRequest(method: string, route: string | undefined, status: number): void {
    this.managementRequests.labels(managementOperation(method, route), statusClass(status)).inc();
  }

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) client.collectDefaultMetrics({ register: this.registry });
    // Known label values start at zero so rates and alerts work before the first event. prom-client
    // creates a series only on inc()/observe(): `labels()` alone exports nothing, hence inc(0) and zero().
    for (const tier of ['memory', 'redis', 'postgres']) for (const r of ['hit', 'miss', 'error']) this.cacheRequests.labels(tier, r).inc(0);
    for (const r of ['bypass', 'coalesced']) this.cacheRequests.labels('memory', r).inc(0);
    this.cacheRequests.labels('postgres', 'overload').inc(0);
    for (const label of ['true_positive', 'false_positive']) this.secretScanningTokens.labels(label).inc(0);
    for (const result of ['delivered', 'failed']) this.leakNotifications.labels(result).inc(0);
    for (const operation of MANAGEMENT_OPERATIONS) for (const cls of ['2xx', '4xx', '5xx']) this.managementRequests.labels(operation, cls).inc(0);
    for (const store of ['postgres', 'redis']) {
      for (const kind of ['timeout', 'connection', 'overload', 'query']) this.storeErrors.labels(store, kind).inc(0);
    }
    // invalidation_channel_up is set by the lease for the channels this replica uses only: a
    // replica without Redis has no redis series, so an alert on a down channel cannot fire forever.
    for (const channel of ['postgres', 'redis']) this.invalidationsReceived.labels(channel).inc(0);
    this.cacheRequests.labels('redis', 'stale').inc(0);
    for (const component of ['postgres', 'redis', 'memory', 'invalidation', 'ratelimit']) this.degraded.labels(component).set(0);
    for (const result of ['acknowledged', 'lease_expired']) this.revocationDuration.zero({ result });
    for (const outcome of ['allowed', 'limited']) for (const mode of ['shared', 'local', 'memory']) this.rateLimitDecisions.labels(outcome, mode).inc(0);
    for (const result of ACCESS_LOG_STREAM_RESULTS) this.accessLogStreams.labels(result).inc(0);
    for (const reason of ACCESS_LOG_IGNORED_REASONS) this.accessLogEntriesIgnored.labels(reason).inc(0);
    for (const reason of ['unsupported', 'fault']) this.grpcRequestDecoderFallbacks.labels(reason).inc(0);
    this.policyReloads.labels('success').inc(0);
    this.policyReloads.labels('failure').inc(0);
    this.ready.set(0);
    for (const transport of TRANSPORTS) {
      this.decisionDuration.zero({ transport });
      this.internalErrors.labels(transport).inc(0);
    }
  }
}
