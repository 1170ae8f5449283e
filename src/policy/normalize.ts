// Canonical form of Envoy's raw `:path`, so that no spelling of a path reaches a rule it should not.
//
// Trailing slash: removed (except for the root "/"), because empty segments are dropped like
// `//` is merged. `/v1/models/` is therefore judged by the same rules as `/v1/models`; a policy
// cannot tell them apart, which is what keeps `/v1/models/` from slipping past a rule written
// for `/v1/models` and into the default action.
//
// Matching stays case-sensitive: `/V1/MODELS` is a different path from `/v1/models`.

export const MAX_PATH_LENGTH = 4096;

export type NormalizeResult = { ok: true; path: string } | { ok: false; reason: string };
export type SegmentsResult = { ok: true; segments: string[] } | { ok: false; reason: string };

const SLASH = 0x2f;
const SEMICOLON = 0x3b;
const BACKSLASH = 0x5c;
const PERCENT = 0x25;
const QUESTION = 0x3f;
const HASH = 0x23;
const HEX_DIGITS = '0123456789ABCDEF';

// The policy matcher works on segments; this is the single place that decides what they are,
// so `normalizePath` is just its joined form.
export function normalizeSegments(rawTarget: string): SegmentsResult {
  let end = rawTarget.length;
  for (let i = 0; i < rawTarget.length; i++) {
    const c = rawTarget.charCodeAt(i);
    if (c === QUESTION || c === HASH) {
      end = i;
      break;
    }
  }
  if (end === 0 || rawTarget.charCodeAt(0) !== SLASH) return { ok: false, reason: 'path does not start with "/"' };
  // The query is excluded from the limit: it never takes part in matching.
  if (end > MAX_PATH_LENGTH) return { ok: false, reason: `path longer than ${MAX_PATH_LENGTH} characters` };

  const segments: string[] = [];
  let start = 1;
  for (let i = 1; i <= end; i++) {
    const c = i < end ? rawTarget.charCodeAt(i) : SLASH;
    if (c !== SLASH) {
      // Request targets are printable ASCII (RFC 9112); anything else is either an attack or a
      // client bug, and a backslash is a separator to some upstreams.
      if (c < 0x21 || c > 0x7e) return { ok: false, reason: 'control, space or non-ASCII character in path' };
      if (c === BACKSLASH) return { ok: false, reason: 'backslash in path' };
      // Path parameters: some upstreams (Tomcat, Spring) cut a segment at ";", so "..;"
      // would become ".." after we judged it. No Ryvion API path uses one.
      if (c === SEMICOLON) return { ok: false, reason: 'semicolon in path' };
      continue;
    }
    if (i > start) {
      let segment = rawTarget.slice(start, i);
      if (segment.includes('%')) {
        const decoded = decodeSegment(segment);
        if (typeof decoded !== 'string') return decoded;
        segment = decoded;
      }
      // Dot segments are resolved after decoding, so `%2e%2e` climbs like `..` does.
      if (segment === '..') {
        if (segments.length === 0) return { ok: false, reason: 'path climbs above the root' };
        segments.pop();
      } else if (segment !== '.') {
        segments.push(segment);
      }
    }
    start = i + 1;
  }
  return { ok: true, segments };
}

export function normalizePath(rawTarget: string): NormalizeResult {
  const result = normalizeSegments(rawTarget);
  if (!result.ok) return result;
  return { ok: true, path: '/' + result.segments.join('/') };
}

// Decodes once: a `%25` stays `%25`, so `%252e` can never become `.` here or upstream.
function decodeSegment(segment: string): string | { ok: false; reason: string } {
  let out = '';
  for (let i = 0; i < segment.length; i++) {
    const c = segment.charCodeAt(i);
    if (c !== PERCENT) {
      out += segment[i];
      continue;
    }
    const hi = hexValue(segment.charCodeAt(i + 1));
    const lo = hexValue(segment.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) return { ok: false, reason: 'malformed percent-encoding' };
    const byte = hi * 16 + lo;
    // Decoding these would invent separators or truncate the path in some upstream.
    if (byte === SLASH || byte === BACKSLASH || byte === 0) {
      return { ok: false, reason: 'encoded "/", "\\" or NUL in path' };
    }
    if (isUnreserved(byte)) out += String.fromCharCode(byte);
    else out += '%' + HEX_DIGITS.charAt(hi) + HEX_DIGITS.charAt(lo);
    i += 2;
  }
  return out;
}

// NaN (reading past the end) falls through to -1 as well.
function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

// RFC 3986 section 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
function isUnreserved(b: number): boolean {
  return (
    (b >= 0x41 && b <= 0x5a) ||
    (b >= 0x61 && b <= 0x7a) ||
    (b >= 0x30 && b <= 0x39) ||
    b === 0x2d ||
    b === 0x2e ||
    b === 0x5f ||
    b === 0x7e
  );
}
