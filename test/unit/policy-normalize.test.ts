import { describe, it, expect } from 'vitest';
import { MAX_PATH_LENGTH, normalizePath } from '../../src/policy/normalize.js';

// Spellings a client can send for a path, and what the policy must see.
const normalised: Array<[name: string, raw: string, expected: string]> = [
  ['plain path is unchanged', '/v1/chat/completions', '/v1/chat/completions'],
  ['root stays root', '/', '/'],
  ['double slash is merged', '/v1//chat/completions', '/v1/chat/completions'],
  ['leading double slash is merged', '//v1/models', '/v1/models'],
  ['dot segment is removed', '/v1/./models', '/v1/models'],
  ['dot-dot climbs one segment', '/v1/models/../chat/completions', '/v1/chat/completions'],
  ['dot-dot back to the root is fine', '/v1/..', '/'],
  ['encoded dot-dot climbs like dot-dot', '/v1/models/%2e%2e/chat/completions', '/v1/chat/completions'],
  ['mixed encoded dot-dot climbs', '/v1/models/%2E./chat/completions', '/v1/chat/completions'],
  ['encoded dot is removed', '/v1/%2e/models', '/v1/models'],
  ['encoded unreserved letter is decoded', '/v1/m%6Fdels', '/v1/models'],
  ['encoded tilde is decoded from lower-case hex', '/a%7eb', '/a~b'],
  ['encoded reserved character stays encoded, hex upper-cased', '/v1/models/a%3ab', '/v1/models/a%3Ab'],
  ['encoded space stays encoded', '/v1/models/a%20b', '/v1/models/a%20b'],
  ['an encoded "%" that is not a double encoding stays literal (a document name with "%")', '/v1/knowledge-bases/kb/documents/50%25off', '/v1/knowledge-bases/kb/documents/50%25off'],
  ['an encoded "%" before an encoded letter stays literal', '/v1/knowledge-bases/kb/documents/a%2541', '/v1/knowledge-bases/kb/documents/a%2541'],
  ['an encoded "%" before "3" and a non-hex character stays literal', '/v1/knowledge-bases/kb/documents/a%253z', '/v1/knowledge-bases/kb/documents/a%253z'],
  ['well-formed UTF-8 stays encoded, hex upper-cased', '/v1/knowledge-bases/caf%c3%a9', '/v1/knowledge-bases/caf%C3%A9'],
  ['four-byte UTF-8 stays encoded', '/v1/knowledge-bases/%F0%9F%98%80', '/v1/knowledge-bases/%F0%9F%98%80'],
  ['upper case is kept (matching is case-sensitive)', '/V1/MODELS', '/V1/MODELS'],
  ['query string is dropped', '/v1/chat/completions?x=/v1/models', '/v1/chat/completions'],
  ['query with dot-dot is not resolved into the path', '/v1/models?../../admin', '/v1/models'],
  ['fragment is dropped', '/v1/models#/../admin', '/v1/models'],
  ['trailing slash is removed', '/v1/models/', '/v1/models'],
  ['trailing slash after dot-dot is removed', '/v1/models/x/../', '/v1/models'],
  ['path at the length limit is accepted', '/' + 'a'.repeat(MAX_PATH_LENGTH - 1), '/' + 'a'.repeat(MAX_PATH_LENGTH - 1)],
  ['long query does not count against the limit', '/v1/models?' + 'q'.repeat(MAX_PATH_LENGTH), '/v1/models'],
];

const rejected: Array<[name: string, raw: string]> = [
  ['encoded slash', '/v1%2Fchat%2Fcompletions'],
  ['encoded slash in lower-case hex', '/v1%2fchat'],
  ['encoded NUL', '/v1/models%00'],
  ['encoded backslash', '/v1/models%5C..%5Cchat'],
  ['raw backslash', '/v1\\models'],
  ['Tomcat-style path parameter dot-dot (..;)', '/v1/models/..;/..;/api/v1/auth/api-keys'],
  ['path parameter', '/v1/models;jsessionid=abc'],
  ['dot-dot above the root', '/..'],
  ['dot-dot above the root after a segment', '/v1/../..'],
  ['encoded dot-dot above the root', '/%2e%2e/v1/models'],
  ['malformed escape', '/v1/%zzmodels'],
  ['escape with one hex digit', '/v1/models%2'],
  ['trailing percent', '/v1/models%'],
  ['control character', '/v1/mo\ndels'],
  ['tab', '/v1/\tmodels'],
  ['DEL character', '/v1/models\u007f'],
  ['raw space', '/v1/mo dels'],
  ['non-ASCII character', '/v1/modèls'],
  ['relative target', 'v1/models'],
  ['absolute-form target', 'http://example.com/v1/models'],
  ['asterisk-form target', '*'],
  ['empty target', ''],
  ['only a query', '?/v1/models'],
  ['path over the length limit', '/' + 'a'.repeat(MAX_PATH_LENGTH)],
  ['encoded semicolon (..%3B)', '/v1/models/..%3B/agents'],
  ['encoded semicolon in lower-case hex', '/v1/models/..%3b/agents'],
  ['double-encoded dot-dot', '/v1/models/%252e%252e/%252e%252e/v1/agents'],
  ['double-encoded slash', '/v1%252Fchat'],
  ['double-encoded backslash', '/v1/models/%255c..'],
  ['double-encoded semicolon', '/v1/models/..%253b/agents'],
  ['double-encoded NUL', '/v1/models%2500'],
  ['triple-encoded dot', '/v1/models/%25252e%25252e'],
  ['overlong UTF-8 dot (%c0%ae)', '/v1/models/%c0%ae%c0%ae/agents'],
  ['overlong UTF-8 slash (%c0%af)', '/v1/models%c0%afagents'],
  ['three-byte overlong dot (%e0%80%ae)', '/v1/models/%e0%80%ae%e0%80%ae/agents'],
  ['lone UTF-8 continuation byte', '/v1/models/%80'],
  ['truncated UTF-8 sequence', '/v1/models/%c3'],
  ['UTF-8 encoded surrogate', '/v1/models/%ed%a0%80'],
];

describe('normalizePath', () => {
  it.each(normalised)('%s: %s', (_name, raw, expected) => {
    expect(normalizePath(raw)).toEqual({ ok: true, path: expected });
  });

  it.each(rejected)('rejects %s', (_name, raw) => {
    const result = normalizePath(raw);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).not.toBe('');
  });

  it('is idempotent on its own output', () => {
    for (const [, raw] of normalised) {
      const once = normalizePath(raw);
      if (!once.ok) throw new Error(`expected ${raw} to normalise`);
      expect(normalizePath(once.path)).toEqual(once);
    }
  });
});
