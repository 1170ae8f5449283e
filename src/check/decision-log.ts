// One place that logs and counts each decision, for every transport.
import { DenyReason, type Decision } from './decision.js';
import type { Logger } from '../observability/logger.js';
import { TRANSPORTS, type Metrics, type Transport } from '../observability/metrics.js';
import { histogramObserver, hotCounter, type HotCounterCell } from '../observability/hot-metrics.js';

/** Every `reason` label of ryvion_authz_decisions_total. */
export const OUTCOME_REASONS: readonly string[] = ['allowed', 'shadow_denied', ...Object.values(DenyReason)];

/** The `outcome` label that goes with a decision's `reason` label. */
export function outcomeOf(reason: string): 'allow' | 'deny' {
  return reason === 'allowed' || reason === 'shadow_denied' ? 'allow' : 'deny';
}

export interface DecisionLogOptions {
  /** LOG_ALLOWED_SAMPLE_RATE: the fraction (0..1) of allowed decisions logged at info; the others at debug. */
  allowedSampleRate?: number;
  /** Uniform in [0, 1); injected by tests. */
  random?: () => number;
}

export const METHOD_LOG_MAX_CHARS = 32;

export class DecisionRecorder {
  private readonly allowedSampleRate: number;
  private readonly random: () => number;
  // Metric handles per transport and reason, made once (hot-metrics.ts: prom-client's labels() per call costs more than the rest of this).
  private readonly decisionCells: Record<Transport, Record<string, HotCounterCell>>;
  private readonly durationObservers: Record<Transport, (seconds: number) => void>;
  // Decision lines go through a child logger without the redaction pass. Their fields are fixed
  // here (ids, codes, method, a number), none of them a credential or an object a credential
  // could hide in, so redaction never changes them; it cost about 30 µs per line (pino 10 with
  // our 30 paths), a denial's largest cost (bench/README.md). Everything else, errors included,
  // is still logged through the redacting logger.
  private readonly lines: Logger;

  constructor(
    private readonly logger: Logger,
    private readonly metrics: Metrics,
    opts: DecisionLogOptions = {},
  ) {
    this.allowedSampleRate = opts.allowedSampleRate ?? 0;
    this.random = opts.random ?? Math.random;
    this.lines = logger.child({}, { redact: [] });
    const perTransport = <T>(make: (t: Transport) => T): Record<Transport, T> =>
      Object.fromEntries(TRANSPORTS.map((t) => [t, make(t)])) as Record<Transport, T>;
    this.durationObservers = perTransport((transport) => histogramObserver(metrics.decisionDuration, { transport }));
    this.decisionCells = perTransport((transport) =>
      Object.fromEntries(OUTCOME_REASONS.map((reason) => [reason, hotCounter(metrics.decisions, { transport, outcome: outcomeOf(reason), reason })])),
    );
    // Every series exists from the start, at 0, so a rate() over it has a first sample.
    for (const transport of TRANSPORTS) for (const reason of OUTCOME_REASONS) metrics.decisions.labels(transport, outcomeOf(reason), reason).inc(0);
  }

  record(transport: Transport, decision: Decision, requestId: string, rawMethod: string, startedNs: bigint): void {
    // The only field a client writes freely (request ids are checked, details are ours): bounded, so a 70 KB method is not a 70 KB line.
    const method = rawMethod.length > METHOD_LOG_MAX_CHARS ? `${rawMethod.slice(0, METHOD_LOG_MAX_CHARS)}…` : rawMethod;
    const seconds = Number(process.hrtime.bigint() - startedNs) / 1e9;
    this.durationObservers[transport](seconds);
    const latency_ms = Math.round(seconds * 1e6) / 1e3;
    if (decision.allow) {
      const reason = decision.shadowDenied ? 'shadow_denied' : 'allowed';
      this.decisionCell(transport, reason).inc();
      const sampled = this.allowedSampleRate > 0 && this.random() < this.allowedSampleRate;
      // The hot path: build no log fields for a line nobody will see.
      if (!decision.shadowDenied && !sampled && !this.lines.isLevelEnabled('debug')) return;
      const fields = {
        transport, request_id: requestId, decision: 'allow', reason, method,
        key_id: decision.identity.keyId, account_id: decision.identity.accountId,
        scope: decision.identity.scope, permission: decision.permission, latency_ms,
      };
      // A shadow rule's "would deny" is what the operator rolling it out needs to see.
      if (decision.shadowDenied) this.lines.info(fields, 'would deny (shadow rule)');
      else if (sampled) this.lines.info(fields, 'allowed');
      else this.lines.debug(fields, 'allowed');
      return;
    }
    this.decisionCell(transport, decision.reason).inc();
    const identity = 'identity' in decision ? decision.identity : undefined;
    this.lines.info(
      {
        transport, request_id: requestId, decision: 'deny', reason: decision.reason, method,
        detail: 'detail' in decision ? decision.detail : undefined,
        key_id: identity?.keyId, account_id: identity?.accountId, latency_ms,
      },
      'denied',
    );
  }

  private decisionCell(transport: Transport, reason: string): HotCounterCell {
    // Every reason is known in advance (OUTCOME_REASONS); hotCounter would make the same cell for any other.
    return this.decisionCells[transport][reason] ?? hotCounter(this.metrics.decisions, { transport, outcome: outcomeOf(reason), reason });
  }

  internalError(transport: Transport, requestId: string, err: unknown): void {
    this.metrics.internalErrors.labels(transport).inc();
    this.logger.error({ transport, request_id: requestId, err }, 'internal error while deciding; answered 503');
  }
}
