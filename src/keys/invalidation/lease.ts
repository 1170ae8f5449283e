// A replica's lease on its invalidation channels: memory may answer only while the lease runs.
//
// Renewal writes the lease's expiry into a registry that revokers read, then
// sends a ping on each channel; the lease extends only when a ping comes back,
// which proves that channel delivers. Cut off from the registry or from every
// channel, the replica lets its lease lapse and stops answering from memory.
import type pg from 'pg';
import type { Clock, Timer } from '../../time/clock.js';
import { every } from '../../time/clock.js';
import type { Metrics } from '../../observability/metrics.js';
import type { LiveReplica } from './acks.js';
import type { ChannelName } from './messages.js';

/** Where leases are recorded, so a revoker knows whom to wait for and how long. */
export interface LeaseRegistry {
  /** Records a lease of `leaseMs` counted from a moment after this call began. */
  renew(instanceId: string, leaseMs: number): Promise<void>;
  release(instanceId: string): Promise<void>;
  /** Leases running now, by the registry's own clock. */
  live(): Promise<LiveReplica[]>;
  /** Forgets long-expired leases. */
  prune(): Promise<void>;
}

export class PgLeaseRegistry implements LeaseRegistry {
  /**
   * `timeoutMs` bounds each statement: these are not on the Check path, and a
   * busy machine must not lose a lease round to the Check's STORE_TIMEOUT_MS.
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly timeoutMs: number,
  ) {}

  async renew(instanceId: string, leaseMs: number): Promise<void> {
    await this.pool.query({
      text: `INSERT INTO replica_leases (instance_id, lease_expires_at) VALUES ($1, now() + $2 * interval '1 millisecond')
       ON CONFLICT (instance_id) DO UPDATE SET lease_expires_at = EXCLUDED.lease_expires_at`,
      values: [instanceId, leaseMs],
      query_timeout: this.timeoutMs,
    } as pg.QueryConfig);
  }

  async release(instanceId: string): Promise<void> {
    await this.pool.query(`DELETE FROM replica_leases WHERE instance_id = $1`, [instanceId]);
  }

  async live(): Promise<LiveReplica[]> {
    const { rows } = await this.pool.query<{ instance_id: string; remaining_ms: number }>({
      text: `SELECT instance_id, EXTRACT(EPOCH FROM (lease_expires_at - now())) * 1000 AS remaining_ms
         FROM replica_leases WHERE lease_expires_at > now()`,
      query_timeout: this.timeoutMs,
    } as pg.QueryConfig);
    return rows.map((r) => ({ id: r.instance_id, remainingMs: Number(r.remaining_ms) }));
  }

  async prune(): Promise<void> {
    await this.pool.query(`DELETE FROM replica_leases WHERE lease_expires_at < now() - interval '1 hour'`);
  }
}

export interface LeaseOptions {
  instanceId: string;
  leaseMs: number;
  clock: Clock;
  registry: LeaseRegistry;
  /** The channels this replica listens on; Redis only when configured. */
  channels: readonly ChannelName[];
  sendPing(channel: ChannelName, payload: string): Promise<unknown>;
  /** Memory may hold entries that missed revocations: drop them all. */
  onFlush(why: string): void;
  /** A channel stopped delivering our pings: replace its connection. */
  onStale(channel: ChannelName): void;
  metrics?: Metrics | undefined;
}

export class Lease {
  readonly renewMs: number;
  private deadline = 0;
  private seq = 0;
  private readonly sent = new Map<number, number>();
  private readonly lastPingAt = new Map<ChannelName, number>();
  // A channel that (re)connected may have missed messages: flush once it proves live.
  private readonly flushPending = new Set<ChannelName>();
  private timer: Timer | undefined;
  private stopped = false;

  constructor(private readonly opts: LeaseOptions) {
    this.renewMs = Math.max(200, Math.floor(opts.leaseMs / 5));
    for (const c of opts.channels) this.flushPending.add(c);
  }

  held(): boolean {
    return this.opts.clock.now() < this.deadline;
  }

  async start(): Promise<void> {
    await this.renew();
    this.timer = every(this.opts.clock, this.renewMs, () => void this.renew());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    this.deadline = 0;
    await this.opts.registry.release(this.opts.instanceId).catch(() => undefined);
  }

  /** The channel's connection is new: whatever it missed is unknown. */
  channelReconnected(channel: ChannelName): void {
    this.flushPending.add(channel);
  }

  /**
   * Gives the lease up at once (a revocation could not be applied). Pings
   * already in flight may win it back; winning it back flushes memory.
   */
  surrender(): void {
    this.deadline = 0;
    this.updateGauges();
  }

  onPing(channel: ChannelName, payload: string): void {
    const now = this.opts.clock.now();
    this.lastPingAt.set(channel, now);
    if (this.flushPending.delete(channel)) this.opts.onFlush(`${channel} channel (re)connected`);
    const t0 = this.sent.get(Number(payload));
    if (t0 !== undefined) {
      const deadline = t0 + this.opts.leaseMs;
      if (deadline > this.deadline) {
        if (!this.held()) this.opts.onFlush('lease regained');
        this.deadline = deadline;
      }
    }
    this.updateGauges();
  }

  private async renew(): Promise<void> {
    if (this.stopped) return;
    const { registry, leaseMs, clock, instanceId } = this.opts;
    const t0 = clock.now();
    const seq = ++this.seq;
    this.watchChannels(t0);
    try {
      // The registry must promise at least as long as the lease we may take from this
      // round: its expiry is counted from a moment after t0.
      await registry.renew(instanceId, leaseMs);
    } catch {
      this.updateGauges();
      return;
    }
    this.sent.set(seq, t0);
    for (const [s, at] of this.sent) if (at < t0 - leaseMs) this.sent.delete(s);
    for (const c of this.opts.channels) this.opts.sendPing(c, String(seq)).catch(() => undefined);
    if (seq % 60 === 0) registry.prune().catch(() => undefined);
    this.updateGauges();
  }

  private watchChannels(now: number): void {
    for (const c of this.opts.channels) {
      const last = this.lastPingAt.get(c) ?? 0;
      if (last > 0 && now - last > this.opts.leaseMs) {
        this.lastPingAt.set(c, now);
        this.opts.onStale(c);
      }
    }
  }

  private updateGauges(): void {
    const m = this.opts.metrics;
    if (!m) return;
    const now = this.opts.clock.now();
    for (const c of this.opts.channels) {
      m.invalidationChannelUp.labels(c).set(now - (this.lastPingAt.get(c) ?? 0) <= 2 * this.renewMs + 100 ? 1 : 0);
    }
    const held = this.held();
    m.leaseHeld.set(held ? 1 : 0);
    m.degraded.labels('memory').set(held ? 0 : 1);
  }
}

/** pg_notify through the pool, with the same reasoning about its timeout as the registry's. */
export function pgNotifier(pool: pg.Pool, timeoutMs: number): (channel: string, payload: string) => Promise<unknown> {
  return (channel, payload) => pool.query({ text: 'SELECT pg_notify($1, $2)', values: [channel, payload], query_timeout: timeoutMs } as pg.QueryConfig);
}
