// Revocation messages between replicas, and each replica's lease on them.
//
// Every revocation travels two ways: Postgres NOTIFY (sent by the revoking
// statement itself, so it exists exactly when the commit does) and Redis
// pub/sub. A replica answers from memory only while it holds a lease: it renews
// the lease by writing its expiry into `replica_leases` and then seeing its own
// ping come back on a channel, which proves that channel delivers. A replica cut
// off from both channels, or from Postgres, lets its lease lapse and stops
// answering from memory. A revoke returns once every replica whose lease is
// running has acknowledged, or once that lease has run out.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { LRUCache } from 'lru-cache';
import type { Clock } from '../check/pipeline.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { RedisClient } from '../store/redis.js';

export const PG_INVALIDATE_CHANNEL = 'ryvion_invalidate';
export const PG_ACK_CHANNEL = 'ryvion_ack';

export interface Invalidation {
  rid: string;
  keyId: string;
  accountId: string;
  hash: string;
  version: number;
}

type Channel = 'postgres' | 'redis';

export interface InvalidationBusOptions {
  instanceId?: string;
  /** `replica`: holds a lease, applies and acknowledges revocations. `client`: only collects acknowledgements (the CLI). */
  mode: 'replica' | 'client';
  databaseUrl: string;
  pool: pg.Pool;
  redisPub?: RedisClient | undefined;
  redisSub?: RedisClient | undefined;
  redisPrefix: string;
  leaseMs: number;
  clock: Clock;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** Drop the key from the caches; must not throw. Acknowledged after it resolves. */
  onInvalidate?: (m: Invalidation) => Promise<void>;
  /** Memory may hold entries that missed revocations: drop them all. */
  onFlush?: (why: string) => void;
}

export interface LiveReplica {
  id: string;
  remainingMs: number;
}

export const newInstanceId = (): string => randomBytes(8).toString('hex');

export class InvalidationBus {
  readonly instanceId: string;
  private leaseDeadline = 0;
  private pgClient: pg.Client | undefined;
  private pgReconnectTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private pingSeq = 0;
  private readonly pings = new Map<number, number>();
  private readonly lastPingAt: Record<Channel, number> = { postgres: 0, redis: 0 };
  // A channel that (re)connected may have missed messages: flush once it proves live.
  private readonly flushPending: Record<Channel, boolean> = { postgres: true, redis: true };
  private readonly seen = new LRUCache<string, true>({ max: 10_000 });
  private readonly ackWaiters = new Map<string, (instance: string) => void>();
  private readonly renewMs: number;

  constructor(private readonly opts: InvalidationBusOptions) {
    this.instanceId = opts.instanceId ?? newInstanceId();
    this.renewMs = Math.max(200, Math.floor(opts.leaseMs / 5));
  }

  private get pingChannelPg(): string {
    return `ryvion_ping_${this.instanceId}`;
  }
  private redisChannel(name: 'invalidate' | 'ack' | 'ping'): string {
    return name === 'ping' ? `${this.opts.redisPrefix}ping:${this.instanceId}` : `${this.opts.redisPrefix}${name}`;
  }

  leaseHeld(): boolean {
    return this.opts.clock.now() < this.leaseDeadline;
  }

  async start(): Promise<void> {
    const sub = this.opts.redisSub;
    if (sub) {
      sub.on('message', (channel: string, message: string) => this.onRedisMessage(channel, message));
      sub.on('ready', () => {
        this.flushPending.redis = true;
      });
      const channels = [this.redisChannel('ack')];
      if (this.opts.mode === 'replica') channels.push(this.redisChannel('invalidate'), this.redisChannel('ping'));
      // Resolves once subscribed; while Redis is down the subscription waits in ioredis's queue.
      void sub.subscribe(...channels).catch(() => undefined);
    }
    await this.connectPg();
    if (this.opts.mode === 'replica') {
      await this.renew();
      this.renewTimer = setInterval(() => void this.renew(), this.renewMs);
      this.renewTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.renewTimer) clearInterval(this.renewTimer);
    if (this.pgReconnectTimer) clearTimeout(this.pgReconnectTimer);
    this.leaseDeadline = 0;
    if (this.opts.mode === 'replica') {
      await this.opts.pool.query(`DELETE FROM replica_leases WHERE instance_id = $1`, [this.instanceId]).catch(() => undefined);
    }
    const client = this.pgClient;
    this.pgClient = undefined;
    await client?.end().catch(() => undefined);
  }

  /** Replicas whose lease is running now, by the database's clock (the one their expiry was written with). */
  async liveReplicas(): Promise<LiveReplica[]> {
    const { rows } = await this.opts.pool.query<{ instance_id: string; remaining_ms: number }>(
      `SELECT instance_id, EXTRACT(EPOCH FROM (lease_expires_at - now())) * 1000 AS remaining_ms
         FROM replica_leases WHERE lease_expires_at > now()`,
    );
    return rows.map((r) => ({ id: r.instance_id, remainingMs: Number(r.remaining_ms) }));
  }

  async publishRedis(m: Invalidation): Promise<void> {
    await this.opts.redisPub?.publish(this.redisChannel('invalidate'), JSON.stringify(m));
  }

  /**
   * Starts collecting acknowledgements for `rid`; call before the revocation
   * commits. `wait` resolves true when every listed replica acknowledged, false
   * when some lease ran out first.
   */
  expectAcks(rid: string): { wait(replicas: readonly LiveReplica[]): Promise<boolean>; close(): void } {
    const acked = new Set<string>();
    let recheck: (() => void) | undefined;
    this.ackWaiters.set(rid, (instance) => {
      acked.add(instance);
      recheck?.();
    });
    return {
      wait: (replicas) =>
        new Promise<boolean>((resolve) => {
          const start = this.opts.clock.now();
          // A margin over each remaining lease for timer and clock granularity.
          const deadlines = new Map(replicas.map((r) => [r.id, start + r.remainingMs + 25]));
          let timer: NodeJS.Timeout | undefined;
          recheck = () => {
            const now = this.opts.clock.now();
            let pendingUntil = 0;
            for (const [id, deadline] of deadlines) {
              if (!acked.has(id) && deadline > now) pendingUntil = Math.max(pendingUntil, deadline);
            }
            if (pendingUntil === 0) {
              if (timer) clearTimeout(timer);
              recheck = undefined;
              resolve([...deadlines.keys()].every((id) => acked.has(id)));
              return;
            }
            if (timer) clearTimeout(timer);
            timer = setTimeout(() => recheck?.(), pendingUntil - now);
          };
          recheck();
        }),
      close: () => {
        this.ackWaiters.delete(rid);
      },
    };
  }

  // --- Postgres LISTEN connection -------------------------------------------------------

  private async connectPg(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({ connectionString: this.opts.databaseUrl, connectionTimeoutMillis: 2000, keepAlive: true, application_name: 'ryvion-authz-listen' });
    const lost = (): void => {
      if (this.pgClient !== client) return;
      this.pgClient = undefined;
      this.opts.metrics?.invalidationChannelUp.labels('postgres').set(0);
      client.end().catch(() => undefined);
      this.schedulePgReconnect();
    };
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (n) => this.onPgNotification(n.channel, n.payload ?? ''));
    try {
      await client.connect();
      await client.query(`LISTEN ${PG_ACK_CHANNEL}`);
      if (this.opts.mode === 'replica') {
        await client.query(`LISTEN ${PG_INVALIDATE_CHANNEL}`);
        await client.query(`LISTEN ${this.pingChannelPg}`);
      }
      this.pgClient = client;
      this.flushPending.postgres = true;
    } catch {
      client.end().catch(() => undefined);
      this.schedulePgReconnect();
    }
  }

  private schedulePgReconnect(): void {
    if (this.stopped || this.pgReconnectTimer) return;
    this.pgReconnectTimer = setTimeout(() => {
      this.pgReconnectTimer = undefined;
      void this.connectPg();
    }, 500);
    this.pgReconnectTimer.unref();
  }

  private onPgNotification(channel: string, payload: string): void {
    if (channel === this.pingChannelPg) this.onPing('postgres', payload);
    else if (channel === PG_INVALIDATE_CHANNEL) void this.onInvalidation('postgres', payload);
    else if (channel === PG_ACK_CHANNEL) this.onAck(payload);
  }

  private onRedisMessage(channel: string, message: string): void {
    if (channel === this.redisChannel('ping')) this.onPing('redis', message);
    else if (channel === this.redisChannel('invalidate')) void this.onInvalidation('redis', message);
    else if (channel === this.redisChannel('ack')) this.onAck(message);
  }

  // --- lease ------------------------------------------------------------------------------

  private async renew(): Promise<void> {
    if (this.stopped) return;
    const { pool, leaseMs, clock, metrics } = this.opts;
    const t0 = clock.now();
    const seq = ++this.pingSeq;
    this.watchChannels(t0);
    try {
      // The registry must promise at least as long as the lease we may take from this
      // round: its expiry is counted from a moment after t0.
      await pool.query(
        `INSERT INTO replica_leases (instance_id, lease_expires_at) VALUES ($1, now() + $2 * interval '1 millisecond')
         ON CONFLICT (instance_id) DO UPDATE SET lease_expires_at = EXCLUDED.lease_expires_at`,
        [this.instanceId, leaseMs],
      );
    } catch {
      this.updateGauges();
      return;
    }
    this.pings.set(seq, t0);
    for (const [s, at] of this.pings) if (at < t0 - leaseMs) this.pings.delete(s);
    pool.query(`SELECT pg_notify($1, $2)`, [this.pingChannelPg, String(seq)]).catch(() => undefined);
    this.opts.redisPub?.publish(this.redisChannel('ping'), String(seq)).catch(() => undefined);
    if (seq % 60 === 0) {
      pool.query(`DELETE FROM replica_leases WHERE lease_expires_at < now() - interval '1 hour'`).catch(() => undefined);
    }
    metrics?.leaseHeld.set(this.leaseHeld() ? 1 : 0);
    this.updateGauges();
  }

  private onPing(channel: Channel, payload: string): void {
    const now = this.opts.clock.now();
    this.lastPingAt[channel] = now;
    if (this.flushPending[channel]) {
      this.flushPending[channel] = false;
      this.opts.onFlush?.(`${channel} channel (re)connected`);
    }
    const t0 = this.pings.get(Number(payload));
    if (t0 === undefined) return;
    const deadline = t0 + this.opts.leaseMs;
    if (deadline <= this.leaseDeadline) return;
    if (!this.leaseHeld()) this.opts.onFlush?.('lease regained');
    this.leaseDeadline = deadline;
    this.updateGauges();
  }

  /** A connection that stopped delivering our pings is replaced, so recovery needs no restart. */
  private watchChannels(now: number): void {
    const staleAfter = this.opts.leaseMs;
    if (this.pgClient && this.lastPingAt.postgres > 0 && now - this.lastPingAt.postgres > staleAfter) {
      this.lastPingAt.postgres = now;
      this.pgClient.end().catch(() => undefined);
    }
    const sub = this.opts.redisSub;
    if (sub && this.lastPingAt.redis > 0 && now - this.lastPingAt.redis > staleAfter && sub.status === 'ready') {
      this.lastPingAt.redis = now;
      sub.disconnect(true);
    }
  }

  private updateGauges(): void {
    const m = this.opts.metrics;
    if (!m) return;
    const now = this.opts.clock.now();
    const fresh = (c: Channel): number => (now - this.lastPingAt[c] <= 2 * this.renewMs + 100 ? 1 : 0);
    m.invalidationChannelUp.labels('postgres').set(fresh('postgres'));
    m.invalidationChannelUp.labels('redis').set(this.opts.redisSub ? fresh('redis') : 0);
    m.leaseHeld.set(this.leaseHeld() ? 1 : 0);
    m.degraded.labels('memory').set(this.leaseHeld() ? 0 : 1);
  }

  // --- revocations and acknowledgements ---------------------------------------------------

  private async onInvalidation(channel: Channel, payload: string): Promise<void> {
    const m = parseInvalidation(payload);
    if (!m) return;
    this.opts.metrics?.invalidationsReceived.labels(channel).inc();
    if (this.seen.has(m.rid)) return;
    this.seen.set(m.rid, true);
    try {
      await this.opts.onInvalidate?.(m);
    } catch (err) {
      this.opts.logger.error({ err, key_id: m.keyId }, 'applying a revocation failed');
    }
    const ack = JSON.stringify({ rid: m.rid, instance: this.instanceId });
    this.opts.pool.query(`SELECT pg_notify($1, $2)`, [PG_ACK_CHANNEL, ack]).catch(() => undefined);
    this.opts.redisPub?.publish(this.redisChannel('ack'), ack).catch(() => undefined);
  }

  private onAck(payload: string): void {
    try {
      const { rid, instance } = JSON.parse(payload) as { rid?: unknown; instance?: unknown };
      if (typeof rid === 'string' && typeof instance === 'string') this.ackWaiters.get(rid)?.(instance);
    } catch {
      // Not ours: ignore.
    }
  }
}

function parseInvalidation(payload: string): Invalidation | undefined {
  try {
    const m = JSON.parse(payload) as Partial<Invalidation>;
    if (typeof m.rid !== 'string' || typeof m.keyId !== 'string' || typeof m.hash !== 'string' || typeof m.version !== 'number') return undefined;
    return { rid: m.rid, keyId: m.keyId, accountId: typeof m.accountId === 'string' ? m.accountId : '', hash: m.hash, version: m.version };
  } catch {
    return undefined;
  }
}
