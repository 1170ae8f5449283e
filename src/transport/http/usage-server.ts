// POST /internal/usage on its own port (USAGE_PORT), never on the public key API: upstreams that
// prefer to push report the actual usage of reservations, authenticated by a shared secret
// (USAGE_SECRET, from a Kubernetes Secret) as `Authorization: Bearer <secret>`.
//
// Body: a JSON array (or {"data": [...]}) of {reservation_id, input_tokens, output_tokens}, at most
// MAX_USAGE_ITEMS. Answer 200 {"object":"list","data":[{reservation_id, status}]}, status one of
// reconciled | replayed | forged | expired | invalid: a replay is idempotent (no second charge), a
// forged id is refused. 401 without the secret, 400 for a body that is not such a batch.
import { createHash, timingSafeEqual } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { z } from 'zod';
import type { Logger } from '../../observability/logger.js';
import { StoreUnavailableError } from '../../store/errors.js';
import type { UsageItem, UsageResult, UsageSource } from '../../budget/gate.js';

export const USAGE_PATH = '/internal/usage';
export const MAX_USAGE_ITEMS = 1000;
const MAX_BODY_BYTES = 1024 * 1024;

export interface UsageReporter {
  report(items: readonly UsageItem[], source: UsageSource): Promise<UsageResult[]>;
}

const count = z.number().int().min(0).max(1e12);
const itemSchema = z.object({ reservation_id: z.string().min(1).max(4096), input_tokens: count, output_tokens: count });
const batchSchema = z.union([z.array(itemSchema).max(MAX_USAGE_ITEMS), z.object({ data: z.array(itemSchema).max(MAX_USAGE_ITEMS) }).transform((b) => b.data)]);

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

export function createUsageServer(deps: { reporter: UsageReporter; secret: string; logger: Logger }): http.Server {
  const expected = digest(`Bearer ${deps.secret}`);
  return http.createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      const unavailable = err instanceof StoreUnavailableError;
      if (!unavailable) deps.logger.error({ err: (err as Error).message }, 'usage report failed');
      send(res, unavailable ? 503 : 500, { error: { message: unavailable ? 'The usage store is unavailable; retry the batch (replays are not charged twice).' : 'Internal error.', type: 'server_error', code: null } });
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== USAGE_PATH) return send(res, 404, error('not_found', 'Not found.'));
    if (req.method !== 'POST') return send(res, 405, error('method_not_allowed', 'Use POST.'));
    // Compared as digests: constant time whatever the lengths.
    if (!timingSafeEqual(digest(req.headers.authorization ?? ''), expected)) return send(res, 401, error('invalid_api_key', 'The usage secret is missing or wrong.'));
    const body = await readJson(req);
    if (body === undefined) return send(res, 400, error('invalid_request_body', `The body must be JSON of at most ${MAX_BODY_BYTES} bytes.`));
    const parsed = batchSchema.safeParse(body);
    if (!parsed.success) {
      return send(res, 400, error('invalid_request_body', `The body must be an array of at most ${MAX_USAGE_ITEMS} {reservation_id, input_tokens, output_tokens}.`));
    }
    const items = parsed.data.map((i) => ({ reservationId: i.reservation_id, inputTokens: i.input_tokens, outputTokens: i.output_tokens }));
    const results = await deps.reporter.report(items, 'usage_endpoint');
    send(res, 200, { object: 'list', data: items.map((i, n) => ({ reservation_id: i.reservationId, status: results[n] })) });
  }
}

function error(code: string, message: string): Record<string, unknown> {
  return { error: { message, type: 'invalid_request_error', code } };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) over = true;
      else chunks.push(c);
    });
    req.once('end', () => {
      if (over) return resolve(undefined);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        resolve(undefined);
      }
    });
    req.once('error', () => resolve(undefined));
  });
}
