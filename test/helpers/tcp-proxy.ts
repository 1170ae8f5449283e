// A TCP proxy the test can cut, to make a real store unreachable without touching the shared server.
import net from 'node:net';

export class TcpProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private holdMs = 0;
  private holding = false;
  private readonly flows = new Set<{ client: net.Socket; upstream: net.Socket }>();
  private readonly taps: Array<{ pattern: string; count: number }> = [];
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  async start(port = 0): Promise<number> {
    this.server = net.createServer((client) => {
      if (this.holding) {
        // A hung store: the connection is accepted and never answered.
        this.sockets.add(client);
        client.on('close', () => this.sockets.delete(client));
        client.on('error', () => client.destroy());
        client.resume();
        return;
      }
      const hold = this.holdMs;
      this.holdMs = 0;
      if (hold > 0) {
        // Accepted but silent, as a store on a loaded machine: what the client sends waits in the socket.
        this.sockets.add(client);
        client.on('error', () => client.destroy());
        const timer = setTimeout(() => this.connect(client), hold);
        client.on('close', () => {
          clearTimeout(timer);
          this.sockets.delete(client);
        });
        return;
      }
      this.connect(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  /**
   * Counts, from now on, how often `pattern` occurs in what clients send the store through this proxy,
   * over every connection, split across packets or not: a store call seen on the wire (a query's SQL
   * text, a Redis key name), not in the client's own counters. Returns a reader of the count.
   */
  countSent(pattern: string): () => number {
    const tap = { pattern, count: 0 };
    this.taps.push(tap);
    return () => tap.count;
  }

  /** Scans one chunk a client sent; `tails` holds, per tap, the end of the previous chunk of this flow. */
  private scan(chunk: Buffer, tails: Map<object, string>): void {
    const text = chunk.toString('latin1');
    for (const tap of this.taps) {
      const joined = (tails.get(tap) ?? '') + text;
      for (let at = joined.indexOf(tap.pattern); at !== -1; at = joined.indexOf(tap.pattern, at + tap.pattern.length)) tap.count++;
      // Keep less than one pattern's length, so that a match is never counted twice.
      tails.set(tap, joined.slice(Math.max(0, joined.length - tap.pattern.length + 1)));
    }
  }

  /** The next connection is accepted, then held `ms` before it reaches the store. */
  holdNextConnection(ms: number): void {
    this.holdMs = ms;
  }

  private connect(client: net.Socket): void {
    if (client.destroyed) return;
    const upstream = net.connect(this.targetPort, this.targetHost);
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => s.destroy());
    }
    const flow = { client, upstream };
    this.flows.add(flow);
    const tails = new Map<object, string>();
    client.on('data', (chunk: Buffer) => this.scan(chunk, tails));
    client.on('close', () => this.flows.delete(flow));
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  }

  /** Refuses new connections and cuts the open ones: the store is "down". */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /**
   * A store that hangs: open connections are cut, new ones are accepted and
   * never answered (as a black-holed or stopped server looks from a client).
   */
  hang(opts: { keepOpen?: boolean } = {}): void {
    this.holding = true;
    if (!opts.keepOpen) {
      for (const s of this.sockets) s.destroy();
      return;
    }
    // Open connections stay up and carry nothing: commands on them time out.
    for (const { client, upstream } of this.flows) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
  }

  /** Brings the store back on the same port. */
  async restore(): Promise<void> {
    this.holding = false;
    if (this.server) {
      for (const s of this.sockets) s.destroy();
      return;
    }
    await this.start(this.port);
  }
}

/** A started proxy in front of the server a URL names, and the same URL through it. */
export async function proxiedUrl(url: string): Promise<{ proxy: TcpProxy; url: string }> {
  const target = new URL(url);
  const proxy = new TcpProxy(target.hostname, Number(target.port || (target.protocol.startsWith('redis') ? 6379 : 5432)));
  await proxy.start();
  const via = new URL(url);
  via.hostname = '127.0.0.1';
  via.port = String(proxy.port);
  return { proxy, url: via.toString() };
}
