// Delivers the leak_notifications outbox to the owner-notification webhook, in the background,
// retrying with backoff until the webhook answers 2xx. Never on the path of GitHub's request.
import { createHmac } from 'node:crypto';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { every, type Clock, type Timer } from '../time/clock.js';
import type { KeyRepository } from './repository.js';

export interface LeakNotifierOptions {
  url: string;
  /** HMAC-SHA256 key: `x-ryvion-signature: sha256=<hex of HMAC(secret, body)>`. */
  secret: string;
  intervalMs: number;
  repository: Pick<KeyRepository, 'claimLeakNotifications' | 'leakNotificationDelivered' | 'leakNotificationFailed'>;
  clock: Clock;
  logger: Logger;
  metrics: Metrics;
  fetch?: typeof fetch;
}

const BATCH = 20;
const MAX_BACKOFF_MS = 60 * 60_000;

export function signBody(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

export class LeakNotifier {
  private timer: Timer | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly opts: LeakNotifierOptions) {}

  start(): void {
    this.timer = every(this.opts.clock, this.opts.intervalMs, () => {
      this.running ??= this.deliverDue()
        .catch((err: unknown) => this.opts.logger.warn({ problem: (err as Error).message }, 'reading the leak notification outbox failed; retrying'))
        .finally(() => (this.running = undefined));
    });
  }

  async stop(): Promise<void> {
    this.timer?.cancel();
    await this.running;
  }

  /** Sends every due notification once; a failure is retried later with exponential backoff. */
  async deliverDue(): Promise<void> {
    const { repository, metrics, logger } = this.opts;
    // Claimed for a minute: another replica will not send it meanwhile.
    const due = await repository.claimLeakNotifications(BATCH, 60_000);
    for (const n of due) {
      const body = JSON.stringify({ id: n.id, ...n.payload });
      try {
        const res = await (this.opts.fetch ?? fetch)(this.opts.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-ryvion-signature': signBody(this.opts.secret, body), 'x-ryvion-delivery': n.id },
          body,
          signal: AbortSignal.timeout(5000),
        });
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        await repository.leakNotificationDelivered(n.id);
        metrics.leakNotifications.labels('delivered').inc();
      } catch (err) {
        const retryInMs = Math.min(MAX_BACKOFF_MS, this.opts.intervalMs * 2 ** Math.min(n.attempts, 20));
        metrics.leakNotifications.labels('failed').inc();
        logger.warn({ notification_id: n.id, account_id: n.accountId, attempts: n.attempts, retry_in_ms: retryInMs, problem: (err as Error).message }, 'owner notification about a leaked key not delivered; retrying');
        await repository.leakNotificationFailed(n.id, retryInMs).catch(() => undefined);
      }
    }
  }
}
