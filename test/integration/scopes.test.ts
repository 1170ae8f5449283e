// Scopes against every route of the shipped policy, path-spelling bypasses, and policy hot reload, through real Check.
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Counter } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient, headersOf, startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

type Scope = 'buyer' | 'read-only' | 'write-only';
const SCOPES: readonly Scope[] = ['buyer', 'read-only', 'write-only'];

const DEFAULT_POLICY_TEXT = readFileSync(new URL('../../policy/default.yaml', import.meta.url), 'utf8');

// Grants read-only what the shipped policy does not (inference), so a reload to the default is visible.
const LENIENT_POLICY = `version: 1
scopes:
  buyer: [inference, models.read]
  read-only: [inference, models.read]
  write-only: [inference]
rules:
  - methods: [POST]
    paths: [/v1/chat/completions]
    permission: inference
  - methods: [GET, HEAD]
    paths: [/v1/models/**]
    permission: models.read
`;

const SHADOW_POLICY = `version: 1
scopes:
  buyer: [inference, models.read]
  write-only: [inference]
rules:
  - methods: [POST]
    paths: [/v1/chat/completions]
    permission: inference
  - methods: [GET, HEAD]
    paths: [/v1/models/**]
    permission: models.read
    enforce: false
`;

const DEFAULT_ALLOW_POLICY = `version: 1
default_action: allow
scopes:
  buyer: [inference]
  write-only: [inference]
rules:
  - methods: [POST]
    paths: [/v1/chat/completions]
    permission: inference
`;

let db: Awaited<ReturnType<typeof freshDatabase>>;
let tmp: string;
let service: RunningService;
let client: CheckClient;
const keys = {} as Record<Scope, string>;
const pepper = testPepper();
// What is judged here is policy, not store latency: a first look-up slowed by a busy machine (a CPU
// hog beside the suite) must not come back as a 503 (the default STORE_TIMEOUT_MS is 100).
const SLOW_MACHINE = { STORE_TIMEOUT_MS: '2000' };

beforeAll(async () => {
  db = await freshDatabase();
  tmp = mkdtempSync(join(tmpdir(), 'scopes-test-'));
  service = await startTestService({ ...SLOW_MACHINE, DATABASE_URL: db.url, KEY_PEPPER: pepper });
  client = new CheckClient(service.grpcPort);
  const accountId = (await service.repository.createAccount('scopes@example.com', 'free')).id;
  for (const scope of SCOPES) {
    keys[scope] = (await service.repository.createKey({ accountId, name: `${scope} key`, scope, expiresAt: null })).secret;
  }
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await db?.drop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function check(c: CheckClient, scope: Scope | null, method: string, path: string): Promise<CheckResponse> {
  const headers: Record<string, string> = scope === null ? {} : { authorization: `Bearer ${keys[scope]}` };
  return c.check(envoyCheckRequest({ method, path, headers }));
}

interface Denial {
  http: number;
  grpc: number;
  headers: Record<string, string>;
  error: { message: string; type: string; param: null; code: string };
}

function denied(res: CheckResponse): Denial {
  expect(res.ok_response).toBeUndefined();
  expect(res.denied_response).toBeDefined();
  const body = JSON.parse(res.denied_response!.body) as { error: Denial['error'] };
  return { http: res.denied_response!.status.code, grpc: res.status.code, headers: headersOf(res.denied_response!.headers), error: body.error };
}

function expectAllowed(res: CheckResponse, scope: Scope, permission: string | null): void {
  expect(res.denied_response).toBeUndefined();
  expect(res.status?.code ?? 0).toBe(0);
  expect(headersOf(res.ok_response!.headers)['x-ryvion-scope']).toBe(scope);
  const fields = res.dynamic_metadata!.fields;
  expect(fields.scope?.stringValue).toBe(scope);
  if (permission === null) expect(fields.permission).toBeUndefined();
  else expect(fields.permission?.stringValue).toBe(permission);
}

function expectInsufficientScope(res: CheckResponse, scope: Scope, permission: string): void {
  const d = denied(res);
  expect(d).toMatchObject({ http: 403, grpc: 7 });
  expect(d.error).toMatchObject({ code: 'insufficient_scope', type: 'permission_error', param: null });
  expect(d.headers['www-authenticate']).toBe(`Bearer realm="ryvion", error="insufficient_scope", scope="${permission}"`);
  expect(d.error.message).toContain(`"${scope}"`);
  expect(d.error.message).toContain(`"${permission}"`);
}

function expectRouteNotAllowed(res: CheckResponse): void {
  const d = denied(res);
  expect(d).toMatchObject({ http: 403, grpc: 7 });
  expect(d.error).toMatchObject({ code: 'route_not_allowed', type: 'permission_error' });
}

function expectInvalidPath(res: CheckResponse): void {
  const d = denied(res);
  expect(d).toMatchObject({ http: 400, grpc: 3 });
  expect(d.error).toMatchObject({ code: 'invalid_path', type: 'invalid_request_error' });
}

async function counterValue<T extends string>(counter: Counter<T>, labels: Partial<Record<T, string>>): Promise<number> {
  const { values } = await counter.get();
  const wanted = Object.entries(labels) as Array<[T, string]>;
  return values.filter((v) => wanted.every(([name, value]) => v.labels[name] === value)).reduce((sum, v) => sum + v.value, 0);
}

describe('every scope against every route of the shipped policy', () => {
  // Written by hand from the scope table of SPEC section 4 (the seed's documentation), not from
  // policy/default.yaml: A allowed, S 403 insufficient_scope, R 403 route_not_allowed.
  const A = 'allowed';
  const S = 'insufficient_scope';
  const R = 'route_not_allowed';
  type Verdict = typeof A | typeof S | typeof R;
  type Row = [method: string, path: string, permission: string | null, buyer: Verdict, readOnly: Verdict, writeOnly: Verdict];

  const table: Row[] = [
    // inference: buyer and write-only
    ['POST', '/v1/chat/completions', 'inference', A, S, A],
    ['POST', '/v1/completions', 'inference', A, S, A],
    ['POST', '/v1/embeddings', 'inference', A, S, A],
    ['POST', '/v1/responses', 'inference', A, S, A],
    // models: buyer and read-only
    ['GET', '/v1/models', 'models.read', A, A, S],
    ['GET', '/v1/models/org/model-x', 'models.read', A, A, S],
    ['HEAD', '/v1/models/model-x', 'models.read', A, A, S],
    // knowledge-base uploads: buyer and write-only
    ['POST', '/v1/knowledge-bases/kb1/documents', 'kb.upload', A, S, A],
    ['POST', '/v1/knowledge-bases/kb1/files', 'kb.upload', A, S, A],
    // knowledge-base reads: buyer and read-only
    ['GET', '/v1/knowledge-bases', 'kb.read', A, A, S],
    ['GET', '/v1/knowledge-bases/kb1', 'kb.read', A, A, S],
    ['GET', '/v1/knowledge-bases/kb1/documents', 'kb.read', A, A, S],
    // other knowledge-base writes: buyer only (deleting a document is not an upload)
    ['POST', '/v1/knowledge-bases', 'kb.write', A, S, S],
    ['PATCH', '/v1/knowledge-bases/kb1', 'kb.write', A, S, S],
    ['DELETE', '/v1/knowledge-bases/kb1', 'kb.write', A, S, S],
    ['DELETE', '/v1/knowledge-bases/kb1/documents/doc1', 'kb.write', A, S, S],
    // agents: buyer only, reads included
    ['GET', '/v1/agents', 'agents', A, S, S],
    ['POST', '/v1/agents', 'agents', A, S, S],
    ['GET', '/v1/agents/ag1', 'agents', A, S, S],
    ['POST', '/v1/agents/ag1/runs', 'agents', A, S, S],
    ['DELETE', '/v1/agents/ag1', 'agents', A, S, S],
    // memories: reads for buyer and read-only, writes for buyer
    ['GET', '/v1/memories', 'memories.read', A, A, S],
    ['GET', '/v1/memories/m1', 'memories.read', A, A, S],
    ['POST', '/v1/memories', 'memories.write', A, S, S],
    ['DELETE', '/v1/memories/m1', 'memories.write', A, S, S],
    // billing: reads for buyer and read-only, writes for buyer
    ['GET', '/api/v1/billing/usage', 'billing.read', A, A, S],
    ['GET', '/api/v1/billing/invoices/inv_1', 'billing.read', A, A, S],
    ['POST', '/api/v1/billing/payment-methods', 'billing.write', A, S, S],
    // key management: buyer only, listing included
    ['GET', '/api/v1/auth/api-keys', 'keys.manage', A, S, S],
    ['POST', '/api/v1/auth/api-keys', 'keys.manage', A, S, S],
    ['DELETE', '/api/v1/auth/api-keys/key_x', 'keys.manage', A, S, S],
    // MCP: buyer only
    ['POST', '/mcp', 'mcp', A, S, S],
    ['GET', '/mcp/sse', 'mcp', A, S, S],
    // every valid key
    ['GET', '/api/v1/auth/me', null, A, A, A],
    // no route: denied for everyone, buyer included
    ['GET', '/v1/unknown', null, R, R, R],
    ['GET', '/admin', null, R, R, R],
    ['GET', '/', null, R, R, R],
    ['POST', '/v1/models', null, R, R, R],
    ['GET', '/v1/chat/completions', null, R, R, R],
    ['POST', '/api/v1/auth/me', null, R, R, R],
  ];

  const cases = table.flatMap(([method, path, permission, ...verdicts]) =>
    SCOPES.map((scope, i) => {
      const verdict = verdicts[i]!;
      const outcome = verdict === A ? `allowed (${permission ?? 'any valid key'})` : verdict === S ? `403 insufficient_scope (${permission})` : '403 route_not_allowed';
      return { title: `${scope}: ${method} ${path} is ${outcome}`, scope, method, path, permission, verdict };
    }),
  );

  it.each(cases)('$title', async ({ scope, method, path, permission, verdict }) => {
    const res = await check(client, scope, method, path);
    if (verdict === A) expectAllowed(res, scope, permission);
    else if (verdict === S) expectInsufficientScope(res, scope, permission!);
    else expectRouteNotAllowed(res);
  });
});

describe('path spellings that must not reach another rule', () => {
  it('/v1//chat/completions is merged: read-only POST gets 403 insufficient_scope (inference)', async () => {
    expectInsufficientScope(await check(client, 'read-only', 'POST', '/v1//chat/completions'), 'read-only', 'inference');
  });

  it('/v1//chat/completions is merged: write-only POST is allowed as inference', async () => {
    expectAllowed(await check(client, 'write-only', 'POST', '/v1//chat/completions'), 'write-only', 'inference');
  });

  it('/v1/./models is resolved: read-only GET is allowed as models.read', async () => {
    expectAllowed(await check(client, 'read-only', 'GET', '/v1/./models'), 'read-only', 'models.read');
  });

  it('/v1/models/../chat/completions is resolved: read-only POST gets 403 insufficient_scope (inference)', async () => {
    expectInsufficientScope(await check(client, 'read-only', 'POST', '/v1/models/../chat/completions'), 'read-only', 'inference');
  });

  it('/v1/models/../chat/completions is resolved: read-only GET is not let through as models.read', async () => {
    expectRouteNotAllowed(await check(client, 'read-only', 'GET', '/v1/models/../chat/completions'));
  });

  it('/v1/models/%2e%2e/chat/completions climbs like "..": read-only POST gets 403 insufficient_scope (inference)', async () => {
    expectInsufficientScope(await check(client, 'read-only', 'POST', '/v1/models/%2e%2e/chat/completions'), 'read-only', 'inference');
  });

  it('/v1/models/%2E%2E/chat/completions climbs like "..": read-only GET is not let through as models.read', async () => {
    expectRouteNotAllowed(await check(client, 'read-only', 'GET', '/v1/models/%2E%2E/chat/completions'));
  });

  it('/v1/knowledge-bases/kb1/documents/.. is a knowledge-base write, not an upload: write-only POST gets 403 (kb.write)', async () => {
    expectInsufficientScope(await check(client, 'write-only', 'POST', '/v1/knowledge-bases/kb1/documents/..'), 'write-only', 'kb.write');
  });

  it('/v1/%6Dodels decodes an unreserved character: read-only GET is allowed as models.read', async () => {
    expectAllowed(await check(client, 'read-only', 'GET', '/v1/%6Dodels'), 'read-only', 'models.read');
  });

  it('/v1/chat/completions/ with a trailing slash: read-only POST gets 403 insufficient_scope (inference)', async () => {
    expectInsufficientScope(await check(client, 'read-only', 'POST', '/v1/chat/completions/'), 'read-only', 'inference');
  });

  it('/v1%2Fchat%2Fcompletions (encoded "/"): 400 invalid_path', async () => {
    expectInvalidPath(await check(client, 'write-only', 'POST', '/v1%2Fchat%2Fcompletions'));
  });

  it('/v1%2fmodels (lower-case encoded "/"): 400 invalid_path even for a scope that holds models.read', async () => {
    expectInvalidPath(await check(client, 'read-only', 'GET', '/v1%2fmodels'));
  });

  it('/V1/MODELS is another path (matching is case-sensitive): read-only GET gets 403 route_not_allowed', async () => {
    expectRouteNotAllowed(await check(client, 'read-only', 'GET', '/V1/MODELS'));
  });

  it('/v1/chat/completions?x=/v1/models: the query takes no part, read-only GET gets 403 route_not_allowed', async () => {
    expectRouteNotAllowed(await check(client, 'read-only', 'GET', '/v1/chat/completions?x=/v1/models'));
  });

  it('/v1/chat/completions?x=/v1/models: the query takes no part, write-only POST is allowed as inference', async () => {
    expectAllowed(await check(client, 'write-only', 'POST', '/v1/chat/completions?x=/v1/models'), 'write-only', 'inference');
  });

  it('/v1/models?next=/v1/chat/completions: the query takes no part, write-only POST gets 403 route_not_allowed', async () => {
    expectRouteNotAllowed(await check(client, 'write-only', 'POST', '/v1/models?next=/v1/chat/completions'));
  });

  it('/v1/models%00 (encoded NUL): 400 invalid_path', async () => {
    expectInvalidPath(await check(client, 'read-only', 'GET', '/v1/models%00'));
  });

  it('/v1/models%5C..%5Cchat%5Ccompletions (encoded backslash): 400 invalid_path', async () => {
    expectInvalidPath(await check(client, 'read-only', 'POST', '/v1/models%5C..%5Cchat%5Ccompletions'));
  });

  it('/v1/models\\..\\chat\\completions (raw backslash): 400 invalid_path', async () => {
    expectInvalidPath(await check(client, 'read-only', 'POST', '/v1/models\\..\\chat\\completions'));
  });

  it('/../v1/models (above the root): 400 invalid_path', async () => {
    expectInvalidPath(await check(client, 'read-only', 'GET', '/../v1/models'));
  });

  it('/v1/models/%zz (malformed percent-encoding): 400 invalid_path', async () => {
    expectInvalidPath(await check(client, 'read-only', 'GET', '/v1/models/%zz'));
  });

  it('/v1%2Fchat without a key: 401 missing_api_key (credentials are checked before the route)', async () => {
    const d = denied(await check(client, null, 'POST', '/v1%2Fchat'));
    expect(d).toMatchObject({ http: 401, grpc: 16 });
    expect(d.error.code).toBe('missing_api_key');
    expect(d.headers['www-authenticate']).toBe('Bearer realm="ryvion"');
  });
});

// Lays a policy out the way the kubelet does for a ConfigMap volume and swaps it the same way:
// a new timestamped directory, a fresh symlink renamed atomically over `..data`, the old directory removed.
class ConfigMapDir {
  readonly file: string;
  private generation = 0;

  constructor(
    readonly root: string,
    initial: string,
  ) {
    mkdirSync(root);
    this.writeGeneration(initial);
    symlinkSync(this.stamp(), join(root, '..data'));
    symlinkSync(join('..data', 'policy.yaml'), join(root, 'policy.yaml'));
    this.file = join(root, 'policy.yaml');
  }

  swap(content: string): void {
    const old = this.stamp();
    this.generation += 1;
    this.writeGeneration(content);
    const tmpLink = join(this.root, '..data_tmp');
    symlinkSync(this.stamp(), tmpLink);
    renameSync(tmpLink, join(this.root, '..data'));
    rmSync(join(this.root, old), { recursive: true, force: true });
  }

  private stamp(): string {
    return `..2026_11_27_${String.fromCharCode(0x61 + this.generation)}`;
  }

  private writeGeneration(content: string): void {
    const dir = join(this.root, this.stamp());
    mkdirSync(dir);
    writeFileSync(join(dir, 'policy.yaml'), content);
  }
}

describe('policy hot reload from a ConfigMap volume', () => {
  let generation = 0;
  /** Each case gets its own ConfigMap directory and replica: a swap changes the policy the next case would see. */
  async function reloadingReplica(initial: string): Promise<{
    configMap: ConfigMapDir;
    client: CheckClient;
    service: RunningService;
    reloads: (result: 'success' | 'failure') => Promise<number>;
    close: () => Promise<void>;
  }> {
    const configMap = new ConfigMapDir(join(tmp, `configmap-${++generation}`), initial);
    const service = await startTestService({ ...SLOW_MACHINE, DATABASE_URL: db.url, KEY_PEPPER: pepper, POLICY_FILE: configMap.file });
    const c = new CheckClient(service.grpcPort);
    return {
      configMap,
      client: c,
      service,
      reloads: (result) => counterValue(service.metrics.policyReloads, { result }),
      close: async () => {
        c.close();
        await service.stop();
      },
    };
  }

  it('the policy from POLICY_FILE decides: read-only POST /v1/chat/completions is allowed as inference', async () => {
    const r = await reloadingReplica(LENIENT_POLICY);
    try {
      expectAllowed(await check(r.client, 'read-only', 'POST', '/v1/chat/completions'), 'read-only', 'inference');
    } finally {
      await r.close();
    }
  });

  it('a swap of ..data to the default policy takes effect without a restart and counts a successful reload', async () => {
    const r = await reloadingReplica(LENIENT_POLICY);
    try {
      expectAllowed(await check(r.client, 'read-only', 'POST', '/v1/chat/completions'), 'read-only', 'inference');
      const before = await r.reloads('success');
      r.configMap.swap(DEFAULT_POLICY_TEXT);
      await expect
        .poll(async () => (await check(r.client, 'read-only', 'POST', '/v1/chat/completions')).denied_response?.status.code, {
          timeout: 15_000,
          interval: 50,
        })
        .toBe(403);
      expectInsufficientScope(await check(r.client, 'read-only', 'POST', '/v1/chat/completions'), 'read-only', 'inference');
      expect(await r.reloads('success')).toBeGreaterThan(before);
    } finally {
      await r.close();
    }
  });

  const broken: Array<[string, string]> = [
    ['an unknown key', `${DEFAULT_POLICY_TEXT}\nrule:\n  - paths: [/v1/chat/completions]\n    permission: inference\n`],
    ['invalid YAML', `${DEFAULT_POLICY_TEXT}\nrules: [\n`],
  ];
  it.each(broken)('a swap to a policy with %s is rejected: the failure counter rises and the default policy keeps deciding', async (_what, text) => {
    const r = await reloadingReplica(DEFAULT_POLICY_TEXT);
    try {
      const failuresBefore = await r.reloads('failure');
      const successesBefore = await r.reloads('success');
      r.configMap.swap(text);
      await expect.poll(() => r.reloads('failure'), { timeout: 15_000, interval: 50 }).toBeGreaterThan(failuresBefore);
      expect(await r.reloads('success')).toBe(successesBefore);
      expect(r.service.health.ready).toBe(true);
      expectInsufficientScope(await check(r.client, 'read-only', 'POST', '/v1/chat/completions'), 'read-only', 'inference');
      expectAllowed(await check(r.client, 'read-only', 'GET', '/v1/models'), 'read-only', 'models.read');
      expectAllowed(await check(r.client, 'write-only', 'POST', '/v1/chat/completions'), 'write-only', 'inference');
    } finally {
      await r.close();
    }
  });
});

describe('shadow rules (enforce: false)', () => {
  let shadow: RunningService;
  let shadowClient: CheckClient;
  const shadowDenied = (): Promise<number> => counterValue(shadow.metrics.decisions, { transport: 'grpc', reason: 'shadow_denied' });

  beforeAll(async () => {
    const file = join(tmp, 'shadow.yaml');
    writeFileSync(file, SHADOW_POLICY);
    shadow = await startTestService({ ...SLOW_MACHINE, DATABASE_URL: db.url, KEY_PEPPER: pepper, POLICY_FILE: file });
    shadowClient = new CheckClient(shadow.grpcPort);
  });

  afterAll(async () => {
    shadowClient?.close();
    await shadow?.stop();
  });

  it('a scope without the permission of a shadow rule is allowed and counted as shadow_denied', async () => {
    const before = await shadowDenied();
    expectAllowed(await check(shadowClient, 'write-only', 'GET', '/v1/models'), 'write-only', 'models.read');
    expect(await shadowDenied()).toBe(before + 1);
  });

  it('a scope that holds the permission of a shadow rule is allowed and not counted as shadow_denied', async () => {
    const before = await shadowDenied();
    expectAllowed(await check(shadowClient, 'buyer', 'GET', '/v1/models/org/model-x'), 'buyer', 'models.read');
    expect(await shadowDenied()).toBe(before);
  });

  it('an enforced rule beside a shadow rule still denies: read-only POST /v1/chat/completions gets 403 insufficient_scope', async () => {
    expectInsufficientScope(await check(shadowClient, 'read-only', 'POST', '/v1/chat/completions'), 'read-only', 'inference');
  });
});

describe('default_action: allow', () => {
  let open: RunningService;
  let openClient: CheckClient;

  beforeAll(async () => {
    const file = join(tmp, 'default-allow.yaml');
    writeFileSync(file, DEFAULT_ALLOW_POLICY);
    open = await startTestService({ ...SLOW_MACHINE, DATABASE_URL: db.url, KEY_PEPPER: pepper, POLICY_FILE: file });
    openClient = new CheckClient(open.grpcPort);
  });

  afterAll(async () => {
    openClient?.close();
    await open?.stop();
  });

  it('an unmatched route is allowed for a valid key, with no permission in the metadata', async () => {
    expectAllowed(await check(openClient, 'read-only', 'GET', '/v1/unknown'), 'read-only', null);
  });

  it('an unmatched route without a key is still 401 missing_api_key', async () => {
    const d = denied(await check(openClient, null, 'GET', '/v1/unknown'));
    expect(d).toMatchObject({ http: 401, grpc: 16 });
    expect(d.error.code).toBe('missing_api_key');
  });

  it('a matched rule still decides: read-only POST /v1/chat/completions gets 403 insufficient_scope', async () => {
    expectInsufficientScope(await check(openClient, 'read-only', 'POST', '/v1/chat/completions'), 'read-only', 'inference');
  });

  it('an encoded "/" is still 400 invalid_path, not let through by the default', async () => {
    expectInvalidPath(await check(openClient, 'read-only', 'GET', '/v1%2Funknown'));
  });
});
