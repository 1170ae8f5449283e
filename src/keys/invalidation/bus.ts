// Revocation messages between replicas: received on two channels, applied, then acknowledged.
//
// Every revocation travels two ways: Postgres NOTIFY (sent inside the revoking
// transaction, so it exists exactly when the commit does) and Redis pub/sub. A
// replica applies it to its caches and only then acknowledges it; one it could
// not apply is not acknowledged, and the replica gives up its lease instead, so
// the revoker waits that lease out. The parts: the LISTEN session (listen.ts),
// the lease (lease.ts) and the acknowledgement waits (acks.ts).
import { randomBytes } from 'node:crypto';
import { boundedLru } from '../../lru.js';
import type { Clock, Timer } from '../../time/clock.js';
import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import type { RedisClient } from '../../store/redis.js';
import { AckCollector, type AckWait, type LiveReplica } from './acks.js';
import { Lease, type LeaseRegistry } from './lease.js';
import { ListenConnection, type ListenClient } from './listen.js';
import { PG_ACK_CHANNEL, PG_INVALIDATE_CHANNEL, parseAck, parseInvalidation, type ChannelName, type Invalidation } from './messages.js';

export interface InvalidationBusOptions {
  instanceId?: string;
  /** `replica`: holds a lease, applies and acknowledges revocations. `client`: only collects acknowledgements. */
  mode: 'replica' | 'client';
  /** A new session for LISTEN (DATABASE_LISTEN_URL, else DATABASE_URL). */
  newListenClient: () => ListenClient;
  /** Sends a Postgres notification (through the pool). */
  notify(channel: string, payload: string): Promise<unknown>;
  registry: LeaseRegistry;
  redisPub?: RedisClient | undefined;
  redisSub?: RedisClient | undefined;
  redisPrefix: string;
  leaseMs: number;
  clock: Clock;
  logger: Logger;
  metrics?: Metrics | undefined;
  /** Applies a revocation to this replica's caches; throws when it could not. */
  apply?: (m: Invalidation) => Promise<void> | void;
  /** Memory may hold entries that missed revocations: drop them all. */
  onFlush?: (why: string) => void;
  /** How long a new LISTEN session may take to receive our own NOTIFY before it is reported as not delivering. */
  deliveryProofMs?: number;
}

export const newInstanceId = (): string => randomBytes(8).toString('hex');

/** Between a lost LISTEN session and the next attempt. */
const LISTEN_RECONNECT_MS = 500;

export class InvalidationBus {
  readonly instanceId: string;
  private readonly lease: Lease | undefined;
  private readonly acks: AckCollector;
  private readonly listen: ListenConnection;
  private readonly seen = boundedLru<string, true>(10_000);
  private proofTimer: Timer | undefined;
  private deliveryFailing = false;

  constructor(private readonly opts: InvalidationBusOptions) {
    this.instanceId = opts.instanceId ?? newInstanceId();
    this.acks = new AckCollector(opts.clock);
    const replica = opts.mode === 'replica';
    const channels: ChannelName[] = opts.redisSub ? ['postgres', 'redis'] : ['postgres'];
    this.lease = replica
      ? new Lease({
          instanceId: this.instanceId,
          leaseMs: opts.leaseMs,
          clock: opts.clock,
          registry: opts.registry,
          channels,
          sendPing: (c, payload) => (c === 'postgres' ? opts.notify(this.pgPingChannel, payload) : this.publish('ping', payload)),
          onFlush: (why) => opts.onFlush?.(why),
          onStale: (c) => {
            if (c === 'postgres') this.listen.restart();
            else if (opts.redisSub?.status === 'ready') opts.redisSub.disconnect(true);
          },
          metrics: opts.metrics,
        })
      : undefined;
    this.listen = new ListenConnection({
      newClient: opts.newListenClient,
      channels: replica ? [PG_ACK_CHANNEL, PG_INVALIDATE_CHANNEL, this.pgPingChannel] : [PG_ACK_CHANNEL],
      clock: opts.clock,
      reconnectMs: LISTEN_RECONNECT_MS,
      onNotification: (channel, payload) => this.onPgNotification(channel, payload),
      onConnected: () => this.onListenConnected(),
      onLost: () => opts.metrics?.invalidationChannelUp.labels('postgres').set(0),
    });
  }

  private get pgPingChannel(): string {
    return `ryvion_ping_${this.instanceId}`;
  }

  private redisChannel(name: 'invalidate' | 'ack' | 'ping'): string {
    return name === 'ping' ? `${this.opts.redisPrefix}ping:${this.instanceId}` : `${this.opts.redisPrefix}${name}`;
  }

  private async publish(name: 'invalidate' | 'ack' | 'ping', payload: string): Promise<void> {
    await this.opts.redisPub?.publish(this.redisChannel(name), payload);
  }

  leaseHeld(): boolean {
    return this.lease?.held() ?? false;
  }

  async start(): Promise<void> {
    const sub = this.opts.redisSub;
    if (sub) {
      sub.on('message', (channel: string, message: string) => this.onRedisMessage(channel, message));
      sub.on('ready', () => this.lease?.channelReconnected('redis'));
      const channels = [this.redisChannel('ack')];
      if (this.lease) channels.push(this.redisChannel('invalidate'), this.redisChannel('ping'));
      // Resolves once subscribed; while Redis is down the subscription waits in ioredis's queue.
      void sub.subscribe(...channels).catch(() => undefined);
    }
    await this.listen.start();
    await this.lease?.start();
  }

  async stop(): Promise<void> {
    this.proofTimer?.cancel();
    await this.lease?.stop();
    await this.listen.stop();
  }

  /** Replicas whose lease is running now, by the registry's clock (the one their expiry was written with). */
  liveReplicas(): Promise<LiveReplica[]> {
    return this.opts.registry.live();
  }

  async publishRedis(m: Invalidation): Promise<void> {
    await this.publish('invalidate', JSON.stringify(m));
  }

  /** Starts collecting acknowledgements for `rid`; call before the revocation commits. */
  expectAcks(rid: string): AckWait {
    return this.acks.expect(rid);
  }

  private onPgNotification(channel: string, payload: string): void {
    if (channel === this.pgPingChannel) this.onPostgresPing(payload);
    else if (channel === PG_INVALIDATE_CHANNEL) void this.onInvalidation('postgres', payload);
    else if (channel === PG_ACK_CHANNEL) this.onAck(payload);
  }

  private onRedisMessage(channel: string, message: string): void {
    if (channel === this.redisChannel('ping')) this.lease?.onPing('redis', message);
    else if (channel === this.redisChannel('invalidate')) void this.onInvalidation('redis', message);
    else if (channel === this.redisChannel('ack')) this.onAck(message);
  }

  private onAck(payload: string): void {
    const ack = parseAck(payload);
    if (ack) this.acks.onAck(ack);
  }

  private async onInvalidation(channel: ChannelName, payload: string): Promise<void> {
    const m = parseInvalidation(payload);
    if (!m) return;
    this.opts.metrics?.invalidationsReceived.labels(channel).inc();
    if (this.seen.has(m.rid)) return;
    this.seen.set(m.rid, true);
    try {
      await this.opts.apply?.(m);
    } catch (err) {
      // Never acknowledged: the revoker waits for our lease, which ends now. The other
      // channel's copy of the message may still be applied and acknowledged.
      this.seen.delete(m.rid);
      this.lease?.surrender();
      this.opts.logger.error({ err, key_id: m.keyId }, 'applying a revocation failed; lease given up, memory not trusted until it is regained');
      return;
    }
    const ack = JSON.stringify({ rid: m.rid, instance: this.instanceId });
    this.opts.notify(PG_ACK_CHANNEL, ack).catch(() => undefined);
    this.publish('ack', ack).catch(() => undefined);
  }

  // A new LISTEN session must show that NOTIFY reaches it: a transaction-pooling
  // PgBouncer accepts LISTEN but never delivers the notifications.
  private onListenConnected(): void {
    this.lease?.channelReconnected('postgres');
    if (!this.lease) return;
    this.proofTimer?.cancel();
    const ms = this.opts.deliveryProofMs ?? Math.min(this.opts.leaseMs, 3000);
    this.proofTimer = this.opts.clock.setTimer(() => {
      this.proofTimer = undefined;
      this.deliveryFailing = true;
      this.opts.metrics?.degraded.labels('invalidation').set(1);
      this.opts.logger.error(
        { waited_ms: ms },
        'Postgres NOTIFY does not reach this replica\'s LISTEN session; a PgBouncer in transaction pooling mode is the likely cause: ' +
          'set DATABASE_LISTEN_URL to a direct (or session-pooled) connection. Revocations now rely on Redis pub/sub alone.',
      );
    }, ms);
    this.opts.notify(this.pgPingChannel, 'proof').catch(() => undefined);
  }

  private onPostgresPing(payload: string): void {
    this.proofTimer?.cancel();
    this.proofTimer = undefined;
    if (this.deliveryFailing) {
      this.deliveryFailing = false;
      this.opts.logger.info('Postgres NOTIFY reaches this replica again');
    }
    this.opts.metrics?.degraded.labels('invalidation').set(0);
    this.lease?.onPing('postgres', payload);
  }
}
