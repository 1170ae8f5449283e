// Rolling a key: a successor at once, the old key working for the overlap and refused by every replica when it ends.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { RunningService } from '../../src/service.js';
import type { CheckResponse } from '../../src/transport/grpc/proto.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { runCliProcess } from '../helpers/cli.js';
import { CheckClient, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';

const pepper = testPepper();
const prefix = redisPrefix();
let db: Awaited<ReturnType<typeof freshDatabase>>;
let a: RunningService;
let b: RunningService;
let clientA: CheckClient;
let clientB: CheckClient;
let accountId: string;
let owner: string;

beforeAll(async () => {
  db = await freshDatabase();
  const env = {
    DATABASE_URL: db.url,
    KEY_PEPPER: pepper,
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: prefix,
    INVALIDATION_LEASE_MS: '1000',
    KEY_ROLL_SWEEP_INTERVAL_MS: '200',
    KEY_ROLL_MAX_OVERLAP_SECONDS: '86400',
  };
  a = await startTestService(env);
  b = await startTestService(env);
  clientA = new CheckClient(a.grpcPort);
  clientB = new CheckClient(b.grpcPort);
  for (const s of [a, b]) await vi.waitFor(() => expect(s.keyStore.bus.leaseHeld()).toBe(true), { timeout: 5000, interval: 20 });
  accountId = (await a.repository.createAccount('roll@example.com', 'free')).id;
  owner = (await a.repository.createKey({ accountId, name: 'owner', scope: 'buyer', expiresAt: null })).secret;
});

afterAll(async () => {
  clientA?.close();
  clientB?.close();
  await a?.stop();
  await b?.stop();
  await db?.drop();
});

const check = (c: CheckClient, key: string): Promise<CheckResponse> => c.check(envoyCheckRequest({ headers: { authorization: `Bearer ${key}` } }));
const allowed = (r: CheckResponse): boolean => r.ok_response !== undefined;

const api = (method: string, path: string, body?: unknown, key = owner) =>
  fetch(`http://127.0.0.1:${a.httpPort}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });

interface KeyJson {
  id: string;
  key: string;
  successor_of: string | null;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
  name: string;
  scope: string;
  previous_key: { id: string; expires_at: string | null };
  error?: { code: string; message: string };
}

async function newKey(opts: { name?: string; scope?: string; expiresAt?: Date | null } = {}): Promise<{ id: string; secret: string }> {
  const { key, secret } = await a.repository.createKey({ accountId, name: opts.name ?? 'service', scope: opts.scope ?? 'buyer', expiresAt: opts.expiresAt ?? null });
  return { id: key.id, secret };
}

async function roll(id: string, overlapSeconds: number, key = owner): Promise<{ status: number; body: KeyJson }> {
  const res = await api('POST', `/api/v1/auth/api-keys/${id}/roll`, { overlap_seconds: overlapSeconds }, key);
  return { status: res.status, body: (await res.json()) as KeyJson };
}

async function bothAllow(secret: string): Promise<[boolean, boolean]> {
  return [allowed(await check(clientA, secret)), allowed(await check(clientB, secret))];
}

describe('rolling a key', () => {
  it('the old key works on both replicas during the overlap and is refused by both the moment it ends; the successor keeps working', async () => {
    const old = await newKey({ name: 'billing-worker' });
    // Both replicas hold the old key in memory, with no expiry.
    expect(await bothAllow(old.secret)).toEqual([true, true]);

    const { status, body } = await roll(old.id, 3);
    expect(status).toBe(201);
    expect(body).toMatchObject({ name: 'billing-worker', scope: 'buyer', successor_of: old.id, expires_at: null });
    expect(body.key).toMatch(/^ryv_live_/);
    const endsAt = Date.parse(body.previous_key.expires_at!);
    expect(endsAt).toBeGreaterThan(Date.now());
    expect(endsAt).toBeLessThanOrEqual(Date.now() + 3000);

    expect(await bothAllow(body.key)).toEqual([true, true]);
    if (Date.now() < endsAt - 500) expect(await bothAllow(old.secret)).toEqual([true, true]);

    await vi.waitFor(() => expect(Date.now()).toBeGreaterThan(endsAt), { timeout: 10_000, interval: 20 });
    // No waiting for caches: the entries both replicas hold carry the new expiry.
    expect(await bothAllow(old.secret)).toEqual([false, false]);
    expect(await bothAllow(body.key)).toEqual([true, true]);
  });

  it('the sweeper marks the old key revoked after the overlap; the audit trail has the roll, the successor and the revocation', async () => {
    const old = await newKey({ name: 'swept' });
    const { body } = await roll(old.id, 0);
    await vi.waitFor(
      async () => {
        const list = (await (await api('GET', '/api/v1/auth/api-keys')).json()) as { data: KeyJson[] };
        expect(list.data.find((k) => k.id === old.id)?.revoked_at).not.toBeNull();
      },
      { timeout: 15_000, interval: 100 },
    );
    const events = await a.keys.audit(accountId, 1000);
    const about = (id: string) => events.filter((e) => e.targetKeyId === id).map((e) => [e.action, e.detail.via]);
    expect(about(old.id)).toEqual(expect.arrayContaining([['key.rolled', 'api'], ['key.revoked', 'sweeper']]));
    expect(about(body.id)).toEqual([['key.created', 'api']]);
    expect(events.find((e) => e.targetKeyId === body.id)?.detail.successor_of).toBe(old.id);
  });

  it('an overlap of 0 stops the old key on both replicas at once', async () => {
    const old = await newKey();
    expect(await bothAllow(old.secret)).toEqual([true, true]);
    const { status, body } = await roll(old.id, 0);
    expect(status).toBe(201);
    expect(await bothAllow(old.secret)).toEqual([false, false]);
    expect(await bothAllow(body.key)).toEqual([true, true]);
  });

  it('a key that already expires sooner than the overlap keeps its sooner expiry; the successor inherits the original expiry', async () => {
    const expiresAt = new Date(Date.now() + 60_000);
    const old = await newKey({ expiresAt });
    const { body } = await roll(old.id, 3600);
    expect(Date.parse(body.previous_key.expires_at!)).toBe(expiresAt.getTime());
    expect(Date.parse(body.expires_at!)).toBe(expiresAt.getTime());
  });

  it('chained rolls work; rolling the same key twice is refused with key_already_rolled naming the successor', async () => {
    const first = await newKey();
    const second = await roll(first.id, 600);
    const third = await roll(second.body.id, 600, second.body.key);
    expect(third.status).toBe(201);
    expect(third.body.successor_of).toBe(second.body.id);
    expect(await bothAllow(first.secret)).toEqual([true, true]);
    expect(await bothAllow(second.body.key)).toEqual([true, true]);
    expect(await bothAllow(third.body.key)).toEqual([true, true]);

    // A Redis that missed the rolls is repaired from Postgres with the old keys' new entries.
    const replay = await a.repository.recentRevocations(60_000);
    expect(replay.find((r) => r.id === first.id)?.expiresAt?.toISOString()).toBe(second.body.previous_key.expires_at);
    expect(replay.find((r) => r.id === second.body.id)?.expiresAt?.toISOString()).toBe(third.body.previous_key.expires_at);

    const again = await roll(first.id, 600);
    expect(again.status).toBe(409);
    expect(again.body.error).toMatchObject({ code: 'key_already_rolled' });
    expect(again.body.error!.message).toContain(second.body.id);
  });

  it('the key list shows the pair, each with its own last_used_at', async () => {
    const old = await newKey({ name: 'pair' });
    await check(clientA, old.secret);
    const { body } = await roll(old.id, 600);
    await check(clientA, body.key);
    for (const s of [a, b]) await s.keyStore.usage.flush();
    const list = (await (await api('GET', '/api/v1/auth/api-keys')).json()) as { data: KeyJson[] };
    const oldView = list.data.find((k) => k.id === old.id)!;
    const newView = list.data.find((k) => k.id === body.id)!;
    expect(newView.successor_of).toBe(old.id);
    expect(oldView.successor_of).toBeNull();
    expect(oldView.last_used_at).not.toBeNull();
    expect(newView.last_used_at).not.toBeNull();
  });

  it('an overlap beyond KEY_ROLL_MAX_OVERLAP_SECONDS is a 400 and changes nothing', async () => {
    const old = await newKey();
    const { status, body } = await roll(old.id, 86_401);
    expect(status).toBe(400);
    expect(body.error).toMatchObject({ code: 'invalid_value' });
    expect((await a.keys.getKey(old.id))?.expiresAt).toBeNull();
  });

  it('a key without the key-management permission cannot roll, and a revoked key cannot be rolled', async () => {
    const readOnly = await newKey({ scope: 'read-only' });
    const target = await newKey();
    const denied = await roll(target.id, 60, readOnly.secret);
    expect(denied.status).toBe(403);
    expect((await a.keys.getKey(target.id))?.expiresAt).toBeNull();

    await a.keys.revoke(target.id, undefined, { keyId: null, via: 'cli' });
    const revoked = await roll(target.id, 60);
    expect(revoked.status).toBe(409);
    expect(revoked.body.error).toMatchObject({ code: 'key_not_live' });
  });

  it('`keys roll ID --overlap 1h` prints the successor, once, and the old key\'s end', async () => {
    const old = await newKey({ name: 'cli-rolled' });
    const r = await runCliProcess(['keys', 'roll', old.id, '--overlap', '1h', '--json'], { DATABASE_URL: db.url, KEY_PEPPER: pepper, REDIS_URL: testRedisUrl(), REDIS_KEY_PREFIX: prefix });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as KeyJson;
    expect(out.successor_of).toBe(old.id);
    expect(out.key).toMatch(/^ryv_live_/);
    const endsAt = Date.parse(out.previous_key.expires_at!);
    expect(Math.abs(endsAt - (Date.now() + 3600_000))).toBeLessThan(60_000);
    expect(await bothAllow(out.key)).toEqual([true, true]);

    const bad = await runCliProcess(['keys', 'roll', old.id, '--overlap', 'soon'], { DATABASE_URL: db.url, KEY_PEPPER: pepper });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--overlap/);
  });
});
