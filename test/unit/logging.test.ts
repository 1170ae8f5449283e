// The logger redacts credential headers wherever they sit, errors included; allowed decisions are sampled.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { Decision } from '../../src/check/decision.js';
import { DecisionRecorder } from '../../src/check/decision-log.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';

function capture(level = 'info'): { logger: ReturnType<typeof createLogger>; lines: () => Array<Record<string, unknown>>; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  const text = (): string => chunks.join('');
  return {
    logger: createLogger(level, sink),
    text,
    lines: () => text().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('redaction', () => {
  it('an error object carrying headers is logged with authorization, x-api-key and cookie redacted', () => {
    const log = capture();
    log.logger.error({ err: { headers: { authorization: 'Bearer x', 'x-api-key': 'ryv_live_secret1', cookie: 'sid=secret2', accept: 'application/json' } } }, 'boom');
    expect(log.lines()[0]!.err).toEqual({
      headers: { authorization: '[redacted]', 'x-api-key': '[redacted]', cookie: '[redacted]', accept: 'application/json' },
    });
    expect(log.text()).not.toMatch(/Bearer x|secret1|secret2/);
  });

  it('an Error instance from an HTTP client: its own, its config and its response headers are redacted', () => {
    const log = capture();
    const err = Object.assign(new Error('request failed'), {
      headers: { authorization: 'Bearer one' },
      config: { headers: { Authorization: 'Bearer two', 'X-API-Key': 'ryv_live_three' } },
      request: { headers: { 'x-api-key': 'ryv_live_four' } },
      response: { headers: { 'set-cookie': 'session=five' } },
    });
    log.logger.error({ err }, 'upstream failed');
    const line = log.lines()[0]!;
    expect(line.err).toMatchObject({ message: 'request failed', headers: { authorization: '[redacted]' } });
    expect(log.text()).not.toMatch(/Bearer one|Bearer two|three|four|five/);
  });

  it('request headers, at the top level or nested, are redacted', () => {
    const log = capture();
    log.logger.info({ req: { headers: { authorization: 'Bearer six' }, raw: { headers: { cookie: 'seven' } } }, 'x-api-key': 'eight', authorization: 'nine' }, 'req');
    expect(log.text()).not.toMatch(/six|seven|eight|nine/);
    expect(log.lines()[0]).toMatchObject({ req: { headers: { authorization: '[redacted]' } }, 'x-api-key': '[redacted]', authorization: '[redacted]' });
  });
});

describe('decision lines', () => {
  it('a denial line holds exactly its fixed fields; an internal error from the same recorder is still redacted', () => {
    const log = capture();
    const recorder = new DecisionRecorder(log.logger, new Metrics({ defaultMetrics: false }));
    const identity = { accountId: 'acct_1', keyId: 'key_1', scope: 'buyer', plan: 'free', expiresAt: null, keyRpm: null };
    recorder.record('grpc', { allow: false, reason: 'invalid_api_key', detail: 'revoked', identity }, 'req-1', 'POST', process.hrtime.bigint());
    recorder.internalError('grpc', 'req-2', Object.assign(new Error('store exploded'), { headers: { authorization: 'Bearer ten' } }));
    const [denial, error] = log.lines();
    expect(Object.keys(denial!).sort()).toEqual(
      ['account_id', 'decision', 'detail', 'key_id', 'latency_ms', 'level', 'method', 'msg', 'reason', 'request_id', 'service', 'time', 'transport'].sort(),
    );
    expect(denial).toMatchObject({ level: 'info', msg: 'denied', reason: 'invalid_api_key', detail: 'revoked', key_id: 'key_1', account_id: 'acct_1', request_id: 'req-1' });
    expect(error).toMatchObject({ level: 'error', request_id: 'req-2', err: { message: 'store exploded', headers: { authorization: '[redacted]' } } });
    expect(log.text()).not.toContain('Bearer ten');
  });
});

describe('allowed decisions are sampled (LOG_ALLOWED_SAMPLE_RATE)', () => {
  const allow: Decision = { allow: true, identity: { accountId: 'acct_1', keyId: 'key_1', scope: 'buyer', plan: 'free', expiresAt: null, keyRpm: null }, permission: 'inference' };
  const deny: Decision = { allow: false, reason: 'missing_api_key' };
  const record = (recorder: DecisionRecorder, decision: Decision, id: string): void =>
    recorder.record('grpc', decision, id, 'POST', process.hrtime.bigint());

  it('rate 0 (the default): an allowed decision is not logged at info, a denial always is', () => {
    const log = capture('info');
    const recorder = new DecisionRecorder(log.logger, new Metrics({ defaultMetrics: false }));
    record(recorder, allow, 'a');
    record(recorder, deny, 'd');
    expect(log.lines().map((l) => [l.request_id, l.level])).toEqual([['d', 'info']]);
  });

  it('rate 0 at debug level: every allowed decision is logged at debug with its ids and latency', () => {
    const log = capture('debug');
    record(new DecisionRecorder(log.logger, new Metrics({ defaultMetrics: false })), allow, 'a');
    expect(log.lines()[0]).toMatchObject({ level: 'debug', request_id: 'a', key_id: 'key_1', account_id: 'acct_1', reason: 'allowed', latency_ms: expect.any(Number) });
  });

  it('rate 1: every allowed decision is logged at info', () => {
    const log = capture('info');
    const recorder = new DecisionRecorder(log.logger, new Metrics({ defaultMetrics: false }), { allowedSampleRate: 1 });
    for (const id of ['a', 'b', 'c']) record(recorder, allow, id);
    expect(log.lines().map((l) => [l.request_id, l.level])).toEqual([['a', 'info'], ['b', 'info'], ['c', 'info']]);
  });

  it('rate 0.25: the decisions whose draw falls under the rate go to info, the others to debug', () => {
    const log = capture('debug');
    const draws = [0.1, 0.9, 0.24, 0.25];
    const recorder = new DecisionRecorder(log.logger, new Metrics({ defaultMetrics: false }), { allowedSampleRate: 0.25, random: () => draws.shift()! });
    for (const id of ['a', 'b', 'c', 'd']) record(recorder, allow, id);
    expect(log.lines().map((l) => [l.request_id, l.level])).toEqual([['a', 'info'], ['b', 'debug'], ['c', 'info'], ['d', 'debug']]);
  });
});
