// A hand-written decoder of the CheckRequest parts the pipeline reads, the hot path's question.
//
// proto-loader's deserializer decodes every field into protobufjs message instances, then copies
// the whole tree into plain objects (toObject), of which the pipeline reads a method, a path, a
// few headers and the source address: about 3 us a check, as much as the rest of an allow from
// memory (bench/README.md). This reads the same bytes once, keeps only those parts and passes
// them to the same reading of them (`attributesOf` in check.ts), so a message gives the same
// RequestAttributes either way (test/unit/request-wire.test.ts compares both on Envoy's own
// definitions, mutated and concatenated messages included).
//
// It accepts a subset of what protobufjs accepts and gives up on the rest, and the caller falls
// back to the generic deserializer: nothing is guessed. Given up on: a known field with a wire type
// other than its declared one (protobufjs reads it as the declared type anyway), groups and
// reserved wire types, a varint of more than 10 bytes or a length of more than 32 bits, a field
// running past its enclosing message (protobufjs cuts strings short there), more than
// MAX_READ_HEADER_ENTRIES `headers` entries under read names. Every part protobufjs
// would decode (the fields of the messages in proto/, the parts the pipeline does not read
// included) is walked, so a message accepted here is one protobufjs accepts too. As protobufjs
// does, a repeated message field is replaced by its last occurrence, map entries and repeated
// fields accumulate, and unknown fields are skipped by their wire type. Field numbers are those of
// proto/.
import type * as grpc from '@grpc/grpc-js';
import { viewOf, type CheckRequestView } from './check.js';
import type { CheckRequest } from './proto.js';

const UNSUPPORTED = new Error('CheckRequest outside the fast decoder');

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

// The message being read and the read position, as the encoder keeps its scratch (wire.ts).
const EMPTY = Buffer.alloc(0);
let b: Buffer = EMPTY;
let p = 0;

/** A varint that fits 32 bits (a tag or a length), read within `limit`. */
function uint32(limit: number): number {
  if (p < limit) {
    const first = b[p]!;
    if (first < 0x80) {
      p++;
      return first;
    }
  }
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 5; i++) {
    if (p >= limit) throw UNSUPPORTED;
    const c = b[p++]!;
    value += (c & 0x7f) * scale;
    if (c < 0x80) {
      if (value > 0xffffffff) throw UNSUPPORTED;
      return value;
    }
    scale *= 128;
  }
  throw UNSUPPORTED;
}

function skipVarint(limit: number): void {
  for (let i = 0; i < 10; i++) {
    if (p >= limit) throw UNSUPPORTED;
    if (b[p++]! < 0x80) return;
  }
  throw UNSUPPORTED;
}

/**
 * A field protobufjs reads with its 32-bit varint reader (uint32, int32, enum): up to 5 bytes, and
 * when the fifth still continues, exactly 5 more, unread. Walked the same way, so that both
 * decoders stay in step on a padded encoding (a canonical negative enum is 10 bytes).
 */
function skipVarint32(limit: number): void {
  for (let i = 0; i < 5; i++) {
    if (p >= limit) throw UNSUPPORTED;
    if (b[p++]! < 0x80) return;
  }
  if (limit - p < 5) throw UNSUPPORTED;
  p += 5;
}

/** The end of a length-delimited field whose length prefix is at `p`; `p` moves past the prefix. */
function lenEnd(limit: number): number {
  const n = uint32(limit);
  if (n > limit - p) throw UNSUPPORTED;
  return p + n;
}

function skip(wireType: number, limit: number): void {
  switch (wireType) {
    case VARINT:
      skipVarint(limit);
      return;
    case I64:
      if (limit - p < 8) throw UNSUPPORTED;
      p += 8;
      return;
    case LEN:
      p = lenEnd(limit);
      return;
    case I32:
      if (limit - p < 4) throw UNSUPPORTED;
      p += 4;
      return;
    default:
      throw UNSUPPORTED;
  }
}

/** A known field of declared wire type `expected`: anything else is protobufjs's to read. */
function expect(wireType: number, expected: number): void {
  if (wireType !== expected) throw UNSUPPORTED;
}

// Buffer#utf8Slice and #latin1Slice are what toString calls once it has checked its arguments (as
// protobufjs calls utf8Slice): the wrapper costs about as much again as making a short string.
type Slicing = { utf8Slice(start: number, end: number): string; latin1Slice(start: number, end: number): string };
const utf8 = (start: number, end: number): string => (b as unknown as Slicing).utf8Slice(start, end);
const latin1 = (start: number, end: number): string => (b as unknown as Slicing).latin1Slice(start, end);

/** envoy.config.core.v3.Pipe: path (1) and mode (2), walked, none kept. */
function walkPipe(end: number): void {
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    switch (tag >>> 3) {
      case 1:
        expect(wt, LEN);
        p = lenEnd(end);
        break;
      case 2:
        expect(wt, VARINT);
        skipVarint32(end);
        break;
      default:
        skip(wt, end);
    }
  }
}

/** envoy.config.core.v3.SocketAddress: address (2) kept. */
function socketAddress(end: number): string | undefined {
  let address: string | undefined;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    switch (tag >>> 3) {
      case 1: // protocol
      case 3: // port_value
        expect(wt, VARINT);
        skipVarint32(end);
        break;
      case 2: {
        expect(wt, LEN);
        const e = lenEnd(end);
        address = utf8(p, e);
        p = e;
        break;
      }
      case 4: // named_port
        expect(wt, LEN);
        p = lenEnd(end);
        break;
      default:
        skip(wt, end);
    }
  }
  return address;
}

/** envoy.config.core.v3.Address: socket_address (1) read, pipe (2) walked. The last of each counts. */
function address(end: number): string | undefined {
  let socket: string | undefined;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    switch (tag >>> 3) {
      case 1: {
        expect(wt, LEN);
        const e = lenEnd(end);
        socket = socketAddress(e);
        break;
      }
      case 2: {
        expect(wt, LEN);
        const e = lenEnd(end);
        walkPipe(e);
        break;
      }
      default:
        skip(wt, end);
    }
  }
  return socket;
}

/** AttributeContext.Peer: its address's socket address (the last of each). */
function peer(end: number): string | undefined {
  let addr: string | undefined;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    switch (tag >>> 3) {
      case 1: {
        expect(wt, LEN);
        const e = lenEnd(end);
        addr = address(e);
        break;
      }
      case 2: // service
      case 4: // principal
        expect(wt, LEN);
        p = lenEnd(end);
        break;
      case 3: {
        // labels, a map entry: walked
        expect(wt, LEN);
        entry(lenEnd(end), false);
        break;
      }
      default:
        skip(wt, end);
    }
  }
  return addr;
}

// Header names the pipeline reads (check.ts `attributesOf`), lower-case, as bytes. Any other name
// is left out of the view; a name with a byte above 0x7f is decoded and lower-cased as check.ts
// does, since Unicode case mapping can turn it into one of these (U+212A KELVIN SIGN into `k`).
const READ_NAMES = ['authorization', 'x-api-key', 'x-request-id', ':path', ':method', 'x-envoy-auth-partial-body'] as const;
const PATH = 3;
const METHOD = 4;
const READ_NAME_BYTES = READ_NAMES.map((n) => Buffer.from(n, 'latin1'));
// Each of those names has a length of its own: the one a name of this many bytes may be, or -1.
const READ_NAME_OF_LENGTH: number[] = [];
READ_NAMES.forEach((n, i) => {
  if (READ_NAME_OF_LENGTH[n.length] !== undefined) throw new Error(`two read names of length ${n.length}`);
  READ_NAME_OF_LENGTH[n.length] = i;
});

/** The READ_NAMES index of the name the bytes [start, end) hold, lower-cased, or -1. */
function readName(start: number, end: number): number {
  const buf = b;
  for (let i = start; i < end; i++) {
    if (buf[i]! > 0x7f) return (READ_NAMES as readonly string[]).indexOf(utf8(start, end).toLowerCase());
  }
  const candidate = READ_NAME_OF_LENGTH[end - start];
  if (candidate === undefined) return -1;
  const want = READ_NAME_BYTES[candidate]!;
  for (let j = 0; j < want.length; j++) {
    let c = buf[start + j]!;
    if (c >= 0x41 && c <= 0x5a) c += 0x20;
    if (c !== want[j]) return -1;
  }
  return candidate;
}

/** The same bytes at [a, a + n) and [c, c + n). */
function sameBytes(a: number, c: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (b[a + i] !== b[c + i]) return false;
  return true;
}

// A `headers` entry the pipeline reads, as offsets until the message is read: its READ_NAMES index,
// its exact name's start and end, its value's start and end (-1 when absent).
const REF = 5;

/**
 * Entries of `headers` under a read name (in any case) beyond which the decoder gives up: each one
 * is compared with those before it, so thousands of case variants (no proxy sends them) would cost
 * seconds; proto-loader reads them in linear time.
 */
export const MAX_READ_HEADER_ENTRIES = 64;

// The fields of the last entry read by `entry`: the offsets of its key (1), value (2) and, in a
// HeaderValue, raw_value (3), each -1 when absent (the last occurrence of each counts).
let keyStart = -1;
let keyEnd = -1;
let valueStart = -1;
let valueEnd = -1;
let rawStart = -1;
let rawEnd = -1;

/** A map entry (`withRaw` false: field 3 is unknown) or a HeaderValue, into the offsets above. */
function entry(end: number, withRaw: boolean): void {
  keyStart = keyEnd = valueStart = valueEnd = rawStart = rawEnd = -1;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    const field = tag >>> 3;
    if (field === 1 || field === 2 || (field === 3 && withRaw)) {
      expect(wt, LEN);
      const e = lenEnd(end);
      if (field === 1) {
        keyStart = p;
        keyEnd = e;
      } else if (field === 2) {
        valueStart = p;
        valueEnd = e;
      } else {
        rawStart = p;
        rawEnd = e;
      }
      p = e;
    } else {
      skip(wt, end);
    }
  }
}

/**
 * One entry of the `headers` map, added to `refs` when its name is read: an exact name seen before
 * keeps its place and takes the new value, as a map does.
 */
function headersEntry(end: number, refs: number[]): void {
  entry(end, false);
  if (keyStart < 0) return; // the key "" is not a name the pipeline reads
  const name = readName(keyStart, keyEnd);
  if (name < 0) return;
  const n = keyEnd - keyStart;
  for (let i = 0; i < refs.length; i += REF) {
    if (refs[i + 2]! - refs[i + 1]! === n && sameBytes(refs[i + 1]!, keyStart, n)) {
      refs[i + 3] = valueStart;
      refs[i + 4] = valueEnd;
      return;
    }
  }
  if (refs.length >= MAX_READ_HEADER_ENTRIES * REF) throw UNSUPPORTED;
  refs.push(name, keyStart, keyEnd, valueStart, valueEnd);
}

/** One HeaderValue of `header_map`: its name and value added to `pairs` when the name is read. */
function headerMapEntry(end: number, pairs: string[]): void {
  entry(end, true);
  if (keyStart < 0) return;
  const name = readName(keyStart, keyEnd);
  if (name < 0) return;
  pairs.push(READ_NAMES[name]!, rawEnd > rawStart ? latin1(rawStart, rawEnd) : valueStart < 0 ? '' : utf8(valueStart, valueEnd));
}

/** envoy.config.core.v3.HeaderMap: its entries' count, and the read ones' pairs into `pairs`. */
function headerMap(end: number, pairs: string[]): number {
  let count = 0;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    if (tag >>> 3 === 1) {
      expect(wt, LEN);
      const e = lenEnd(end);
      headerMapEntry(e, pairs);
      count++;
    } else {
      skip(wt, end);
    }
  }
  return count;
}

/** AttributeContext.HttpRequest into `view` (whose source address is already set). */
function httpRequest(end: number, view: CheckRequestView): void {
  let headerRefs: number[] | undefined;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    const field = tag >>> 3;
    switch (field) {
      case 2:
      case 4:
      case 11: {
        expect(wt, LEN);
        const e = lenEnd(end);
        const s = utf8(p, e);
        p = e;
        if (field === 2) view.method = s;
        else if (field === 4) view.path = s;
        else view.body = s;
        break;
      }
      case 1: // id
      case 5: // host
      case 6: // scheme
      case 7: // query
      case 8: // fragment
      case 10: // protocol
        expect(wt, LEN);
        p = lenEnd(end);
        break;
      case 9: // size
        expect(wt, VARINT);
        skipVarint(end);
        break;
      case 3: {
        expect(wt, LEN);
        const e = lenEnd(end);
        headersEntry(e, (headerRefs ??= []));
        break;
      }
      case 12: {
        expect(wt, LEN);
        const e = lenEnd(end);
        // A view of the message, as protobufjs gives bytes.
        view.rawBody = b.subarray(p, e);
        p = e;
        break;
      }
      case 13: {
        expect(wt, LEN);
        const e = lenEnd(end);
        // A later header_map replaces an earlier one, as any message field does.
        const pairs: string[] = [];
        view.headerMapCount = headerMap(e, pairs);
        view.headerMap = pairs;
        break;
      }
      default:
        skip(wt, end);
    }
  }
  if (headerRefs !== undefined) {
    // The values as strings. `:path` and `:method` stand in for the fields only when those are
    // empty: otherwise nothing reads them, and they are left out.
    const pairs: string[] = [];
    for (let i = 0; i < headerRefs.length; i += REF) {
      const name = headerRefs[i]!;
      if ((name === PATH && view.path) || (name === METHOD && view.method)) continue;
      const start = headerRefs[i + 3]!;
      pairs.push(READ_NAMES[name]!, start < 0 ? '' : utf8(start, headerRefs[i + 4]!));
    }
    view.headers = pairs;
  }
}

const NO_PAIRS: readonly string[] = Object.freeze([]);

const emptyView = (sourceAddress: string | undefined): CheckRequestView => ({
  method: undefined,
  path: undefined,
  headerMapCount: 0,
  headerMap: NO_PAIRS,
  headers: undefined,
  body: undefined,
  rawBody: undefined,
  sourceAddress,
});

/** AttributeContext.Request: its last `http`, into a view. */
function request(end: number, sourceAddress: string | undefined): CheckRequestView {
  let view: CheckRequestView | undefined;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    if (tag >>> 3 === 2) {
      expect(wt, LEN);
      const e = lenEnd(end);
      view = emptyView(sourceAddress);
      httpRequest(e, view);
    } else {
      skip(wt, end);
    }
  }
  return view ?? emptyView(sourceAddress);
}

/** AttributeContext: source (1) and request (4) read, destination (2) and context_extensions (10) walked. */
function attributeContext(end: number): CheckRequestView {
  let source: string | undefined;
  let requestStart = -1;
  let requestEnd = -1;
  while (p < end) {
    const tag = uint32(end);
    const wt = tag & 7;
    switch (tag >>> 3) {
      case 1: {
        expect(wt, LEN);
        const e = lenEnd(end);
        source = peer(e);
        break;
      }
      case 2: {
        expect(wt, LEN);
        const e = lenEnd(end);
        peer(e);
        break;
      }
      case 4: {
        expect(wt, LEN);
        // Read once the source is known: the source may come after it. Earlier requests are
        // walked (protobufjs decodes each, then keeps the last).
        const e = lenEnd(end);
        if (requestStart >= 0) {
          const resume = p;
          p = requestStart;
          request(requestEnd, undefined);
          p = resume;
        }
        requestStart = p;
        requestEnd = e;
        p = e;
        break;
      }
      case 10: {
        // context_extensions, a map entry: walked
        expect(wt, LEN);
        entry(lenEnd(end), false);
        break;
      }
      default:
        skip(wt, end);
    }
  }
  if (requestStart < 0) return emptyView(source);
  const resume = p;
  p = requestStart;
  const view = request(requestEnd, source);
  p = resume;
  return view;
}

/** The parts of a serialized CheckRequest the pipeline reads; throws UNSUPPORTED outside this decoder. */
function decode(message: Buffer): CheckRequestView {
  b = message;
  p = 0;
  try {
    const end = message.length;
    let view: CheckRequestView | undefined;
    while (p < end) {
      const tag = uint32(end);
      const wt = tag & 7;
      if (tag >>> 3 === 1) {
        expect(wt, LEN);
        view = attributeContext(lenEnd(end));
      } else {
        skip(wt, end);
      }
    }
    return view ?? emptyView(undefined);
  } finally {
    b = EMPTY;
  }
}

/**
 * The parts of a serialized CheckRequest the pipeline reads, or undefined when the message is
 * outside this decoder (or the decoder fails): the caller then uses the generic deserializer.
 */
export function decodeCheckView(message: Buffer): CheckRequestView | undefined {
  try {
    return decode(message);
  } catch {
    return undefined;
  }
}

export type DecoderFallback = (reason: 'unsupported' | 'fault', fault?: unknown) => void;

/**
 * The Check method's requests as CheckRequestViews: this decoder's, or proto-loader's object's
 * parts when it gives up (told to `onFallback`: `unsupported`, or `fault` for an error of its own).
 * A message neither can decode fails the call (INTERNAL), as before.
 */
export function withFastCheckRequest(svc: grpc.ServiceDefinition, onFallback?: DecoderFallback): grpc.ServiceDefinition {
  const check = svc.Check;
  if (!check) return svc;
  const generic = check.requestDeserialize as (b: Buffer) => CheckRequest;
  const deserialize = (message: Buffer): CheckRequestView => {
    try {
      return decode(message);
    } catch (err) {
      if (err === UNSUPPORTED) onFallback?.('unsupported');
      else onFallback?.('fault', err);
      return viewOf(generic(message));
    }
  };
  return { ...svc, Check: { ...check, requestDeserialize: deserialize } };
}
