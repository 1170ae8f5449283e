// The one rule for a key's `metadata`, shared by the key API and the CLI: a JSON object of at
// most METADATA_MAX_BYTES as JSON.
import { z } from 'zod';

/** The largest `metadata` object a key may carry, as JSON. */
export const METADATA_MAX_BYTES = 1024;

export const keyMetadataSchema = z
  .record(z.string(), z.unknown())
  .refine((m) => Buffer.byteLength(JSON.stringify(m), 'utf8') <= METADATA_MAX_BYTES, `must be at most ${METADATA_MAX_BYTES} bytes as JSON`);

/** `value` as key metadata, or what is wrong with it (a message without the value). */
export function checkKeyMetadata(value: unknown): { ok: true; value: Record<string, unknown> } | { ok: false; problem: string } {
  const parsed = keyMetadataSchema.safeParse(value);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issue = parsed.error.issues[0]!;
  return { ok: false, problem: issue.code === 'invalid_type' ? 'must be a JSON object, e.g. {"team": "search"}' : issue.message };
}
