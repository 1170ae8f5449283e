// The key management API over real HTTP against the real service and Postgres: the public docs'
// curl commands, revocation across replicas, scopes, account isolation, validation, the key cap,
// the audit trail, and a secret that shows up in the create response and nowhere else.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { denialResponse } from '../../src/check/outcomes.js';
import { checkKeyShape } from '../../src/keys/format.js';
import { createLogger } from '../../src/observability/logger.js';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { runCliProcess } from '../helpers/cli.js';
import { CheckClient, metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

// From the public documentation (seed-authentication.txt), verbatim. Only the base URL and the
// key placeholders are replaced when they run.
const DOCS_CURL = {
  create: `curl -X POST https://api.ryvion.ai/api/v1/auth/api-keys \\
-H "Authorization: Bearer EXISTING_API_KEY" \\
-H "Content-Type: application/json" \\
-d '{"name":"my-new-key"}'`,
  list: `curl https://api.ryvion.ai/api/v1/auth/api-keys \\
-H "Authorization: Bearer YOUR_API_KEY"`,
  me: `curl https://api.ryvion.ai/api/v1/auth/me \\
-H "Authorization: Bearer YOUR_API_KEY"`,
};

type Json = Record<string, unknown>;
interface ApiResponse {
  status: number;
  headers: Headers;
  text: string;
  body: Json;
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const pepper = testPepper();

let db: Awaited<ReturnType<typeof freshDatabase>>;
let pool: pg.Pool;
let service: RunningService;
let client: CheckClient;
let cliEnv: Record<string, string>;
let curlHome: string;
const logLines: string[] = [];
const logger = createLogger('debug', { write: (line: string) => void logLines.push(line) });

/** Every secret this file saw, and every answer other than a create response, for the secrecy test. */
const secrets = new Set<string>();
const nonCreateOutputs: string[] = [];

let accountA: string;
let buyerA: { id: string; secret: string };
let readOnlyA: { id: string; secret: string };
let writeOnlyA: { id: string; secret: string };
let accountB: string;
let buyerB: { id: string; secret: string };

async function newKey(accountId: string, scope: string, name = scope): Promise<{ id: string; secret: string }> {
  const { key, secret } = await service.repository.createKey({ accountId, name, scope, expiresAt: null });
  secrets.add(secret);
  return { id: key.id, secret };
}

let accounts = 0;
/** An account of its own for a case that reads an account's whole key list or audit trail. */
async function newAccount(plan = 'free'): Promise<string> {
  return (await service.repository.createAccount(`own-${++accounts}-${Date.now()}@example.com`, plan)).id;
}

interface CallInit {
  key?: string;
  via?: 'bearer' | 'x-api-key';
  body?: unknown;
  /** Sent as is, instead of `body` as JSON. */
  raw?: string;
  contentType?: string | null;
  headers?: Record<string, string>;
  port?: number;
}

async function call(method: string, path: string, init: CallInit = {}): Promise<ApiResponse> {
  const headers: Record<string, string> = { ...init.headers };
  if (init.key) {
    if (init.via === 'x-api-key') headers['x-api-key'] = init.key;
    else headers.authorization = `Bearer ${init.key}`;
  }
  const payload = init.raw ?? (init.body === undefined ? undefined : JSON.stringify(init.body));
  const contentType = init.contentType === undefined ? (payload === undefined ? null : 'application/json') : init.contentType;
  if (contentType) headers['content-type'] = contentType;
  const res = await fetch(`http://127.0.0.1:${init.port ?? service.httpPort}${path}`, { method, headers, body: payload });
  const text = await res.text();
  // Every answer, whatever it is, carries a request id.
  expect(res.headers.get('x-request-id')).toBeTruthy();
  const isCreate = method === 'POST' && res.status === 201;
  if (!isCreate) nonCreateOutputs.push(text);
  return { status: res.status, headers: res.headers, text, body: text ? (JSON.parse(text) as Json) : {} };
}

function expectApiError(res: ApiResponse, status: number, code: string, param: string | null = null): void {
  expect({ status: res.status, body: res.body }).toEqual({
    status,
    body: { error: { message: expect.any(String), type: expect.any(String), param, code } },
  });
  expect(res.headers.get('content-type')).toBe('application/json');
}

/** Runs a documented curl command verbatim through a shell, against this service. */
async function runDocsCurl(command: string, key: string, via: 'bearer' | 'x-api-key'): Promise<{ status: number; body: Json }> {
  let text = command.replace('https://api.ryvion.ai', `http://127.0.0.1:${service.httpPort}`).replace(/EXISTING_API_KEY|YOUR_API_KEY/, key);
  if (via === 'x-api-key') {
    // The documented equivalent: the same call with the key in X-API-Key.
    const bearer = `-H "Authorization: Bearer ${key}"`;
    expect(text).toContain(bearer);
    text = text.replace(bearer, `-H "X-API-Key: ${key}"`);
  }
  // curl reads --write-out from $CURL_HOME/.curlrc, so the command itself stays as documented.
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', text], { env: { PATH: process.env.PATH, CURL_HOME: curlHome, HOME: curlHome }, stdio: ['ignore', 'pipe', 'ignore'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`curl exited ${code}: ${stdout}`))));
  });
  const cut = out.lastIndexOf('\n');
  const body = out.slice(0, cut);
  if (!command.includes('-X POST')) nonCreateOutputs.push(body);
  return { status: Number(out.slice(cut + 1)), body: JSON.parse(body) as Json };
}

function checkAllowed(res: CheckResponse): boolean {
  return res.ok_response !== undefined && (res.status?.code ?? 0) === 0;
}

const countRows = async (table: 'api_keys' | 'audit_events'): Promise<number> =>
  Number((await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`)).rows[0]!.n);

async function tableCounts(): Promise<{ api_keys: number; audit_events: number }> {
  return { api_keys: await countRows('api_keys'), audit_events: await countRows('audit_events') };
}

async function httpDecisions(svc: RunningService, outcome: string, reason: string): Promise<number> {
  const metric = svc.metrics.registry.getSingleMetric('ryvion_authz_decisions_total');
  const { values } = await metric!.get();
  return values.filter((v) => v.labels.transport === 'http' && v.labels.outcome === outcome && v.labels.reason === reason).reduce((s, v) => s + v.value, 0);
}

beforeAll(async () => {
  db = await freshDatabase();
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  cliEnv = { DATABASE_URL: db.url, KEY_PEPPER: pepper };
  service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: pepper }, { logger });
  client = new CheckClient(service.grpcPort);
  curlHome = mkdtempSync(join(tmpdir(), 'ryvion-curl-'));
  writeFileSync(join(curlHome, '.curlrc'), 'write-out = "\\n%{http_code}"\n');

  accountA = (await service.repository.createAccount('a@example.com', 'pro')).id;
  buyerA = await newKey(accountA, 'buyer', 'main');
  readOnlyA = await newKey(accountA, 'read-only');
  writeOnlyA = await newKey(accountA, 'write-only');
  accountB = (await service.repository.createAccount('b@example.com', 'free')).id;
  buyerB = await newKey(accountB, 'buyer', 'b-main');
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await pool?.end();
  await db?.drop();
  if (curlHome) rmSync(curlHome, { recursive: true, force: true });
});

describe('the public documentation\'s curl commands', () => {
  it.each(['bearer', 'x-api-key'] as const)('create (%s): 201 with the new key and its secret, which then works on Check', async (via) => {
    const r = await runDocsCurl(DOCS_CURL.create, buyerA.secret, via);
    expect(r.status).toBe(201);
    expect(r.body).toEqual({
      object: 'api_key',
      id: expect.stringMatching(/^key_[0-9A-Za-z]{20}$/),
      account_id: accountA,
      name: 'my-new-key',
      scope: 'buyer',
      prefix: expect.stringMatching(/^ryv_live_[0-9A-Za-z]{4}…$/),
      created_at: expect.stringMatching(ISO),
      expires_at: null,
      last_used_at: null,
      revoked_at: null,
      successor_of: null,
      allowed_cidrs: null,
      metadata: null,
      tokens_per_minute: null,
      budget: null,
      allowed_models: null,
      key: expect.stringMatching(/^ryv_live_[0-9A-Za-z]{49}$/),
    });
    const secret = r.body.key as string;
    secrets.add(secret);
    expect(checkKeyShape(secret, 'live')).toEqual({ ok: true });
    expect(secret.startsWith((r.body.prefix as string).slice(0, -1))).toBe(true);
    expect(checkAllowed(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } })))).toBe(true);
  });

  it.each(['bearer', 'x-api-key'] as const)('list (%s): 200, the account\'s keys without secrets', async (via) => {
    // Its own account, with two keys made by the documented create: the list is exactly what it made.
    const account = await newAccount('pro');
    const caller = await newKey(account, 'buyer', 'main');
    for (let i = 0; i < 2; i++) {
      const made = await runDocsCurl(DOCS_CURL.create, caller.secret, via);
      expect(made.status).toBe(201);
      secrets.add(made.body.key as string);
    }
    const r = await runDocsCurl(DOCS_CURL.list, caller.secret, via);
    expect(r.status).toBe(200);
    expect(r.body.object).toBe('list');
    const data = r.body.data as Json[];
    const stored = (await pool.query<{ id: string }>(`SELECT id FROM api_keys WHERE account_id = $1 ORDER BY created_at, id`, [account])).rows.map((x) => x.id);
    expect(stored).toHaveLength(3);
    expect(data.map((k) => k.id)).toEqual(stored);
    expect(data.filter((k) => k.name === 'my-new-key')).toHaveLength(2);
    for (const k of data) {
      expect(Object.keys(k).sort()).toEqual([
        'account_id', 'allowed_cidrs', 'allowed_models', 'budget', 'created_at', 'expires_at', 'id', 'last_used_at', 'metadata', 'name', 'object', 'prefix', 'revoked_at', 'scope', 'successor_of', 'tokens_per_minute',
      ]);
      expect(k.object).toBe('api_key');
    }
  });

  it.each(['bearer', 'x-api-key'] as const)('me (%s): 200, the account and the calling key', async (via) => {
    const r = await runDocsCurl(DOCS_CURL.me, buyerA.secret, via);
    expect(r).toEqual({
      status: 200,
      body: {
        object: 'auth.me',
        account: { id: accountA, email: 'a@example.com', plan: 'pro' },
        key: { id: buyerA.id, name: 'main', scope: 'buyer', metadata: null },
      },
    });
  });
});

describe('authentication, as on Check', () => {
  it('read-only and write-only keys may call me', async () => {
    for (const k of [readOnlyA, writeOnlyA]) {
      const r = await call('GET', '/api/v1/auth/me', { key: k.secret });
      expect(r.status).toBe(200);
      expect(r.body.key).toMatchObject({ id: k.id });
    }
  });

  it.each([
    ['read-only', () => readOnlyA],
    ['write-only', () => writeOnlyA],
  ])('a %s key gets 403 insufficient_scope on create, list and revoke', async (_scope, key) => {
    const before = await tableCounts();
    const attempts = [
      await call('POST', '/api/v1/auth/api-keys', { key: key().secret, body: { name: 'escalate' } }),
      await call('GET', '/api/v1/auth/api-keys', { key: key().secret }),
      await call('DELETE', `/api/v1/auth/api-keys/${buyerA.id}`, { key: key().secret }),
    ];
    for (const r of attempts) {
      expectApiError(r, 403, 'insufficient_scope');
      expect(r.body).toMatchObject({ error: { type: 'permission_error' } });
      expect(r.headers.get('www-authenticate')).toBe('Bearer realm="ryvion", error="insufficient_scope", scope="keys.manage"');
    }
    expect(await tableCounts()).toEqual(before);
    expect(checkAllowed(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${buyerA.secret}` } })))).toBe(true);
  });

  it('no key: 401 missing_api_key with the very status, headers and body of a Check denial, and the request id', async () => {
    const counted = await httpDecisions(service, 'deny', 'missing_api_key');
    const r = await call('GET', '/api/v1/auth/api-keys', { headers: { 'x-request-id': 'req-mgmt-missing' } });
    const expected = denialResponse({ allow: false, reason: 'missing_api_key' });
    expect(r.status).toBe(expected.httpStatus);
    expect(r.text).toBe(expected.body);
    for (const [name, value] of expected.headers) expect(r.headers.get(name)).toBe(value);
    expect(r.headers.get('x-request-id')).toBe('req-mgmt-missing');
    expect(await httpDecisions(service, 'deny', 'missing_api_key')).toBe(counted + 1);
    expect(logLines.some((l) => l.includes('"request_id":"req-mgmt-missing"') && l.includes('"transport":"http"'))).toBe(true);
  });

  it.each<[string, () => Record<string, string | string[]>]>([
    ['an unknown key', () => ({ authorization: 'Bearer ryv_live_0000000000000000000000000000000000000000000000000000' })],
    ['a malformed key', () => ({ 'x-api-key': 'sk-not-ours' })],
    ['conflicting keys in the two headers', () => ({ authorization: `Bearer ${buyerA.secret}`, 'x-api-key': buyerB.secret })],
    ['the Authorization header sent twice', () => ({ authorization: [`Bearer ${buyerA.secret}`, `Bearer ${buyerA.secret}`] })],
    ['the X-API-Key header sent twice', () => ({ 'x-api-key': [buyerA.secret, buyerA.secret] })],
  ])('%s: 401 invalid_api_key', async (_name, headers) => {
    // node:http sends an array value as separate header lines, as a real client repeating a header does.
    const res = await new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: service.httpPort, method: 'GET', path: '/api/v1/auth/api-keys', headers: headers() }, (r) => {
        let body = '';
        r.on('data', (d: Buffer) => (body += d.toString()));
        r.on('end', () => resolve({ status: r.statusCode!, headers: r.headers, body }));
      });
      req.on('error', reject);
      req.end();
    });
    nonCreateOutputs.push(res.body);
    expect(res.status).toBe(401);
    expect(res.body).toBe(denialResponse({ allow: false, reason: 'invalid_api_key', detail: 'unknown' }).body);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="ryvion", error="invalid_token"');
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('revoke', () => {
  let replica: RunningService;
  let replicaClient: CheckClient;

  beforeAll(async () => {
    // A second replica of the service on the same database.
    replica = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: pepper }, { logger });
    replicaClient = new CheckClient(replica.grpcPort);
  });

  afterAll(async () => {
    replicaClient?.close();
    await replica?.stop();
  });

  it('revokes; the next Check is denied on this replica and on the other one; revoking again is 200', async () => {
    const created = await call('POST', '/api/v1/auth/api-keys', { key: buyerA.secret, body: { name: 'to-revoke' } });
    expect(created.status).toBe(201);
    const secret = created.body.key as string;
    const id = created.body.id as string;
    secrets.add(secret);
    const check = (c: CheckClient) => c.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } }));
    // Both replicas have seen the key alive (and may have cached it).
    expect(checkAllowed(await check(client))).toBe(true);
    expect(checkAllowed(await check(replicaClient))).toBe(true);

    const revoked = await call('DELETE', `/api/v1/auth/api-keys/${id}`, { key: buyerA.secret });
    expect(revoked.status).toBe(200);
    expect(revoked.body).toMatchObject({ object: 'api_key', id, name: 'to-revoke', revoked: true, revoked_at: expect.stringMatching(ISO) });
    expect(revoked.body).not.toHaveProperty('key');

    for (const c of [client, replicaClient]) {
      const res = await check(c);
      expect(checkAllowed(res)).toBe(false);
      expect(res.denied_response?.status.code).toBe(401);
      expect(JSON.parse(res.denied_response!.body)).toMatchObject({ error: { code: 'invalid_api_key' } });
    }
    expectApiError(await call('GET', '/api/v1/auth/me', { key: secret }), 401, 'invalid_api_key');
    expectApiError(await call('GET', '/api/v1/auth/me', { key: secret, port: replica.httpPort }), 401, 'invalid_api_key');

    const again = await call('DELETE', `/api/v1/auth/api-keys/${id}`, { key: buyerA.secret });
    expect(again.status).toBe(200);
    expect(again.body.revoked_at).toBe(revoked.body.revoked_at);

    const listed = (await call('GET', '/api/v1/auth/api-keys', { key: buyerA.secret })).body.data as Json[];
    expect(listed.find((k) => k.id === id)).toMatchObject({ revoked_at: revoked.body.revoked_at });

    // One audit row per change, even though the revoke was sent twice; the actor is the calling key.
    const audit = await pool.query(`SELECT action, actor_key_id, account_id, detail FROM audit_events WHERE target_key_id = $1 ORDER BY id`, [id]);
    expect(audit.rows).toEqual([
      { action: 'key.created', actor_key_id: buyerA.id, account_id: accountA, detail: expect.objectContaining({ via: 'api', name: 'to-revoke', scope: 'buyer', expires_at: null }) },
      { action: 'key.revoked', actor_key_id: buyerA.id, account_id: accountA, detail: expect.objectContaining({ via: 'api', request_id: expect.any(String) }) },
    ]);
  });

  it('a key may revoke itself; its next call is a 401', async () => {
    const created = await call('POST', '/api/v1/auth/api-keys', { key: buyerA.secret, body: { name: 'self' } });
    const secret = created.body.key as string;
    secrets.add(secret);
    expect((await call('DELETE', `/api/v1/auth/api-keys/${created.body.id as string}`, { key: secret })).status).toBe(200);
    expectApiError(await call('GET', '/api/v1/auth/api-keys', { key: secret }), 401, 'invalid_api_key');
  });

  it('an unknown or malformed id is 404 key_not_found and changes nothing', async () => {
    const before = await tableCounts();
    const unknown = await call('DELETE', '/api/v1/auth/api-keys/key_00000000000000000000', { key: buyerA.secret });
    expectApiError(unknown, 404, 'key_not_found', 'id');
    const malformed = await call('DELETE', '/api/v1/auth/api-keys/not-a-key-id', { key: buyerA.secret });
    expect(malformed.body).toEqual(unknown.body);
    expect(await tableCounts()).toEqual(before);
  });
});

describe('accounts are isolated', () => {
  it('a key of account B lists only B\'s keys, whatever identity headers it sends', async () => {
    // A B of its own, with one key: other cases add keys to the shared account B.
    const b = await newAccount();
    const onlyKey = await newKey(b, 'buyer', 'b-only');
    const r = await call('GET', '/api/v1/auth/api-keys', {
      key: onlyKey.secret,
      headers: { 'x-ryvion-account-id': accountA, 'x-ryvion-key-id': buyerA.id, 'x-ryvion-scope': 'buyer' },
    });
    expect(r.status).toBe(200);
    expect((r.body.data as Json[]).map((k) => k.id)).toEqual([onlyKey.id]);
    const me = await call('GET', '/api/v1/auth/me', { key: onlyKey.secret, headers: { 'x-ryvion-account-id': accountA } });
    expect(me.body).toMatchObject({ account: { id: b }, key: { id: onlyKey.id } });
  });

  it('B creating a key makes it B\'s: the owner never comes from the body', async () => {
    const before = await tableCounts();
    const r = await call('POST', '/api/v1/auth/api-keys', { key: buyerB.secret, body: { name: 'mine', account_id: accountA } });
    expectApiError(r, 400, 'unknown_parameter', 'account_id');
    expect(await tableCounts()).toEqual(before);
    const ok = await call('POST', '/api/v1/auth/api-keys', { key: buyerB.secret, body: { name: 'mine' } });
    secrets.add(ok.body.key as string);
    const owner = await pool.query(`SELECT account_id FROM api_keys WHERE id = $1`, [ok.body.id]);
    expect(owner.rows[0].account_id).toBe(accountB);
  });

  it('B cannot revoke A\'s key: 404 exactly like an unknown id, and A\'s key still works', async () => {
    const before = await tableCounts();
    const foreign = await call('DELETE', `/api/v1/auth/api-keys/${buyerA.id}`, { key: buyerB.secret });
    const unknown = await call('DELETE', '/api/v1/auth/api-keys/key_zzzzzzzzzzzzzzzzzzzz', { key: buyerB.secret });
    expectApiError(foreign, 404, 'key_not_found', 'id');
    expect(foreign.text).toBe(unknown.text);
    expect(await tableCounts()).toEqual(before);
    expect(checkAllowed(await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${buyerA.secret}` } })))).toBe(true);
  });
});

describe('bad input is refused and nothing is written', () => {
  const long = (n: number): string => 'n'.repeat(n);
  const cases: Array<[string, CallInit, number, string, string | null]> = [
    ['invalid JSON', { raw: '{"name":' }, 400, 'invalid_json', null],
    ['an empty JSON body', { raw: '', contentType: 'application/json' }, 400, 'invalid_json', null],
    ['no body at all', {}, 400, 'invalid_type', null],
    ['a JSON array', { body: [{ name: 'x' }] }, 400, 'invalid_type', null],
    ['JSON null', { raw: 'null' }, 400, 'invalid_type', null],
    ['a JSON string', { body: 'my-new-key' }, 400, 'invalid_type', null],
    ['no name', { body: {} }, 400, 'missing_required_parameter', 'name'],
    ['an empty name', { body: { name: '' } }, 400, 'invalid_value', 'name'],
    ['a blank name', { body: { name: '   ' } }, 400, 'invalid_value', 'name'],
    ['a name of 129 characters', { body: { name: long(129) } }, 400, 'invalid_value', 'name'],
    ['a name with NUL', { body: { name: 'a\u0000b' } }, 400, 'invalid_value', 'name'],
    ['a name with a newline', { body: { name: 'a\nb' } }, 400, 'invalid_value', 'name'],
    ['a numeric name', { body: { name: 42 } }, 400, 'invalid_type', 'name'],
    ['a null name', { body: { name: null } }, 400, 'invalid_type', 'name'],
    ['an unknown scope', { body: { name: 'x', scope: 'admin' } }, 400, 'invalid_value', 'scope'],
    ['a scope of the wrong case', { body: { name: 'x', scope: 'Buyer' } }, 400, 'invalid_value', 'scope'],
    ['a numeric scope', { body: { name: 'x', scope: 7 } }, 400, 'invalid_type', 'scope'],
    ['an unknown field', { body: { name: 'x', owner: 'acct_00000000000000000000' } }, 400, 'unknown_parameter', 'owner'],
    ['an unparsable expiry', { body: { name: 'x', expires_at: 'tomorrow' } }, 400, 'invalid_value', 'expires_at'],
    ['an expiry without a time zone', { body: { name: 'x', expires_at: '2099-01-01T00:00:00' } }, 400, 'invalid_value', 'expires_at'],
    ['an impossible date', { body: { name: 'x', expires_at: '2099-02-31T00:00:00Z' } }, 400, 'invalid_value', 'expires_at'],
    ['an expiry in the past', { body: { name: 'x', expires_at: '2001-01-01T00:00:00Z' } }, 400, 'invalid_value', 'expires_at'],
    ['a numeric expiry', { body: { name: 'x', expires_at: 4102444800 } }, 400, 'invalid_type', 'expires_at'],
    ['a __proto__ key', { raw: '{"name":"x","__proto__":{"scope":"buyer"}}' }, 400, 'invalid_json', null],
    ['a body over 16 KiB', { body: { name: 'x', pad: long(17 * 1024) } }, 413, 'request_too_large', null],
    ['text/plain', { raw: '{"name":"x"}', contentType: 'text/plain' }, 415, 'unsupported_media_type', null],
    ['a form body (curl -d without a content type)', { raw: 'name=x', contentType: 'application/x-www-form-urlencoded' }, 415, 'unsupported_media_type', null],
  ];

  it.each(cases)('%s: %i %s', async (_name, init, status, code, param) => {
    const before = await tableCounts();
    const r = await call('POST', '/api/v1/auth/api-keys', { key: buyerA.secret, ...init });
    expectApiError(r, status, code, param);
    expect(r.body).toMatchObject({ error: { type: 'invalid_request_error' } });
    expect(await tableCounts()).toEqual(before);
  });

  it('a bad body from an unauthenticated caller is a 401, not a validation answer', async () => {
    expectApiError(await call('POST', '/api/v1/auth/api-keys', { raw: '{"name":' }), 401, 'missing_api_key');
  });

  it('at the limits: a 128-character name, a null expiry, a trimmed name and an expiry with an offset are accepted', async () => {
    const exact = await call('POST', '/api/v1/auth/api-keys', { key: buyerA.secret, body: { name: long(128), expires_at: null } });
    expect(exact.body).toMatchObject({ name: long(128), expires_at: null });
    const trimmed = await call('POST', '/api/v1/auth/api-keys', {
      key: buyerA.secret,
      body: { name: '  spaced  ', scope: 'read-only', expires_at: '2099-06-30T12:00:00+02:00' },
    });
    expect(trimmed.body).toMatchObject({ name: 'spaced', scope: 'read-only', expires_at: '2099-06-30T10:00:00.000Z' });
    for (const r of [exact, trimmed]) secrets.add(r.body.key as string);
  });

  it('unknown routes are 404 and other methods 405, in the same error shape', async () => {
    expectApiError(await call('GET', '/api/v1/auth/nothing-here'), 404, 'not_found');
    expectApiError(await call('GET', '/'), 404, 'not_found');
    const put = await call('PUT', '/api/v1/auth/api-keys', { key: buyerA.secret, body: { name: 'x' } });
    expectApiError(put, 405, 'method_not_allowed');
    expect(put.headers.get('allow')).toBe('GET, POST');
    const get = await call('GET', `/api/v1/auth/api-keys/${buyerA.id}`, { key: buyerA.secret });
    expectApiError(get, 405, 'method_not_allowed');
    expect(get.headers.get('allow')).toBe('DELETE');
    const head = await call('HEAD', '/api/v1/auth/me', { key: buyerA.secret });
    expect([head.status, head.headers.get('allow')]).toEqual([405, 'GET']);
  });
});

describe('scope ceiling and key cap (custom policy, MAX_KEYS_PER_ACCOUNT=4)', () => {
  let dir: string;
  let capped: RunningService;

  /** An account of its own for each case (the cap counts an account's keys): a buyer key, a read-only key and an expired key. */
  async function accountC(): Promise<{ id: string; buyer: { id: string; secret: string }; readOnly: { id: string; secret: string } }> {
    const id = await newAccount();
    const buyer = await newKey(id, 'buyer', 'c-main');
    const readOnly = await newKey(id, 'read-only', 'c-reader');
    // Expired keys do not count towards the cap.
    await service.repository.createKey({ accountId: id, name: 'expired', scope: 'buyer', expiresAt: new Date(Date.now() - 60_000) });
    return { id, buyer, readOnly };
  }

  beforeAll(async () => {
    // The shipped policy, except that read-only keys may also manage keys.
    const text = readFileSync(new URL('../../policy/default.yaml', import.meta.url), 'utf8');
    const lenient = text.replace('read-only: [models.read, kb.read, memories.read, billing.read]', 'read-only: [models.read, kb.read, memories.read, billing.read, keys.manage]');
    expect(lenient).not.toBe(text);
    dir = mkdtempSync(join(tmpdir(), 'ryvion-policy-'));
    writeFileSync(join(dir, 'policy.yaml'), lenient);
    capped = await startTestService(
      { DATABASE_URL: db.url, KEY_PEPPER: pepper, POLICY_FILE: join(dir, 'policy.yaml'), MAX_KEYS_PER_ACCOUNT: '4' },
      { logger },
    );
  });

  afterAll(async () => {
    await capped?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('a key cannot create a key with a wider scope than its own: 403 scope_not_allowed', async () => {
    const c = await accountC();
    const before = await tableCounts();
    const r = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.readOnly.secret, body: { name: 'up', scope: 'buyer' } });
    expectApiError(r, 403, 'scope_not_allowed', 'scope');
    expect(r.body).toMatchObject({ error: { type: 'permission_error' } });
    const sideways = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.readOnly.secret, body: { name: 'side', scope: 'write-only' } });
    expectApiError(sideways, 403, 'scope_not_allowed', 'scope');
    expect(await tableCounts()).toEqual(before);
  });

  it('without a scope, the new key gets the caller\'s own scope', async () => {
    const c = await accountC();
    const r = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.readOnly.secret, body: { name: 'same' } });
    expect(r.body).toMatchObject({ scope: 'read-only' });
    secrets.add(r.body.key as string);
  });

  it('at the cap: 409 key_limit_reached and nothing written; after a revoke there is room again', async () => {
    const c = await accountC();
    const third = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.buyer.secret, body: { name: 'third' } });
    expect(third.status).toBe(201);
    secrets.add(third.body.key as string);
    const first = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.buyer.secret, body: { name: 'fourth' } });
    expect(first.status).toBe(201);
    secrets.add(first.body.key as string);
    const before = await tableCounts();
    const over = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.buyer.secret, body: { name: 'fifth' } });
    expectApiError(over, 409, 'key_limit_reached');
    expect(await tableCounts()).toEqual(before);

    expect((await call('DELETE', `/api/v1/auth/api-keys/${first.body.id as string}`, { port: capped.httpPort, key: c.buyer.secret })).status).toBe(200);
    const again = await call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.buyer.secret, body: { name: 'fifth' } });
    expect(again.status).toBe(201);
    secrets.add(again.body.key as string);
  });

  it('concurrent creates cannot overshoot the cap', async () => {
    const c = await accountC();
    // At the cap: buyer, read-only and two more live keys.
    await newKey(c.id, 'buyer', 'c-third');
    await newKey(c.id, 'buyer', 'c-fourth');
    const r = await call('DELETE', `/api/v1/auth/api-keys/${c.readOnly.id}`, { port: capped.httpPort, key: c.buyer.secret });
    expect(r.status).toBe(200);
    const results = await Promise.all(
      Array.from({ length: 5 }, (_, i) => call('POST', '/api/v1/auth/api-keys', { port: capped.httpPort, key: c.buyer.secret, body: { name: `race-${i}` } })),
    );
    for (const res of results) if (res.status === 201) secrets.add(res.body.key as string);
    expect(results.map((res) => res.status).sort()).toEqual([201, 409, 409, 409, 409]);
    const live = await pool.query(`SELECT count(*)::int AS n FROM api_keys WHERE account_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())`, [c.id]);
    expect(live.rows[0].n).toBe(4);
  });
});

describe('audit trail on the command line', () => {
  it('keys create and keys revoke write audit rows without an actor key', async () => {
    const created = await runCliProcess(['keys', 'create', '--account', accountB, '--name', 'from-cli', '--scope', 'read-only', '--json'], cliEnv);
    expect(created.code).toBe(0);
    const key = JSON.parse(created.stdout) as { id: string; key: string };
    secrets.add(key.key);
    expect((await runCliProcess(['keys', 'revoke', key.id], cliEnv)).code).toBe(0);
    const rows = await pool.query(`SELECT action, actor_key_id, detail FROM audit_events WHERE target_key_id = $1 ORDER BY id`, [key.id]);
    expect(rows.rows).toEqual([
      { action: 'key.created', actor_key_id: null, detail: { via: 'cli', name: 'from-cli', scope: 'read-only', expires_at: null } },
      { action: 'key.revoked', actor_key_id: null, detail: { via: 'cli' } },
    ]);
  });

  it('audit --account ID --json lists the account\'s events newest first', async () => {
    // Its own account: three keys made by the operator, one made and then revoked through the API.
    const account = await newAccount('pro');
    const caller = await newKey(account, 'buyer', 'main');
    await newKey(account, 'read-only');
    await newKey(account, 'write-only');
    const made = await call('POST', '/api/v1/auth/api-keys', { key: caller.secret, body: { name: 'audited' } });
    expect(made.status).toBe(201);
    secrets.add(made.body.key as string);
    expect((await call('DELETE', `/api/v1/auth/api-keys/${made.body.id as string}`, { key: caller.secret })).status).toBe(200);
    const r = await runCliProcess(['audit', '--account', account, '--json'], cliEnv);
    expect(r.code).toBe(0);
    nonCreateOutputs.push(r.stdout);
    const events = JSON.parse(r.stdout) as Array<Json & { id: number; occurred_at: string }>;
    const stored = await pool.query<{ id: string }>(`SELECT id FROM audit_events WHERE account_id = $1 ORDER BY occurred_at DESC, id DESC`, [account]);
    expect(events.map((e) => e.id)).toEqual(stored.rows.map((x) => Number(x.id)));
    // Keys the set-up made through the repository are audited as operator (CLI) events: no actor key.
    for (const e of events) {
      const viaApi = (e.detail as { via?: string }).via === 'api';
      expect(e).toEqual({
        id: expect.any(Number),
        occurred_at: expect.stringMatching(ISO),
        account_id: account,
        actor_key_id: viaApi ? expect.stringMatching(/^key_/) : null,
        action: expect.stringMatching(/^key\.(created|revoked)$/),
        target_key_id: expect.stringMatching(/^key_/),
        detail: expect.objectContaining({ via: viaApi ? 'api' : 'cli' }),
      });
    }
    expect(events.some((e) => (e.detail as { via?: string }).via === 'api')).toBe(true);
    const revokedId = events.find((e) => e.action === 'key.revoked')!.target_key_id;
    const forRevoked = events.filter((e) => e.target_key_id === revokedId).map((e) => e.action);
    expect(forRevoked).toEqual(['key.revoked', 'key.created']);
    expect(events.filter((e) => e.action === 'key.created').length).toBeGreaterThanOrEqual(4);
  });

  it('audit for an unknown account exits 1; a malformed id exits 2', async () => {
    expect((await runCliProcess(['audit', '--account', 'acct_00000000000000000000'], cliEnv)).code).toBe(1);
    expect((await runCliProcess(['audit', '--account', 'nope'], cliEnv)).code).toBe(2);
  });
});

describe('secrecy', () => {
  it('a secret appears in its create response and nowhere else: not in logs, tables, listings or audit output', async () => {
    // What this case needs written it writes itself (the other cases add theirs when they ran first):
    // keys created through the API and the CLI, one revoked through each, a listing and the audit output.
    const account = await newAccount();
    const caller = await newKey(account, 'buyer', 'secrecy');
    const made: Array<{ id: string; key: string }> = [];
    for (let i = 0; i < 8; i++) {
      const r = await call('POST', '/api/v1/auth/api-keys', { key: caller.secret, body: { name: `secret-${i}` } });
      expect(r.status).toBe(201);
      made.push({ id: r.body.id as string, key: r.body.key as string });
      secrets.add(r.body.key as string);
    }
    expect((await call('DELETE', `/api/v1/auth/api-keys/${made[0]!.id}`, { key: caller.secret })).status).toBe(200);
    const viaCli = await runCliProcess(['keys', 'create', '--account', account, '--name', 'secret-cli', '--scope', 'buyer', '--json'], cliEnv);
    expect(viaCli.code).toBe(0);
    const cliKey = JSON.parse(viaCli.stdout) as { id: string; key: string };
    secrets.add(cliKey.key);
    expect((await runCliProcess(['keys', 'revoke', cliKey.id], cliEnv)).code).toBe(0);
    const audit = await runCliProcess(['audit', '--account', account, '--json'], cliEnv);
    expect(audit.code).toBe(0);
    nonCreateOutputs.push(audit.stdout);
    for (const accountKey of [buyerA.secret, buyerB.secret, caller.secret]) {
      const r = await call('GET', '/api/v1/auth/api-keys', { key: accountKey });
      expect(r.status).toBe(200);
    }
    const logs = logLines.join('');
    // The capture works: debug lines of allowed HTTP decisions and the change log lines are in it.
    expect(logs).toContain('"transport":"http"');
    expect(logs).toContain('api key created');
    expect(logs).toContain('api key revoked');
    const tables = [
      ...(await pool.query<{ j: string }>(`SELECT row_to_json(k)::text AS j FROM api_keys k`)).rows.map((r) => r.j),
      ...(await pool.query<{ j: string }>(`SELECT row_to_json(a)::text AS j FROM audit_events a`)).rows.map((r) => r.j),
    ].join('\n');
    const elsewhere = nonCreateOutputs.join('\n');
    // Every secret the file made so far is checked: the set-up's 4, this case's 10 (whatever ran before it), and
    // those of any case that ran earlier (shuffle seed 2684051856 ran this case first: 14 in all).
    const own = [caller.secret, ...made.map((m) => m.key), cliKey.key];
    expect(own.every((s) => secrets.has(s))).toBe(true);
    expect(secrets.size).toBeGreaterThanOrEqual(4 + own.length);
    for (const secret of secrets) {
      const random = secret.slice('ryv_live_'.length, 'ryv_live_'.length + 43);
      for (const [where, text] of [['logs', logs], ['tables', tables], ['other responses', elsewhere]] as const) {
        expect(text.includes(secret), `${where} contain a secret`).toBe(false);
        expect(text.includes(random), `${where} contain a secret's random part`).toBe(false);
      }
    }
  });
});

describe('metrics', () => {
  it('counts management calls by operation and status class, never by raw path', async () => {
    const before = await metricValue(service, 'ryvion_authz_management_requests_total', { operation: 'me', status_class: '2xx' });
    const res = await fetch(`http://127.0.0.1:${service.httpPort}/api/v1/auth/me`, { headers: { authorization: `Bearer ${buyerA.secret}` } });
    expect(res.status).toBe(200);
    expect(await metricValue(service, 'ryvion_authz_management_requests_total', { operation: 'me', status_class: '2xx' })).toBe(before + 1);
    await fetch(`http://127.0.0.1:${service.httpPort}/api/v1/auth/api-keys/key_doesnotexist00000000`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${buyerA.secret}` },
    });
    expect(await metricValue(service, 'ryvion_authz_management_requests_total', { operation: 'revoke', status_class: '4xx' })).toBeGreaterThan(0);
    const text = await service.metrics.registry.getSingleMetricAsString('ryvion_authz_management_requests_total');
    expect(text).not.toMatch(/key_|\/api\//);
  });
});
