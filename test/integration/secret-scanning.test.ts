// GitHub secret scanning: a signed report revokes our live key, a bad signature changes nothing,
// a replay is idempotent, and the owner hears about it through the durable outbox.
import { createHash, createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
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
const webhookBodies: Array<{ body: string; signature: string | undefined; status: number }> = [];
/** Notifications the webhook has refused once: it refuses each one's first attempt. */
const refusedOnce = new Set<string>();
/** While set, the webhook answers 503 to everything. */
let webhookFailing = false;
let webhook: http.Server;
/** The test's own connection for reading the outbox (the service's pool has the look-up timeout). */
let reader: pg.Pool;

beforeAll(async () => {
  const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  privateKey = pair.privateKey;
  const dir = mkdtempSync(join(tmpdir(), 'ryv-github-keys-'));
  const keysFile = join(dir, 'keys.json');
  writeFileSync(keysFile, JSON.stringify({ public_keys: [{ key_identifier: KEY_ID, key: pair.publicKey.export({ type: 'spki', format: 'pem' }), is_current: true }] }));

  // The owner's webhook: refuses each notification once, then accepts it.
  webhook = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const id = (JSON.parse(body) as { id: string }).id;
      res.statusCode = webhookFailing ? 503 : refusedOnce.has(id) ? 200 : (refusedOnce.add(id), 500);
      webhookBodies.push({ body, signature: req.headers['x-ryvion-signature'] as string | undefined, status: res.statusCode });
      res.end();
    });
  });
  await new Promise<void>((r) => webhook.listen(0, '127.0.0.1', r));

  db = await freshDatabase();
  reader = new pg.Pool({ connectionString: db.url, max: 1 });
  const sink = new Writable({ write: (chunk: Buffer, _enc, done) => ((logs += chunk.toString()), done()) });
  service = await startTestService(
    {
      DATABASE_URL: db.url,
      KEY_PEPPER: testPepper(),
      REDIS_URL: testRedisUrl(),
      REDIS_KEY_PREFIX: redisPrefix(),
      INVALIDATION_LEASE_MS: '1000',
      // The test's set-up (accounts, keys) goes through the service's pool: room for a busy machine.
      STORE_TIMEOUT_MS: '2000',
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
  await reader?.end();
  await db?.drop();
  await new Promise((r) => webhook?.close(r));
});

const signed = (body: string, key = privateKey) => sign('sha256', Buffer.from(body), key).toString('base64');

const report = (body: string, headers: Record<string, string>) =>
  fetch(`http://127.0.0.1:${service.httpPort}/api/v1/secret-scanning/github`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });

const reportSigned = (body: string) => report(body, { 'github-public-key-identifier': KEY_ID, 'github-public-key-signature': signed(body) });

const allowed = async (secret: string) => (await client.check(envoyCheckRequest({ headers: { authorization: `Bearer ${secret}` } }))).ok_response !== undefined;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

async function newKey(account = accountId, name = 'leaky'): Promise<{ id: string; secret: string }> {
  const { key, secret } = await service.repository.createKey({ accountId: account, name, scope: 'buyer', expiresAt: null });
  return { id: key.id, secret };
}

const hmac = (body: string) => `sha256=${createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex')}`;

/** The outbox rows whose notification lists this key. */
const notificationsOf = async (keyId: string) =>
  (
    await reader.query<{ id: string; attempts: number; delivered_at: Date | null }>(
      `SELECT id, attempts, delivered_at FROM leak_notifications WHERE payload->'keys' @> jsonb_build_array(jsonb_build_object('key_id', $1::text))`,
      [keyId],
    )
  ).rows;

interface Notification {
  id: string;
  event: string;
  account_id: string;
  account_email: string;
  report_id: string;
  keys: Array<{ key_id: string; name: string; url: string | null; source: string | null; revoked_at: string }>;
}

/** The first report of a live key, made once by whichever test needs it first (tests may run in any order). */
let firstReport: Promise<{ leaked: { id: string; secret: string }; body: string; unknown: string; testKey: string; status: number; feedback: unknown; truePositives: number }> | undefined;
const leakedReport = () =>
  (firstReport ??= (async () => {
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
    const truePositives = () => metricValue(service, 'ryvion_authz_secret_scanning_tokens_total', { label: 'true_positive' });
    const before = await truePositives();
    const res = await reportSigned(body);
    const feedback: unknown = await res.json();
    return { leaked, body, unknown, testKey, status: res.status, feedback, truePositives: (await truePositives()) - before };
  })());

describe('GitHub secret scanning', () => {
  it('a signed report revokes a live key at once and answers true_positive; unknown, test and malformed tokens are false_positive', async () => {
    const { leaked, unknown, testKey, status, feedback, truePositives } = await leakedReport();
    expect(status).toBe(200);
    expect(feedback).toEqual([
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
    expect(truePositives).toBe(1);
    expect(logs).toContain('leaked api key reported by GitHub secret scanning');
    expect(logs).not.toContain(leaked.secret);
    expect(logs).not.toContain(unknown);
  });

  it('a replayed report answers the same and changes nothing: one audit row, one owner notification', async () => {
    const { leaked, body } = await leakedReport();
    const res = await reportSigned(body);
    expect(res.status).toBe(200);
    expect(((await res.json()) as Array<{ label: string }>).map((f) => f.label)).toEqual(['true_positive', 'false_positive', 'false_positive', 'false_positive']);
    const events = (await service.keys.audit(accountId, 100)).filter((e) => e.targetKeyId === leaked.id && e.action === 'key.revoked');
    expect(events).toHaveLength(1);
    expect(await notificationsOf(leaked.id)).toHaveLength(1);
  });

  it('the owner webhook gets one signed notification, retried after a failure', async () => {
    const { leaked } = await leakedReport();
    const [row] = await notificationsOf(leaked.id);
    const deliveries = () => webhookBodies.filter((b) => (JSON.parse(b.body) as Notification).id === row!.id);
    await vi.waitFor(() => expect(deliveries().map((d) => d.status)).toContain(200), { timeout: 15_000, interval: 50 });
    const sent = deliveries();
    expect(sent[0]!.status).not.toBe(200);
    expect(sent.length).toBeGreaterThanOrEqual(2);
    expect(new Set(sent.map((d) => d.body)).size).toBe(1);
    const last = sent.at(-1)!;
    expect(last.signature).toBe(hmac(last.body));
    expect(JSON.parse(last.body)).toMatchObject({
      event: 'api_keys.leaked',
      account_id: accountId,
      account_email: 'leaks@example.com',
      keys: [{ key_id: leaked.id, name: 'leaky', url: 'https://github.com/o/r/blob/abc/.env', source: 'content' }],
    });
    expect(last.body).not.toContain(leaked.secret);
    await vi.waitFor(async () => expect((await notificationsOf(leaked.id))[0]!.delivered_at).not.toBeNull(), { timeout: 10_000, interval: 50 });
    // Delivered rows are never claimed again.
    expect((await service.repository.claimLeakNotifications(100, 60_000)).filter((n) => n.id === row!.id)).toEqual([]);
  });

  it('one report with keys of two accounts: one notification per account, each with only its own keys, signed; a failing webhook is retried later and never delays the answer', async () => {
    const otherAccount = (await service.repository.createAccount('other-owner@example.com', 'free')).id;
    const a1 = await newKey(accountId, 'ci-a1');
    const a2 = await newKey(accountId, 'ci-a2');
    const b1 = await newKey(otherAccount, 'ci-b1');
    const location = (n: number) => ({ type: 'ryvion_api_key', url: `https://github.com/o/r/blob/${n}/.env`, source: 'content' });
    const twoAccounts = JSON.stringify([
      { token: a1.secret, ...location(1) },
      { token: b1.secret, ...location(2) },
      { token: generateKey('live'), ...location(3) },
      { token: a2.secret, ...location(4) },
    ]);

    webhookFailing = true;
    try {
      // GitHub's answer comes while the webhook fails: delivery is not on its path.
      const res = await reportSigned(twoAccounts);
      expect(res.status).toBe(200);
      expect(((await res.json()) as Array<{ label: string }>).map((f) => f.label)).toEqual(['true_positive', 'true_positive', 'false_positive', 'true_positive']);
      // Two outbox rows, a1 and a2 in the same one; each tried and refused at least once.
      const rows = [...(await notificationsOf(a1.id)), ...(await notificationsOf(b1.id))];
      expect(rows).toHaveLength(2);
      const ids = rows.map((r) => r.id);
      expect((await notificationsOf(a2.id)).map((r) => r.id)).toEqual([ids[0]]);
      await vi.waitFor(
        () => expect([...new Set(webhookBodies.filter((b) => b.status === 503).map((b) => (JSON.parse(b.body) as Notification).id))]).toEqual(expect.arrayContaining(ids)),
        { timeout: 15_000, interval: 50 },
      );
      expect((await notificationsOf(a1.id))[0]!.delivered_at).toBeNull();
    } finally {
      webhookFailing = false;
    }

    // Retried in the background until the webhook accepts (backoff: 100 ms doubled per attempt).
    await vi.waitFor(
      async () => {
        for (const k of [a1, b1]) expect((await notificationsOf(k.id))[0]!.delivered_at).not.toBeNull();
      },
      { timeout: 20_000, interval: 100 },
    );
    const accepted = webhookBodies.filter((b) => b.status === 200).map((b) => ({ ...b, payload: JSON.parse(b.body) as Notification }));
    const forA = accepted.filter((b) => b.payload.keys.some((k) => k.key_id === a1.id));
    const forB = accepted.filter((b) => b.payload.keys.some((k) => k.key_id === b1.id));
    expect(forA).toHaveLength(1);
    expect(forB).toHaveLength(1);
    for (const d of [...forA, ...forB]) {
      expect(d.signature).toBe(hmac(d.body));
      for (const secret of [a1.secret, a2.secret, b1.secret]) expect(d.body).not.toContain(secret);
    }
    expect(forA[0]!.payload).toMatchObject({ event: 'api_keys.leaked', account_id: accountId, account_email: 'leaks@example.com' });
    expect(forA[0]!.payload.keys.map((k) => [k.key_id, k.name, k.url, k.source])).toEqual([
      [a1.id, 'ci-a1', 'https://github.com/o/r/blob/1/.env', 'content'],
      [a2.id, 'ci-a2', 'https://github.com/o/r/blob/4/.env', 'content'],
    ]);
    expect(forB[0]!.payload).toMatchObject({ event: 'api_keys.leaked', account_id: otherAccount, account_email: 'other-owner@example.com', report_id: forA[0]!.payload.report_id });
    expect(forB[0]!.payload.keys.map((k) => [k.key_id, k.name, k.url, k.source])).toEqual([[b1.id, 'ci-b1', 'https://github.com/o/r/blob/2/.env', 'content']]);
    for (const k of [...forA[0]!.payload.keys, ...forB[0]!.payload.keys]) expect(k.revoked_at).toMatch(/^\d{4}-/);
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
