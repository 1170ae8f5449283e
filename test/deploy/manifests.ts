// Offline validation of rendered Kubernetes objects.
//
// Built-in kinds go through kubernetes-models (the API's OpenAPI schemas: types, required fields,
// enums; not unknown fields). Custom resources it does not know get a basic shape check here.
import type { K8sObject } from './helm.js';

interface ModelClass {
  new (data: unknown): { validate(): void };
}

const modelCache = new Map<string, ModelClass | null>();

async function modelFor(apiVersion: string, kind: string): Promise<ModelClass | null> {
  const key = `${apiVersion}/${kind}`;
  if (modelCache.has(key)) return modelCache.get(key)!;
  let model: ModelClass | null = null;
  // kubernetes-models/<group>/<version>/<Kind> (core: kubernetes-models/v1/<Kind>).
  if (/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion) && /^[A-Z][A-Za-z]+$/.test(kind)) {
    try {
      const specifier = `kubernetes-models/${apiVersion}/${kind}`;
      const mod = (await import(/* @vite-ignore */ specifier)) as Record<string, ModelClass | undefined>;
      model = mod[kind] ?? null;
    } catch {
      model = null;
    }
  }
  modelCache.set(key, model);
  return model;
}

const NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function metadataProblems(o: K8sObject): string[] {
  const problems: string[] = [];
  if (!isObject(o.metadata)) return ['metadata: missing'];
  if (typeof o.metadata.name !== 'string' || !NAME.test(o.metadata.name) || o.metadata.name.length > 253) {
    problems.push(`metadata.name: ${JSON.stringify(o.metadata.name)} is not a DNS subdomain name`);
  }
  for (const [k, v] of Object.entries(o.metadata.labels ?? {})) {
    if (typeof v !== 'string') problems.push(`metadata.labels.${k}: must be a string, got ${typeof v}`);
    else if (v.length > 63) problems.push(`metadata.labels.${k}: longer than 63 characters`);
  }
  for (const [k, v] of Object.entries(o.metadata.annotations ?? {})) {
    if (typeof v !== 'string') problems.push(`metadata.annotations.${k}: must be a string, got ${typeof v}`);
  }
  return problems;
}

const DURATION = /^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$/;

function serviceMonitorProblems(o: K8sObject): string[] {
  const p: string[] = [];
  const spec = o.spec;
  if (!isObject(spec)) return ['spec: missing'];
  if (!isObject(spec.selector) || !isObject(spec.selector.matchLabels) || Object.keys(spec.selector.matchLabels).length === 0) {
    p.push('spec.selector.matchLabels: missing or empty (would select every Service)');
  }
  if (!Array.isArray(spec.endpoints) || spec.endpoints.length === 0) p.push('spec.endpoints: missing or empty');
  for (const [i, e] of (Array.isArray(spec.endpoints) ? spec.endpoints : []).entries()) {
    if (!isObject(e)) {
      p.push(`spec.endpoints[${i}]: not an object`);
      continue;
    }
    if (typeof e.port !== 'string' || e.port === '') p.push(`spec.endpoints[${i}].port: must be a Service port name`);
    if (e.path !== undefined && (typeof e.path !== 'string' || !e.path.startsWith('/'))) p.push(`spec.endpoints[${i}].path: must start with /`);
    for (const f of ['interval', 'scrapeTimeout'] as const) {
      if (e[f] !== undefined && (typeof e[f] !== 'string' || !DURATION.test(e[f]))) p.push(`spec.endpoints[${i}].${f}: not a duration`);
    }
  }
  return p;
}

function prometheusRuleProblems(o: K8sObject): string[] {
  const p: string[] = [];
  const spec = o.spec;
  if (!isObject(spec) || !Array.isArray(spec.groups) || spec.groups.length === 0) return ['spec.groups: missing or empty'];
  const groupNames = new Set<string>();
  for (const [i, g] of spec.groups.entries()) {
    if (!isObject(g) || typeof g.name !== 'string' || g.name === '') {
      p.push(`spec.groups[${i}].name: missing`);
      continue;
    }
    if (groupNames.has(g.name)) p.push(`spec.groups[${i}].name: duplicate group ${g.name}`);
    groupNames.add(g.name);
    if (!Array.isArray(g.rules) || g.rules.length === 0) p.push(`spec.groups[${i}].rules: missing or empty`);
    for (const [j, r] of (Array.isArray(g.rules) ? g.rules : []).entries()) {
      const at = `spec.groups[${i}].rules[${j}]`;
      if (!isObject(r)) {
        p.push(`${at}: not an object`);
        continue;
      }
      if (typeof r.expr !== 'string' || r.expr.trim() === '') p.push(`${at}.expr: missing`);
      const isAlert = typeof r.alert === 'string';
      const isRecord = typeof r.record === 'string';
      if (isAlert === isRecord) p.push(`${at}: needs exactly one of alert and record`);
      if (r.for !== undefined && (typeof r.for !== 'string' || !DURATION.test(r.for))) p.push(`${at}.for: not a duration`);
      for (const f of ['labels', 'annotations'] as const) {
        if (r[f] === undefined) continue;
        if (!isObject(r[f]) || Object.values(r[f]).some((v) => typeof v !== 'string')) p.push(`${at}.${f}: must map names to strings`);
      }
    }
  }
  return p;
}

const CUSTOM_RESOURCES: Record<string, (o: K8sObject) => string[]> = {
  'monitoring.coreos.com/v1/ServiceMonitor': serviceMonitorProblems,
  'monitoring.coreos.com/v1/PrometheusRule': prometheusRuleProblems,
};

/** Every problem of one object; empty when it is valid. Unknown kinds are a problem too. */
export async function validateObject(o: K8sObject): Promise<string[]> {
  const where = `${o.kind ?? '?'} ${o.metadata?.name ?? '?'}`;
  if (typeof o.apiVersion !== 'string' || typeof o.kind !== 'string') return [`${where}: apiVersion and kind are required`];
  const problems = metadataProblems(o);
  const custom = CUSTOM_RESOURCES[`${o.apiVersion}/${o.kind}`];
  if (custom) {
    problems.push(...custom(o));
  } else {
    const Model = await modelFor(o.apiVersion, o.kind);
    if (!Model) {
      problems.push(`no schema known for ${o.apiVersion} ${o.kind}`);
    } else {
      try {
        new Model(o).validate();
      } catch (err) {
        problems.push(err instanceof Error ? err.message : String(err));
      }
    }
  }
  return problems.map((p) => `${where}: ${p}`);
}

export async function validateAll(objects: readonly K8sObject[]): Promise<string[]> {
  return (await Promise.all(objects.map(validateObject))).flat();
}
