// Hot-path counter cells read exactly like prom-client's own counting.
import client from 'prom-client';
import { describe, expect, it } from 'vitest';
import { histogramObserver, hotCounter } from '../../src/observability/hot-metrics.js';

function setup(): { registry: client.Registry; counter: client.Counter<'tier' | 'result'> } {
  const registry = new client.Registry();
  const counter = new client.Counter({ name: 'c_total', help: 'h', labelNames: ['tier', 'result'] as const, registers: [registry] });
  return { registry, counter };
}

async function valueOf(counter: client.Counter<'tier' | 'result'>, labels: Record<string, string>): Promise<number> {
  const { values } = await counter.get();
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k as 'tier'] === x)).reduce((a, v) => a + v.value, 0);
}

describe('hotCounter', () => {
  it('adds its counts to the counter whenever the counter is read, once', async () => {
    const { registry, counter } = setup();
    const hit = hotCounter(counter, { tier: 'memory', result: 'hit' });
    for (let i = 0; i < 5; i++) hit.inc();
    counter.labels('memory', 'hit').inc(2);
    expect(await valueOf(counter, { tier: 'memory', result: 'hit' })).toBe(7);
    expect(await valueOf(counter, { tier: 'memory', result: 'hit' })).toBe(7);
    hit.inc();
    expect(await registry.metrics()).toContain('c_total{tier="memory",result="hit"} 8');
  });

  it('gives one cell per label set, whatever the key order, and keeps label sets apart', async () => {
    const { counter } = setup();
    const a = hotCounter(counter, { tier: 'memory', result: 'hit' });
    const b = hotCounter(counter, { result: 'hit', tier: 'memory' });
    const c = hotCounter(counter, { tier: 'redis', result: 'hit' });
    expect(a).toBe(b);
    a.inc();
    b.inc();
    c.inc();
    expect(await valueOf(counter, { tier: 'memory' })).toBe(2);
    expect(await valueOf(counter, { tier: 'redis' })).toBe(1);
  });

  it('keeps a collect hook the counter already had', async () => {
    const registry = new client.Registry();
    let collected = 0;
    const counter = new client.Counter({
      name: 'd_total',
      help: 'h',
      labelNames: ['tier', 'result'] as const,
      registers: [registry],
      collect() {
        collected++;
      },
    });
    hotCounter(counter, { tier: 'x', result: 'y' }).inc();
    expect(await valueOf(counter, { tier: 'x' })).toBe(1);
    expect(collected).toBe(1);
  });
});

describe('histogramObserver', () => {
  it('observes like labels().observe()', async () => {
    const registry = new client.Registry();
    const h = new client.Histogram({ name: 'h_seconds', help: 'h', labelNames: ['transport'] as const, buckets: [0.001, 0.01], registers: [registry] });
    const observe = histogramObserver(h, { transport: 'grpc' });
    observe(0.0005);
    observe(0.005);
    h.labels('grpc').observe(0.5);
    const text = await registry.metrics();
    expect(text).toContain('h_seconds_bucket{le="0.001",transport="grpc"} 1');
    expect(text).toContain('h_seconds_bucket{le="0.01",transport="grpc"} 2');
    expect(text).toContain('h_seconds_count{transport="grpc"} 3');
  });
});
