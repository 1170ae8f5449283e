// The gRPC port's own accept loop: a connection cap and an HTTP/2 preface deadline in front of grpc-js,
// which turns socket timeouts off on the server it would listen with (its idle limit starts only
// once a session exists, and nothing bounds how many connections are open).
import net from 'node:net';
import type * as grpc from '@grpc/grpc-js';

// RFC 9113 section 3.4: every HTTP/2 connection opens with these 24 bytes.
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export interface GrpcListenerOptions {
  /** Open connections; beyond it new ones are closed at once. */
  maxConnections: number;
  /** A connection that has not sent the whole preface by then is closed. */
  handshakeTimeoutMs: number;
}

type Injector = ReturnType<grpc.Server['createConnectionInjector']>;

/**
 * Accepts TCP connections, holds each until its preface has arrived (refusing anything else), then
 * hands it to grpc-js with the bytes read so far put back. Connections are counted from accept,
 * so a flood of silent sockets meets the cap as well.
 */
export class GrpcListener {
  private readonly tcp: net.Server;
  private readonly pending = new Set<net.Socket>();

  constructor(
    private readonly injector: Injector,
    opts: GrpcListenerOptions,
  ) {
    this.tcp = net.createServer({ noDelay: true }, (socket) => this.accept(socket, opts.handshakeTimeoutMs));
    this.tcp.maxConnections = opts.maxConnections;
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.tcp.once('error', reject);
      this.tcp.listen({ host, port }, () => {
        this.tcp.off('error', reject);
        const address = this.tcp.address();
        resolve(typeof address === 'object' && address ? address.port : port);
      });
    });
  }

  /** Stops accepting and drops connections still in their handshake; established ones belong to grpc-js's shutdown. */
  close(): void {
    this.tcp.close();
    for (const socket of this.pending) socket.destroy();
    this.pending.clear();
  }

  private accept(socket: net.Socket, handshakeTimeoutMs: number): void {
    this.pending.add(socket);
    let received: Buffer = Buffer.alloc(0);
    const drop = (): void => {
      clearTimeout(timer);
      this.pending.delete(socket);
      socket.destroy();
    };
    const timer = setTimeout(drop, handshakeTimeoutMs);
    timer.unref();
    const onData = (chunk: Buffer): void => {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
      const n = Math.min(received.length, PREFACE.length);
      if (!received.subarray(0, n).equals(PREFACE.subarray(0, n))) return drop();
      if (received.length < PREFACE.length) return;
      clearTimeout(timer);
      this.pending.delete(socket);
      socket.off('data', onData);
      socket.off('error', drop);
      socket.off('close', drop);
      socket.pause();
      // Node's HTTP/2 session reads whatever is buffered on the socket before its own reads.
      socket.unshift(received);
      this.injector.injectConnection(socket);
    };
    socket.on('data', onData);
    socket.on('error', drop);
    socket.on('close', drop);
  }
}
