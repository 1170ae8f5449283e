// A real Prometheus scrapes the running service while it decides real traffic: every metric the
// Grafana dashboard and the rules name is exposed, every panel query returns data, and promtool
// passes the rules with a test case for each alert, firing and quiet.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { generateKey } from '../../src/keys/format.js';
import type { RunningService } from '../../src/service.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { commandPath, PROMETHEUS_MISSING, PrometheusServer, type QueryResult } from '../helpers/prometheus.js';
import { CheckClient, startTestService, revokeKey } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const RULES = path.join(ROOT, 'deploy/prometheus/ryvion-authz-rules.yaml');
const RULES_TEST = path.join(ROOT, 'deploy/prometheus/ryvion-authz-rules.test.yaml');
const DASHBOARD = path.join(ROOT, 'deploy/grafana/ryvion-authz.json');

interface Target { expr: string; refId: string }
interface Panel { type: string; title: string; datasource?: { uid: string }; targets?: Target[] }
interface Rule { record?: string; alert?: string; expr: string }
interface AlertTest { alertname: string; exp_alerts?: unknown[] }

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
  uid: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query: unknown }> };
};
const panels = dashboard.panels.filter((p) => p.type !== 'row');
const rules = (YAML.parse(readFileSync(RULES, 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules);
const alertTests = (YAML.parse(readFileSync(RULES_TEST, 'utf8')) as { tests: Array<{ alert_rule_test?: AlertTest[] }> }).tests.flatMap(
  (t) => t.alert_rule_test ?? [],
);

/** Metric names an expression reads (recording-rule names, with colons, are not scraped). */
const metricNames = (expr: string): string[] => expr.match(/\b(?:ryvion_authz|process|nodejs)_[a-z0-9_]+\b/g) ?? [];

/** A panel query as Grafana would send it for the last few minutes, with every job selected. */
const asGrafanaSends = (expr: string): string =>
  expr.replaceAll('$__rate_interval', '1m').replaceAll('$__interval', '15s').replaceAll('$__range', '5m').replaceAll('$job', '.+');

const finite = (r: QueryResult[]): boolean => r.some((s) => Number.isFinite(Number(s.value[1])));

const promBinary = commandPath('prometheus');
const installed = promBinary !== undefined && commandPath('promtool') !== undefined;
/** Without the binaries these tests fail (never skip), each with the one line that says what to install. */
function needsPrometheus(): void {
  if (!installed) throw new Error(PROMETHEUS_MISSING);
}
let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let client: CheckClient;
let prometheus: PrometheusServer;
let scrape = '';

beforeAll(async () => {
  if (!installed) return;
  db = await freshDatabase();
  service = await startTestService(
    { DATABASE_URL: db.url, KEY_PEPPER: testPepper(), REDIS_URL: testRedisUrl(), REDIS_KEY_PREFIX: redisPrefix(), RATE_LIMIT_ENABLED: 'true',
      // Prometheus starting beside the service must not turn a slow query into a 503: this test is not about timeouts.
      STORE_TIMEOUT_MS: '2000' },
    { defaultMetrics: true },
  );
  client = new CheckClient(service.grpcPort);
  const repo = service.repository;
  const big = await repo.createAccount('prom-big@example.com', 'enterprise');
  const small = await repo.createAccount('prom-small@example.com', 'free');
  const buyer = (await repo.createKey({ accountId: big.id, name: 'buyer', scope: 'buyer', expiresAt: null })).secret;
  const readOnly = (await repo.createKey({ accountId: big.id, name: 'ro', scope: 'read-only', expiresAt: null })).secret;
  const limited = (await repo.createKey({ accountId: small.id, name: 'free', scope: 'buyer', expiresAt: null })).secret;
  const doomed = await repo.createKey({ accountId: big.id, name: 'doomed', scope: 'buyer', expiresAt: null });

  prometheus = new PrometheusServer(promBinary!, { target: `127.0.0.1:${service.opsPort}`, ruleFiles: [RULES], intervalSeconds: 1 });
  await prometheus.start();
  // A first scrape before any traffic, so rates have a baseline.
  await prometheus.waitFor('up{job="ryvion-authz"} == 1', (r) => r.length === 1);

  // About 4 s of mixed traffic: allowed in both header forms, 401s, 403s, 429s, a revocation, and HTTP API calls.
  const until = Date.now() + 4000;
  let revoked = false;
  while (Date.now() < until) {
    await Promise.all([
      client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${buyer}` } })),
      client.check(envoyCheckRequest({ method: 'GET', path: '/v1/models', headers: { 'x-api-key': buyer } })),
      client.check(envoyCheckRequest({ headers: {} })),
      client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${generateKey('live')}` } })),
      client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${readOnly}` } })),
      client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${limited}` } })),
      client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${doomed.secret}` } })),
      fetch(`http://127.0.0.1:${service.httpPort}/api/v1/auth/me`, { headers: { authorization: `Bearer ${buyer}` } }).then((r) => r.arrayBuffer()),
    ]);
    if (!revoked && Date.now() > until - 2500) {
      revoked = true;
      await revokeKey(service, doomed.key.id);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  scrape = await (await fetch(`http://127.0.0.1:${service.opsPort}/metrics`)).text();
  // Scrapes and rule evaluations after the traffic: wait until Prometheus has seen all of it.
  await prometheus.waitFor('ryvion_authz:decision_latency_seconds:p99_5m', finite);
  await prometheus.waitFor('sum(ryvion_authz_revocation_propagation_seconds_count)', (r) => Number(r[0]?.value[1]) >= 1);
  await new Promise((r) => setTimeout(r, 1500));
}, 45_000);

afterAll(async () => {
  client?.close();
  await prometheus?.stop();
  await service?.stop();
  await db?.drop();
});

describe('the dashboard and rules files', () => {
  it('the dashboard has uid ryvion-authz, schemaVersion 39 and a ${datasource} Prometheus variable used by every panel', () => {
    expect(dashboard.uid).toBe('ryvion-authz');
    expect(dashboard.schemaVersion).toBe(39);
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const p of panels) expect(p.datasource?.uid, p.title).toBe('${datasource}');
  });

  it('the dashboard has the panels operators look for', () => {
    const titles = panels.map((p) => p.title.toLowerCase()).join('\n');
    for (const want of ['decisions by outcome and reason', 'p50 / p99', 'cache hit ratio', 'store errors', 'degraded', 'rate-limited', 'revocation propagation p99', 'lease held', 'channels up']) {
      expect(titles).toContain(want);
    }
  });

  it('every alert has a promtool test case where it fires and one where it stays quiet', () => {
    const alerts = rules.filter((r) => r.alert).map((r) => r.alert!);
    expect(alerts.length).toBeGreaterThanOrEqual(6);
    for (const alert of alerts) {
      const cases = alertTests.filter((t) => t.alertname === alert);
      expect(cases.some((t) => (t.exp_alerts ?? []).length > 0), `${alert} firing`).toBe(true);
      expect(cases.some((t) => (t.exp_alerts ?? []).length === 0), `${alert} quiet`).toBe(true);
    }
  });
});

describe('promtool', () => {
  beforeEach(needsPrometheus);

  it('check rules passes', async () => {
    const { stdout } = await run('promtool', ['check', 'rules', RULES]);
    expect(stdout).toMatch(/SUCCESS: \d+ rules found/);
  });

  it('test rules passes', async () => {
    const r = await run('promtool', ['test', 'rules', RULES_TEST]).catch((err: { stdout?: string; stderr?: string }) => {
      throw new Error(`promtool test rules failed:\n${err.stdout ?? ''}${err.stderr ?? ''}`);
    });
    expect(r.stdout).toContain('SUCCESS');
  });
});

describe('a real Prometheus scraping the service under traffic', () => {
  beforeEach(needsPrometheus);

  it('every metric the dashboard and the rules read is in the scrape', () => {
    const exposed = new Set(
      scrape
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.split(/[{ ]/)[0]),
    );
    const named = new Set([...panels.flatMap((p) => (p.targets ?? []).flatMap((t) => metricNames(t.expr))), ...rules.flatMap((r) => metricNames(r.expr))]);
    expect(named.size).toBeGreaterThan(10);
    expect([...named].filter((n) => !exposed.has(n))).toEqual([]);
  });

  it('every dashboard panel query returns data after the traffic', async () => {
    const empty: string[] = [];
    for (const p of panels) {
      for (const t of p.targets ?? []) {
        const result = await prometheus.query(asGrafanaSends(t.expr));
        if (!finite(result)) empty.push(`${p.title} [${t.refId}]: ${JSON.stringify(result).slice(0, 200)}`);
      }
    }
    expect(empty).toEqual([]);
  });

  it('the traffic shows up by outcome and reason, over both transports', async () => {
    const rows = await prometheus.query('sum by (transport, reason) (increase(ryvion_authz_decisions_total[1m])) > 0');
    const seen = rows.map((r) => `${r.metric.transport} ${r.metric.reason}`);
    for (const want of ['grpc allowed', 'grpc missing_api_key', 'grpc invalid_api_key', 'grpc insufficient_scope', 'grpc rate_limit_exceeded', 'http allowed']) {
      expect(seen).toContain(want);
    }
  });

  it('Prometheus loads the rules and evaluates every one without error; the recording rules have data', async () => {
    const data = await prometheus.api<{ groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string; type: string }> }> }>('/api/v1/rules');
    const loaded = data.groups.flatMap((g) => g.rules);
    expect(loaded.map((r) => r.name).sort()).toEqual(rules.map((r) => r.record ?? r.alert).sort());
    expect(loaded.filter((r) => r.health !== 'ok')).toEqual([]);
    for (const r of rules.filter((x) => x.record)) {
      expect(finite(await prometheus.query(r.record!)), r.record).toBe(true);
    }
  });

  it('series for known label values exist at zero before any event', async () => {
    for (const [expr, want] of [
      ['ryvion_authz_store_errors_total{store="postgres",kind="timeout"}', 0],
      ['ryvion_authz_decisions_total{transport="http",reason="auth_unavailable"}', 0],
      ['ryvion_authz_management_requests_total{operation="revoke",status_class="5xx"}', 0],
      ['ryvion_authz_policy_reloads_total{result="failure"}', 0],
      ['ryvion_authz_ready', 1],
      ['ryvion_authz_store_up{store="redis"}', 1],
      ['ryvion_authz_store_up{store="postgres"}', 1],
    ] as const) {
      const r = await prometheus.query(expr);
      expect(r.map((s) => Number(s.value[1])), expr).toEqual([want]);
    }
  });
});
