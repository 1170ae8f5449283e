// GitHub secret scanning: a signed report revokes our live key, a bad signature changes nothing,
// a replay is idempotent, and the owner hears about it through the durable outbox.
import { createHash, createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { generateKey } from '../../src/keys/format.js';
import { createLogger } from '../../src/observability/logger.js';
import type { RunningService } from '../../src/service.js';
import { envoyCheckRequest } from '../fixtures/envoy.js';
import { CheckClient, metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';

const KEY_ID = 'test-key-identifier';
const WEBHOOK_SECRET = 'owner-webhook-secret-for-tests';
let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let client: CheckClient;
let privateKey: KeyObject;
let accountId: string;
let logs = '';
const webhookBodies: Array<{ body: string; signature: string | undefined }> = [];
/** Keys whose first owner notification the webhook refuses (a 500), to show the retry. */
const failFirstDelivery = new Set<string>();
let webhook: http.Server;

beforeAll(async () => {
  const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  privateKey = pair.privateKey;
  const dir = mkdtempSync(join(tmpdir(), 'ryv-github-keys-'));
  const keysFile = join(dir, 'keys.json');
  writeFileSync(keysFile, JSON.stringify({ public_keys: [{ key_identifier: KEY_ID, key: pair.publicKey.export({ type: 'spki', format: 'pem' }), is_current: true }] }));

  // The owner's webhook: fails once, then accepts.
  webhook = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      webhookBodies.push({ body, signature: req.headers['x-ryvion-signature'] as string | undefined });
      const keyId = (JSON.parse(body) as { key_id?: string }).key_id ?? '';
      res.statusCode = failFirstDelivery.delete(keyId) ? 500 : 200;
      res.end();
    });
  });
  await new Promise<void>((r) => webhook.listen(0, '127.0.0.1', r));

  db = await freshDatabase();
  const sink = new Writable({ write: (chunk: Buffer, _enc, done) => ((logs += chunk.toString()), done()) });
  service = await startTestService(
    {
      DATABASE_URL: db.url,
      KEY_PEPPER: testPepper(),
      REDIS_URL: testRedisUrl(),
      REDIS_KEY_PREFIX: redisPrefix(),
      INVALIDATION_LEASE_MS: '1000',
      GITHUB_SECRET_SCANNING_KEYS_FILE: keysFile,
      OWNER_NOTIFICATION_WEBHOOK_URL: `http://127.0.0.1:${(webhook.address() as AddressInfo).port}/leaks`,
      OWNER_NOTIFICATION_WEBHOOK_SECRET: WEBHOOK_SECRET,
      OWNER_NOTIFICATION_INTERVAL_MS: '100',
    },
    { logger: createLogger('debug', sink) },
  );
  client = new CheckClient(service.grpcPort);
  accountId = (await service.repository.createAccount('leaks@example.com', 'free')).id;
});

afterAll(async () => {
  client?.close();
  await service?.stop();
  await db?.drop();
  await new Promise((r) => webhook?.close(r));
});

const signed = (body: string, key = privateKey) => sign('sha256', Buffer.from(body), key).toString('base64');

const report = (body: string, headers: Record<string, string>) =>
  fetch(`http://127.0.0.1:${service.httpPort}/api/v1/secret-scanning/github`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });

const reportSigned = (body: string) => report(body, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(body) });

const allowed = async (secret: string) => (await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } }))).ok_response !== undefined;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

async function newKey(): Promise<{ id: string; secret: string }> {
  const { key, secret } = await service.repository.createKey({ accountId, name: 'leaky', scope: 'buyer', expiresAt: null });
  return { id: key.id, secret };
}

/** A report of one live key of its own, as GitHub would send it; each case that needs a leak makes its own. */
function leakReport(leaked: { secret: string }): string {
  return JSON.stringify([{ token: leaked.secret, type: 'ryvion_api_key', url: 'https://github.com/o/r/blob/abc/.env', source: 'content' }]);
}

describe('GitHub secret scanning', () => {
  it('a signed report revokes a live key at once and answers true_positive; unknown, test and malformed tokens are false_positive', async () => {
    const truePositives = await metricValue(service, 'ryvion_authz_secret_scanning_tokens_total', { label: 'true_positive' });
    const leaked = await newKey();
    expect(await allowed(leaked.secret)).toBe(true);
    const unknown = generateKey('live');
    const testKey = generateKey('test');
    // Spacing GitHub's serialiser might use: the signature covers these exact bytes.
    const body = JSON.stringify(
      [
        { token: leaked.secret, type: 'ryvion_api_key', url: 'https://github.com/o/r/blob/abc/.env', source: 'content' },
        { token: unknown, type: 'ryvion_api_key', url: 'https://gist.github.com/x', source: 'gist' },
        { token: testKey, type: 'ryvion_api_key', url: 'https://github.com/o/r', source: 'commit' },
        { token: 'ryv_live_not-a-key', type: 'ryvion_api_key', url: 'https://github.com/o/r', source: 'commit' },
      ],
      null,
      2,
    );
    const res = await reportSigned(body);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual([
      { token_hash: sha256(leaked.secret), token_type: 'ryvion_api_key', label: 'true_positive' },
      { token_hash: sha256(unknown), token_type: 'ryvion_api_key', label: 'false_positive' },
      { token_hash: sha256(testKey), token_type: 'ryvion_api_key', label: 'false_positive' },
      { token_hash: sha256('ryv_live_not-a-key'), token_type: 'ryvion_api_key', label: 'false_positive' },
    ]);
    expect(await allowed(leaked.secret)).toBe(false);
    const events = (await service.keys.audit(accountId, 100)).filter((e) => e.targetKeyId === leaked.id && e.action === 'key.revoked');
    expect(events).toHaveLength(1);
    expect(events[0]!.actorKeyId).toBeNull();
    expect(events[0]!.detail).toMatchObject({ via: 'secret_scanning', url: 'https://github.com/o/r/blob/abc/.env', source: 'content' });
    expect(await metricValue(service, 'ryvion_authz_secret_scanning_tokens_total', { label: 'true_positive' })).toBe(truePositives + 1);
    expect(logs).toContain('leaked api key reported by GitHub secret scanning');
    expect(logs).not.toContain(leaked.secret);
    expect(logs).not.toContain(unknown);
  });

  it('a replayed report answers the same and changes nothing: one audit row, one owner notification', async () => {
    const leaked = await newKey();
    const body = JSON.stringify([
      { token: leaked.secret, type: 'ryvion_api_key', url: 'https://github.com/o/r/blob/abc/.env', source: 'content' },
      { token: generateKey('live'), type: 'ryvion_api_key', url: 'https://gist.github.com/x', source: 'gist' },
    ]);
    const first = await reportSigned(body);
    expect(first.status).toBe(200);
    const labels = ((await first.json()) as Array<{ label: string }>).map((f) => f.label);
    expect(labels).toEqual(['true_positive', 'false_positive']);
    const res = await reportSigned(body);
    expect(res.status).toBe(200);
    expect(((await res.json()) as Array<{ label: string }>).map((f) => f.label)).toEqual(labels);
    const events = (await service.keys.audit(accountId, 100)).filter((e) => e.targetKeyId === leaked.id && e.action === 'key.revoked');
    expect(events).toHaveLength(1);
    const queued = await service.pool.query(`SELECT count(*)::int AS n FROM leak_notifications WHERE payload->>'key_id' = $1`, [leaked.id]);
    expect(queued.rows[0].n).toBe(1);
  });

  it('the owner webhook gets one signed notification, retried after a failure', async () => {
    const leaked = await newKey();
    failFirstDelivery.add(leaked.id);
    expect((await reportSigned(leakReport(leaked))).status).toBe(200);
    const mine = () => webhookBodies.filter((b) => (JSON.parse(b.body) as { key_id?: string }).key_id === leaked.id);
    await vi.waitFor(() => expect(mine().length).toBeGreaterThanOrEqual(2), { timeout: 15_000, interval: 50 });
    expect(failFirstDelivery.has(leaked.id)).toBe(false);
    const last = mine().at(-1)!;
    expect(mine()[0]!.body).toBe(last.body);
    expect(last.signature).toBe(`sha256=${createHmac('sha256', WEBHOOK_SECRET).update(last.body).digest('hex')}`);
    expect(JSON.parse(last.body)).toMatchObject({ event: 'api_key.leaked', key_id: leaked.id, account_id: accountId, source: 'content' });
    expect(last.body).not.toContain(leaked.secret);
    await vi.waitFor(
      async () => expect((await service.pool.query(`SELECT delivered_at FROM leak_notifications WHERE payload->>'key_id' = $1`, [leaked.id])).rows[0].delivered_at).not.toBeNull(),
      { timeout: 10_000, interval: 50 },
    );
    // Delivered rows are never claimed again. (Only this key's row is looked at: another case's
    // notification may still be on its way, and claiming it here would only delay it.)
    const claimed = await service.repository.claimLeakNotifications(100, 60_000);
    expect(claimed.filter((n) => n.payload.key_id === leaked.id)).toEqual([]);
  });

  it('a bad signature is refused with 401 and revokes nothing', async () => {
    const victim = await newKey();
    const forged = JSON.stringify([{ token: victim.secret, type: 'ryvion_api_key', url: 'https://x', source: 'content' }]);
    const res = await report(forged, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(forged + ' ') });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('invalid_signature');
    const otherKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    expect((await report(forged, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(forged, otherKey) })).status).toBe(401);
    expect((await report(forged, { 'github-public-key-identifier': 'unknown-id', 'github-public-key-signature': signed(forged) })).status).toBe(401);
    expect((await report(forged, {})).status).toBe(401);
    expect(await allowed(victim.secret)).toBe(true);
    expect((await service.keys.getKey(victim.id))?.revokedAt).toBeNull();
  });

  it('a batch larger than the key API\'s 16 KiB is accepted', async () => {
    const many = Array.from({ length: 300 }, () => ({ token: generateKey('live'), type: 'ryvion_api_key', url: 'https://github.com/o/r', source: 'content' }));
    const big = JSON.stringify(many);
    expect(big.length).toBeGreaterThan(16 * 1024);
    const res = await reportSigned(big);
    expect(res.status).toBe(200);
    expect(((await res.json()) as unknown[]).length).toBe(300);
  });

  it('a signed body that is not a list of matches is a 400, not a crash', async () => {
    const res = await reportSigned('{"token": 1}');
    expect(res.status).toBe(400);
  });
});
