// The Helm chart, rendered by a real helm (lint, template, schema) and checked object by object
// (kubernetes-models), then against the service itself: the environment the Deployment sets is
// accepted by the service's own configuration parser, ports and probes match it, the policy
// ConfigMap compiles with the service's policy compiler, and copied files stay in sync.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { buildProgram } from '../../src/cli/main.js';
import { CONFIG_VARIABLES, loadConfig } from '../../src/config.js';
import { compilePolicy } from '../../src/policy/policy.js';
import { CHART_DIR, ROOT, findObject, helmLint, helmNotes, helmTemplate, renderChart, type K8sObject } from './helm.js';
import { validateAll } from './manifests.js';

// Minimal typings of what the tests read from rendered objects.
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string } };
}
interface ContainerPort {
  name?: string;
  containerPort: number;
}
interface Probe {
  httpGet?: { path: string; port: string | number };
  grpc?: { port: number };
}
interface Container {
  name: string;
  image?: string;
  args?: string[];
  env?: EnvVar[];
  ports?: ContainerPort[];
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  startupProbe?: Probe;
  securityContext?: Record<string, unknown>;
  volumeMounts?: Array<{ name: string; mountPath: string; subPath?: string; readOnly?: boolean }>;
}
interface PodSpec {
  containers: Container[];
  volumes?: Array<{ name: string; configMap?: { name: string }; emptyDir?: object }>;
  securityContext?: Record<string, unknown>;
  terminationGracePeriodSeconds?: number;
  topologySpreadConstraints?: Array<{ labelSelector?: { matchLabels?: Record<string, string> } }>;
}
interface PodTemplate {
  metadata: { labels: Record<string, string>; annotations?: Record<string, string> };
  spec: PodSpec;
}
interface DeploymentSpec {
  replicas?: number;
  selector: { matchLabels: Record<string, string> };
  template: PodTemplate;
}
interface ServicePort {
  name: string;
  port: number;
  targetPort: string | number;
  appProtocol?: string;
}

const deploymentSpec = (objects: K8sObject[]) => findObject(objects, 'Deployment').spec as DeploymentSpec;
const container = (objects: K8sObject[]) => deploymentSpec(objects).template.spec.containers[0]!;

const SECRET_SAMPLES: Record<string, string> = {
  DATABASE_URL: 'postgres://ryvion:secret@postgres.ryvion.svc:5432/ryvion',
  DATABASE_LISTEN_URL: 'postgres://ryvion:secret@postgres-direct.ryvion.svc:5432/ryvion',
  REDIS_URL: 'redis://redis.ryvion.svc:6379',
  KEY_PEPPER: 'p'.repeat(48),
  KEY_PEPPER_PREVIOUS: 'q'.repeat(48),
  USAGE_SECRET: 'u'.repeat(48),
  ACCESS_LOG_SECRET: 'a'.repeat(64),
  ACCESS_LOG_SECRET_PREVIOUS: 'b'.repeat(64),
  OWNER_NOTIFICATION_WEBHOOK_SECRET: 'n'.repeat(32),
};

/** The container's environment as the service would see it, Secrets replaced by sample values. */
function environmentOf(c: Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.secretKeyRef) env[e.name] = SECRET_SAMPLES[e.name] ?? 'from-a-secret';
  }
  return env;
}

function portNumber(c: Container, port: string | number): number | undefined {
  return typeof port === 'number' ? port : c.ports?.find((p) => p.name === port)?.containerPort;
}

const REDIS = { redis: { existingSecret: 'ryvion-authz-redis' } };

/** The value sets rendered and validated; each is a realistic install. */
const VALUE_SETS: Record<string, object> = {
  defaults: {},
  'redis secret, three replicas': { ...REDIS, replicaCount: 3 },
  'autoscaling with a PDB': {
    ...REDIS,
    autoscaling: { enabled: true, minReplicas: 3, maxReplicas: 12, targetCPUUtilizationPercentage: 60, targetMemoryUtilizationPercentage: 80 },
    podDisruptionBudget: { enabled: true, minAvailable: 2 },
    // (12 + 1) x (10 + 1) + 1 + 3 + 3 = 150 connections
    database: { maxConnections: 200 },
  },
  'Redis Sentinel with ACL users and TLS': {
    redis: {
      sentinel: { addresses: ['redis-sentinel-0.redis:26379', 'redis-sentinel-1.redis:26379'], masterName: 'main', username: 'watcher', existingSecret: 'redis-sentinel' },
      auth: { username: 'ryvion', existingSecret: 'redis-data' },
      tls: { enabled: true, caExistingSecret: 'redis-ca', serverName: 'redis.internal' },
    },
    replicaCount: 3,
  },
  'Redis Cluster with a password': {
    redis: { cluster: { nodes: ['10.0.0.1:6379', '10.0.0.2:6379', '10.0.0.3:6379'] }, auth: { existingSecret: 'redis-data', existingSecretKey: 'password' } },
    replicaCount: 3,
  },
  'all optional resources on': {
    ...REDIS,
    image: { repository: 'registry.example.com/ryvion/ryvion-authz', digest: `sha256:${'a'.repeat(64)}` },
    imagePullSecrets: [{ name: 'registry' }],
    keyPepper: { existingSecret: 'ryvion-authz-pepper', version: 2, previousSecretKey: 'KEY_PEPPER_PREVIOUS' },
    usage: { enabled: true, existingSecret: 'ryvion-authz-usage' },
    database: { listenUrl: { existingSecretKey: 'DATABASE_LISTEN_URL' } },
    accessLog: { existingSecret: 'ryvion-authz-access-log', previousSecretKey: 'ACCESS_LOG_SECRET_PREVIOUS' },
    config: { KEY_ENVIRONMENT: 'test', LOG_LEVEL: 'debug', STORE_TIMEOUT_MS: 80, UNAVAILABLE_MODE: 'rpc_error', RATE_LIMIT_LOCAL_SHARE: 0.25, TRUSTED_PROXIES: '10.20.0.0/16' },
    extraEnv: [{ name: 'NODE_OPTIONS', value: '--max-old-space-size=256' }],
    podAnnotations: { 'example.com/team': 'platform' },
    priorityClassName: 'system-cluster-critical',
    autoscaling: { enabled: true, minReplicas: 2, maxReplicas: 6 },
    podDisruptionBudget: { enabled: true },
    metrics: {
      serviceMonitor: { enabled: true, labels: { release: 'kube-prometheus-stack' } },
      prometheusRule: { enabled: true, labels: { release: 'kube-prometheus-stack' } },
      grafanaDashboard: { enabled: true, annotations: { grafana_folder: 'Ryvion' } },
    },
    networkPolicy: {
      enabled: true,
      ingress: { from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'istio-system' } } }] },
      egress: { postgres: { to: [{ ipBlock: { cidr: '10.20.0.0/16' } }] } },
    },
    policy: { content: `# site policy\n${readFileSync(join(ROOT, 'policy', 'default.yaml'), 'utf8')}` },
    proxyExamples: { enabled: true },
    ownerNotification: { webhookUrl: 'https://hooks.example.com/ryvion/leaks', existingSecret: 'ryvion-authz-notify' },
  },
  'existing policy ConfigMap, no migration Job': {
    policy: { existingConfigMap: 'my-policy' },
    migration: { enabled: false },
    serviceAccount: { create: false, name: 'shared' },
  },
};

const rendered: Record<string, K8sObject[]> = {};

beforeAll(async () => {
  // All renders at once: each helm call is a separate process.
  const entries = await Promise.all(Object.entries(VALUE_SETS).map(async ([name, values]) => [name, await renderChart({ values })] as const));
  for (const [name, objects] of entries) rendered[name] = objects;
});

describe('helm chart: lint and render', () => {
  it('passes helm lint --strict with the defaults and with every optional resource on', async () => {
    const results = await Promise.all([helmLint(), helmLint({ values: VALUE_SETS['all optional resources on']! })]);
    for (const r of results) expect(r.code, r.stdout + r.stderr).toBe(0);
  });

  it.each(Object.keys(VALUE_SETS))('renders valid Kubernetes objects: %s', async (name) => {
    const objects = rendered[name]!;
    expect(objects.length).toBeGreaterThan(0);
    expect(await validateAll(objects)).toEqual([]);
    for (const o of objects) {
      expect(o.metadata.namespace ?? 'ryvion').toBe('ryvion');
      expect(o.metadata.labels?.['app.kubernetes.io/name']).toBe('ryvion-authz');
      expect(o.metadata.labels?.['app.kubernetes.io/instance']).toBe('ryvion-authz');
      expect(o.metadata.labels?.['app.kubernetes.io/managed-by']).toBe('Helm');
    }
    const names = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(new Set(names).size).toBe(names.length);
  });

  it('renders the optional resources only when asked', () => {
    const kinds = (name: string) => rendered[name]!.map((o) => o.kind).sort();
    expect(kinds('defaults')).toEqual(['ConfigMap', 'Deployment', 'Job', 'Service', 'Service', 'ServiceAccount']);
    expect(kinds('all optional resources on')).toEqual(
      ['ConfigMap', 'ConfigMap', 'ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Job', 'NetworkPolicy', 'PodDisruptionBudget', 'PrometheusRule', 'Service', 'Service', 'ServiceAccount', 'ServiceMonitor'].sort(),
    );
    expect(kinds('existing policy ConfigMap, no migration Job')).toEqual(['Deployment', 'Service', 'Service']);
  });
});

describe('helm chart: refused values', () => {
  it('refuses a wrong type with the schema message naming the key', async () => {
    const r = await helmTemplate({ values: { replicaCount: 'three' } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/replicaCount/);
    expect(r.stderr).toMatch(/integer/);
  });

  it('refuses a missing database or pepper Secret (the schema requires both names)', async () => {
    const [noDb, noPepper, none] = await Promise.all([
      helmTemplate({ withRequired: false, values: { keyPepper: { existingSecret: 'p' } } }),
      helmTemplate({ withRequired: false, values: { database: { existingSecret: 'd' } } }),
      helmTemplate({ withRequired: false }),
    ]);
    for (const r of [noDb, noPepper, none]) {
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/values don't meet the specifications of the schema/);
    }
    expect(noDb.stderr).toMatch(/database[./]existingSecret/);
    expect(noDb.stderr).not.toMatch(/keyPepper/);
    expect(noPepper.stderr).toMatch(/keyPepper[./]existingSecret/);
    expect(none.stderr).toMatch(/database[./]existingSecret/);
    expect(none.stderr).toMatch(/keyPepper[./]existingSecret/);
  });

  it('refuses settings the service does not read, and values that contradict each other', async () => {
    const [typo, plainSecret, grace, hpaWithoutRedis, pepperVersion] = await Promise.all([
      helmTemplate({ values: { config: { LOG_LEVLE: 'debug' } } }),
      helmTemplate({ values: { config: { KEY_PEPPER: 'a-secret-in-plain-text-is-refused' } } }),
      helmTemplate({ values: { terminationGracePeriodSeconds: 12, shutdown: { readinessDelayMs: 5000, drainMs: 10000 } } }),
      helmTemplate({ values: { autoscaling: { enabled: true } } }),
      helmTemplate({ values: { keyPepper: { existingSecret: 'p', previousSecretKey: 'OLD' } } }),
    ]);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/LOG_LEVLE/);
    expect(plainSecret.code).not.toBe(0);
    expect(plainSecret.stderr).toMatch(/KEY_PEPPER/);
    expect(grace.code).not.toBe(0);
    expect(grace.stderr).toMatch(/terminationGracePeriodSeconds \(12\) must exceed/);
    expect(hpaWithoutRedis.code).not.toBe(0);
    expect(hpaWithoutRedis.stderr).toMatch(/autoscaling.enabled needs Redis/);
    expect(pepperVersion.code).not.toBe(0);
    expect(pepperVersion.stderr).toMatch(/keyPepper.version 2 or more/);
  });
});

describe('helm chart: wiring to the service', () => {
  it.each(Object.keys(VALUE_SETS))('sets only variables the service reads, and the service accepts them: %s', (name) => {
    const c = container(rendered[name]!);
    const names = (c.env ?? []).map((e) => e.name);
    expect(new Set(names).size, 'no variable twice').toBe(names.length);
    const extra = new Set(['NODE_OPTIONS']); // extraEnv in one value set: Node's own
    for (const n of names) if (!extra.has(n)) expect(CONFIG_VARIABLES, `${n} is a setting of src/config.ts`).toContain(n);
    // The service's own parser, with what `serve` requires.
    const config = loadConfig(environmentOf(c), ['DATABASE_URL', 'KEY_PEPPER']);
    expect(config.MIGRATE_ON_START).toBe(false);
  });

  it('passes secrets only by reference to existing Secrets, never as values', () => {
    for (const objects of Object.values(rendered)) {
      const env = container(objects).env ?? [];
      for (const secret of ['DATABASE_URL', 'DATABASE_LISTEN_URL', 'REDIS_URL', 'REDIS_PASSWORD', 'REDIS_SENTINEL_PASSWORD', 'KEY_PEPPER', 'KEY_PEPPER_PREVIOUS', 'ACCESS_LOG_SECRET', 'ACCESS_LOG_SECRET_PREVIOUS', 'OWNER_NOTIFICATION_WEBHOOK_SECRET']) {
        const e = env.find((v) => v.name === secret);
        if (!e) continue;
        expect(e.value, `${secret} has no plain value`).toBeUndefined();
        expect(e.valueFrom?.secretKeyRef?.name).toBeTruthy();
      }
      expect(objects.some((o) => o.kind === 'Secret')).toBe(false);
    }
    const all = container(rendered['all optional resources on']!).env!;
    expect(all.find((e) => e.name === 'DATABASE_URL')!.valueFrom!.secretKeyRef).toEqual({ name: 'ryvion-authz-db', key: 'DATABASE_URL' });
    expect(all.find((e) => e.name === 'REDIS_URL')!.valueFrom!.secretKeyRef).toEqual({ name: 'ryvion-authz-redis', key: 'REDIS_URL' });
    expect(all.find((e) => e.name === 'KEY_PEPPER_PREVIOUS')!.valueFrom!.secretKeyRef).toEqual({ name: 'ryvion-authz-pepper', key: 'KEY_PEPPER_PREVIOUS' });
    expect(container(rendered.defaults!).env!.some((e) => e.name === 'REDIS_URL')).toBe(false);
    // Envoy's access log: from its own Secret when named, else not served.
    expect(all.find((e) => e.name === 'ACCESS_LOG_SECRET')!.valueFrom!.secretKeyRef).toEqual({ name: 'ryvion-authz-access-log', key: 'ACCESS_LOG_SECRET' });
    expect(all.find((e) => e.name === 'ACCESS_LOG_SECRET_PREVIOUS')!.valueFrom!.secretKeyRef).toEqual({ name: 'ryvion-authz-access-log', key: 'ACCESS_LOG_SECRET_PREVIOUS' });
    expect(container(rendered.defaults!).env!.some((e) => e.name === 'ACCESS_LOG_SECRET')).toBe(false);
  });

  it('owner notifications: the webhook URL from ownerNotification.webhookUrl, its HMAC secret from a Secret; off by default', async () => {
    const all = container(rendered['all optional resources on']!).env!;
    expect(all.find((e) => e.name === 'OWNER_NOTIFICATION_WEBHOOK_URL')).toEqual({ name: 'OWNER_NOTIFICATION_WEBHOOK_URL', value: 'https://hooks.example.com/ryvion/leaks' });
    expect(all.find((e) => e.name === 'OWNER_NOTIFICATION_WEBHOOK_SECRET')).toEqual({
      name: 'OWNER_NOTIFICATION_WEBHOOK_SECRET',
      valueFrom: { secretKeyRef: { name: 'ryvion-authz-notify', key: 'OWNER_NOTIFICATION_WEBHOOK_SECRET' } },
    });
    // The service accepts the pair (its own parser, the Secret replaced by a sample).
    expect(loadConfig(environmentOf(container(rendered['all optional resources on']!)), ['DATABASE_URL', 'KEY_PEPPER']).OWNER_NOTIFICATION_WEBHOOK_URL).toBe('https://hooks.example.com/ryvion/leaks');
    expect(container(rendered.defaults!).env!.some((e) => e.name.startsWith('OWNER_NOTIFICATION_WEBHOOK'))).toBe(false);

    const [noSecret, noUrl, plainSecret, otherKey] = await Promise.all([
      helmTemplate({ values: { ownerNotification: { webhookUrl: 'https://hooks.example.com/x' } } }),
      helmTemplate({ values: { ownerNotification: { existingSecret: 'notify' } } }),
      helmTemplate({ values: { config: { OWNER_NOTIFICATION_WEBHOOK_SECRET: 'a-secret-in-plain-text-is-refused' } } }),
      renderChart({ values: { ownerNotification: { webhookUrl: 'https://hooks.example.com/x', existingSecret: 'notify', existingSecretKey: 'hmac' } } }),
    ]);
    expect(noSecret.code).not.toBe(0);
    expect(noSecret.stderr).toMatch(/ownerNotification.existingSecret is required with ownerNotification.webhookUrl/);
    expect(noUrl.code).not.toBe(0);
    expect(noUrl.stderr).toMatch(/ownerNotification.webhookUrl is empty/);
    expect(plainSecret.code).not.toBe(0);
    expect(plainSecret.stderr).toMatch(/OWNER_NOTIFICATION_WEBHOOK_SECRET/);
    expect(container(otherKey).env!.find((e) => e.name === 'OWNER_NOTIFICATION_WEBHOOK_SECRET')!.valueFrom!.secretKeyRef).toEqual({ name: 'notify', key: 'hmac' });
  });

  it('exposes every setting: each variable is either accepted under `config` or set by the chart', () => {
    const schema = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8')) as {
      properties: { config: { propertyNames: { enum: string[] } } };
    };
    const settable = schema.properties.config.propertyNames.enum;
    for (const n of settable) expect(CONFIG_VARIABLES, `values.schema.json config.${n}`).toContain(n);
    const defaultConfigKeys = Object.keys((parse(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8')) as { config: object }).config);
    // What the chart sets from its own values, over every value set (the Redis topologies differ).
    const setByChart = new Set<string>();
    for (const [name, objects] of Object.entries(rendered)) {
      const configKeys = [...defaultConfigKeys, ...Object.keys((VALUE_SETS[name] as { config?: object }).config ?? {})];
      for (const e of container(objects).env ?? []) if (!configKeys.includes(e.name)) setByChart.add(e.name);
    }
    setByChart.delete('NODE_OPTIONS'); // extraEnv in one value set: Node's own
    // A variable added to src/config.ts needs a place here: add it to values.schema.json
    // (config.propertyNames.enum) or have the chart set it from its own values.
    const unreachable = CONFIG_VARIABLES.filter((v) => !settable.includes(v) && !setByChart.has(v));
    expect(unreachable).toEqual([]);
    for (const n of setByChart) expect(settable, `${n} is set by the chart, so not under config`).not.toContain(n);
  });

  it.each(Object.keys(VALUE_SETS))('names container and Service ports as the service listens, probes on the ops port: %s', (name) => {
    const objects = rendered[name]!;
    const c = container(objects);
    const config = loadConfig(environmentOf(c), ['DATABASE_URL', 'KEY_PEPPER']);
    expect(portNumber(c, 'grpc')).toBe(config.GRPC_PORT);
    expect(portNumber(c, 'http')).toBe(config.HTTP_PORT);
    expect(portNumber(c, 'metrics')).toBe(config.OPS_PORT);
    expect(c.livenessProbe?.httpGet?.path).toBe('/healthz');
    expect(portNumber(c, c.livenessProbe!.httpGet!.port)).toBe(config.OPS_PORT);
    expect(c.readinessProbe?.httpGet?.path).toBe('/readyz');
    expect(portNumber(c, c.readinessProbe!.httpGet!.port)).toBe(config.OPS_PORT);
    if (c.startupProbe?.httpGet) expect(portNumber(c, c.startupProbe.httpGet.port)).toBe(config.OPS_PORT);

    const service = findObject(objects, 'Service', 'ryvion-authz').spec as { selector: Record<string, string>; ports: ServicePort[] };
    const byName = Object.fromEntries(service.ports.map((p) => [p.name, p]));
    // `usage` (POST /internal/usage) only when enabled, on USAGE_PORT.
    const usage = config.USAGE_PORT !== undefined;
    expect(Object.keys(byName).sort()).toEqual(usage ? ['grpc', 'http', 'metrics', 'usage'] : ['grpc', 'http', 'metrics']);
    if (usage) expect(portNumber(c, 'usage')).toBe(config.USAGE_PORT);
    expect(byName.grpc!.appProtocol).toBe('grpc');
    for (const p of service.ports) {
      expect(portNumber(c, p.targetPort), `Service port ${p.name} reaches a container port`).toBe(portNumber(c, p.name));
      expect(p.port).toBe(portNumber(c, p.name));
    }
    expect(byName.grpc!.port).toBe(9191);
    expect(byName.http!.port).toBe(8080);
    expect(byName.metrics!.port).toBe(9090);
    // The Service selects the server pods and not the migration Job's.
    const spec = deploymentSpec(objects);
    expect(spec.template.metadata.labels).toMatchObject(service.selector);
    expect(spec.template.metadata.labels).toMatchObject(spec.selector.matchLabels);
    const job = objects.find((o) => o.kind === 'Job');
    if (job) {
      const jobLabels = (job.spec as { template: PodTemplate }).template.metadata.labels;
      expect(Object.entries(service.selector).every(([k, v]) => jobLabels[k] === v)).toBe(false);
    }
  });

  it.each(Object.keys(VALUE_SETS))('gives terminating pods more time than the service drains: %s', (name) => {
    const spec = deploymentSpec(rendered[name]!);
    const config = loadConfig(environmentOf(spec.template.spec.containers[0]!), ['DATABASE_URL', 'KEY_PEPPER']);
    const delayMs = (config as { SHUTDOWN_READINESS_DELAY_MS?: number }).SHUTDOWN_READINESS_DELAY_MS ?? 0;
    expect(spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(config.SHUTDOWN_DRAIN_MS / 1000);
    expect(spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan((delayMs + config.SHUTDOWN_DRAIN_MS) / 1000);
  });

  it('hardens the pods: non-root, read-only root filesystem, no privileges, RuntimeDefault seccomp, writable /tmp', () => {
    for (const objects of Object.values(rendered)) {
      const pods = objects.filter((o) => o.kind === 'Deployment' || o.kind === 'Job').map((o) => (o.spec as { template: PodTemplate }).template.spec);
      for (const pod of pods) {
        expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
        for (const c of pod.containers) {
          expect(c.securityContext).toMatchObject({
            runAsNonRoot: true,
            readOnlyRootFilesystem: true,
            allowPrivilegeEscalation: false,
            capabilities: { drop: ['ALL'] },
            seccompProfile: { type: 'RuntimeDefault' },
          });
          const tmp = c.volumeMounts?.find((m) => m.mountPath === '/tmp');
          expect(tmp, 'writable /tmp').toBeDefined();
          expect(pod.volumes?.find((v) => v.name === tmp!.name)?.emptyDir).toBeDefined();
        }
      }
    }
  });

  it('spreads the server pods over zones and nodes by their own labels', () => {
    const spec = deploymentSpec(rendered.defaults!);
    const constraints = spec.template.spec.topologySpreadConstraints ?? [];
    expect(constraints.length).toBeGreaterThan(0);
    for (const t of constraints) expect(t.labelSelector?.matchLabels).toEqual(spec.selector.matchLabels);
  });

  it('runs the CLI commands the image has: serve in the pods, migrate in a pre-install/pre-upgrade hook', () => {
    const commands = buildProgram({}).commands.map((c) => c.name());
    const objects = rendered.defaults!;
    expect(container(objects).args).toEqual(['serve']);
    expect(commands).toContain('serve');
    const job = findObject(objects, 'Job');
    expect(job.metadata.annotations?.['helm.sh/hook']).toBe('pre-install,pre-upgrade');
    expect(job.metadata.annotations?.['helm.sh/hook-delete-policy']).toContain('before-hook-creation');
    const jobContainer = (job.spec as { template: PodTemplate }).template.spec.containers[0]!;
    expect(jobContainer.args).toEqual(['migrate']);
    expect(commands).toContain('migrate');
    expect(jobContainer.image).toBe(container(objects).image);
    // `migrate` needs only the database; it never sees the pepper.
    const jobEnv = environmentOf(jobContainer);
    expect(Object.keys(jobEnv)).toContain('DATABASE_URL');
    expect(Object.keys(jobEnv)).not.toContain('KEY_PEPPER');
    expect(() => loadConfig(jobEnv, ['DATABASE_URL'])).not.toThrow();
    // The pods never migrate (old pods keep running against the newer schema during a rollout).
    expect(environmentOf(container(objects)).MIGRATE_ON_START).toBe('false');
  });

  it('runs one replica without Redis (and says so in NOTES), the asked number with it', async () => {
    expect(deploymentSpec(rendered.defaults!).replicas).toBe(1);
    expect(deploymentSpec(rendered['redis secret, three replicas']!).replicas).toBe(3);
    // With an HPA the Deployment leaves replicas to it.
    expect(deploymentSpec(rendered['autoscaling with a PDB']!).replicas).toBeUndefined();
    const [without, withRedis] = await Promise.all([helmNotes({ values: { replicaCount: 3 } }), helmNotes({ values: REDIS })]);
    expect(without).toMatch(/WARNING: no Redis/);
    expect(without).toMatch(/replicaCount=3 is ignored/);
    expect(withRedis).not.toMatch(/WARNING/);
  });

  it('tells in NOTES how to wire Envoy, Istio and Envoy Gateway to the Service', async () => {
    const notes = await helmNotes();
    expect(notes).toContain('ryvion-authz.ryvion.svc.cluster.local');
    expect(notes).toMatch(/envoyExtAuthzGrpc:[\s\S]*service: ryvion-authz\.ryvion\.svc\.cluster\.local[\s\S]*port: 9191/);
    expect(notes).toMatch(/failure_mode_allow: false/);
    expect(notes).toMatch(/statusOnError: "503"/);
    expect(notes).toMatch(/backendRefs:[\s\S]*name: ryvion-authz[\s\S]*port: 9191/);
  });

  it('points HPA, PDB, NetworkPolicy and ServiceMonitor at the server pods and their ports', () => {
    const objects = rendered['all optional resources on']!;
    const deployment = findObject(objects, 'Deployment');
    const spec = deployment.spec as DeploymentSpec;
    const hpa = findObject(objects, 'HorizontalPodAutoscaler').spec as { scaleTargetRef: { kind: string; name: string } };
    expect(hpa.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deployment.metadata.name });
    const pdb = findObject(objects, 'PodDisruptionBudget').spec as { selector: { matchLabels: Record<string, string> }; maxUnavailable?: number };
    expect(pdb.selector.matchLabels).toEqual(spec.selector.matchLabels);
    expect(pdb.maxUnavailable).toBe(1);
    const pdbMin = findObject(rendered['autoscaling with a PDB']!, 'PodDisruptionBudget').spec as { minAvailable?: number; maxUnavailable?: number };
    expect(pdbMin).toMatchObject({ minAvailable: 2 });
    expect(pdbMin.maxUnavailable).toBeUndefined();

    const c = spec.template.spec.containers[0]!;
    const np = findObject(objects, 'NetworkPolicy').spec as {
      podSelector: { matchLabels: Record<string, string> };
      policyTypes: string[];
      ingress: Array<{ ports: Array<{ port: string | number }>; from?: unknown[] }>;
      egress: Array<{ ports: Array<{ port: number; protocol: string }> }>;
    };
    expect(spec.template.metadata.labels).toMatchObject(np.podSelector.matchLabels);
    expect(np.policyTypes).toEqual(['Ingress', 'Egress']);
    const ingressPorts = np.ingress.flatMap((r) => r.ports.map((p) => portNumber(c, p.port)));
    const config = loadConfig(environmentOf(c), ['DATABASE_URL', 'KEY_PEPPER']);
    // The usage port (enabled in this value set) is open to the same peers as the HTTP port.
    expect(ingressPorts.sort()).toEqual([config.GRPC_PORT, config.HTTP_PORT, config.OPS_PORT, config.USAGE_PORT!].sort());
    expect(np.ingress[0]!.from).toEqual([{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'istio-system' } } }]);
    const egressPorts = np.egress.flatMap((r) => r.ports.map((p) => `${p.protocol}/${p.port}`));
    expect(egressPorts).toEqual(expect.arrayContaining(['UDP/53', 'TCP/53', 'TCP/5432', 'TCP/6379']));

    const service = findObject(objects, 'Service', 'ryvion-authz');
    const sm = findObject(objects, 'ServiceMonitor');
    const smSpec = sm.spec as { selector: { matchLabels: Record<string, string> }; endpoints: Array<{ port: string; path: string }>; namespaceSelector: { matchNames: string[] } };
    expect(service.metadata.labels).toMatchObject(smSpec.selector.matchLabels);
    expect((service.spec as { ports: ServicePort[] }).ports.map((p) => p.name)).toContain(smSpec.endpoints[0]!.port);
    expect(smSpec.endpoints[0]!.path).toBe('/metrics');
    expect(smSpec.namespaceSelector.matchNames).toEqual(['ryvion']);
    expect(sm.metadata.labels?.release).toBe('kube-prometheus-stack');
  });
});

describe('helm chart: policy ConfigMap', () => {
  it('ships a copy of policy/default.yaml that stays equal to it', () => {
    expect(readFileSync(join(CHART_DIR, 'files', 'policy.yaml'), 'utf8')).toBe(readFileSync(join(ROOT, 'policy', 'default.yaml'), 'utf8'));
  });

  it.each(['defaults', 'all optional resources on'])('renders a policy the service compiles, mounted as a directory at POLICY_FILE: %s', (name) => {
    const objects = rendered[name]!;
    const spec = deploymentSpec(objects);
    const c = spec.template.spec.containers[0]!;
    const policyFile = environmentOf(c).POLICY_FILE!;
    const volume = spec.template.spec.volumes!.find((v) => v.configMap)!;
    const mount = c.volumeMounts!.find((m) => m.name === volume.name)!;
    // A directory mount: subPath mounts never see ConfigMap updates, so hot reload would not work.
    expect(mount.subPath).toBeUndefined();
    expect(mount.readOnly).toBe(true);
    expect(policyFile).toBe(`${mount.mountPath}/policy.yaml`);
    const cm = findObject(objects, 'ConfigMap', volume.configMap!.name);
    const text = (cm.data as Record<string, string>)['policy.yaml']!;
    const policy = compilePolicy(text, 'ConfigMap policy.yaml');
    expect(policy.scopes).toEqual(expect.arrayContaining(['buyer', 'read-only', 'write-only']));
    expect(policy.authorize('POST', '/v1/chat/completions', 'buyer').kind).toBe('allow');
    expect(policy.authorize('POST', '/v1/chat/completions', 'read-only').kind).toBe('insufficient_scope');
    if (name === 'defaults') expect(text.trim()).toBe(readFileSync(join(ROOT, 'policy', 'default.yaml'), 'utf8').trim());
    // The policy is reloaded in place: a change must not restart the pods through a checksum.
    expect(Object.keys(spec.template.metadata.annotations ?? {}).some((k) => k.startsWith('checksum/'))).toBe(false);
  });

  it('mounts an existing ConfigMap instead when asked', () => {
    const spec = deploymentSpec(rendered['existing policy ConfigMap, no migration Job']!);
    expect(spec.template.spec.volumes!.find((v) => v.configMap)!.configMap!.name).toBe('my-policy');
  });
});

describe('helm chart: monitoring files (copies of deploy/prometheus and deploy/grafana)', () => {
  const objects = () => rendered['all optional resources on']!;

  it('keeps files/ryvion-authz-rules.yaml equal to deploy/prometheus/ryvion-authz-rules.yaml and renders its groups', () => {
    const source = readFileSync(join(ROOT, 'deploy', 'prometheus', 'ryvion-authz-rules.yaml'), 'utf8');
    expect(readFileSync(join(CHART_DIR, 'files', 'ryvion-authz-rules.yaml'), 'utf8')).toBe(source);
    const rule = findObject(objects(), 'PrometheusRule');
    expect((rule.spec as { groups: unknown }).groups).toEqual((parse(source) as { groups: unknown }).groups);
    expect(rule.metadata.labels?.release).toBe('kube-prometheus-stack');
  });

  it('keeps files/ryvion-authz.json equal to deploy/grafana/ryvion-authz.json and ships it for the Grafana sidecar', () => {
    const source = readFileSync(join(ROOT, 'deploy', 'grafana', 'ryvion-authz.json'), 'utf8');
    expect(readFileSync(join(CHART_DIR, 'files', 'ryvion-authz.json'), 'utf8')).toBe(source);
    const cm = objects().find((o) => o.kind === 'ConfigMap' && o.metadata.labels?.grafana_dashboard === '1');
    expect(cm, 'ConfigMap with grafana_dashboard: "1"').toBeDefined();
    expect(cm!.metadata.annotations?.grafana_folder).toBe('Ryvion');
    const json = (cm!.data as Record<string, string>)['ryvion-authz.json']!;
    expect(JSON.parse(json)).toEqual(JSON.parse(source));
  });
});

describe('helm chart: Postgres connection budget', () => {
  it('refuses the autoscaler at 10 with Redis and the default pool, naming the formula and its terms', async () => {
    const r = await helmTemplate({ values: { ...REDIS, autoscaling: { enabled: true } } });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(
      'Postgres connection budget (autoscaling.maxReplicas 10 + surge 1) x (DATABASE_POOL_MAX 10 + listener 1) + migration Job 1 + CLI 3 + reserved 3 + other 0 = 128 exceeds database.maxConnections (100)',
    );
    expect(r.stderr).toContain('docs/production.md');
  });

  it('renders when the budget fits: a smaller pool, a larger max_connections, or the pool behind PgBouncer with a direct listener', async () => {
    const hpa = { ...REDIS, autoscaling: { enabled: true } };
    const results = await Promise.all([
      helmTemplate({ values: { ...hpa, config: { DATABASE_POOL_MAX: 6 } } }), // 11 x 7 + 7 = 84
      helmTemplate({ values: { ...hpa, database: { maxConnections: 200 } } }),
      helmTemplate({ values: { ...hpa, database: { behindPooler: true, listenUrl: { existingSecretKey: 'DATABASE_LISTEN_URL' } } } }), // 11 x 1 + 7
    ]);
    for (const r of results) expect(r.code, r.stderr).toBe(0);
  });

  it('counts the pool against the pooler, not Postgres: behind PgBouncer only the listeners reach the server', async () => {
    const r = await helmTemplate({
      values: { ...REDIS, autoscaling: { enabled: true, maxReplicas: 200 }, database: { behindPooler: true, listenUrl: { existingSecretKey: 'LISTEN' } } },
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('(autoscaling.maxReplicas 200 + surge 1) x (DATABASE_POOL_MAX 0 + listener 1) + migration Job 1 + CLI 3 + reserved 3 + other 0 = 208');
  });

  it('passes DATABASE_LISTEN_URL from a Secret (the database Secret unless another is named), never as a value', async () => {
    const [same, other] = await Promise.all([
      renderChart({ values: { database: { listenUrl: { existingSecretKey: 'DATABASE_LISTEN_URL' } } } }),
      renderChart({ values: { database: { listenUrl: { existingSecret: 'pg-direct', existingSecretKey: 'url' } } } }),
    ]);
    const listen = (objects: K8sObject[]) => container(objects).env!.find((e) => e.name === 'DATABASE_LISTEN_URL')!;
    expect(listen(same).value).toBeUndefined();
    expect(listen(same).valueFrom!.secretKeyRef).toEqual({ name: 'ryvion-authz-db', key: 'DATABASE_LISTEN_URL' });
    expect(listen(other).valueFrom!.secretKeyRef).toEqual({ name: 'pg-direct', key: 'url' });
    expect(container(rendered.defaults!).env!.some((e) => e.name === 'DATABASE_LISTEN_URL')).toBe(false);
  });
});

describe('helm chart: Redis Sentinel and Cluster', () => {
  it('sets the Sentinel topology, both users, passwords by Secret reference and TLS with a mounted CA', () => {
    const objects = rendered['Redis Sentinel with ACL users and TLS']!;
    const c = container(objects);
    const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e]));
    expect(env.REDIS_SENTINELS!.value).toBe('redis-sentinel-0.redis:26379,redis-sentinel-1.redis:26379');
    expect(env.REDIS_SENTINEL_NAME!.value).toBe('main');
    expect(env.REDIS_SENTINEL_USERNAME!.value).toBe('watcher');
    expect(env.REDIS_SENTINEL_PASSWORD!.valueFrom!.secretKeyRef).toEqual({ name: 'redis-sentinel', key: 'REDIS_SENTINEL_PASSWORD' });
    expect(env.REDIS_USERNAME!.value).toBe('ryvion');
    expect(env.REDIS_PASSWORD!.valueFrom!.secretKeyRef).toEqual({ name: 'redis-data', key: 'REDIS_PASSWORD' });
    expect(env.REDIS_TLS!.value).toBe('true');
    expect(env.REDIS_TLS_SERVER_NAME!.value).toBe('redis.internal');
    expect(env.REDIS_URL).toBeUndefined();
    const caFile = env.REDIS_TLS_CA_FILE!.value!;
    const spec = deploymentSpec(objects).template.spec;
    const mount = c.volumeMounts!.find((m) => caFile.startsWith(`${m.mountPath}/`))!;
    expect(mount.readOnly).toBe(true);
    const volume = spec.volumes!.find((v) => v.name === mount.name) as { secret?: { secretName: string; items: Array<{ key: string; path: string }> } };
    expect(volume.secret).toEqual({ secretName: 'redis-ca', items: [{ key: 'ca.crt', path: caFile.slice(mount.mountPath.length + 1) }] });
    expect(deploymentSpec(objects).replicas).toBe(3);
  });

  it('sets the Cluster nodes and the data password', () => {
    const env = Object.fromEntries((container(rendered['Redis Cluster with a password']!).env ?? []).map((e) => [e.name, e]));
    expect(env.REDIS_CLUSTER_NODES!.value).toBe('10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379');
    expect(env.REDIS_PASSWORD!.valueFrom!.secretKeyRef).toEqual({ name: 'redis-data', key: 'password' });
    expect(env.REDIS_TLS).toBeUndefined();
  });

  it('refuses two modes at once, credentials the URL should carry, and credentials without their mode', async () => {
    const [twoModes, authWithUrl, sentinelAuthAlone, oldSetting] = await Promise.all([
      helmTemplate({ values: { ...REDIS, redis: { existingSecret: 'r', cluster: { nodes: ['a:6379'] } } } }),
      helmTemplate({ values: { redis: { existingSecret: 'r', auth: { existingSecret: 'p' } } } }),
      helmTemplate({ values: { redis: { cluster: { nodes: ['a:6379'] }, sentinel: { existingSecret: 's' } } } }),
      helmTemplate({ values: { config: { REDIS_SENTINELS: 'a:26379' } } }),
    ]);
    expect(twoModes.stderr).toMatch(/set only one of redis.existingSecret/);
    expect(authWithUrl.stderr).toMatch(/put the credentials in the URL/);
    expect(sentinelAuthAlone.stderr).toMatch(/redis.sentinel credentials need redis.sentinel.addresses/);
    // The topology moved to `redis.*`: the schema names the old key.
    expect(oldSetting.stderr).toMatch(/REDIS_SENTINELS/);
    for (const r of [twoModes, authWithUrl, sentinelAuthAlone, oldSetting]) expect(r.code).not.toBe(0);
  });
});

describe('helm chart: headless Service and alerts per release', () => {
  it('adds a headless Service for per-request balancing: same pods, grpc and http only, no metrics port to scrape twice', async () => {
    const objects = rendered.defaults!;
    const main = findObject(objects, 'Service', 'ryvion-authz').spec as { selector: Record<string, string> };
    const headless = findObject(objects, 'Service', 'ryvion-authz-headless').spec as { clusterIP: string; selector: Record<string, string>; ports: ServicePort[]; publishNotReadyAddresses?: boolean };
    expect(headless.clusterIP).toBe('None');
    expect(headless.publishNotReadyAddresses).toBe(false);
    expect(headless.selector).toEqual(main.selector);
    expect(headless.ports.map((p) => `${p.name}:${p.port}`)).toEqual(['grpc:9191', 'http:8080']);
    const off = await renderChart({ values: { service: { headless: { enabled: false } } } });
    expect(off.filter((o) => o.kind === 'Service').map((o) => o.metadata.name)).toEqual(['ryvion-authz']);
  });

  it("points the gate-down alerts at the release's scrape job (the ServiceMonitor's job is the Service name)", async () => {
    const objects = await renderChart({ release: 'edge', values: { metrics: { prometheusRule: { enabled: true }, serviceMonitor: { enabled: true } } } });
    const rules = (findObject(objects, 'PrometheusRule').spec as { groups: Array<{ rules: Array<{ alert?: string; expr: string }> }> }).groups.flatMap((g) => g.rules);
    const service = findObject(objects, 'Service', 'edge-ryvion-authz');
    expect(rules.find((r) => r.alert === 'RyvionAuthzDown')!.expr).toContain(`absent(up{job="${service.metadata.name}"} == 1)`);
    expect(rules.find((r) => r.alert === 'RyvionAuthzTargetDown')!.expr).toContain(`up{job="${service.metadata.name}"} == 0`);
  });
});
