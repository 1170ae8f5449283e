// A hand-written protobuf encoder for CheckResponse, the hot path's answer.
//
// proto-loader's serializer runs protobufjs's fromObject (a copy of the whole
// response as message instances) and then its encoder: the largest single cost
// of an allowed check (bench/README.md). This writes the same bytes in one pass,
// back to front into a scratch buffer (so every length is known when its prefix
// is written), and copies them out. Fields come out in field-number order and a
// field present in the object is written even when it holds its default, as
// protobufjs does, so the output is byte-for-byte proto-loader's
// (test/unit/wire-encoder.test.ts). Field numbers are those of proto/.
//
// As with protobufjs, properties that are not fields are ignored. A field this
// A frozen list of header options, list of strings or Struct (an allow's identity headers, headers
// to remove and metadata, shared by every allow of one key: transport/grpc/check.ts) is encoded
// once and its bytes copied after that, held as long as the object is. Frozen means it and what
// it holds never change: the object's own freeze is checked, its contents are the caller's word.
//
// encoder does not write (Status.details, HeaderValue.raw_value,
// HeaderValueOption.keep_empty_value), a value of the wrong type, a negative or
// fractional code, or both members of the oneof make `encodeCheckResponse`
// return undefined, and the caller falls back to the generic serializer: the
// encoder never guesses.
import type * as grpc from '@grpc/grpc-js';
import type { CheckResponse, ProtoStruct, StructValue } from './proto.js';

class Unsupported extends Error {}
const UNSUPPORTED = new Unsupported('shape not supported by the fast CheckResponse encoder');

const LEN = 2;
const VARINT = 0;
const I64 = 1;

// Buffer#utf8Write is what Buffer#write calls once it has normalised its arguments (protobufjs
// calls it directly too); the wrapper's argument handling costs more than the copy of a short string.
type Utf8Writer = { utf8Write?: (s: string, offset: number, length: number) => number };
const utf8Write = (b: Buffer, s: string, offset: number, length: number): number =>
  (b as unknown as Utf8Writer).utf8Write ? (b as unknown as Required<Utf8Writer>).utf8Write(s, offset, length) : b.write(s, offset, length, 'utf8');

let scratch = Buffer.allocUnsafeSlow(16 * 1024);
let pos = 0;

/** Room for `n` more bytes below `pos`; a larger scratch buffer means starting the message again. */
class Grow extends Error {}
const GROW = new Grow('scratch buffer too small');
function room(n: number): void {
  if (pos < n) throw GROW;
}

const present = (v: unknown): boolean => v !== undefined && v !== null;

function varintSize(v: number): number {
  return v < 0x80 ? 1 : v < 0x4000 ? 2 : v < 0x200000 ? 3 : v < 0x10000000 ? 4 : 5;
}

function putVarint(v: number): void {
  const size = varintSize(v);
  room(size);
  pos -= size;
  let p = pos;
  while (v >= 0x80) {
    scratch[p++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  scratch[p] = v;
}

function putTag(field: number, wire: number): void {
  room(1);
  scratch[--pos] = (field << 3) | wire; // every field number here is below 16: one byte
}

/** Closes a length-delimited field whose content was written between `pos` and `end`. */
function putLen(field: number, end: number): void {
  putVarint(end - pos);
  putTag(field, LEN);
}

function putUint(field: number, v: unknown): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw UNSUPPORTED;
  putVarint(v);
  putTag(field, VARINT);
}

function putBool(field: number, v: unknown): void {
  if (typeof v !== 'boolean') throw UNSUPPORTED;
  putVarint(v ? 1 : 0);
  putTag(field, VARINT);
}

function putString(field: number, v: unknown): void {
  if (typeof v !== 'string') throw UNSUPPORTED;
  // Native length and copy: a charCodeAt loop would be shorter for these short strings, but
  // charCodeAt is several times slower in a process where anything inherits from
  // String.prototype, and ioredis (resp/verbatim-string.js) does. A lone surrogate becomes
  // U+FFFD, so the bytes are always valid UTF-8.
  const size = Buffer.byteLength(v, 'utf8');
  room(size);
  pos -= size;
  if (size > 0) utf8Write(scratch, v, pos, size);
  putVarint(size);
  putTag(field, LEN);
}

// Header names, encoded once: the few the service writes (x-request-id, the rate-limit headers,
// identity and denial headers, configured metadata names) recur in every answer. A cached name is
// copied byte by byte from a typed array, which costs less than Buffer.byteLength and utf8Write
// (two native calls) for strings this short. Bounded, in case a configuration names many.
const MAX_NAMES = 256;
const nameBytes = new Map<string, Uint8Array>();

function putName(field: number, v: unknown): void {
  if (typeof v !== 'string') throw UNSUPPORTED;
  let bytes = nameBytes.get(v);
  if (bytes === undefined) {
    if (nameBytes.size >= MAX_NAMES) return putString(field, v);
    bytes = Uint8Array.from(Buffer.from(v, 'utf8'));
    nameBytes.set(v, bytes);
  }
  const size = bytes.length;
  room(size);
  pos -= size;
  for (let i = 0; i < size; i++) scratch[pos + i] = bytes[i]!;
  putVarint(size);
  putTag(field, LEN);
}

const asObject = (v: unknown): Record<string, unknown> => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw UNSUPPORTED;
  return v as Record<string, unknown>;
};

function asList(v: unknown): readonly unknown[] {
  if (!present(v)) return [];
  if (!Array.isArray(v)) throw UNSUPPORTED;
  return v;
}

// envoy.config.core.v3.HeaderValueOption
function putOption(field: number, v: unknown): void {
  const o = asObject(v);
  if (present(o.keep_empty_value)) throw UNSUPPORTED;
  const end = pos;
  if (present(o.append_action)) putUint(3, o.append_action);
  if (present(o.append)) {
    const b = asObject(o.append);
    const e = pos;
    if (present(b.value)) putBool(1, b.value);
    putLen(2, e);
  }
  if (present(o.header)) {
    const h = asObject(o.header);
    if (present(h.raw_value)) throw UNSUPPORTED;
    const e = pos;
    if (present(h.value)) putString(2, h.value);
    if (present(h.key)) putName(1, h.key);
    putLen(1, e);
  }
  putLen(field, end);
}

// Bytes of frozen parts, by object and field number: see the top of this file.
const encodedParts = new WeakMap<object, { field: number; bytes: Buffer }>();

/** `write(field, v)`, or the bytes that wrote before when `v` is frozen. */
function putPart(field: number, v: unknown, write: (field: number, v: unknown) => void): void {
  const frozen = typeof v === 'object' && v !== null && Object.isFrozen(v);
  const known = frozen ? encodedParts.get(v) : undefined;
  if (known && known.field === field) {
    room(known.bytes.length);
    pos -= known.bytes.length;
    known.bytes.copy(scratch, pos);
    return;
  }
  const end = pos;
  write(field, v);
  if (frozen && !known) {
    // Its own memory, not a slice of Node's shared 8 KiB pool: a kept part would hold a whole pool
    // slab of short-lived buffers alive (measured: 1 665 slabs, 12.7 MB, for 12 289 parts of ~100 B).
    const bytes = Buffer.allocUnsafeSlow(end - pos);
    scratch.copy(bytes, 0, pos, end);
    encodedParts.set(v, { field, bytes });
  }
}

function writeOptions(field: number, v: unknown): void {
  const list = asList(v);
  for (let i = list.length - 1; i >= 0; i--) putOption(field, list[i]);
}

function putOptions(field: number, v: unknown): void {
  putPart(field, v, writeOptions);
}

function writeStringList(field: number, v: unknown): void {
  const list = asList(v);
  for (let i = list.length - 1; i >= 0; i--) putString(field, list[i]);
}

function putStringList(field: number, v: unknown): void {
  putPart(field, v, writeStringList);
}

// google.protobuf.Value
function putValue(field: number, v: unknown): void {
  const o = asObject(v) as StructValue;
  const end = pos;
  if (present(o.listValue)) {
    const values = asList(asObject(o.listValue).values);
    const e = pos;
    for (let i = values.length - 1; i >= 0; i--) putValue(1, values[i]);
    putLen(6, e);
  }
  if (present(o.structValue)) {
    const e = pos;
    putStructFields(o.structValue);
    putLen(5, e);
  }
  if (present(o.boolValue)) putBool(4, o.boolValue);
  if (present(o.stringValue)) putString(3, o.stringValue);
  if (present(o.numberValue)) {
    if (typeof o.numberValue !== 'number') throw UNSUPPORTED;
    room(8);
    pos -= 8;
    scratch.writeDoubleLE(o.numberValue, pos);
    putTag(2, I64);
  }
  if (present(o.nullValue)) putUint(1, o.nullValue);
  putLen(field, end);
}

// google.protobuf.Struct's fields (a map<string, Value>: one entry message per key, in key order)
function putStructFields(v: unknown): void {
  const s = asObject(v) as unknown as ProtoStruct;
  if (!present(s.fields)) return;
  const fields = asObject(s.fields);
  const keys = Object.keys(fields);
  for (let i = keys.length - 1; i >= 0; i--) {
    const end = pos;
    putValue(2, fields[keys[i]!]);
    putString(1, keys[i]);
    putLen(1, end);
  }
}

function writeStruct(field: number, v: unknown): void {
  const end = pos;
  putStructFields(v);
  putLen(field, end);
}

function putStruct(field: number, v: unknown): void {
  putPart(field, v, writeStruct);
}

function putResponse(r: CheckResponse): void {
  const o = asObject(r);
  if (present(o.dynamic_metadata)) putStruct(4, o.dynamic_metadata);
  // A oneof with both members set is a caller's bug: left to the generic serializer.
  if (present(o.ok_response) && present(o.denied_response)) throw UNSUPPORTED;
  if (present(o.ok_response)) {
    const ok = asObject(o.ok_response);
    const e = pos;
    putOptions(6, ok.response_headers_to_add);
    putStringList(5, ok.headers_to_remove);
    putOptions(2, ok.headers);
    putLen(3, e);
  }
  if (present(o.denied_response)) {
    const d = asObject(o.denied_response);
    const e = pos;
    if (present(d.body)) putString(3, d.body);
    putOptions(2, d.headers);
    if (present(d.status)) {
      const s = asObject(d.status);
      const se = pos;
      if (present(s.code)) putUint(1, s.code);
      putLen(1, se);
    }
    putLen(2, e);
  }
  if (present(o.status)) {
    const s = asObject(o.status);
    if (present(s.details) && asList(s.details).length > 0) throw UNSUPPORTED;
    const e = pos;
    if (present(s.message)) putString(2, s.message);
    if (present(s.code)) putUint(1, s.code);
    putLen(1, e);
  }
}

/** The encoded CheckResponse, or undefined when it has a shape this encoder does not take. */
export function encodeCheckResponse(r: CheckResponse): Buffer | undefined {
  for (;;) {
    pos = scratch.length;
    try {
      putResponse(r);
      const out = Buffer.allocUnsafe(scratch.length - pos);
      scratch.copy(out, 0, pos);
      return out;
    } catch (err) {
      if (err === UNSUPPORTED) return undefined;
      if (err !== GROW) throw err;
      if (scratch.length >= 64 * 1024 * 1024) return undefined;
      scratch = Buffer.allocUnsafeSlow(scratch.length * 4);
    }
  }
}

/**
 * The Authorization service with CheckResponse encoded by `encodeCheckResponse`,
 * falling back to the definition's own serializer for shapes it does not take.
 */
export function withFastCheckResponse(svc: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const check = svc.Check;
  if (!check) return svc;
  const generic = check.responseSerialize as (r: CheckResponse) => Buffer;
  return {
    ...svc,
    Check: { ...check, responseSerialize: (r: CheckResponse): Buffer => encodeCheckResponse(r) ?? generic(r) },
  };
}
