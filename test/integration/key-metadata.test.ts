// Key metadata: stored with the key, shown by list and /auth/me, and the fields the policy names
// forwarded upstream (headers and dynamic metadata), overwritten, never taken from the client.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_POLICY_PATH } from '../../src/policy/policy.js';
import type { RunningService } from '../../src/service.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient, headersOf, startTestService } from '../helpers/service.js';
import { freshDatabase, testPepper } from '../helpers/stores.js';

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let client: CheckClient;
let owner: string;
let ownerId: string;
let accountId: string;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ryvion-meta-policy-'));
  const policyFile = join(dir, 'policy.yaml');
  writeFileSync(policyFile, `${readFileSync(DEFAULT_POLICY_PATH, 'utf8')}\nforward_metadata: [team, cost_center]\n`);
  db = await freshDatabase();
  service = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: testPepper(), POLICY_FILE: policyFile });
  client = new CheckClient(service.grpcPort);
  accountId = (await service.repository.createAccount('meta@example.com', 'free')).id;
  const created = await service.repository.createKey({ accountId, name: 'owner', scope: 'buyer', expiresAt: null });
  owner = created.secret;
  ownerId = created.key.id;
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await db?.drop();
  rmSync(dir, { recursive: true, force: true });
});

const api = (method: string, path: string, key: string, body?: unknown) =>
  fetch(`http://127.0.0.1:${service.httpPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });

const metadata = { team: 'search', cost_center: 4711, note: 'línea\r\nX-Evil: 1', nested: { a: [1, 2] } };

type CreatedKey = { id: string; key: string; metadata: unknown };

/** A key of its own carrying `metadata`, made through the API as a user would. */
async function taggedKey(): Promise<CreatedKey> {
  const res = await api('POST', '/api/v1/auth/api-keys', owner, { name: 'tagged', metadata });
  expect(res.status).toBe(201);
  return (await res.json()) as CreatedKey;
}

describe('key metadata', () => {
  it('round-trips: set at creation, returned by create, list, /auth/me and kept by a roll', async () => {
    const res = await api('POST', '/api/v1/auth/api-keys', owner, { name: 'tagged', metadata });
    expect(res.status).toBe(201);
    const key = (await res.json()) as CreatedKey;
    expect(key.metadata).toEqual(metadata);
    const list = (await (await api('GET', '/api/v1/auth/api-keys', owner)).json()) as { data: Array<{ id: string; metadata: unknown }> };
    expect(list.data.find((k) => k.id === key.id)?.metadata).toEqual(metadata);
    expect(list.data.find((k) => k.id === ownerId)?.metadata).toBeNull();
    const me = (await (await api('GET', '/api/v1/auth/me', key.key)).json()) as { key: { metadata: unknown } };
    expect(me.key.metadata).toEqual(metadata);
    const rolled = (await (await api('POST', `/api/v1/auth/api-keys/${key.id}/roll`, owner, { overlap_seconds: 3600 })).json()) as CreatedKey;
    expect(rolled.metadata).toEqual(metadata);
  });

  it('metadata over 1 KiB, or not an object, is a 400 and creates nothing', async () => {
    const before = (await service.keys.listKeys(accountId)).length;
    const big = await api('POST', '/api/v1/auth/api-keys', owner, { name: 'big', metadata: { blob: 'x'.repeat(1100) } });
    expect(big.status).toBe(400);
    expect(await big.json()).toMatchObject({ error: { param: 'metadata' } });
    expect((await api('POST', '/api/v1/auth/api-keys', owner, { name: 'list', metadata: [1, 2] })).status).toBe(400);
    expect((await api('POST', '/api/v1/auth/api-keys', owner, { name: 'str', metadata: 'x' })).status).toBe(400);
    expect((await service.keys.listKeys(accountId)).length).toBe(before);
  });

  it('the fields the policy names go upstream as x-ryvion-meta-* headers (overwriting) and dynamic metadata, others do not', async () => {
    const key = await taggedKey();
    const r = await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${key.key}`, 'x-ryvion-meta-team': 'spoofed' } }));
    expect(r.ok_response).toBeDefined();
    const headers = headersOf(r.ok_response!.headers);
    expect(headers['x-ryvion-meta-team']).toBe('search');
    expect(headers['x-ryvion-meta-cost-center']).toBe('4711');
    expect(Object.keys(headers).filter((h) => h.startsWith('x-ryvion-meta-')).sort()).toEqual(['x-ryvion-meta-cost-center', 'x-ryvion-meta-team']);
    for (const h of r.ok_response!.headers) if (h.header.key.startsWith('x-ryvion-meta-')) expect(h.append_action).toBe(r.ok_response!.headers[0]!.append_action);
    const fields = (r.dynamic_metadata as { fields: Record<string, { stringValue?: string }> }).fields;
    expect(fields.meta_team?.stringValue).toBe('search');
    expect(fields.meta_cost_center?.stringValue).toBe('4711');
  });

  it('a named field the key lacks is removed upstream, so a client cannot supply it', async () => {
    const r = await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${owner}`, 'x-ryvion-meta-team': 'spoofed' } }));
    expect(r.ok_response!.headers_to_remove).toEqual(expect.arrayContaining(['x-ryvion-meta-team', 'x-ryvion-meta-cost-center']));
    expect(headersOf(r.ok_response!.headers)['x-ryvion-meta-team']).toBeUndefined();
  });

  it('HTTP mode sends the same headers on allow, and names the absent ones for removal', async () => {
    const key = await taggedKey();
    const res = await fetch(`http://127.0.0.1:${service.httpPort}/authz/v1/models`, { headers: { authorization: `Bearer ${key.key}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-ryvion-meta-team')).toBe('search');
    expect(res.headers.get('x-ryvion-meta-cost-center')).toBe('4711');
    const plain = await fetch(`http://127.0.0.1:${service.httpPort}/authz/v1/models`, { headers: { authorization: `Bearer ${owner}` } });
    expect(plain.headers.get('x-envoy-auth-headers-to-remove')).toContain('x-ryvion-meta-team');
  });
});
