// In-memory twins for the invalidation protocol's Postgres side: NOTIFY/LISTEN sessions and the lease registry.
import type { LiveReplica } from '../../src/keys/invalidation/acks.js';
import type { LeaseRegistry } from '../../src/keys/invalidation/lease.js';
import type { ListenClient } from '../../src/keys/invalidation/listen.js';
import type { Clock } from '../../src/time/clock.js';

type Handler = (...args: never[]) => void;

/** One fake LISTEN session. */
export class FakeListenClient implements ListenClient {
  readonly listening = new Set<string>();
  ended = false;
  private readonly handlers = new Map<string, Handler[]>();

  constructor(private readonly hub: FakeNotifyHub) {}

  async connect(): Promise<void> {
    if (this.hub.down) throw new Error('connect ECONNREFUSED');
    this.hub.sessions.push(this);
  }
  async query(sql: string): Promise<void> {
    if (this.hub.down) throw new Error('Connection terminated');
    const m = /^LISTEN (\w+)$/.exec(sql);
    if (m) this.listening.add(m[1]!);
  }
  async end(): Promise<void> {
    this.ended = true;
    this.hub.sessions = this.hub.sessions.filter((s) => s !== this);
  }
  on(event: string, fn: Handler): void {
    this.handlers.set(event, [...(this.handlers.get(event) ?? []), fn]);
  }
  emit(event: 'notification', n: { channel: string; payload: string }): void;
  emit(event: 'error' | 'end'): void;
  emit(event: string, arg?: unknown): void {
    for (const fn of this.handlers.get(event) ?? []) (fn as (a?: unknown) => void)(arg);
  }
}

/**
 * Postgres as the protocol sees it. `delivers: false` is a transaction-pooling
 * PgBouncer: LISTEN succeeds, notifications never arrive.
 */
export class FakeNotifyHub {
  sessions: FakeListenClient[] = [];
  down = false;
  delivers = true;
  readonly sent: Array<{ channel: string; payload: string }> = [];

  newClient = (): FakeListenClient => new FakeListenClient(this);

  async notify(channel: string, payload: string): Promise<void> {
    if (this.down) throw new Error('Connection terminated');
    this.sent.push({ channel, payload });
    if (!this.delivers) return;
    // Delivered after the sender's turn, as a real server would.
    queueMicrotask(() => {
      for (const s of [...this.sessions]) if (s.listening.has(channel)) s.emit('notification', { channel, payload });
    });
  }

  /** Every session is cut, as when the server restarts. */
  cutAll(): void {
    for (const s of [...this.sessions]) s.emit('end');
  }
}

/** The lease registry, on the same fake clock. */
export class FakeLeaseRegistry implements LeaseRegistry {
  readonly leases = new Map<string, number>();
  down = false;

  constructor(private readonly clock: Clock) {}

  async renew(id: string, leaseMs: number): Promise<void> {
    if (this.down) throw new Error('Connection terminated');
    this.leases.set(id, this.clock.now() + leaseMs);
  }
  async release(id: string): Promise<void> {
    this.leases.delete(id);
  }
  async live(): Promise<LiveReplica[]> {
    if (this.down) throw new Error('Connection terminated');
    const now = this.clock.now();
    return [...this.leases].filter(([, until]) => until > now).map(([id, until]) => ({ id, remainingMs: until - now }));
  }
  async prune(): Promise<void> {}
}
