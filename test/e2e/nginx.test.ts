// End to end through Debian's nginx running the shipped deploy/nginx/nginx.local.conf (the set-up of nginx.conf on 127.0.0.1), with ryvion-authz
// (real Postgres and Redis) as its auth_request endpoint and a small upstream, driven by clients
// nobody here wrote: the official openai SDK, the official MCP SDK, and the documentation's curl.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import OpenAI, { AuthenticationError, InternalServerError, PermissionDeniedError, RateLimitError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { denialResponse } from '../../src/check/outcomes.js';
import { generateKey } from '../../src/keys/format.js';
import type { RunningService } from '../../src/service.js';
import { TestNginx, checkKubernetesConfig, requireNginx } from '../helpers/nginx.js';
import { freePort } from '../helpers/redis-server.js';
import { metricValue, startTestService } from '../helpers/service.js';
import { freshDatabase, redisPrefix, testPepper, testRedisUrl } from '../helpers/stores.js';
import { policyWithPlans } from '../helpers/policy.js';
import { TcpProxy } from '../helpers/tcp-proxy.js';

// From the public documentation (seed-authentication.txt), verbatim; only the base URL and the key are replaced.
const DOCS_MODELS_CURL = `curl https://api.ryvion.ai/v1/models \\
-H "X-API-Key: YOUR_API_KEY"`;

const pepper = testPepper();
const testPolicy = policyWithPlans(
  `plans:
  roomy:
    account: { requests: 1000, window: 1s, burst: 1000 }
  slow:
    account: { requests: 1, window: 2s, burst: 1 }
default_plan: roomy
forward_metadata: [cost_center]
`,
);
const policyFile = testPolicy.file;

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

/** The API behind nginx: answers like the Ryvion API would, records what reached it, serves MCP at /mcp. */
class Upstream {
  readonly seen: Seen[] = [];
  private readonly server = http.createServer((req, res) => void this.handle(req, res));

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    const pathname = (req.url ?? '/').split('?')[0];
    if (pathname === '/mcp') return mcp(req, res);
    for await (const chunk of req) void chunk;
    const json = (body: unknown): void => void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (pathname === '/v1/chat/completions') {
      return json({
        id: 'chatcmpl-e2e',
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: 'ryvion-test',
        choices: [{ index: 0, message: { role: 'assistant', content: 'hello from upstream' }, finish_reason: 'stop', logprobs: null }],
        usage: { prompt_tokens: 1, completion_tokens: 3, total_tokens: 4 },
      });
    }
    if (pathname === '/v1/models') return json({ object: 'list', data: [{ id: 'ryvion-test', object: 'model', created: 0, owned_by: 'ryvion' }] });
    return json({ ok: true, path: req.url });
  }
}

/** A minimal MCP server (stateless Streamable HTTP) with one tool. */
async function mcp(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const server = new McpServer({ name: 'ryvion-e2e', version: '1.0.0' });
  server.registerTool('echo', { description: 'Echoes its text', inputSchema: { text: z.string() } }, async ({ text }) => ({
    content: [{ type: 'text', text }],
  }));
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    void transport.close();
    void server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res);
}

let db: Awaited<ReturnType<typeof freshDatabase>>;
let service: RunningService;
let upstream: Upstream;
let nginx: TestNginx;
let buyer: { secret: string; accountId: string; keyId: string };
let readOnly: string;
let apiAddress: string;

async function newKey(plan: string, scope: string): Promise<{ secret: string; accountId: string; keyId: string }> {
  const account = await service.repository.createAccount(`${plan}-${Math.random().toString(36).slice(2)}@example.com`, plan);
  const { key, secret } = await service.repository.createKey({ accountId: account.id, name: 'e2e', scope, expiresAt: null });
  return { secret, accountId: account.id, keyId: key.id };
}

const openai = (apiKey: string, opts: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}): OpenAI =>
  new OpenAI({ apiKey, baseURL: `${nginx.url}/v1`, maxRetries: 0, ...opts });

const errorCode = async (res: Response): Promise<string> => ((await res.json()) as { error: { code: string } }).error.code;

const chat = (client: OpenAI) => client.chat.completions.create({ model: 'ryvion-test', messages: [{ role: 'user', content: 'hi' }] });

beforeAll(async () => {
  requireNginx();
  db = await freshDatabase();
  service = await startTestService({
    DATABASE_URL: db.url,
    KEY_PEPPER: pepper,
    REDIS_URL: testRedisUrl(),
    REDIS_KEY_PREFIX: redisPrefix(),
    POLICY_FILE: policyFile,
    RATE_LIMIT_ENABLED: 'true',
    FAILED_AUTH_PER_SOURCE_PER_MINUTE: '1000000',
  });
  upstream = new Upstream();
  apiAddress = await upstream.start();
  nginx = new TestNginx({ authz: `127.0.0.1:${service.httpPort}`, api: apiAddress });
  await nginx.start();
  buyer = await newKey('roomy', 'buyer');
  readOnly = (await newKey('roomy', 'read-only')).secret;
});

afterAll(async () => {
  if (process.env.SHOW_NGINX_LOG) console.log(nginx?.errorLog, nginx?.accessLog());
  await nginx?.stop();
  await upstream?.stop();
  await service?.stop();
  await db?.drop();
  testPolicy.dispose();
});

/** ryvion-http.conf with its commented per-field lines for `cost_center` made real, as its comments tell an operator to. */
function withMetadataLines(http: string): string {
  let n = 0;
  const out = http.replace(/^(\s*)#\s+((?:proxy_set_header X-Ryvion-Meta-Cost-Center|auth_request_set \$ryvion_meta_cost_center) .*;)$/gm, (_m, indent: string, line: string) => (n++, `${indent}${line}`));
  // One removal in each of the two locations without auth_request, the pair in location /.
  if (n !== 4) throw new Error(`ryvion-http.conf: expected 4 commented metadata lines, found ${n}`);
  return out;
}

describe('forwarded key metadata through nginx, with the per-field lines of ryvion-http.conf', () => {
  let metaNginx: TestNginx;
  beforeAll(async () => {
    metaNginx = new TestNginx({ authz: `127.0.0.1:${service.httpPort}`, api: apiAddress, edit: withMetadataLines });
    await metaNginx.start();
  });
  afterAll(async () => {
    await metaNginx?.stop();
  });

  const models = (secret: string) =>
    fetch(`${metaNginx.url}/v1/models`, { headers: { 'x-api-key': secret, 'x-ryvion-meta-cost-center': 'spoofed' } });

  it("the key's value reaches the upstream; a client-sent one never does, also for a key without it", async () => {
    const account = await service.repository.createAccount(`meta-${Math.random().toString(36).slice(2)}@example.com`, 'roomy');
    const tagged = await service.repository.createKey({ accountId: account.id, name: 'tagged', scope: 'buyer', expiresAt: null, metadata: { cost_center: 4711 } });
    let before = upstream.seen.length;
    expect((await models(tagged.secret)).status).toBe(200);
    expect(upstream.seen.slice(before).map((s) => s.headers['x-ryvion-meta-cost-center'])).toEqual(['4711']);
    before = upstream.seen.length;
    expect((await models(buyer.secret)).status).toBe(200);
    expect(upstream.seen.slice(before)).toHaveLength(1);
    expect(upstream.seen[before]!.headers).not.toHaveProperty('x-ryvion-meta-cost-center');
  });
});

describe('the openai SDK through nginx', () => {
  it('a buyer key reaches the upstream with our identity headers, without credentials, a spoofed identity overwritten', async () => {
    const before = upstream.seen.length;
    const { data, response } = await chat(openai(buyer.secret, { defaultHeaders: { 'x-ryvion-account-id': 'acct_spoofed', 'x-ryvion-scope': 'admin' } })).withResponse();
    expect(data.choices[0]!.message.content).toBe('hello from upstream');
    const seen = upstream.seen.slice(before);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.method).toBe('POST');
    expect(seen[0]!.url).toBe('/v1/chat/completions');
    expect(seen[0]!.headers).toMatchObject({ 'x-ryvion-account-id': buyer.accountId, 'x-ryvion-key-id': buyer.keyId, 'x-ryvion-scope': 'buyer' });
    expect(seen[0]!.headers.authorization).toBeUndefined();
    expect(seen[0]!.headers['x-api-key']).toBeUndefined();
    // The client's response carries the request id and the rate-limit headers ryvion-authz chose.
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
    expect(seen[0]!.headers['x-request-id']).toBe(response.headers.get('x-request-id'));
    expect(response.headers.get('x-ratelimit-limit-requests')).toBe('1000');
    expect(response.headers.get('x-ratelimit-remaining-requests')).toMatch(/^\d+$/);
    expect(response.headers.get('ratelimit-policy')).toBe('"account";q=1000;w=1');
  });

  it('an unknown key raises AuthenticationError with our message and code', async () => {
    const err = await chat(openai(generateKey('live'))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuthenticationError);
    const expected = JSON.parse(denialResponse({ allow: false, reason: 'invalid_api_key', detail: 'unknown' }).body).error;
    expect((err as AuthenticationError).status).toBe(401);
    expect((err as AuthenticationError).code).toBe('invalid_api_key');
    expect((err as AuthenticationError).error).toEqual(expected);
    expect((err as AuthenticationError).message).toContain(expected.message);
    expect((err as AuthenticationError).headers.get('www-authenticate')).toBe('Bearer realm="ryvion", error="invalid_token"');
  });

  it('a read-only key on inference raises PermissionDeniedError (insufficient_scope)', async () => {
    const err = await chat(openai(readOnly)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PermissionDeniedError);
    expect((err as PermissionDeniedError).code).toBe('insufficient_scope');
    expect((err as PermissionDeniedError).type).toBe('permission_error');
  });

  it('past the limit: RateLimitError after the SDK\'s retries, which waited what retry-after-ms said, charged once each', async () => {
    const key = (await newKey('slow', 'buyer')).secret; // 1 request per 2 s, burst 1
    const direct = (): Promise<Response> =>
      fetch(`${nginx.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{}' });
    expect((await direct()).status).toBe(200); // the one request the burst allows

    // Each attempt of the SDK, and another client of the same key that takes the freed slot just
    // before each retry: its 200 shows the SDK waited long enough, the SDK's 429 that it was charged.
    const attempts: Array<{ sentAt: number; answeredAt: number; status: number; retryAfterMs: number }> = [];
    const competitor: number[] = [];
    const recordingFetch = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
      const sentAt = performance.now();
      if (attempts.length > 0) competitor.push((await direct()).status);
      const res = await fetch(url, init);
      attempts.push({ sentAt, answeredAt: performance.now(), status: res.status, retryAfterMs: Number(res.headers.get('retry-after-ms')) });
      return res;
    };
    const started = performance.now();
    const err = await chat(openai(key, { maxRetries: 2, fetch: recordingFetch })).catch((e: unknown) => e);
    const elapsedMs = performance.now() - started;

    expect(err).toBeInstanceOf(RateLimitError);
    expect((err as RateLimitError).code).toBe('rate_limit_exceeded');
    expect((err as RateLimitError).headers.get('retry-after')).toBe('2');
    expect(Number((err as RateLimitError).headers.get('retry-after-ms'))).toBeGreaterThan(1500);
    expect((err as RateLimitError).headers.get('x-ratelimit-limit-requests')).toBe('1');
    expect((err as RateLimitError).headers.get('x-ratelimit-remaining-requests')).toBe('0');
    expect((err as RateLimitError).headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
    // nginx saw 403 carriers, not statuses it would turn into 500 (and log as errors).
    expect(nginx.errorLog).not.toContain('auth request unexpected status');
    expect(attempts.map((a) => a.status)).toEqual([429, 429, 429]);
    expect(competitor).toEqual([200, 200]);
    const waits = attempts.slice(1).map((a, i) => a.sentAt - attempts[i]!.answeredAt);
    const promised = attempts.slice(0, 2).map((a) => a.retryAfterMs);
    console.log(`openai SDK through nginx: waited ${waits.map((w) => w.toFixed(0)).join(' + ')} ms for retry-after-ms ${promised.join(' + ')}; ${elapsedMs.toFixed(0)} ms in all`);
    for (const [i, wait] of waits.entries()) {
      expect(promised[i]).toBeGreaterThan(1500);
      expect(promised[i]).toBeLessThanOrEqual(2000);
      expect(wait).toBeGreaterThanOrEqual(promised[i]! - 5);
      // The SDK's own backoff would be 0.5-1.5 s; a busy machine may add some lag, never take any away.
      expect(wait).toBeLessThan(promised[i]! + 750);
    }
    const sum = promised[0]! + promised[1]!;
    expect(elapsedMs).toBeGreaterThanOrEqual(sum - 10);
    expect(elapsedMs).toBeLessThan(sum + 2000);
  });
});

describe('the MCP SDK through nginx', () => {
  const connect = async (headers: Record<string, string>): Promise<Client> => {
    const client = new Client({ name: 'ryvion-e2e-client', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${nginx.url}/mcp`), { requestInit: { headers } }));
    return client;
  };

  it('with a buyer key in the request headers, listing and calling tools works', async () => {
    const before = upstream.seen.length;
    const client = await connect({ Authorization: `Bearer ${buyer.secret}` });
    try {
      const { tools } = await client.listTools();
      expect(tools.map((t) => t.name)).toEqual(['echo']);
      const result = await client.callTool({ name: 'echo', arguments: { text: 'through the gate' } });
      expect(result.content).toEqual([{ type: 'text', text: 'through the gate' }]);
    } finally {
      await client.close();
    }
    const mcpCalls = upstream.seen.slice(before).filter((s) => s.url === '/mcp');
    expect(mcpCalls.length).toBeGreaterThan(0);
    for (const s of mcpCalls) {
      expect(s.headers['x-ryvion-key-id']).toBe(buyer.keyId);
      expect(s.headers.authorization).toBeUndefined();
    }
  });

  it('without a key, connecting fails with a 401 and our body', async () => {
    const err = await connect({}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as { code?: number }).code).toBe(401);
    expect((err as Error).message).toContain('missing_api_key');
  });
});

describe('curl and plain HTTP through nginx', () => {
  it('the documentation\'s curl with X-API-Key reaches the upstream: 200', async () => {
    const curlHome = mkdtempSync(path.join(os.tmpdir(), 'ryvion-curl-'));
    // curl reads --write-out from $CURL_HOME/.curlrc, so the command itself stays as documented.
    writeFileSync(path.join(curlHome, '.curlrc'), 'write-out = "\\n%{http_code}"\n');
    try {
      const command = DOCS_MODELS_CURL.replace('https://api.ryvion.ai', nginx.url).replace('YOUR_API_KEY', readOnly);
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn('/bin/sh', ['-c', command], { env: { PATH: process.env.PATH, CURL_HOME: curlHome, HOME: curlHome }, stdio: ['ignore', 'pipe', 'ignore'] });
        let stdout = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`curl exited ${code}`))));
      });
      const cut = out.lastIndexOf('\n');
      expect(out.slice(cut + 1)).toBe('200');
      expect(JSON.parse(out.slice(0, cut))).toEqual({ object: 'list', data: [{ id: 'ryvion-test', object: 'model', created: 0, owned_by: 'ryvion' }] });
      expect(upstream.seen.at(-1)!.headers['x-ryvion-scope']).toBe('read-only');
      expect(upstream.seen.at(-1)!.headers['x-api-key']).toBeUndefined();
    } finally {
      rmSync(curlHome, { recursive: true, force: true });
    }
  });

  it('the key management API goes to ryvion-authz without auth_request, credential intact', async () => {
    const res = await fetch(`${nginx.url}/api/v1/auth/me`, { headers: { 'x-api-key': buyer.secret, 'x-ryvion-account-id': 'acct_spoofed' } });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ object: 'auth.me', account: { id: buyer.accountId }, key: { id: buyer.keyId } });
    const denied = await fetch(`${nginx.url}/api/v1/auth/api-keys`, { headers: { 'x-api-key': readOnly } });
    expect(denied.status).toBe(403);
    expect(await errorCode(denied)).toBe('insufficient_scope');
  });

  it('GitHub secret scanning reports go to ryvion-authz without auth_request: an unsigned one is its 401 invalid_signature', async () => {
    const res = await fetch(`${nginx.url}/api/v1/secret-scanning/github`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[]' });
    expect(res.status).toBe(401);
    expect(await errorCode(res)).toBe('invalid_signature');
  });

  it('the upstream receives the normalised path that was judged; an encoded ";" is refused', async () => {
    const before = upstream.seen.length;
    const res = await fetch(`${nginx.url}/v1//models/./x/%2e%2e?limit=1`, { headers: { 'x-api-key': readOnly } });
    expect(res.status).toBe(200);
    expect(upstream.seen.slice(before).map((s) => s.url)).toEqual(['/v1/models/?limit=1']);
    const semicolon = await fetch(`${nginx.url}/v1/models/..%3B/x`, { headers: { 'x-api-key': readOnly } });
    expect(semicolon.status).toBe(400);
    expect(await errorCode(semicolon)).toBe('invalid_path');
    expect(upstream.seen.length).toBe(before + 1);
  });

  it('a header spelled with underscores never reaches the upstream', async () => {
    const before = upstream.seen.length;
    expect((await fetch(`${nginx.url}/v1/models`, { headers: { 'x-api-key': readOnly, x_ryvion_scope: 'buyer' } })).status).toBe(200);
    expect(upstream.seen[before]!.headers.x_ryvion_scope).toBeUndefined();
    expect(upstream.seen[before]!.headers['x-ryvion-scope']).toBe('read-only');
  });

  it('a repeated credential header is a 401, and nothing reaches the upstream', async () => {
    const before = upstream.seen.length;
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${nginx.url}/v1/models`, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.setHeader('x-api-key', [readOnly, readOnly]);
      req.end();
    });
    expect(status).toBe(401);
    expect(upstream.seen.length).toBe(before);
  });
});

describe('ryvion-authz unable to decide, through nginx', () => {
  let proxy: TcpProxy;
  let cutOff: RunningService;
  let nginxB: TestNginx;

  beforeAll(async () => {
    const url = new URL(db.url);
    proxy = new TcpProxy(url.hostname, Number(url.port || 5432));
    await proxy.start();
    url.host = `127.0.0.1:${proxy.port}`;
    cutOff = await startTestService({ DATABASE_URL: url.toString(), KEY_PEPPER: pepper, STORE_TIMEOUT_MS: '200' });
    nginxB = new TestNginx({ authz: `127.0.0.1:${cutOff.httpPort}`, api: `127.0.0.1:${await freePort()}` });
    await nginxB.start();
    await proxy.cut();
  });

  afterAll(async () => {
    await nginxB?.stop();
    await cutOff?.stop();
    await proxy?.cut();
  });

  const sdkB = (): OpenAI => new OpenAI({ apiKey: generateKey('live'), baseURL: `${nginxB.url}/v1`, maxRetries: 0 });

  it('stores down: 503 auth_unavailable with our body and retry-after: 1', async () => {
    const decided = (): Promise<number> => metricValue(cutOff, 'ryvion_authz_decisions_total', { transport: 'http', reason: 'auth_unavailable' });
    const before = await decided();
    const err = await chat(sdkB()).catch((e: unknown) => e);
    // ryvion-authz's own answer, rebuilt by nginx (not nginx's answer for a gate that did not reply).
    expect(await decided()).toBe(before + 1);
    expect(err).toBeInstanceOf(InternalServerError);
    expect((err as InternalServerError).status).toBe(503);
    expect((err as InternalServerError).error).toEqual(JSON.parse(denialResponse({ allow: false, reason: 'auth_unavailable', detail: 'x' }).body).error);
    expect((err as InternalServerError).headers.get('retry-after')).toBe('1');
  });

  // Its own replica and nginx: stopping the shared one would take the case above with it.
  it('ryvion-authz itself unreachable: nginx answers the same 503, never lets the request through', async () => {
    const gone = await startTestService({ DATABASE_URL: db.url, KEY_PEPPER: pepper });
    const nginxC = new TestNginx({ authz: `127.0.0.1:${gone.httpPort}`, api: `127.0.0.1:${await freePort()}` });
    await nginxC.start();
    try {
      await gone.stop();
      const err = await chat(new OpenAI({ apiKey: generateKey('live'), baseURL: `${nginxC.url}/v1`, maxRetries: 0 })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InternalServerError);
      expect((err as InternalServerError).status).toBe(503);
      expect((err as InternalServerError).code).toBe('auth_unavailable');
      expect((err as InternalServerError).headers.get('retry-after')).toBe('1');
    } finally {
      await nginxC.stop();
      await gone.stop();
    }
  });
});

describe('the shipped nginx configurations', () => {
  it('nginx.conf (Kubernetes names) passes nginx -t with the same ryvion-http.conf the local variant runs', () => {
    const { ok, stderr } = checkKubernetesConfig();
    expect(ok, stderr).toBe(true);
  });
});
