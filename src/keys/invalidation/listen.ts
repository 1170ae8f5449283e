// The Postgres LISTEN connection: one session that reconnects on its own, through the clock.
import type { Clock, Timer } from '../../time/clock.js';

/** What the connection needs of a pg.Client (the in-memory twin in tests implements it too). */
export interface ListenClient {
  connect(): Promise<unknown>;
  query(sql: string): Promise<unknown>;
  end(): Promise<unknown>;
  on(event: 'notification', fn: (n: { channel: string; payload?: string | undefined }) => void): unknown;
  on(event: 'error' | 'end', fn: () => void): unknown;
}

export interface ListenConnectionOptions {
  newClient: () => ListenClient;
  channels: readonly string[];
  clock: Clock;
  /** Between a lost or failed connection and the next attempt. */
  reconnectMs: number;
  onNotification(channel: string, payload: string): void;
  /** LISTEN is in place on a new session: messages sent while there was none are lost. */
  onConnected(): void;
  onLost(): void;
}

export class ListenConnection {
  private client: ListenClient | undefined;
  private reconnectTimer: Timer | undefined;
  private stopped = false;

  constructor(private readonly opts: ListenConnectionOptions) {}

  get connected(): boolean {
    return this.client !== undefined;
  }

  /** One attempt; on failure the next is scheduled. */
  async start(): Promise<void> {
    await this.connect();
  }

  /** Replaces a session that stopped delivering. */
  restart(): void {
    const client = this.client;
    if (client) this.lost(client);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.reconnectTimer?.cancel();
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = this.opts.newClient();
    const lost = (): void => this.lost(client);
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (n) => {
      if (this.client === client) this.opts.onNotification(n.channel, n.payload ?? '');
    });
    try {
      await client.connect();
      for (const channel of this.opts.channels) await client.query(`LISTEN ${channel}`);
      if (this.stopped) {
        await client.end().catch(() => undefined);
        return;
      }
      this.client = client;
      this.opts.onConnected();
    } catch {
      client.end().catch(() => undefined);
      this.scheduleReconnect();
    }
  }

  private lost(client: ListenClient): void {
    if (this.client !== client) return;
    this.client = undefined;
    client.end().catch(() => undefined);
    this.opts.onLost();
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnectTimer) return;
    this.reconnectTimer = this.opts.clock.setTimer(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, this.opts.reconnectMs);
  }
}
