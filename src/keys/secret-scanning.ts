// GitHub secret scanning partner endpoint: verify GitHub's signature over the raw body, revoke our
// live keys it reports, and answer in GitHub's feedback format. Tokens never reach a log.
import { createHash, createPublicKey, randomUUID, verify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Clock } from '../time/clock.js';
import { checkKeyShape, type KeyEnvironment } from './format.js';
import type { KeyHasher } from './hash.js';
import type { KeyService } from './management.js';
import type { KeyLookup } from './repository.js';

/** At most this many matches in one report; GitHub batches far fewer. */
export const MAX_REPORTED_TOKENS = 1000;
/**
 * An account's owner notification for a report waits for the rest of the report's keys until the
 * report is done; if the replica dies before, it goes out after this long anyway.
 */
export const LEAK_REPORT_HOLD_MS = 60_000;
const MAX_FIELD_CHARS = 2048;

/** GitHub's key list: `{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`. */
export function parseGithubKeys(text: string): Map<string, KeyObject> {
  const parsed = JSON.parse(text) as { public_keys?: unknown };
  if (!Array.isArray(parsed.public_keys)) throw new Error('no "public_keys" array');
  const keys = new Map<string, KeyObject>();
  for (const k of parsed.public_keys as Array<{ key_identifier?: unknown; key?: unknown }>) {
    if (typeof k.key_identifier !== 'string' || typeof k.key !== 'string') throw new Error('a public key without "key_identifier" or "key"');
    keys.set(k.key_identifier, createPublicKey(k.key));
  }
  return keys;
}

export interface GithubKeySourceOptions {
  /** Keys pinned in a file (air-gapped clusters, tests): read once, never fetched. */
  file?: string | undefined;
  url: string;
  /** An unknown identifier re-fetches the list at most once per this interval. */
  refetchMinIntervalMs: number;
  clock: Clock;
  logger: Logger;
  fetch?: typeof fetch;
}

/** GitHub's signing keys: pinned, or fetched and cached, re-fetched for an unknown identifier (rate-limited). */
export class GithubKeySource {
  private keys: Map<string, KeyObject> | undefined;
  private lastFetchMs = Number.NEGATIVE_INFINITY;
  private inflight: Promise<void> | undefined;

  constructor(private readonly opts: GithubKeySourceOptions) {
    if (opts.file) this.keys = parseGithubKeys(readFileSync(opts.file, 'utf8'));
  }

  async keyFor(identifier: string): Promise<KeyObject | undefined> {
    const known = this.keys?.get(identifier);
    if (known || this.opts.file) return known;
    // Anyone can send an unknown identifier: it may cause a fetch at most once per interval.
    if (this.opts.clock.now() - this.lastFetchMs >= this.opts.refetchMinIntervalMs) {
      this.lastFetchMs = this.opts.clock.now();
      this.inflight ??= this.refresh().finally(() => (this.inflight = undefined));
    }
    if (this.inflight) await this.inflight;
    return this.keys?.get(identifier);
  }

  private async refresh(): Promise<void> {
    try {
      const res = await (this.opts.fetch ?? fetch)(this.opts.url, { signal: AbortSignal.timeout(5000), headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      this.keys = parseGithubKeys(await res.text());
    } catch (err) {
      this.opts.logger.warn({ url: this.opts.url, problem: (err as Error).message }, 'fetching GitHub secret scanning public keys failed');
    }
  }
}

export interface ReportedToken {
  token: string;
  type: string;
  url: string | null;
  source: string | null;
}

export type Feedback = { token_hash: string; token_type: string; label: 'true_positive' | 'false_positive' };

export type ScanOutcome =
  | { status: 200; feedback: Feedback[] }
  | { status: 400 | 401; message: string };

export interface SecretScanningDeps {
  keySource: Pick<GithubKeySource, 'keyFor'>;
  keys: Pick<KeyService, 'revokeLeaked' | 'releaseLeakNotifications'>;
  lookup: KeyLookup;
  hasher: KeyHasher;
  environment: KeyEnvironment;
  /** Queue owner notifications, one per account per report (OWNER_NOTIFICATION_WEBHOOK_URL is set). */
  notifyOwners: boolean;
  logger: Logger;
  metrics: Metrics;
}

export class SecretScanning {
  constructor(private readonly deps: SecretScanningDeps) {}

  /** One report: `raw` is the body exactly as received, which is what GitHub signed. */
  async handle(raw: Buffer, identifier: string | undefined, signature: string | undefined): Promise<ScanOutcome> {
    if (!identifier || !signature) return { status: 401, message: 'Github-Public-Key-Identifier and Github-Public-Key-Signature are required.' };
    const key = await this.deps.keySource.keyFor(identifier);
    if (!key || !verifies(raw, signature, key)) return { status: 401, message: 'The signature does not verify against GitHub\'s public key.' };
    const tokens = parseReport(raw);
    if (typeof tokens === 'string') return { status: 400, message: tokens };
    // The keys this report revokes gather into one notification per account, held until the loop is done.
    const report = this.deps.notifyOwners ? { id: randomUUID(), holdMs: LEAK_REPORT_HOLD_MS } : undefined;
    const feedback: Feedback[] = [];
    let revoked = false;
    for (const t of tokens) {
      const label = await this.judge(t, report);
      revoked ||= label === 'true_positive';
      feedback.push({ token_hash: sha256Hex(t.token), token_type: t.type, label });
    }
    // Not awaited: delivery is the background notifier's, never on GitHub's answer; if this fails
    // the notifications go out when their hold ends.
    if (report && revoked) {
      this.deps.keys.releaseLeakNotifications(report.id).catch((err: unknown) =>
        this.deps.logger.warn({ problem: (err as Error).message }, 'releasing owner notifications failed; they go out when their hold ends'),
      );
    }
    return { status: 200, feedback };
  }

  /** Ours (live or revoked before): true_positive, revoked now if live. Anything else: false_positive, never an error. */
  private async judge(t: ReportedToken, report: { id: string; holdMs: number } | undefined): Promise<Feedback['label']> {
    const { metrics, logger } = this.deps;
    // A test key reported to a live deployment, a bad checksum or any other shape is not one of ours.
    if (!checkKeyShape(t.token, this.deps.environment).ok) return count(metrics, 'false_positive');
    const record = await this.deps.lookup.findByHash(this.deps.hasher.candidates(t.token));
    if (!record) return count(metrics, 'false_positive');
    const outcome = await this.deps.keys.revokeLeaked(record.id, { url: t.url, source: t.source }, report);
    logger.warn(
      { key_id: record.id, account_id: record.accountId, url: t.url, source: t.source, newly_revoked: outcome?.changed ?? false, cache: outcome?.cache },
      'leaked api key reported by GitHub secret scanning; revoked',
    );
    return count(metrics, 'true_positive');
  }
}

function count(metrics: Metrics, label: Feedback['label']): Feedback['label'] {
  metrics.secretScanningTokens.labels(label).inc();
  return label;
}

function verifies(raw: Buffer, signatureBase64: string, key: KeyObject): boolean {
  try {
    return verify('sha256', raw, key, Buffer.from(signatureBase64, 'base64'));
  } catch {
    return false;
  }
}

export function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

/** GitHub's report: a JSON array of `{token, type, url, source}`; a problem is a message for a 400. */
export function parseReport(raw: Buffer): ReportedToken[] | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    return 'The body is not valid JSON.';
  }
  if (!Array.isArray(parsed)) return 'The body must be a JSON array of {"token", "type", "url", "source"}.';
  if (parsed.length > MAX_REPORTED_TOKENS) return `At most ${MAX_REPORTED_TOKENS} tokens per report.`;
  const out: ReportedToken[] = [];
  for (const item of parsed as unknown[]) {
    if (typeof item !== 'object' || item === null) return 'Each match must be an object.';
    const { token, type, url, source } = item as Record<string, unknown>;
    if (typeof token !== 'string' || typeof type !== 'string') return 'Each match needs "token" and "type" strings.';
    if (token.length > MAX_FIELD_CHARS || type.length > MAX_FIELD_CHARS) return 'A match field is too long.';
    out.push({ token, type, url: shortString(url), source: shortString(source) });
  }
  return out;
}

function shortString(v: unknown): string | null {
  return typeof v === 'string' ? v.slice(0, MAX_FIELD_CHARS) : null;
}
