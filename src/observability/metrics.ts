// Prometheus metrics: one registry, bounded labels only (no key ids, no raw paths).
import client from 'prom-client';
import { DenyReason } from '../check/decision.js';

export type Transport = 'grpc' | 'http';
export const TRANSPORTS: readonly Transport[] = ['grpc', 'http'];
export const OUTCOME_REASONS: readonly string[] = ['allowed', 'shadow_denied', ...Object.values(DenyReason)];

export class Metrics {
  readonly registry = new client.Registry();

  readonly decisions = new client.Counter({
    name: 'ryvion_authz_decisions_total',
    help: 'Authorization decisions by transport, outcome (allow|deny) and reason.',
    labelNames: ['transport', 'outcome', 'reason'] as const,
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

  readonly policyReloads = new client.Counter({
    name: 'ryvion_authz_policy_reloads_total',
    help: 'Policy file reloads by result (success|failure); a failure keeps the last good policy.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly policyLastReload = new client.Gauge({
    name: 'ryvion_authz_policy_last_reload_success_timestamp_seconds',
    help: 'When the policy in force was loaded.',
    registers: [this.registry],
  });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) client.collectDefaultMetrics({ register: this.registry });
    // Known label values start at zero so rates and alerts work before the first event.
    this.policyReloads.labels('success');
    this.policyReloads.labels('failure');
    for (const transport of TRANSPORTS) {
      this.decisionDuration.labels(transport);
      this.internalErrors.labels(transport);
      for (const reason of OUTCOME_REASONS) {
        const outcome = reason === 'allowed' || reason === 'shadow_denied' ? 'allow' : 'deny';
        this.decisions.labels(transport, outcome, reason);
      }
    }
  }
}
