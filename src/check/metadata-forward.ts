// The key metadata fields the policy names (`forward_metadata`), as header-safe values for the
// upstream. Kept apart from pipeline.ts.
import type { KeyRecord } from '../keys/repository.js';

export const META_HEADER_PREFIX = 'x-ryvion-meta-';
const MAX_VALUE_CHARS = 256;

export interface ForwardedField {
  field: string;
  /** `x-ryvion-meta-<field>`, "_" written "-" (proxies refuse header names with underscores). */
  header: string;
  /** Undefined when the key has no usable value: the header is removed, so a client cannot supply it. */
  value: string | undefined;
}

/** One entry per field the policy names, in policy order. */
export function forwardedMetadata(key: KeyRecord, fields: readonly string[] | undefined): ForwardedField[] {
  if (!fields || fields.length === 0) return [];
  return fields.map((field) => ({ field, header: metaHeader(field), value: headerValue(key.metadata?.[field]) }));
}

export function metaHeader(field: string): string {
  return `${META_HEADER_PREFIX}${field.toLowerCase().replace(/_/g, '-')}`;
}

/** Strings, numbers and booleans; visible ASCII kept, anything else percent-encoded (no CR/LF can reach a header). */
function headerValue(v: unknown): string | undefined {
  if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') return undefined;
  const text = String(v).slice(0, MAX_VALUE_CHARS);
  return /^[\x20-\x7e]*$/.test(text) ? text.trim() : encodeURIComponent(text);
}
