// The gRPC port cuts connections that never become HTTP/2 and caps how many are open, while
// calls in progress are never cut for being long (issue 16, item 6).
import http2 from 'node:http2';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { Decision } from '../../src/check/decision.js';
import type { CheckPipeline } from '../../src/check/pipeline.js';
import { DecisionRecorder } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { GrpcCheckServer, type GrpcServerOptions } from '../../src/transport/grpc/server.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient } from '../helpers/service.js';

const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
let server: GrpcCheckServer | undefined;
const sockets: net.Socket[] = [];
const clients: CheckClient[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const c of clients.splice(0)) c.close();
  await server?.shutdown(1000);
  server = undefined;
});

async function start(opts: Partial<GrpcServerOptions>, decide: () => Promise<Decision> = async () => ({ allow: false, reason: 'missing_api_key' })): Promise<number> {
  server = new GrpcCheckServer({ decide } as unknown as CheckPipeline, new DecisionRecorder(createLogger('silent'), new Metrics({ defaultMetrics: false })), {
    stripCredentialHeaders: true,
    unavailableMode: 'deny',
    ...opts,
  });
  server.setServing(true);
  return server.listen('127.0.0.1', 0);
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
    sockets.push(s);
  });
}

/** Resolves with the milliseconds until the server closed `s`; rejects after `ceilingMs`. */
function closedWithin(s: net.Socket, ceilingMs: number): Promise<number> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    if (s.destroyed || s.readableEnded) return resolve(0);
    const timer = setTimeout(() => reject(new Error(`still open after ${ceilingMs} ms`)), ceilingMs);
    s.on('error', () => undefined);
    s.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
    s.resume();
  });
}

const check = (port: number): Promise<unknown> => {
  const client = new CheckClient(port);
  clients.push(client);
  return client.check(envoyCheckRequest(), 10_000);
};

describe('gRPC port connections', () => {
  it('a connection that never sends the HTTP/2 preface is closed after the handshake timeout', async () => {
    const port = await start({ handshakeTimeoutMs: 200 });
    const silent = await connect(port);
    await expect(closedWithin(silent, 10_000)).resolves.toBeGreaterThanOrEqual(0);
  });

  it('a connection that sends part of the preface and stalls is closed too', async () => {
    const port = await start({ handshakeTimeoutMs: 200 });
    const slow = await connect(port);
    slow.write(PREFACE.slice(0, 10));
    await expect(closedWithin(slow, 10_000)).resolves.toBeGreaterThanOrEqual(0);
  });

  it('a connection that is not HTTP/2 is closed at its first bytes, without waiting for the timeout', async () => {
    const port = await start({ handshakeTimeoutMs: 60_000 });
    const h1 = await connect(port);
    h1.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await expect(closedWithin(h1, 10_000)).resolves.toBeGreaterThanOrEqual(0);
  });

  it('beyond the connection cap new connections are closed; a freed slot serves a real call again', async () => {
    const port = await start({ maxConnections: 2, handshakeTimeoutMs: 60_000 });
    const held = [await connect(port), await connect(port)];
    const third = await connect(port);
    await expect(closedWithin(third, 10_000)).resolves.toBeGreaterThanOrEqual(0);
    held[0]!.destroy();
    // The server counts the freed slot once it sees the close: poll with real calls.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const ok = await check(port).then(() => true, () => false);
      if (ok) break;
      if (Date.now() > deadline) throw new Error('no call succeeded after a slot was freed');
    }
  });

  it('a call that lasts longer than the idle timeout is answered: only idle connections are closed', async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const port = await start({ idleTimeoutMs: 200 }, async () => {
      await released;
      return { allow: false, reason: 'missing_api_key' };
    });
    const call = check(port);
    setTimeout(release, 1000);
    await expect(call).resolves.toMatchObject({ status: { code: 16 } });
  });

  it('an HTTP/2 connection with no call is closed after the idle timeout', async () => {
    const port = await start({ idleTimeoutMs: 200 });
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('idle session still open after 10 s')), 10_000);
      session.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  });
});
