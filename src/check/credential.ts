// Pure extraction of the API key from `Authorization: Bearer` and `X-API-Key`.
import type { RequestAttributes } from './attributes.js';

export type Credential =
  | { kind: 'key'; key: string }
  | { kind: 'missing' }
  | { kind: 'invalid'; problem: 'repeated_header' | 'conflicting_headers' | 'malformed_bearer' };

// HTTP's optional whitespace is SP and HTAB only (RFC 9110 section 5.6.3). Unicode whitespace rules
// would strip characters such as U+00A0 or U+3000 that the upstream and other parsers keep.
const OWS = /[ \t]/;
function trimOws(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && isOws(s.charCodeAt(start))) start++;
  while (end > start && isOws(s.charCodeAt(end - 1))) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}
const isOws = (c: number): boolean => c === 0x20 || c === 0x09;

type One = { kind: 'value'; value: string } | { kind: 'none' } | { kind: 'repeated' } | { kind: 'malformed' };

export function extractCredential(attrs: Pick<RequestAttributes, 'authorization' | 'apiKey' | 'credentialsDisagree'>): Credential {
  if (attrs.credentialsDisagree) return { kind: 'invalid', problem: 'conflicting_headers' };
  const bearer = fromAuthorization(attrs.authorization);
  const apiKey = fromApiKey(attrs.apiKey);
  if (bearer.kind === 'repeated' || apiKey.kind === 'repeated') return { kind: 'invalid', problem: 'repeated_header' };
  if (bearer.kind === 'malformed') return { kind: 'invalid', problem: 'malformed_bearer' };
  if (bearer.kind === 'value' && apiKey.kind === 'value') {
    // Ambiguous credentials are never resolved by guessing.
    return bearer.value === apiKey.value ? { kind: 'key', key: bearer.value } : { kind: 'invalid', problem: 'conflicting_headers' };
  }
  if (bearer.kind === 'value') return { kind: 'key', key: bearer.value };
  if (apiKey.kind === 'value') return { kind: 'key', key: apiKey.value };
  return { kind: 'missing' };
}

function fromAuthorization(values: readonly string[]): One {
  if (values.length === 0) return { kind: 'none' };
  if (values.length > 1) return { kind: 'repeated' };
  const raw = trimOws(values[0]!);
  if (raw === '') return { kind: 'none' };
  const space = raw.search(OWS);
  const scheme = space === -1 ? raw : raw.slice(0, space);
  // Another scheme (Basic, Digest, ...) carries no API key: it counts as absent.
  if (scheme.toLowerCase() !== 'bearer') return { kind: 'none' };
  const token = space === -1 ? '' : trimOws(raw.slice(space));
  if (token === '') return { kind: 'none' };
  if (OWS.test(token)) return { kind: 'malformed' };
  return { kind: 'value', value: token };
}

function fromApiKey(values: readonly string[]): One {
  if (values.length === 0) return { kind: 'none' };
  if (values.length > 1) return { kind: 'repeated' };
  const v = trimOws(values[0]!);
  return v === '' ? { kind: 'none' } : { kind: 'value', value: v };
}
