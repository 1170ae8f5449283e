// Checks an Envoy YAML configuration against Envoy's own protos, offline (no Envoy binary here).
//
// The protos come with @grpc/grpc-js-xds (deps/envoy-api, xds, googleapis, protoc-gen-validate).
// Every key must be a field of its message (snake_case or JSON name), enums must name a value,
// scalars must have the right type, at most one member of a oneof may be set, deprecated fields
// are refused, and each `"@type"` of an Any must name a message found in the protos, whose fields
// are then checked the same way. What this cannot see: Envoy's runtime validation (PGV rules,
// cluster names that do not exist): the tests check the references that matter themselves.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type * as Protobuf from 'protobufjs';

const require = createRequire(import.meta.url);
// protobufjs as @grpc/proto-loader (a dependency) resolves it.
const protobuf = createRequire(require.resolve('@grpc/proto-loader'))('protobufjs') as typeof Protobuf;

const DEPS = join(dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const INCLUDE_DIRS = ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(DEPS, d));
const PROTOBUFJS_DIR = dirname(createRequire(require.resolve('@grpc/proto-loader')).resolve('protobufjs/package.json'));

function resolveProto(target: string): string {
  for (const dir of [...INCLUDE_DIRS, PROTOBUFJS_DIR]) {
    const p = join(dir, target);
    if (existsSync(p)) return p;
  }
  return target;
}

/** The .proto file (relative to the include dirs) that defines a fully qualified message name. */
function protoFileOf(typeName: string): string | undefined {
  const parts = typeName.split('.');
  const message = parts.pop()!;
  const dir = parts.join('/');
  for (const inc of INCLUDE_DIRS) {
    const abs = join(inc, dir);
    if (!existsSync(abs)) continue;
    for (const file of readdirSync(abs).filter((f) => f.endsWith('.proto'))) {
      if (new RegExp(`^message ${message} \\{`, 'm').test(readFileSync(join(abs, file), 'utf8'))) return `${dir}/${file}`;
    }
  }
  return undefined;
}

const TYPE_URL_PREFIX = 'type.googleapis.com/';

function collectTypeUrls(value: unknown, out: Set<string>): void {
  if (Array.isArray(value)) value.forEach((v) => collectTypeUrls(v, out));
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (k === '@type' && typeof v === 'string' && v.startsWith(TYPE_URL_PREFIX)) out.add(v.slice(TYPE_URL_PREFIX.length));
      collectTypeUrls(v, out);
    }
  }
}

const INTEGER_TYPES = new Set(['int32', 'uint32', 'sint32', 'fixed32', 'sfixed32']);
const LONG_TYPES = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const WRAPPERS: Record<string, string> = {
  '.google.protobuf.BoolValue': 'bool',
  '.google.protobuf.StringValue': 'string',
  '.google.protobuf.BytesValue': 'bytes',
  '.google.protobuf.UInt32Value': 'uint32',
  '.google.protobuf.Int32Value': 'int32',
  '.google.protobuf.UInt64Value': 'uint64',
  '.google.protobuf.Int64Value': 'int64',
  '.google.protobuf.DoubleValue': 'double',
  '.google.protobuf.FloatValue': 'float',
};

class Checker {
  readonly problems: string[] = [];
  constructor(private readonly root: Protobuf.Root) {}

  private scalar(value: unknown, type: string, path: string): void {
    const ok =
      type === 'string' || type === 'bytes'
        ? typeof value === 'string'
        : type === 'bool'
          ? typeof value === 'boolean'
          : INTEGER_TYPES.has(type)
            ? Number.isInteger(value)
            : LONG_TYPES.has(type)
              ? Number.isInteger(value) || (typeof value === 'string' && /^-?\d+$/.test(value))
              : typeof value === 'number';
    if (!ok) this.problems.push(`${path}: expected ${type}, got ${JSON.stringify(value)}`);
  }

  private single(value: unknown, field: Protobuf.Field, path: string): void {
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Enum) {
      const ok = typeof value === 'string' ? value in resolved.values : Number.isInteger(value) && Object.values(resolved.values).includes(value as number);
      if (!ok) this.problems.push(`${path}: ${JSON.stringify(value)} is not a value of ${resolved.fullName}`);
    } else if (resolved instanceof protobuf.Type) {
      this.message(value, resolved, path);
    } else {
      this.scalar(value, field.type, path);
    }
  }

  message(value: unknown, type: Protobuf.Type, path: string): void {
    const name = type.fullName;
    if (name === '.google.protobuf.Any') return this.any(value, path);
    if (name === '.google.protobuf.Duration') {
      if (typeof value !== 'string' || !/^-?\d+(\.\d{1,9})?s$/.test(value)) this.problems.push(`${path}: expected a duration like "0.25s", got ${JSON.stringify(value)}`);
      return;
    }
    if (name === '.google.protobuf.Struct' || name === '.google.protobuf.Value' || name === '.google.protobuf.ListValue') return;
    if (name === '.google.protobuf.Timestamp') {
      if (typeof value !== 'string') this.problems.push(`${path}: expected an RFC 3339 timestamp`);
      return;
    }
    const wrapped = WRAPPERS[name];
    if (wrapped) return this.scalar(value, wrapped, path);

    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      this.problems.push(`${path}: expected a ${name} object, got ${JSON.stringify(value)}`);
      return;
    }
    const present = new Set<string>();
    for (const [key, v] of Object.entries(value)) {
      const field = type.fields[key] ?? type.fieldsArray.find((f) => protobuf.util.camelCase(f.name) === key);
      const at = `${path}.${key}`;
      if (!field) {
        this.problems.push(`${at}: ${name} has no field "${key}"`);
        continue;
      }
      present.add(field.name);
      if (field.options?.deprecated === true) this.problems.push(`${at}: deprecated field of ${name}`);
      if (field.map) {
        if (v === null || typeof v !== 'object' || Array.isArray(v)) this.problems.push(`${at}: expected a map`);
        else for (const [mk, mv] of Object.entries(v)) this.single(mv, field, `${at}.${mk}`);
      } else if (field.repeated) {
        if (!Array.isArray(v)) this.problems.push(`${at}: expected a list`);
        else v.forEach((item, i) => this.single(item, field, `${at}[${i}]`));
      } else {
        this.single(v, field, at);
      }
    }
    for (const oneof of type.oneofsArray) {
      const set = oneof.oneof.filter((f) => present.has(f));
      if (set.length > 1) this.problems.push(`${path}: only one of ${set.join(', ')} may be set (oneof ${oneof.name})`);
    }
  }

  private any(value: unknown, path: string): void {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      this.problems.push(`${path}: expected an Any object with "@type"`);
      return;
    }
    const { '@type': typeUrl, ...rest } = value as Record<string, unknown>;
    if (typeof typeUrl !== 'string' || !typeUrl.startsWith(TYPE_URL_PREFIX)) {
      this.problems.push(`${path}: "@type" must be ${TYPE_URL_PREFIX}<message>`);
      return;
    }
    let inner: Protobuf.Type;
    try {
      inner = this.root.lookupType(typeUrl.slice(TYPE_URL_PREFIX.length));
    } catch {
      this.problems.push(`${path}: "@type" ${typeUrl} names no message in Envoy's protos`);
      return;
    }
    this.message(rest, inner, `${path}<${inner.name}>`);
  }
}

/** Problems of `config` as a `rootType` message (default: an Envoy bootstrap); empty when it is valid. */
export function checkEnvoyConfig(config: unknown, rootType = 'envoy.config.bootstrap.v3.Bootstrap'): string[] {
  const typeNames = new Set<string>([rootType]);
  collectTypeUrls(config, typeNames);
  const files: string[] = [];
  const missing: string[] = [];
  for (const t of typeNames) {
    const file = protoFileOf(t);
    if (file) files.push(file);
    else missing.push(`no proto defines ${t}`);
  }
  if (missing.length > 0) return missing;
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => resolveProto(target);
  root.loadSync(files, { keepCase: true });
  root.resolveAll();
  const checker = new Checker(root);
  checker.message(config, root.lookupType(rootType), '$');
  return checker.problems;
}
