// The revocation protocol on a fake clock: lease, delivery proof, acknowledgements, reconnects, duplicates, failures.
import { describe, expect, it } from 'vitest';
import { AckCollector } from '../../src/keys/invalidation/acks.js';
import { InvalidationBus } from '../../src/keys/invalidation/bus.js';
import { Lease } from '../../src/keys/invalidation/lease.js';
import { ListenConnection } from '../../src/keys/invalidation/listen.js';
import { PG_ACK_CHANNEL, PG_INVALIDATE_CHANNEL, parseAck, type Invalidation } from '../../src/keys/invalidation/messages.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { FakeClock, settle } from '../../src/time/fake-clock.js';
import { FakeLeaseRegistry, FakeNotifyHub } from '../helpers/fake-postgres-channel.js';

const LEASE_MS = 1000;

function logSink(): { lines: Array<Record<string, unknown>>; stream: { write(s: string): void } } {
  const lines: Array<Record<string, unknown>> = [];
  return { lines, stream: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } };
}

function replica(opts: { hub?: FakeNotifyHub; clock?: FakeClock; apply?: (m: Invalidation) => void } = {}) {
  const clock = opts.clock ?? new FakeClock();
  const hub = opts.hub ?? new FakeNotifyHub();
  const registry = new FakeLeaseRegistry(clock);
  const metrics = new Metrics({ defaultMetrics: false });
  const log = logSink();
  const applied: Invalidation[] = [];
  const flushes: string[] = [];
  const bus = new InvalidationBus({
    mode: 'replica',
    newListenClient: hub.newClient,
    notify: (c, p) => hub.notify(c, p),
    registry,
    redisPrefix: 'test:',
    leaseMs: LEASE_MS,
    clock,
    logger: createLogger('debug', log.stream),
    metrics,
    apply: (m) => {
      opts.apply?.(m);
      applied.push(m);
    },
    onFlush: (why) => flushes.push(why),
  });
  const acks = () => hub.sent.filter((s) => s.channel === PG_ACK_CHANNEL).map((s) => parseAck(s.payload)!);
  return { clock, hub, registry, metrics, log, applied, flushes, bus, acks };
}

const gauge = async (m: Metrics, name: string, labels: Record<string, string> = {}): Promise<number | undefined> => {
  const metric = m.registry.getSingleMetric(name)!;
  const { values } = await metric.get();
  return values.find((v) => Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want))?.value;
};

const invalidation = (rid: string, version = 2): string =>
  JSON.stringify({ rid, keyId: 'key_1', accountId: 'acct_1', hash: 'h1', version });

describe('the lease', () => {
  it('is held once a ping comes back, and lapses one lease after the last ping that came back', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    expect(r.bus.leaseHeld()).toBe(true);
    r.hub.delivers = false; // pings are sent but never come back
    await r.clock.advance(LEASE_MS - 300);
    expect(r.bus.leaseHeld()).toBe(true);
    await r.clock.advance(400);
    expect(r.bus.leaseHeld()).toBe(false);
    expect(await gauge(r.metrics, 'ryvion_authz_degraded', { component: 'memory' })).toBe(1);
    await r.bus.stop();
  });

  it('is not taken when the registry cannot be written, even though pings would come back', async () => {
    const r = replica();
    r.registry.down = true;
    await r.bus.start();
    await r.clock.advance(3 * LEASE_MS);
    expect(r.bus.leaseHeld()).toBe(false);
    r.registry.down = false;
    await r.clock.advance(LEASE_MS);
    expect(r.bus.leaseHeld()).toBe(true);
    await r.bus.stop();
  });

  it('regaining a lapsed lease flushes memory first', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    r.flushes.length = 0;
    r.hub.delivers = false;
    await r.clock.advance(2 * LEASE_MS);
    expect(r.bus.leaseHeld()).toBe(false);
    r.hub.delivers = true;
    await r.clock.advance(LEASE_MS);
    expect(r.bus.leaseHeld()).toBe(true);
    expect(r.flushes).toContain('lease regained');
    await r.bus.stop();
  });

  it('a ping from before a lapse cannot extend the lease beyond its own round', async () => {
    const clock = new FakeClock();
    const sent: string[] = [];
    const lease = new Lease({
      instanceId: 'i', leaseMs: LEASE_MS, clock, registry: new FakeLeaseRegistry(clock), channels: ['postgres'],
      sendPing: async (_c, p) => void sent.push(p), onFlush: () => undefined, onStale: () => undefined,
    });
    await lease.start();
    const first = sent[0]!;
    await clock.advance(LEASE_MS + 1);
    lease.onPing('postgres', first); // arrives late: its round's lease is already over
    expect(lease.held()).toBe(false);
    lease.onPing('postgres', sent.at(-1)!);
    expect(lease.held()).toBe(true);
    await lease.stop();
  });

  it('a channel that stops delivering pings is replaced, and recovers without a restart', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    const firstSession = r.hub.sessions[0]!;
    r.hub.delivers = false;
    await r.clock.advance(2 * LEASE_MS);
    expect(firstSession.ended).toBe(true);
    r.hub.delivers = true;
    await r.clock.advance(LEASE_MS);
    expect(r.hub.sessions).toHaveLength(1);
    expect(r.hub.sessions[0]).not.toBe(firstSession);
    expect(r.bus.leaseHeld()).toBe(true);
    await r.bus.stop();
  });
});

describe('channel gauges', () => {
  it('a replica without Redis exports only the postgres channel series, so an alert on a down channel cannot fire forever', async () => {
    const r = replica();
    await r.bus.start();
    await r.clock.advance(LEASE_MS);
    const { values } = await r.metrics.registry.getSingleMetric('ryvion_authz_invalidation_channel_up')!.get();
    expect(values.map((v) => v.labels.channel)).toEqual(['postgres']);
    expect(values[0]!.value).toBe(1);
    await r.bus.stop();
  });
});

describe('the LISTEN session', () => {
  it('reconnects after the server cut it, listens again, and the replica flushes memory once the new session delivers', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    r.flushes.length = 0;
    r.hub.down = true;
    r.hub.cutAll();
    expect(r.hub.sessions).toHaveLength(0);
    await r.clock.advance(2000);
    expect(r.hub.sessions).toHaveLength(0);
    r.hub.down = false;
    await r.clock.advance(600);
    expect(r.hub.sessions).toHaveLength(1);
    expect([...r.hub.sessions[0]!.listening].sort()).toEqual([PG_ACK_CHANNEL, PG_INVALIDATE_CHANNEL, `ryvion_ping_${r.bus.instanceId}`].sort());
    await r.clock.advance(LEASE_MS);
    expect(r.flushes).toContain('postgres channel (re)connected');
    await r.bus.stop();
  });

  it('stops reconnecting once stopped', async () => {
    const clock = new FakeClock();
    const hub = new FakeNotifyHub();
    hub.down = true;
    const conn = new ListenConnection({
      newClient: hub.newClient, channels: ['a'], clock, reconnectMs: 500,
      onNotification: () => undefined, onConnected: () => undefined, onLost: () => undefined,
    });
    await conn.start();
    await conn.stop();
    hub.down = false;
    await clock.advance(5000);
    expect(hub.sessions).toHaveLength(0);
    expect(clock.timers).toBe(0);
  });
});

describe('delivery proof (a transaction-pooling PgBouncer)', () => {
  it('a LISTEN session that never receives our own NOTIFY is reported: an error naming PgBouncer, degraded{invalidation}=1', async () => {
    const r = replica();
    r.hub.delivers = false;
    await r.bus.start();
    await r.clock.advance(LEASE_MS + 10);
    expect(await gauge(r.metrics, 'ryvion_authz_degraded', { component: 'invalidation' })).toBe(1);
    const line = r.log.lines.find((l) => l.level === 'error' && String(l.msg).includes('PgBouncer'));
    expect(line?.msg).toMatch(/DATABASE_LISTEN_URL/);
    // Delivery comes back: the next ping clears it.
    r.hub.delivers = true;
    await r.clock.advance(LEASE_MS);
    expect(await gauge(r.metrics, 'ryvion_authz_degraded', { component: 'invalidation' })).toBe(0);
    await r.bus.stop();
  });

  it('a session that delivers is not reported', async () => {
    const r = replica();
    await r.bus.start();
    await r.clock.advance(3 * LEASE_MS);
    expect(await gauge(r.metrics, 'ryvion_authz_degraded', { component: 'invalidation' })).toBe(0);
    expect(r.log.lines.some((l) => String(l.msg).includes('PgBouncer'))).toBe(false);
    await r.bus.stop();
  });

  it('is proven again after every reconnect', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    r.hub.cutAll();
    r.hub.delivers = false;
    await r.clock.advance(600 + LEASE_MS + 10);
    expect(await gauge(r.metrics, 'ryvion_authz_degraded', { component: 'invalidation' })).toBe(1);
    await r.bus.stop();
  });
});

describe('revocation messages', () => {
  it('a message that arrives twice is applied once and acknowledged once', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    await r.hub.notify(PG_INVALIDATE_CHANNEL, invalidation('rid-1'));
    await r.hub.notify(PG_INVALIDATE_CHANNEL, invalidation('rid-1'));
    await settle();
    expect(r.applied).toHaveLength(1);
    expect(r.acks().filter((a) => a.rid === 'rid-1')).toEqual([{ rid: 'rid-1', instance: r.bus.instanceId }]);
    await r.bus.stop();
  });

  it('a revocation whose apply throws is never acknowledged; the replica gives up its lease at once', async () => {
    let fail = true;
    const r = replica({ apply: () => { if (fail) throw new Error('boom'); } });
    await r.bus.start();
    await settle();
    expect(r.bus.leaseHeld()).toBe(true);
    await r.hub.notify(PG_INVALIDATE_CHANNEL, invalidation('rid-2'));
    await settle();
    expect(r.acks()).toEqual([]);
    expect(r.bus.leaseHeld()).toBe(false);
    expect(r.log.lines.some((l) => l.level === 'error' && String(l.msg).includes('applying a revocation failed'))).toBe(true);
    // The same message again (the other channel's copy, or a repeated revoke) is applied and acknowledged.
    fail = false;
    await r.hub.notify(PG_INVALIDATE_CHANNEL, invalidation('rid-2'));
    await settle();
    expect(r.acks().map((a) => a.rid)).toEqual(['rid-2']);
    // The lease comes back with the next round, and memory is flushed when it does.
    r.flushes.length = 0;
    await r.clock.advance(LEASE_MS);
    expect(r.bus.leaseHeld()).toBe(true);
    expect(r.flushes).toContain('lease regained');
    await r.bus.stop();
  });

  it('garbage on the channel is ignored', async () => {
    const r = replica();
    await r.bus.start();
    await settle();
    for (const p of ['', 'null', '{"rid":1}', '[]', '{"rid":"x","keyId":"k","hash":"h","version":"2"}']) await r.hub.notify(PG_INVALIDATE_CHANNEL, p);
    await settle();
    expect(r.applied).toEqual([]);
    expect(r.bus.leaseHeld()).toBe(true);
    await r.bus.stop();
  });
});

describe('acknowledgement deadlines', () => {
  it('resolves true as soon as every live replica acknowledged', async () => {
    const clock = new FakeClock();
    const acks = new AckCollector(clock);
    const w = acks.expect('r');
    let result: boolean | undefined;
    void w.wait([{ id: 'a', remainingMs: 1000 }, { id: 'b', remainingMs: 400 }]).then((v) => (result = v));
    acks.onAck({ rid: 'r', instance: 'a' });
    await settle();
    expect(result).toBeUndefined();
    acks.onAck({ rid: 'r', instance: 'b' });
    await settle();
    expect(result).toBe(true);
    expect(clock.timers).toBe(0);
    w.close();
  });

  it('a silent replica is waited for until its lease (plus a margin) runs out, then false', async () => {
    const clock = new FakeClock();
    const acks = new AckCollector(clock);
    const w = acks.expect('r');
    let result: boolean | undefined;
    void w.wait([{ id: 'a', remainingMs: 1000 }, { id: 'silent', remainingMs: 700 }]).then((v) => (result = v));
    acks.onAck({ rid: 'r', instance: 'a' });
    await clock.advance(700);
    expect(result).toBeUndefined();
    await clock.advance(30);
    expect(result).toBe(false);
    w.close();
  });

  it('acknowledgements for another revocation, or after close, do not count', async () => {
    const clock = new FakeClock();
    const acks = new AckCollector(clock);
    const w = acks.expect('r');
    let result: boolean | undefined;
    void w.wait([{ id: 'a', remainingMs: 500 }]).then((v) => (result = v));
    acks.onAck({ rid: 'other', instance: 'a' });
    await clock.advance(600);
    expect(result).toBe(false);
    w.close();
  });

  it('with no live replica it resolves true at once', async () => {
    const acks = new AckCollector(new FakeClock());
    await expect(acks.expect('r').wait([])).resolves.toBe(true);
  });
});
