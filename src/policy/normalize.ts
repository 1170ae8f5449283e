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

// Decodes once: a `%25` stays `%25`, so `%252e` can never become `.` here. An upstream that
// decodes twice would still turn it into `.`, so a `%25` whose next two characters encode a
// path-significant byte is refused; any other `%25` (a `%` in a document name) is kept.
function decodeSegment(segment: string): string | { ok: false; reason: string } {
  let out = '';
  for (let i = 0; i < segment.length; i++) {
    const c = segment.charCodeAt(i);
    if (c !== PERCENT) {
      out += segment[i];
      continue;
    }
    const byte = encodedByte(segment, i);
    if (byte < 0) return { ok: false, reason: 'malformed percent-encoding' };
    // Decoding these would invent separators or truncate the path in some upstream; ";" cuts a
    // segment in some (see above).
    if (byte === SLASH || byte === BACKSLASH || byte === 0) {
      return { ok: false, reason: 'encoded "/", "\\" or NUL in path' };
    }
    if (byte === SEMICOLON) return { ok: false, reason: 'encoded ";" in path' };
    // `%252e`: the `%25` at i, then the two hex digits a second decoding would read with it.
    if (byte === PERCENT && DOUBLE_ENCODED.has(hexPair(segment, i + 3))) {
      return { ok: false, reason: 'double-encoded ".", "/", "\\", ";", "%" or NUL in path' };
    }
    if (byte >= 0x80) {
      // A run of encoded non-ASCII bytes must be well-formed UTF-8: an overlong form such as
      // `%c0%ae` is "." to a lenient decoder upstream.
      let end = i + 3;
      while (encodedByte(segment, end) >= 0x80) end += 3;
      if (!isUtf8(segment, i, end)) return { ok: false, reason: 'overlong or invalid UTF-8 in path' };
      out += segment.slice(i, end).toUpperCase();
      i = end - 1;
      continue;
    }
    if (isUnreserved(byte)) out += String.fromCharCode(byte);
    else out += '%' + HEX_DIGITS.charAt(byte >> 4) + HEX_DIGITS.charAt(byte & 15);
    i += 2;
  }
  return out;
}

// ".", "/", "\", ";", "%" and NUL: what a second decoding must not produce.
const DOUBLE_ENCODED: ReadonlySet<number> = new Set([0x2e, SLASH, BACKSLASH, SEMICOLON, PERCENT, 0]);

/** The byte `%XY` at `i` encodes, or -1 when there is none. */
function encodedByte(s: string, i: number): number {
  return s.charCodeAt(i) === PERCENT ? hexPair(s, i + 1) : -1;
}

/** The byte the two hex digits at `i` spell, or -1. */
function hexPair(s: string, i: number): number {
  const hi = hexValue(s.charCodeAt(i));
  const lo = hexValue(s.charCodeAt(i + 1));
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function isUtf8(s: string, start: number, end: number): boolean {
  const bytes = new Uint8Array((end - start) / 3);
  for (let k = 0; k < bytes.length; k++) bytes[k] = encodedByte(s, start + 3 * k);
  try {
    strictUtf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
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
