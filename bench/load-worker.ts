// A load-generator process for the scenarios that need many distinct keys (h2load sends one
// fixed body). bench/run.ts starts several and merges what they measure.
//
// It speaks gRPC over node:http2 directly: every CheckRequest is encoded and framed before the
// clock starts, a call is one HTTP/2 stream (POST, content-type application/grpc, te trailers),
// and an answer is classified by its grpc-status trailer and CheckResponse.status.code without a
// full decode. A grpc-js client does the same work at several times the CPU per call (it tops
// out near 1.5 k calls/s per process here), which would measure the generator, not the server.
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import { checkRequest, encodeCheckRequest, grpcFrame, responseCode } from './lib/request.js';

export interface WorkerConfig {
  port: number;
  /** One key per line, optionally `key<TAB>source address`. */
  keysFile: string;
  /** This worker sends keys i with i % step === offset, in order. */
  offset: number;
  step: number;
  /** cycle: round and round until the time is up; once: each key once, then stop. */
  mode: 'cycle' | 'once';
  /** Calls in flight at once, spread over the connections. */
  concurrency: number;
  /** HTTP/2 connections. */
  channels: number;
  /**
   * Paced: calls started per second by this worker, on schedule whether or not answers came back
   * (at most `concurrency` in flight); latency counts from the scheduled start, so a stall shows.
   * Unset: closed loop, each slot sends its next call when the last is answered.
   */
  ratePerSec?: number;
}

export interface WorkerResult {
  /** Calls started (in `once` mode and with a shared sequence: the distinct keys sent). */
  sent: number;
  /** Answers by CheckResponse.status.code; "grpc:N" for a non-zero grpc-status, "error" for a failed stream. */
  codes: Record<string, number>;
  /** Latency of each answered call, in microseconds. */
  latenciesUs: number[];
  elapsedMs: number;
}

type Msg = { cmd: 'go'; durationMs: number } | { cmd: 'exit' };

const config = JSON.parse(process.env.BENCH_WORKER ?? '{}') as WorkerConfig;
const PATH = '/envoy.service.auth.v3.Authorization/Check';

const frames: Buffer[] = [];
const lines = readFileSync(config.keysFile, 'utf8').split('\n');
for (let i = 0; i < lines.length; i++) {
  if (!lines[i] || i % config.step !== config.offset) continue;
  const [key, source] = lines[i]!.split('\t');
  frames.push(grpcFrame(encodeCheckRequest(checkRequest({ key: key!, ...(source ? { source } : {}), requestId: `bench-${i}` }))));
}

const sessions = Array.from({ length: config.channels }, () => {
  const s = http2.connect(`http://127.0.0.1:${config.port}`, { settings: { enablePush: false } });
  s.on('error', (err) => process.stderr.write(`load-worker: session error ${err.message}\n`));
  return s;
});

function ready(): Promise<void> {
  return Promise.all(
    sessions.map((s) => new Promise<void>((resolve, reject) => (s.connecting ? s.once('connect', () => resolve()).once('error', reject) : resolve()))),
  ).then(() => undefined);
}

/** One call: resolves with the label of its answer. */
function call(session: http2.ClientHttp2Session, frame: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const req = session.request({ ':method': 'POST', ':path': PATH, 'content-type': 'application/grpc', te: 'trailers' });
    const chunks: Buffer[] = [];
    let grpcStatus: string | undefined;
    req.on('response', (h) => {
      if (h['grpc-status'] !== undefined) grpcStatus = String(h['grpc-status']);
    });
    req.on('trailers', (t) => {
      if (t['grpc-status'] !== undefined) grpcStatus = String(t['grpc-status']);
    });
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('error', () => resolve('error'));
    req.on('close', () => {
      if (grpcStatus === undefined) return resolve('error');
      if (grpcStatus !== '0') return resolve(`grpc:${grpcStatus}`);
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      resolve(body.length >= 5 ? String(responseCode(body.subarray(5, 5 + body.readUInt32BE(1)))) : 'error');
    });
    req.end(frame);
  });
}

async function paced(durationMs: number, rate: number): Promise<WorkerResult> {
  const codes: Record<string, number> = {};
  const latenciesUs: number[] = [];
  let next = 0;
  let inFlight = 0;
  const started = performance.now();
  const total = Math.floor((durationMs / 1000) * rate);
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate) + 1);
      while (next < due && inFlight < config.concurrency) {
        const i = next++;
        const scheduled = started + (i * 1000) / rate;
        inFlight++;
        void call(sessions[i % sessions.length]!, frames[i % frames.length]!).then((label) => {
          inFlight--;
          latenciesUs.push(Math.round((performance.now() - scheduled) * 1000));
          codes[label] = (codes[label] ?? 0) + 1;
          if (next >= total && inFlight === 0) resolve();
        });
      }
      if (next < total) setTimeout(tick, 1);
    };
    tick();
  });
  return { sent: next, codes, latenciesUs, elapsedMs: performance.now() - started };
}

async function run(durationMs: number): Promise<WorkerResult> {
  if (config.ratePerSec) return paced(durationMs, config.ratePerSec);
  const codes: Record<string, number> = {};
  const latenciesUs: number[] = [];
  let next = 0;
  const started = performance.now();
  const end = started + durationMs;
  const slot = async (s: number): Promise<void> => {
    const session = sessions[s % sessions.length]!;
    while (performance.now() < end && frames.length > 0 && !(config.mode === 'once' && next >= frames.length)) {
      const frame = frames[next++ % frames.length]!;
      const t0 = performance.now();
      const label = await call(session, frame);
      latenciesUs.push(Math.round((performance.now() - t0) * 1000));
      codes[label] = (codes[label] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: config.concurrency }, (_, s) => slot(s)));
  return { sent: next, codes, latenciesUs, elapsedMs: performance.now() - started };
}

process.on('message', (m: Msg) => {
  if (m.cmd === 'exit') {
    for (const s of sessions) s.close();
    process.exit(0);
  }
  void run(m.durationMs).then((r) => process.send!({ kind: 'result', result: r }));
});

ready().then(
  () => process.send!({ kind: 'ready', bodies: frames.length }),
  (err: Error) => {
    process.stderr.write(`load-worker: ${err.message}\n`);
    process.exit(1);
  },
);
