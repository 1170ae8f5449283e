// The chart's NetworkPolicy values for the gRPC port (issue 16, item 6) and its TRUSTED_PROXIES default.
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { TrustedProxies } from '../../src/net/trusted-proxies.js';
import { renderChart, type K8sObject } from './helm.js';
import { validateAll } from './manifests.js';

interface Peer {
  namespaceSelector?: { matchExpressions?: Array<{ key: string; operator: string; values: string[] }>; matchLabels?: Record<string, string> };
  podSelector?: object;
}
interface Rule {
  ports: Array<{ port: string | number; protocol: string }>;
  from?: Peer[];
}
const policies = (objects: K8sObject[]) => objects.filter((o) => o.kind === 'NetworkPolicy');
const rules = (o: K8sObject) => (o.spec as { ingress: Rule[] }).ingress;
/** Every ingress rule, over all policies, that opens `port`. */
const rulesFor = (objects: K8sObject[], port: string) => policies(objects).flatMap(rules).filter((r) => r.ports.some((p) => p.port === port));

describe('NetworkPolicy for the gRPC port', () => {
  it('stays off by default', async () => {
    expect(policies(await renderChart())).toEqual([]);
  });

  it('networkPolicy.grpc.namespaces: the gRPC port is open to those namespaces only, the HTTP port as before', async () => {
    const objects = await renderChart({
      values: {
        networkPolicy: {
          enabled: true,
          ingress: { from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress' } } }] },
          grpc: { namespaces: ['istio-system', 'envoy-gateway-system'] },
        },
      },
    });
    expect(await validateAll(objects)).toEqual([]);
    const grpc = rulesFor(objects, 'grpc');
    expect(grpc).toHaveLength(1);
    expect(grpc[0]!.from).toEqual([
      { namespaceSelector: { matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: ['istio-system', 'envoy-gateway-system'] }] } },
    ]);
    const http = rulesFor(objects, 'http');
    expect(http).toHaveLength(1);
    expect(http[0]!.from).toEqual([{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress' } } }]);
    // Both select the same pods: policies add up, so the narrower one must be the only one naming the port.
    const selectors = policies(objects).map((p) => JSON.stringify((p.spec as { podSelector: object }).podSelector));
    expect(new Set(selectors).size).toBe(1);
  });

  it('networkPolicy.grpc.from adds peers of its own', async () => {
    const peer = { namespaceSelector: { matchLabels: { team: 'edge' } }, podSelector: { matchLabels: { app: 'envoy' } } };
    const objects = await renderChart({ values: { networkPolicy: { enabled: true, grpc: { from: [peer] } } } });
    expect(rulesFor(objects, 'grpc').map((r) => r.from)).toEqual([[peer]]);
  });

  it('without grpc values the gRPC port keeps the rule of ingress.from', async () => {
    const objects = await renderChart({ values: { networkPolicy: { enabled: true } } });
    expect(policies(objects)).toHaveLength(1);
    expect(rulesFor(objects, 'grpc')).toEqual(rulesFor(objects, 'http'));
  });
});

describe('TRUSTED_PROXIES in the chart', () => {
  it('is set by default to ranges the service accepts, so proxies in the cluster name their clients', async () => {
    const deployment = (await renderChart()).find((o) => o.kind === 'Deployment')!;
    const env = (deployment.spec as { template: { spec: { containers: Array<{ env: Array<{ name: string; value?: string }> }> } } }).template.spec.containers[0]!.env;
    const value = env.find((e) => e.name === 'TRUSTED_PROXIES')?.value;
    expect(value).toBeDefined();
    expect(loadConfig({ TRUSTED_PROXIES: value }).TRUSTED_PROXIES).toBe(value);
    const trusted = new TrustedProxies(value!);
    expect(trusted.has('10.42.3.7')).toBe(true);
    expect(trusted.has('203.0.113.7')).toBe(false);
  });
});
