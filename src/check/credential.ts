// Pure extraction of the API key from `Authorization: Bearer` and `X-API-Key`.
import type { RequestAttributes } from './attributes.js';

export type Credential =
  | { kind: 'key'; key: string }
  | { kind: 'missing' }
  | { kind: 'invalid'; problem: 'repeated_header' | 'conflicting_headers' | 'malformed_bearer' };

type One = { kind: 'value'; value: string } | { kind: 'none' } | { kind: 'repeated' } | { kind: 'malformed' };

export function extractCredential(attrs: Pick<RequestAttributes, 'authorization' | 'apiKey'>): Credential {
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
  const raw = values[0]!.trim();
  if (raw === '') return { kind: 'none' };
  const space = raw.search(/\s/);
  const scheme = space === -1 ? raw : raw.slice(0, space);
  // Another scheme (Basic, Digest, ...) carries no API key: it counts as absent.
  if (scheme.toLowerCase() !== 'bearer') return { kind: 'none' };
  const token = space === -1 ? '' : raw.slice(space).trim();
  if (token === '') return { kind: 'none' };
  if (/\s/.test(token)) return { kind: 'malformed' };
  return { kind: 'value', value: token };
}

function fromApiKey(values: readonly string[]): One {
  if (values.length === 0) return { kind: 'none' };
  if (values.length > 1) return { kind: 'repeated' };
  const v = values[0]!.trim();
  return v === '' ? { kind: 'none' } : { kind: 'value', value: v };
}
